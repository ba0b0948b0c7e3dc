#include "shim.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

typedef struct CUuuid_st {
    char bytes[16];
} CUuuid;

static struct {
    CUresult (*init)(unsigned int);
    CUresult (*driver_get_version)(int*);
    CUresult (*get_error_name)(CUresult, const char**);
    CUresult (*get_error_string)(CUresult, const char**);
    CUresult (*device_get_count)(int*);
    CUresult (*device_get)(CUdevice*, int);
    CUresult (*device_get_name)(char*, int, CUdevice);
    CUresult (*device_get_uuid)(CUuuid*, CUdevice);
    CUresult (*device_get_pci_bus_id)(char*, int, CUdevice);
    CUresult (*device_total_mem)(size_t*, CUdevice);
    CUresult (*device_get_attribute)(int*, int, CUdevice);
    CUresult (*primary_ctx_retain)(CUcontext*, CUdevice);
    CUresult (*primary_ctx_release)(CUdevice);
    CUresult (*ctx_push_current)(CUcontext);
    CUresult (*ctx_pop_current)(CUcontext*);
    CUresult (*ctx_get_current)(CUcontext*);
    CUresult (*mem_get_info)(size_t*, size_t*);
    CUresult (*mem_host_alloc)(void**, size_t, unsigned int);
    CUresult (*mem_free_host)(void*);
    CUresult (*mem_alloc)(CUdeviceptr*, size_t);
    CUresult (*mem_free)(CUdeviceptr);
    CUresult (*memset_d8)(CUdeviceptr, unsigned char, size_t);
    CUresult (*memcpy_dtoh)(void*, CUdeviceptr, size_t);
    CUresult (*memcpy_htod_async)(CUdeviceptr, const void*, size_t, CUstream);
    CUresult (*stream_create)(CUstream*, unsigned int);
    CUresult (*stream_destroy)(CUstream);
    CUresult (*stream_query)(CUstream);
    CUresult (*stream_wait_event)(CUstream, CUevent, unsigned int);
    CUresult (*event_create)(CUevent*, unsigned int);
    CUresult (*event_destroy)(CUevent);
    CUresult (*event_record)(CUevent, CUstream);
    CUresult (*event_query)(CUevent);
    CUresult (*mem_host_register)(void*, size_t, unsigned int);
    CUresult (*mem_host_unregister)(void*);
    CUresult (*mem_host_get_device_pointer)(CUdeviceptr*, void*, unsigned int);
    CUresult (*module_load_data)(CUmodule*, const void*);
    CUresult (*module_unload)(CUmodule);
    CUresult (*module_get_function)(CUfunction*, CUmodule, const char*);
    CUresult (*launch_kernel)(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int,
                              unsigned int, unsigned int, CUstream, void**, void**);
} cu;

static void* handle;

/* CUDA_ERROR_NOT_INITIALIZED: what every call returns before a successful load. */
#define CU_NOT_INITIALIZED 3

static int resolve(void** slot, const char* name, const char* fallback, char* err, size_t errlen) {
    *slot = dlsym(handle, name);
    if (*slot == NULL && fallback != NULL) {
        *slot = dlsym(handle, fallback);
    }
    if (*slot == NULL) {
        snprintf(err, errlen, "symbol %s not found in the CUDA driver library (driver too old?)", name);
        return -1;
    }
    return 0;
}

