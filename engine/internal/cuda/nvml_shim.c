#include "nvml_shim.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

/* NVML_ERROR_UNINITIALIZED: what every call returns before a successful load. */
#define NVML_UNINITIALIZED 1

static struct {
    nvmlReturn_t (*init)(void);
    const char* (*error_string)(nvmlReturn_t);
    nvmlReturn_t (*driver_version)(char*, unsigned int);
    nvmlReturn_t (*nvml_version)(char*, unsigned int);
    nvmlReturn_t (*device_by_uuid)(const char*, nvmlDevice_t*);
    nvmlReturn_t (*memory_info_v2)(nvmlDevice_t, ferry_nvml_memory_v2*);
    nvmlReturn_t (*compute_processes)(nvmlDevice_t, unsigned int*, ferry_nvml_process*);
    nvmlReturn_t (*pcie_gen_curr)(nvmlDevice_t, unsigned int*);
    nvmlReturn_t (*pcie_gen_max)(nvmlDevice_t, unsigned int*);
    nvmlReturn_t (*pcie_width_curr)(nvmlDevice_t, unsigned int*);
    nvmlReturn_t (*pcie_width_max)(nvmlDevice_t, unsigned int*);
    /* Optional: absent from some NVML versions; a missing one reports NOT_SUPPORTED. */
    nvmlReturn_t (*utilization)(nvmlDevice_t, unsigned int[2]);
    nvmlReturn_t (*temperature)(nvmlDevice_t, int, unsigned int*);
    nvmlReturn_t (*power)(nvmlDevice_t, unsigned int*);
    nvmlReturn_t (*clock)(nvmlDevice_t, int, unsigned int*);
    nvmlReturn_t (*throttle)(nvmlDevice_t, unsigned long long*);
    nvmlReturn_t (*ecc)(nvmlDevice_t, int, int, unsigned long long*);
    nvmlReturn_t (*pcie_throughput)(nvmlDevice_t, int, unsigned int*);
} nv;

static void* handle;

int ferry_nvml_load(const char* path, char* err, size_t errlen) {
    if (handle == NULL) {
        void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (h == NULL) {
            const char* why = dlerror();
            snprintf(err, errlen, "cannot load %s: %s", path, why ? why : "unknown dlopen error");
            return FERRY_NVML_LOAD_DLOPEN_FAILED;
        }
        handle = h;
    }
    static const struct {
        size_t offset;
        const char* name;
        const char* fallback;
    } syms[] = {
        {offsetof(__typeof__(nv), init), "nvmlInit_v2", NULL},
        {offsetof(__typeof__(nv), error_string), "nvmlErrorString", NULL},
        {offsetof(__typeof__(nv), driver_version), "nvmlSystemGetDriverVersion", NULL},
        {offsetof(__typeof__(nv), nvml_version), "nvmlSystemGetNVMLVersion", NULL},
        {offsetof(__typeof__(nv), device_by_uuid), "nvmlDeviceGetHandleByUUID", NULL},
        {offsetof(__typeof__(nv), memory_info_v2), "nvmlDeviceGetMemoryInfo_v2", NULL},
        {offsetof(__typeof__(nv), compute_processes), "nvmlDeviceGetComputeRunningProcesses_v3",
         "nvmlDeviceGetComputeRunningProcesses_v2"},
        {offsetof(__typeof__(nv), pcie_gen_curr), "nvmlDeviceGetCurrPcieLinkGeneration", NULL},
        {offsetof(__typeof__(nv), pcie_gen_max), "nvmlDeviceGetMaxPcieLinkGeneration", NULL},
        {offsetof(__typeof__(nv), pcie_width_curr), "nvmlDeviceGetCurrPcieLinkWidth", NULL},
        {offsetof(__typeof__(nv), pcie_width_max), "nvmlDeviceGetMaxPcieLinkWidth", NULL},
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        void* p = dlsym(handle, syms[i].name);
        if (p == NULL && syms[i].fallback != NULL) {
            p = dlsym(handle, syms[i].fallback);
        }
        if (p == NULL) {
            snprintf(err, errlen, "symbol %s not found in %s (driver too old?)", syms[i].name, path);
            memset(&nv, 0, sizeof nv);
            return FERRY_NVML_LOAD_SYMBOL_MISSING;
        }
        memcpy((char*)&nv + syms[i].offset, &p, sizeof p);
    }
    static const struct {
        size_t offset;
        const char* name;
        const char* fallback;
    } optional[] = {
        {offsetof(__typeof__(nv), utilization), "nvmlDeviceGetUtilizationRates", NULL},
        {offsetof(__typeof__(nv), temperature), "nvmlDeviceGetTemperature", NULL},
        {offsetof(__typeof__(nv), power), "nvmlDeviceGetPowerUsage", NULL},
        {offsetof(__typeof__(nv), clock), "nvmlDeviceGetClockInfo", NULL},
        {offsetof(__typeof__(nv), throttle), "nvmlDeviceGetCurrentClocksEventReasons",
         "nvmlDeviceGetCurrentClocksThrottleReasons"},
        {offsetof(__typeof__(nv), ecc), "nvmlDeviceGetTotalEccErrors", NULL},
        {offsetof(__typeof__(nv), pcie_throughput), "nvmlDeviceGetPcieThroughput", NULL},
    };
    for (size_t i = 0; i < sizeof optional / sizeof optional[0]; i++) {
        void* p = dlsym(handle, optional[i].name);
        if (p == NULL && optional[i].fallback != NULL) {
            p = dlsym(handle, optional[i].fallback);
        }
        memcpy((char*)&nv + optional[i].offset, &p, sizeof p);
    }
    nvmlReturn_t r = nv.init();
    if (r != FERRY_NVML_SUCCESS) {
        snprintf(err, errlen, "nvmlInit_v2 failed: %s (%d)", ferry_nvml_error_string(r), r);
        memset(&nv, 0, sizeof nv);
    }
    return r;
}

