/*
 * The NVML shim: loads libnvidia-ml.so.1 with dlopen on first use and calls it through function pointers,
 * like the CUDA shim. Binding by dlsym keeps libferry.so free of undefined NVML symbols, so it loads under
 * RTLD_NOW (as Python's ctypes loads every library) on hosts without NVML.
 */
#ifndef FERRY_NVML_SHIM_H
#define FERRY_NVML_SHIM_H

#include <stddef.h>

/* Internal: not exported from libferry.so. */
#pragma GCC visibility push(hidden)

typedef int nvmlReturn_t;
typedef struct nvmlDevice_st* nvmlDevice_t;

#define FERRY_NVML_SUCCESS 0
#define FERRY_NVML_ERROR_NOT_SUPPORTED 3
#define FERRY_NVML_ERROR_INSUFFICIENT_SIZE 7
#define FERRY_NVML_LOAD_DLOPEN_FAILED (-1)
#define FERRY_NVML_LOAD_SYMBOL_MISSING (-2)

/* nvmlProcessInfo_t (the v2/v3 layout). */
typedef struct {
    unsigned int pid;
    unsigned long long used_gpu_memory;
    unsigned int gpu_instance_id;
    unsigned int compute_instance_id;
} ferry_nvml_process;

/* nvmlMemory_v2_t. */
typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} ferry_nvml_memory_v2;

/* Loads NVML from path and calls nvmlInit_v2. Returns 0, an nvmlReturn_t, or FERRY_NVML_LOAD_*; on
   failure err holds a message. The caller serializes it. */
int ferry_nvml_load(const char* path, char* err, size_t errlen);
const char* ferry_nvml_error_string(nvmlReturn_t r);

nvmlReturn_t ferry_nvml_driver_version(char* buf, unsigned int len);
nvmlReturn_t ferry_nvml_version(char* buf, unsigned int len);
nvmlReturn_t ferry_nvml_device_by_uuid(const char* uuid, nvmlDevice_t* dev);
nvmlReturn_t ferry_nvml_memory_info(nvmlDevice_t dev, ferry_nvml_memory_v2* mem);
nvmlReturn_t ferry_nvml_compute_processes(nvmlDevice_t dev, unsigned int* count, ferry_nvml_process* infos);
/* out: current generation, max generation, current width, max width. */
nvmlReturn_t ferry_nvml_pcie_link(nvmlDevice_t dev, unsigned int out[4]);

/* The GPU sampler's queries. Each returns FERRY_NVML_ERROR_NOT_SUPPORTED when the loaded NVML lacks the
   function, as NVML itself does when the device lacks the feature: the field is then absent. */
nvmlReturn_t ferry_nvml_utilization(nvmlDevice_t dev, unsigned int* gpu, unsigned int* memory);
nvmlReturn_t ferry_nvml_temperature(nvmlDevice_t dev, unsigned int* celsius);
nvmlReturn_t ferry_nvml_power(nvmlDevice_t dev, unsigned int* milliwatts);
/* clock: 1 = SM, 2 = memory (nvmlClockType_t). */
nvmlReturn_t ferry_nvml_clock(nvmlDevice_t dev, int clock, unsigned int* mhz);
nvmlReturn_t ferry_nvml_throttle_reasons(nvmlDevice_t dev, unsigned long long* reasons);
/* type: 0 = corrected, 1 = uncorrected; volatile counts (since the driver loaded). */
nvmlReturn_t ferry_nvml_ecc_errors(nvmlDevice_t dev, int type, unsigned long long* count);
/* counter: 0 = TX, 1 = RX; KB/s over a 20 ms window (the call blocks that long). */
nvmlReturn_t ferry_nvml_pcie_throughput(nvmlDevice_t dev, int counter, unsigned int* kbps);

#pragma GCC visibility pop

#endif
