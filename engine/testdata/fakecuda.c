/*
 * A stand-in for libcuda.so.1 with one 80 GiB device, for tests on hosts without a GPU. It implements only
 * the driver functions the engine resolves. "Device" memory is host memory from malloc and copies run at
 * once, so the engine's GPU pipeline runs end to end and its results can be checked. Streams and events
 * are tokens: every event is complete. FAKECUDA_FAIL_MEMINFO=1 makes cuMemGetInfo_v2 fail with
 * CUDA_ERROR_INVALID_CONTEXT; FAKECUDA_FAIL_ALLOC=1 makes cuMemAlloc_v2 fail with
 * CUDA_ERROR_OUT_OF_MEMORY. Every call that needs a context checks that one is current.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef void* CUcontext;

static int primary;
static int retained;
static _Thread_local CUcontext stack[8];
static _Thread_local int depth;

CUcontext fakecuda_current(void) { return depth > 0 ? stack[depth - 1] : NULL; }
int fakecuda_retained(void) { return retained; }

CUresult cuInit(unsigned flags) { return flags == 0 ? 0 : 1; }
CUresult cuDriverGetVersion(int* v) { *v = 13000; return 0; }
CUresult cuGetErrorName(CUresult r, const char** s) {
    *s = r == 201 ? "CUDA_ERROR_INVALID_CONTEXT" : r == 101 ? "CUDA_ERROR_INVALID_DEVICE"
       : r == 2 ? "CUDA_ERROR_OUT_OF_MEMORY" : r == 400 ? "CUDA_ERROR_INVALID_HANDLE"
       : r == 209 ? "CUDA_ERROR_NO_BINARY_FOR_GPU" : r == 712 ? "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED"
       : "CUDA_ERROR_UNKNOWN";
    return 0;
}
CUresult cuGetErrorString(CUresult r, const char** s) {
    *s = r == 201 ? "invalid device context" : r == 101 ? "invalid device ordinal"
       : r == 2 ? "out of memory" : r == 400 ? "invalid resource handle"
       : r == 209 ? "no kernel image is available for execution on the device"
       : r == 712 ? "part or all of the requested memory range is already mapped" : "unknown error";
    return 0;
}
CUresult cuDeviceGetCount(int* n) { *n = 1; return 0; }
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal != 0) return 101;
    *d = 0;
    return 0;
}
CUresult cuDeviceGetName(char* name, int len, CUdevice d) {
    (void)d;
    strncpy(name, "Fake GPU", (size_t)len);
    return 0;
}
CUresult cuDeviceGetUuid_v2(char* uuid, CUdevice d) {
    (void)d;
    for (int i = 0; i < 16; i++) uuid[i] = (char)(0xa0 + i);
    return 0;
}
CUresult cuDeviceGetPCIBusId(char* id, int len, CUdevice d) {
    (void)d;
    strncpy(id, "0000:1B:00.0", (size_t)len);
    return 0;
}
CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice d) { (void)d; *bytes = (size_t)80 << 30; return 0; }
CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice d) {
    (void)d;
    switch (attr) {
    case 16: *v = 132; return 0;          /* multiprocessors */
    case 37: *v = 5120; return 0;         /* memory bus width */
    case 38: *v = 50 << 20; return 0;     /* L2 */
    case 40: *v = 3; return 0;            /* async engines */
    case 75: *v = 9; return 0;            /* cc major */
    case 76: *v = 0; return 0;            /* cc minor */
    case 41: *v = 1; return 0;            /* unified addressing */
    case 91: *v = 1; return 0;            /* host pointer usable for registered memory */
    }
    return 1; /* CUDA_ERROR_INVALID_VALUE */
}
CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) { (void)d; retained++; *c = &primary; return 0; }
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) { (void)d; retained--; return 0; }
CUresult cuCtxPushCurrent_v2(CUcontext c) {
    if (depth == 8) return 1;
    stack[depth++] = c;
    return 0;
}
CUresult cuCtxPopCurrent_v2(CUcontext* c) {
    if (depth == 0) return 201;
    *c = stack[--depth];
    return 0;
}
CUresult cuCtxGetCurrent(CUcontext* c) { *c = fakecuda_current(); return 0; }
static int env_is(const char* name) {
    const char* v = getenv(name);
    return v != NULL && strcmp(v, "1") == 0;
}

#define NEED_CONTEXT() \
    if (fakecuda_current() != &primary) return 201

typedef unsigned long long CUdeviceptr;
static int token;