int ferry_cu_load(const char* path, char* err, size_t errlen) {
    if (handle == NULL) {
        void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (h == NULL) {
            const char* why = dlerror();
            snprintf(err, errlen, "cannot load %s: %s", path, why ? why : "unknown dlopen error");
            return FERRY_CU_LOAD_DLOPEN_FAILED;
        }
        handle = h;
    }
#define RESOLVE(field, name, fallback)                                  \
    if (resolve((void**)&cu.field, name, fallback, err, errlen) != 0) { \
        memset(&cu, 0, sizeof cu);                                      \
        return FERRY_CU_LOAD_SYMBOL_MISSING;                            \
    }
    RESOLVE(init, "cuInit", NULL);
    RESOLVE(driver_get_version, "cuDriverGetVersion", NULL);
    RESOLVE(get_error_name, "cuGetErrorName", NULL);
    RESOLVE(get_error_string, "cuGetErrorString", NULL);
    RESOLVE(device_get_count, "cuDeviceGetCount", NULL);
    RESOLVE(device_get, "cuDeviceGet", NULL);
    RESOLVE(device_get_name, "cuDeviceGetName", NULL);
    RESOLVE(device_get_uuid, "cuDeviceGetUuid_v2", "cuDeviceGetUuid");
    RESOLVE(device_get_pci_bus_id, "cuDeviceGetPCIBusId", NULL);
    RESOLVE(device_total_mem, "cuDeviceTotalMem_v2", NULL);
    RESOLVE(device_get_attribute, "cuDeviceGetAttribute", NULL);
    RESOLVE(primary_ctx_retain, "cuDevicePrimaryCtxRetain", NULL);
    RESOLVE(primary_ctx_release, "cuDevicePrimaryCtxRelease_v2", NULL);
    RESOLVE(ctx_push_current, "cuCtxPushCurrent_v2", NULL);
    RESOLVE(ctx_pop_current, "cuCtxPopCurrent_v2", NULL);
    RESOLVE(ctx_get_current, "cuCtxGetCurrent", NULL);
    RESOLVE(mem_get_info, "cuMemGetInfo_v2", NULL);
    RESOLVE(mem_host_alloc, "cuMemHostAlloc", NULL);
    RESOLVE(mem_free_host, "cuMemFreeHost", NULL);
    RESOLVE(mem_alloc, "cuMemAlloc_v2", NULL);
    RESOLVE(mem_free, "cuMemFree_v2", NULL);
    RESOLVE(memset_d8, "cuMemsetD8_v2", NULL);
    RESOLVE(memcpy_dtoh, "cuMemcpyDtoH_v2", NULL);
    RESOLVE(memcpy_htod_async, "cuMemcpyHtoDAsync_v2", NULL);
    RESOLVE(stream_create, "cuStreamCreate", NULL);
    RESOLVE(stream_destroy, "cuStreamDestroy_v2", NULL);
    RESOLVE(stream_query, "cuStreamQuery", NULL);
    RESOLVE(stream_wait_event, "cuStreamWaitEvent", NULL);
    RESOLVE(event_create, "cuEventCreate", NULL);
    RESOLVE(event_destroy, "cuEventDestroy_v2", NULL);
    RESOLVE(event_record, "cuEventRecord", NULL);
    RESOLVE(event_query, "cuEventQuery", NULL);
    RESOLVE(mem_host_register, "cuMemHostRegister_v2", "cuMemHostRegister");
    RESOLVE(mem_host_unregister, "cuMemHostUnregister", NULL);
    RESOLVE(mem_host_get_device_pointer, "cuMemHostGetDevicePointer_v2", NULL);
    RESOLVE(module_load_data, "cuModuleLoadData", NULL);
    RESOLVE(module_unload, "cuModuleUnload", NULL);
    RESOLVE(module_get_function, "cuModuleGetFunction", NULL);
    RESOLVE(launch_kernel, "cuLaunchKernel", NULL);
#undef RESOLVE
    CUresult r = cu.init(0);
    if (r != 0) {
        snprintf(err, errlen, "cuInit failed: %s (%d): %s", ferry_cu_error_name(r), r, ferry_cu_error_string(r));
    }
    return r;
}

const char* ferry_cu_error_name(CUresult r) {
    const char* s = NULL;
    if (cu.get_error_name == NULL || cu.get_error_name(r, &s) != 0 || s == NULL) {
        return "CUDA_ERROR_UNKNOWN_CODE";
    }
    return s;
}

const char* ferry_cu_error_string(CUresult r) {
    const char* s = NULL;
    if (cu.get_error_string == NULL || cu.get_error_string(r, &s) != 0 || s == NULL) {
        return "unrecognized error code";
    }
    return s;
}

#define CALL(fn, ...) ((cu.fn == NULL) ? CU_NOT_INITIALIZED : cu.fn(__VA_ARGS__))

CUresult ferry_cu_driver_version(int* version) { return CALL(driver_get_version, version); }
CUresult ferry_cu_device_count(int* count) { return CALL(device_get_count, count); }
CUresult ferry_cu_device_get(CUdevice* dev, int ordinal) { return CALL(device_get, dev, ordinal); }
CUresult ferry_cu_device_name(CUdevice dev, char* name, int len) { return CALL(device_get_name, name, len, dev); }

