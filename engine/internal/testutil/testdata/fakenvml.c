/*
 * A stand-in for libnvidia-ml.so.1 that describes the stand-in driver's one device (fakecuda.c), for tests
 * on hosts without a GPU. It answers fixed figures, lists the calling process as a compute process using
 * 1 GiB, reports ECC as not supported, and has no clocks-event (throttle) query at all, so that tests see
 * fields that are absent in both ways NVML shows it.
 *
 * FAKENVML_FAIL_AFTER=N (read once, at the first device call) lets the first N device calls (the handle
 * lookup and the queries) answer, and makes every later one fail with NVML_ERROR_GPU_IS_LOST, as when a
 * GPU falls off the bus mid-run.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int nvmlReturn_t;
typedef struct nvmlDevice_st* nvmlDevice_t;

#define OK 0
#define NOT_SUPPORTED 3
#define NOT_FOUND 6
#define INSUFFICIENT_SIZE 7
#define GPU_IS_LOST 15

static atomic_long calls;
static atomic_long fail_after = -2; /* -2: not read yet; -1: never fail */

/* lost reports whether this device call fails under FAKENVML_FAIL_AFTER, and counts it. */
static int lost(void) {
    long after = atomic_load(&fail_after);
    if (after == -2) {
        const char* v = getenv("FAKENVML_FAIL_AFTER");
        after = v != NULL && *v != 0 ? strtol(v, NULL, 10) : -1;
        atomic_store(&fail_after, after);
    }
    return after >= 0 && atomic_fetch_add(&calls, 1) >= after;
}
#define DEVICE_CALL() \
    if (lost()) return GPU_IS_LOST

static int device;
static const char* uuid = "GPU-a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf";

nvmlReturn_t nvmlInit_v2(void) { return OK; }
const char* nvmlErrorString(nvmlReturn_t r) {
    return r == NOT_SUPPORTED ? "Not Supported"
           : r == NOT_FOUND   ? "Not Found"
           : r == GPU_IS_LOST ? "GPU is lost"
                              : "Unknown Error";
}
nvmlReturn_t nvmlSystemGetDriverVersion(char* v, unsigned int n) {
    strncpy(v, "999.1.2", n);
    return OK;
}
nvmlReturn_t nvmlSystemGetNVMLVersion(char* v, unsigned int n) {
    strncpy(v, "99.999.1.2", n);
    return OK;
}
nvmlReturn_t nvmlDeviceGetHandleByUUID(const char* u, nvmlDevice_t* d) {
    DEVICE_CALL();
    if (strcmp(u, uuid) != 0) return NOT_FOUND;
    *d = (nvmlDevice_t)&device;
    return OK;
}

typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} memory_v2;

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, memory_v2* m) {
    DEVICE_CALL();
    (void)d;
    m->total = 80ull << 30;
    m->reserved = 512ull << 20;
    m->free = 70ull << 30;
    m->used = m->total - m->free - m->reserved;
    return OK;
}

typedef struct {
    unsigned int pid;
    unsigned long long used;
    unsigned int gi, ci;
} process;

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int* count, process* p) {
    DEVICE_CALL();
    (void)d;
    if (*count < 1) {
        *count = 1;
        return INSUFFICIENT_SIZE;
    }
    *count = 1;
    p[0].pid = (unsigned int)getpid();
    p[0].used = 1ull << 30;
    p[0].gi = p[0].ci = 0xFFFFFFFFu;
    return OK;
}

nvmlReturn_t nvmlDeviceGetCurrPcieLinkGeneration(nvmlDevice_t d, unsigned int* v) {
    DEVICE_CALL();
    (void)d;
    *v = 4;
    return OK;
}
nvmlReturn_t nvmlDeviceGetMaxPcieLinkGeneration(nvmlDevice_t d, unsigned int* v) {
    DEVICE_CALL();
    (void)d;
    *v = 5;
    return OK;
}
nvmlReturn_t nvmlDeviceGetCurrPcieLinkWidth(nvmlDevice_t d, unsigned int* v) {
    DEVICE_CALL();
    (void)d;
    *v = 8;
    return OK;
}
nvmlReturn_t nvmlDeviceGetMaxPcieLinkWidth(nvmlDevice_t d, unsigned int* v) {
    DEVICE_CALL();
    (void)d;
    *v = 16;
    return OK;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, unsigned int u[2]) {
    DEVICE_CALL();
    (void)d;
    u[0] = 37;
    u[1] = 12;
    return OK;
}
nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t d, int sensor, unsigned int* c) {
    DEVICE_CALL();
    (void)d;
    if (sensor != 0) return NOT_SUPPORTED;
    *c = 55;
    return OK;
}
nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned int* mw) {
    DEVICE_CALL();
    (void)d;
    *mw = 123456;
    return OK;
}
nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t d, int clock, unsigned int* mhz) {
    DEVICE_CALL();
    (void)d;
    if (clock == 1)
        *mhz = 1980;
    else if (clock == 2)
        *mhz = 2619;
    else
        return NOT_SUPPORTED;
    return OK;
}
nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t d, int type, int counter, unsigned long long* n) {
    DEVICE_CALL();
    (void)d;
    (void)type;
    (void)counter;
    (void)n;
    return NOT_SUPPORTED;
}
nvmlReturn_t nvmlDeviceGetPcieThroughput(nvmlDevice_t d, int counter, unsigned int* kbps) {
    DEVICE_CALL();
    (void)d;
    *kbps = counter == 1 ? 1000 : 2000;
    return OK;
}