CUresult cuMemHostAlloc(void** p, size_t n, unsigned flags) {
    NEED_CONTEXT();
    (void)flags;
    *p = malloc(n ? n : 1);
    return *p ? 0 : 2;
}
CUresult cuMemFreeHost(void* p) { NEED_CONTEXT(); free(p); return 0; }
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) {
    NEED_CONTEXT();
    if (env_is("FAKECUDA_FAIL_ALLOC")) return 2;
    void* m = malloc(n ? n : 1);
    *p = (CUdeviceptr)(size_t)m;
    return m ? 0 : 2;
}
CUresult cuMemFree_v2(CUdeviceptr p) { NEED_CONTEXT(); free((void*)(size_t)p); return 0; }
CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) { NEED_CONTEXT(); memset((void*)(size_t)p, v, n); return 0; }
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) { NEED_CONTEXT(); memcpy(dst, (void*)(size_t)src, n); return 0; }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void* s) {
    NEED_CONTEXT();
    (void)s;
    memcpy((void*)(size_t)dst, src, n);
    return 0;
}
CUresult cuStreamCreate(void** s, unsigned flags) { NEED_CONTEXT(); (void)flags; *s = &token; return 0; }
CUresult cuStreamDestroy_v2(void* s) { NEED_CONTEXT(); return s == &token ? 0 : 400; }
CUresult cuStreamQuery(void* s) { NEED_CONTEXT(); (void)s; return 0; }
CUresult cuStreamWaitEvent(void* s, void* e, unsigned flags) { NEED_CONTEXT(); (void)s; (void)e; return flags == 0 ? 0 : 1; }
CUresult cuEventCreate(void** e, unsigned flags) { NEED_CONTEXT(); (void)flags; *e = &token; return 0; }
CUresult cuEventDestroy_v2(void* e) { NEED_CONTEXT(); return e == &token ? 0 : 400; }
CUresult cuEventRecord(void* e, void* s) { NEED_CONTEXT(); (void)s; return e == &token ? 0 : 400; }
CUresult cuEventQuery(void* e) { NEED_CONTEXT(); return e == &token ? 0 : 400; }

CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total_bytes) {
    NEED_CONTEXT();
    if (env_is("FAKECUDA_FAIL_MEMINFO")) return 201;
    *free_bytes = (size_t)70 << 30;
    *total_bytes = (size_t)80 << 30;
    return 0;
}

/*
 * Registered host memory: the fake device addresses host memory directly, so the device pointer is the host
 * pointer. A range registered twice fails as the driver does. Kernels cannot run here: loading a module
 * fails with CUDA_ERROR_NO_BINARY_FOR_GPU, which sends the engine down its host-transform path.
 */
#define MAX_REGISTERED 64
static void* registered[MAX_REGISTERED];
CUresult cuMemHostRegister_v2(void* p, size_t n, unsigned flags) {
    NEED_CONTEXT();
    (void)flags;
    if (p == NULL || n == 0) return 1;
    if (env_is("FAKECUDA_FAIL_REGISTER")) return 2;
    for (int i = 0; i < MAX_REGISTERED; i++) if (registered[i] == p) return 712;
    for (int i = 0; i < MAX_REGISTERED; i++) {
        if (registered[i] == NULL) { registered[i] = p; return 0; }
    }
    return 2;
}
CUresult cuMemHostUnregister(void* p) {
    NEED_CONTEXT();
    for (int i = 0; i < MAX_REGISTERED; i++) {
        if (registered[i] == p) { registered[i] = NULL; return 0; }
    }
    return 713; /* CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED */
}
int fakecuda_registered(void) {
    int n = 0;
    for (int i = 0; i < MAX_REGISTERED; i++) n += registered[i] != NULL;
    return n;
}
CUresult cuMemHostGetDevicePointer_v2(CUdeviceptr* d, void* p, unsigned flags) {
    NEED_CONTEXT();
    if (flags != 0) return 1;
    *d = (CUdeviceptr)(size_t)p;
    return 0;
}
CUresult cuModuleLoadData(void** m, const void* image) { NEED_CONTEXT(); (void)m; (void)image; return 209; }
CUresult cuModuleUnload(void* m) { NEED_CONTEXT(); (void)m; return 400; }
CUresult cuModuleGetFunction(void** f, void* m, const char* name) { NEED_CONTEXT(); (void)f; (void)m; (void)name; return 400; }
CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, void* s, void** params, void** extra) {
    NEED_CONTEXT();
    (void)f; (void)gx; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)shared; (void)s; (void)params; (void)extra;
    return 400;
}