const char* ferry_nvml_error_string(nvmlReturn_t r) {
    const char* s = nv.error_string ? nv.error_string(r) : NULL;
    return s ? s : "unknown NVML error";
}

#define CALL(fn, ...) ((nv.fn == NULL) ? NVML_UNINITIALIZED : nv.fn(__VA_ARGS__))

nvmlReturn_t ferry_nvml_driver_version(char* buf, unsigned int len) { return CALL(driver_version, buf, len); }
nvmlReturn_t ferry_nvml_version(char* buf, unsigned int len) { return CALL(nvml_version, buf, len); }
nvmlReturn_t ferry_nvml_device_by_uuid(const char* uuid, nvmlDevice_t* dev) { return CALL(device_by_uuid, uuid, dev); }

nvmlReturn_t ferry_nvml_memory_info(nvmlDevice_t dev, ferry_nvml_memory_v2* mem) {
    mem->version = (unsigned int)(sizeof(ferry_nvml_memory_v2) | (2u << 24));
    return CALL(memory_info_v2, dev, mem);
}

nvmlReturn_t ferry_nvml_compute_processes(nvmlDevice_t dev, unsigned int* count, ferry_nvml_process* infos) {
    return CALL(compute_processes, dev, count, infos);
}

nvmlReturn_t ferry_nvml_pcie_link(nvmlDevice_t dev, unsigned int out[4]) {
    nvmlReturn_t r = CALL(pcie_gen_curr, dev, &out[0]);
    if (r == FERRY_NVML_SUCCESS) r = nv.pcie_gen_max(dev, &out[1]);
    if (r == FERRY_NVML_SUCCESS) r = nv.pcie_width_curr(dev, &out[2]);
    if (r == FERRY_NVML_SUCCESS) r = nv.pcie_width_max(dev, &out[3]);
    return r;
}

#define OPTIONAL(fn, ...) ((nv.fn == NULL) ? FERRY_NVML_ERROR_NOT_SUPPORTED : nv.fn(__VA_ARGS__))

nvmlReturn_t ferry_nvml_utilization(nvmlDevice_t dev, unsigned int* gpu, unsigned int* memory) {
    unsigned int u[2] = {0, 0}; /* nvmlUtilization_t: gpu, memory */
    nvmlReturn_t r = OPTIONAL(utilization, dev, u);
    *gpu = u[0];
    *memory = u[1];
    return r;
}
nvmlReturn_t ferry_nvml_temperature(nvmlDevice_t dev, unsigned int* celsius) {
    return OPTIONAL(temperature, dev, 0 /* NVML_TEMPERATURE_GPU */, celsius);
}
nvmlReturn_t ferry_nvml_power(nvmlDevice_t dev, unsigned int* milliwatts) { return OPTIONAL(power, dev, milliwatts); }
nvmlReturn_t ferry_nvml_clock(nvmlDevice_t dev, int clock, unsigned int* mhz) {
    return OPTIONAL(clock, dev, clock, mhz);
}
nvmlReturn_t ferry_nvml_throttle_reasons(nvmlDevice_t dev, unsigned long long* reasons) {
    return OPTIONAL(throttle, dev, reasons);
}
nvmlReturn_t ferry_nvml_ecc_errors(nvmlDevice_t dev, int type, unsigned long long* count) {
    return OPTIONAL(ecc, dev, type, 0 /* NVML_VOLATILE_ECC */, count);
}
nvmlReturn_t ferry_nvml_pcie_throughput(nvmlDevice_t dev, int counter, unsigned int* kbps) {
    return OPTIONAL(pcie_throughput, dev, counter, kbps);
}
