/*
 * The CUDA driver shim: the only C in the engine. It declares the handful of driver types and functions
 * ferry uses (no CUDA headers are needed to build), loads libcuda.so.1 with dlopen on first use, and calls
 * the driver through function pointers. Every function that needs a context takes it as an argument and
 * pushes it for the duration of the one C call, so no state is left on the calling OS thread.
 */
#ifndef FERRY_CUDA_SHIM_H
#define FERRY_CUDA_SHIM_H

#include <stddef.h>
#include <stdint.h>

/* Internal: not exported from libferry.so. */
#pragma GCC visibility push(hidden)

typedef int CUresult;
typedef int CUdevice;
typedef struct CUctx_st* CUcontext;
typedef struct CUstream_st* CUstream;
typedef struct CUevent_st* CUevent;
typedef unsigned long long CUdeviceptr;
typedef struct CUmod_st* CUmodule;
typedef struct CUfunc_st* CUfunction;

/* CUDA_ERROR_NOT_READY: an event or stream query whose work has not completed. */
#define FERRY_CU_NOT_READY 600
/* cuMemHostAlloc flags. */
#define FERRY_CU_MEMHOSTALLOC_PORTABLE 0x01
/* cuMemHostRegister flags: portable across contexts, mapped into the device's address space, read-only. */
#define FERRY_CU_MEMHOSTREGISTER_PORTABLE 0x01
#define FERRY_CU_MEMHOSTREGISTER_DEVICEMAP 0x02
#define FERRY_CU_MEMHOSTREGISTER_READ_ONLY 0x08
/* cuStreamCreate flags: no implicit synchronization with the legacy default stream. */
#define FERRY_CU_STREAM_NON_BLOCKING 0x1
/* cuEventCreate flags. */
#define FERRY_CU_EVENT_DISABLE_TIMING 0x2

/* Results of ferry_cu_load other than CUresult values. */
#define FERRY_CU_LOAD_DLOPEN_FAILED (-1)
#define FERRY_CU_LOAD_SYMBOL_MISSING (-2)

/* Device attributes used by ferry (values from the driver API's CUdevice_attribute). */
#define FERRY_CU_ATTR_MULTIPROCESSOR_COUNT 16
#define FERRY_CU_ATTR_GLOBAL_MEMORY_BUS_WIDTH 37
#define FERRY_CU_ATTR_L2_CACHE_SIZE 38
#define FERRY_CU_ATTR_ASYNC_ENGINE_COUNT 40
#define FERRY_CU_ATTR_COMPUTE_CAPABILITY_MAJOR 75
#define FERRY_CU_ATTR_COMPUTE_CAPABILITY_MINOR 76
#define FERRY_CU_ATTR_UNIFIED_ADDRESSING 41
#define FERRY_CU_ATTR_CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM 91

/* Loads the driver from path, resolves every symbol and calls cuInit(0). Returns 0, a CUresult from cuInit,
   or FERRY_CU_LOAD_*; on failure err holds a message. Not thread-safe: the caller serializes it. */
int ferry_cu_load(const char* path, char* err, size_t errlen);

/* Error name and description for a CUresult; never NULL. */
const char* ferry_cu_error_name(CUresult r);
const char* ferry_cu_error_string(CUresult r);

CUresult ferry_cu_driver_version(int* version);
CUresult ferry_cu_device_count(int* count);
CUresult ferry_cu_device_get(CUdevice* dev, int ordinal);
CUresult ferry_cu_device_name(CUdevice dev, char* name, int len);
CUresult ferry_cu_device_uuid(CUdevice dev, unsigned char uuid[16]);
CUresult ferry_cu_device_pci_bus_id(CUdevice dev, char* id, int len);
CUresult ferry_cu_device_total_mem(CUdevice dev, size_t* bytes);
CUresult ferry_cu_device_attribute(CUdevice dev, int attr, int* value);

CUresult ferry_cu_primary_ctx_retain(CUdevice dev, CUcontext* ctx);
CUresult ferry_cu_primary_ctx_release(CUdevice dev);

/* Makes ctx current on the calling thread until the matching pop; for threads ferry owns (locked). */
CUresult ferry_cu_ctx_push(CUcontext ctx);
CUresult ferry_cu_ctx_pop(void);

/* Memory. Each makes ctx current for the one call. */
CUresult ferry_cu_mem_host_alloc(CUcontext ctx, void** p, size_t bytes);
CUresult ferry_cu_mem_free_host(CUcontext ctx, void* p);
CUresult ferry_cu_mem_alloc(CUcontext ctx, CUdeviceptr* p, size_t bytes);
CUresult ferry_cu_mem_free(CUcontext ctx, CUdeviceptr p);
CUresult ferry_cu_memset_d8(CUcontext ctx, CUdeviceptr p, unsigned char value, size_t n);
CUresult ferry_cu_memcpy_dtoh(CUcontext ctx, void* dst, CUdeviceptr src, size_t n);
CUresult ferry_cu_memcpy_htod_async(CUcontext ctx, CUdeviceptr dst, const void* src, size_t n, uintptr_t s);

/* Registers host memory (page-locks and maps it) for the device; unregisters it. */
CUresult ferry_cu_mem_host_register(CUcontext ctx, uintptr_t p, size_t bytes, unsigned int flags);
CUresult ferry_cu_mem_host_unregister(CUcontext ctx, uintptr_t p);
/* The device address of registered or page-locked host memory. */
CUresult ferry_cu_mem_host_get_device_pointer(CUcontext ctx, CUdeviceptr* d, uintptr_t p);
/* One cuMemcpyHtoDAsync per sample: count copies of bytes each, from src + offsets[i] to dst + i*bytes. */
CUresult ferry_cu_memcpy_htod_gather(CUcontext ctx, CUdeviceptr dst, uintptr_t src, const uint64_t* offsets, int count,
                                     size_t bytes, uintptr_t s);

/* Modules and kernels. */
CUresult ferry_cu_module_load_data(CUcontext ctx, uintptr_t* m, const void* image);
CUresult ferry_cu_module_unload(CUcontext ctx, uintptr_t m);
CUresult ferry_cu_module_get_function(CUcontext ctx, uintptr_t* f, uintptr_t m, const char* name);
/* Launches f on stream s with one by-value parameter, the struct at params (the driver copies it at launch). */
CUresult ferry_cu_launch(CUcontext ctx, uintptr_t f, unsigned int grid_x, unsigned int grid_y, unsigned int block_x,
                         uintptr_t s, const void* params);

/* Streams and events. Handles cross into Go as uintptr_t (driver-owned pointers, never Go memory). */
CUresult ferry_cu_stream_create(CUcontext ctx, uintptr_t* s);
CUresult ferry_cu_stream_destroy(CUcontext ctx, uintptr_t s);
CUresult ferry_cu_stream_query(CUcontext ctx, uintptr_t s);
CUresult ferry_cu_stream_wait_event(CUcontext ctx, uintptr_t s, uintptr_t e);
CUresult ferry_cu_event_create(CUcontext ctx, uintptr_t* e);
CUresult ferry_cu_event_destroy(CUcontext ctx, uintptr_t e);
CUresult ferry_cu_event_record(CUcontext ctx, uintptr_t e, uintptr_t s);
CUresult ferry_cu_event_query(CUcontext ctx, uintptr_t e);

/* cuMemGetInfo on ctx: makes ctx current for the call (pushing and popping it unless it already is). */
CUresult ferry_cu_mem_get_info(CUcontext ctx, size_t* free_bytes, size_t* total_bytes);

#pragma GCC visibility pop

#endif