CUresult ferry_cu_device_uuid(CUdevice dev, unsigned char uuid[16]) {
    CUuuid u;
    CUresult r = CALL(device_get_uuid, &u, dev);
    if (r == 0) {
        memcpy(uuid, u.bytes, 16);
    }
    return r;
}

CUresult ferry_cu_device_pci_bus_id(CUdevice dev, char* id, int len) {
    return CALL(device_get_pci_bus_id, id, len, dev);
}
CUresult ferry_cu_device_total_mem(CUdevice dev, size_t* bytes) { return CALL(device_total_mem, bytes, dev); }
CUresult ferry_cu_device_attribute(CUdevice dev, int attr, int* value) {
    return CALL(device_get_attribute, value, attr, dev);
}

CUresult ferry_cu_primary_ctx_retain(CUdevice dev, CUcontext* ctx) { return CALL(primary_ctx_retain, ctx, dev); }
CUresult ferry_cu_primary_ctx_release(CUdevice dev) { return CALL(primary_ctx_release, dev); }

/*
 * Runs body with ctx current on the calling thread and leaves the thread as it found it. When ctx is
 * already current (a thread where PyTorch or the caller works on this device), it skips the push and pop,
 * which cost about a microsecond together.
 */
#define WITH_CONTEXT(ctx, body)                     \
    do {                                            \
        CUcontext cur_ = NULL;                      \
        CUresult r_ = CALL(ctx_get_current, &cur_); \
        if (r_ != 0) return r_;                     \
        if (cur_ == (ctx)) {                        \
            return (body);                          \
        }                                           \
        r_ = cu.ctx_push_current(ctx);              \
        if (r_ != 0) return r_;                     \
        CUresult b_ = (body);                       \
        CUcontext popped_;                          \
        CUresult p_ = cu.ctx_pop_current(&popped_); \
        return b_ != 0 ? b_ : p_;                   \
    } while (0)

CUresult ferry_cu_mem_get_info(CUcontext ctx, size_t* free_bytes, size_t* total_bytes) {
    WITH_CONTEXT(ctx, cu.mem_get_info(free_bytes, total_bytes));
}

CUresult ferry_cu_ctx_push(CUcontext ctx) { return CALL(ctx_push_current, ctx); }
CUresult ferry_cu_ctx_pop(void) {
    CUcontext popped;
    return CALL(ctx_pop_current, &popped);
}

CUresult ferry_cu_mem_host_alloc(CUcontext ctx, void** p, size_t bytes) {
    WITH_CONTEXT(ctx, cu.mem_host_alloc(p, bytes, FERRY_CU_MEMHOSTALLOC_PORTABLE));
}
CUresult ferry_cu_mem_free_host(CUcontext ctx, void* p) { WITH_CONTEXT(ctx, cu.mem_free_host(p)); }
CUresult ferry_cu_mem_alloc(CUcontext ctx, CUdeviceptr* p, size_t bytes) { WITH_CONTEXT(ctx, cu.mem_alloc(p, bytes)); }
CUresult ferry_cu_mem_free(CUcontext ctx, CUdeviceptr p) { WITH_CONTEXT(ctx, cu.mem_free(p)); }
CUresult ferry_cu_memset_d8(CUcontext ctx, CUdeviceptr p, unsigned char value, size_t n) {
    WITH_CONTEXT(ctx, cu.memset_d8(p, value, n));
}
CUresult ferry_cu_memcpy_dtoh(CUcontext ctx, void* dst, CUdeviceptr src, size_t n) {
    WITH_CONTEXT(ctx, cu.memcpy_dtoh(dst, src, n));
}
#define STREAM(s) ((CUstream)(s))
#define EVENT(e) ((CUevent)(e))

CUresult ferry_cu_memcpy_htod_async(CUcontext ctx, CUdeviceptr dst, const void* src, size_t n, uintptr_t s) {
    WITH_CONTEXT(ctx, cu.memcpy_htod_async(dst, src, n, STREAM(s)));
}
CUresult ferry_cu_stream_create(CUcontext ctx, uintptr_t* s) {
    CUstream st = NULL;
    CUresult r;
    WITH_CONTEXT(ctx, (r = cu.stream_create(&st, FERRY_CU_STREAM_NON_BLOCKING), *s = (uintptr_t)st, r));
}
CUresult ferry_cu_stream_destroy(CUcontext ctx, uintptr_t s) { WITH_CONTEXT(ctx, cu.stream_destroy(STREAM(s))); }
CUresult ferry_cu_stream_query(CUcontext ctx, uintptr_t s) { WITH_CONTEXT(ctx, cu.stream_query(STREAM(s))); }
CUresult ferry_cu_stream_wait_event(CUcontext ctx, uintptr_t s, uintptr_t e) {
    WITH_CONTEXT(ctx, cu.stream_wait_event(STREAM(s), EVENT(e), 0));
}
CUresult ferry_cu_event_create(CUcontext ctx, uintptr_t* e) {
    CUevent ev = NULL;
    CUresult r;
    WITH_CONTEXT(ctx, (r = cu.event_create(&ev, FERRY_CU_EVENT_DISABLE_TIMING), *e = (uintptr_t)ev, r));
}
CUresult ferry_cu_event_destroy(CUcontext ctx, uintptr_t e) { WITH_CONTEXT(ctx, cu.event_destroy(EVENT(e))); }
CUresult ferry_cu_event_record(CUcontext ctx, uintptr_t e, uintptr_t s) {
    WITH_CONTEXT(ctx, cu.event_record(EVENT(e), STREAM(s)));
}
CUresult ferry_cu_event_query(CUcontext ctx, uintptr_t e) { WITH_CONTEXT(ctx, cu.event_query(EVENT(e))); }

CUresult ferry_cu_mem_host_register(CUcontext ctx, uintptr_t p, size_t bytes, unsigned int flags) {
    WITH_CONTEXT(ctx, cu.mem_host_register((void*)p, bytes, flags));
}
CUresult ferry_cu_mem_host_unregister(CUcontext ctx, uintptr_t p) {
    WITH_CONTEXT(ctx, cu.mem_host_unregister((void*)p));
}
CUresult ferry_cu_mem_host_get_device_pointer(CUcontext ctx, CUdeviceptr* d, uintptr_t p) {
    WITH_CONTEXT(ctx, cu.mem_host_get_device_pointer(d, (void*)p, 0));
}

static CUresult htod_gather(CUdeviceptr dst, uintptr_t src, const uint64_t* offsets, int count, size_t bytes,
                            CUstream s) {
    for (int i = 0; i < count; i++) {
        CUresult r = cu.memcpy_htod_async(dst + (CUdeviceptr)i * bytes, (const void*)(src + offsets[i]), bytes, s);
        if (r != 0) return r;
    }
    return 0;
}

CUresult ferry_cu_memcpy_htod_gather(CUcontext ctx, CUdeviceptr dst, uintptr_t src, const uint64_t* offsets, int count,
                                     size_t bytes, uintptr_t s) {
    if (cu.memcpy_htod_async == NULL) return CU_NOT_INITIALIZED;
    WITH_CONTEXT(ctx, htod_gather(dst, src, offsets, count, bytes, STREAM(s)));
}

CUresult ferry_cu_module_load_data(CUcontext ctx, uintptr_t* m, const void* image) {
    CUmodule mod = NULL;
    CUresult r;
    WITH_CONTEXT(ctx, (r = CALL(module_load_data, &mod, image), *m = (uintptr_t)mod, r));
}
CUresult ferry_cu_module_unload(CUcontext ctx, uintptr_t m) { WITH_CONTEXT(ctx, cu.module_unload((CUmodule)m)); }
CUresult ferry_cu_module_get_function(CUcontext ctx, uintptr_t* f, uintptr_t m, const char* name) {
    CUfunction fn = NULL;
    CUresult r;
    WITH_CONTEXT(ctx, (r = cu.module_get_function(&fn, (CUmodule)m, name), *f = (uintptr_t)fn, r));
}

static CUresult launch(uintptr_t f, unsigned int gx, unsigned int gy, unsigned int bx, uintptr_t s,
                       const void* params) {
    void* args[1] = {(void*)params};
    return cu.launch_kernel((CUfunction)f, gx, gy, 1, bx, 1, 1, 0, STREAM(s), args, NULL);
}

CUresult ferry_cu_launch(CUcontext ctx, uintptr_t f, unsigned int grid_x, unsigned int grid_y, unsigned int block_x,
                         uintptr_t s, const void* params) {
    if (cu.launch_kernel == NULL) return CU_NOT_INITIALIZED;
    WITH_CONTEXT(ctx, launch(f, grid_x, grid_y, block_x, s, params));
}
