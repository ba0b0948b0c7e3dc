/*
 * A stand-in for libcuda.so.1 with one 80 GiB device, for tests on hosts without a GPU. It implements only
 * the driver functions the engine resolves. "Device" memory is host memory from malloc and copies run at
 * once, so the engine's GPU pipeline runs end to end and its results can be checked. Streams and events
 * are handles the stand-in hands out and checks: destroying or recording an unknown one fails with
 * CUDA_ERROR_INVALID_HANDLE. Every call that needs a context checks that one is current.
 *
 * Switches, read from the environment at each call, so that a test can turn them on and off:
 *   FAKECUDA_FAIL_MEMINFO=1    cuMemGetInfo_v2 fails with CUDA_ERROR_INVALID_CONTEXT.
 *   FAKECUDA_FAIL_ALLOC=1      cuMemAlloc_v2 fails with CUDA_ERROR_OUT_OF_MEMORY.
 *   FAKECUDA_FAIL_HOSTALLOC=1  cuMemHostAlloc fails with CUDA_ERROR_OUT_OF_MEMORY.
 *   FAKECUDA_FAIL_REGISTER=1   cuMemHostRegister_v2 fails with CUDA_ERROR_OUT_OF_MEMORY.
 *   FAKECUDA_BUSY_MS=N         work queued on a stream (a copy) stays in flight for N ms after it is issued,
 *                              or for good with -1: cuStreamQuery of its stream and cuEventQuery of an event
 *                              recorded after it answer CUDA_ERROR_NOT_READY until then. Clearing the switch
 *                              (unset or 0) completes all work at once.
 *   FAKECUDA_STRICT_STREAMS=1  a stream argument must be NULL, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD or a
 *                              live stream from cuStreamCreate; any other (made up, or destroyed) fails with
 *                              CUDA_ERROR_INVALID_HANDLE. Without it, unknown streams are accepted as idle.
 */
#define _POSIX_C_SOURCE 200809L
#include <limits.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return 0;
}
CUresult cuGetErrorName(CUresult r, const char** s) {
    *s = r == 201   ? "CUDA_ERROR_INVALID_CONTEXT"
         : r == 101 ? "CUDA_ERROR_INVALID_DEVICE"
         : r == 2   ? "CUDA_ERROR_OUT_OF_MEMORY"
         : r == 400 ? "CUDA_ERROR_INVALID_HANDLE"
         : r == 209 ? "CUDA_ERROR_NO_BINARY_FOR_GPU"
         : r == 712 ? "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED"
         : r == 1   ? "CUDA_ERROR_INVALID_VALUE"
         : r == 600 ? "CUDA_ERROR_NOT_READY"
                    : "CUDA_ERROR_UNKNOWN";
    return 0;
}
CUresult cuGetErrorString(CUresult r, const char** s) {
    *s = r == 201   ? "invalid device context"
         : r == 101 ? "invalid device ordinal"
         : r == 2   ? "out of memory"
         : r == 400 ? "invalid resource handle"
         : r == 209 ? "no kernel image is available for execution on the device"
         : r == 712 ? "part or all of the requested memory range is already mapped"
         : r == 1   ? "invalid argument"
         : r == 600 ? "device not ready"
                    : "unknown error";
    return 0;
}
CUresult cuDeviceGetCount(int* n) {
    *n = 1;
    return 0;
}
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
CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice d) {
    (void)d;
    *bytes = (size_t)80 << 30;
    return 0;
}
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
CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) {
    (void)d;
    retained++;
    *c = &primary;
    return 0;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) {
    (void)d;
    retained--;
    return 0;
}
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
CUresult cuCtxGetCurrent(CUcontext* c) {
    *c = fakecuda_current();
    return 0;
}
static int env_is(const char* name) {
    const char* v = getenv(name);
    return v != NULL && strcmp(v, "1") == 0;
}

#define NEED_CONTEXT() \
    if (fakecuda_current() != &primary) return 201

typedef unsigned long long CUdeviceptr;

/*
 * Streams and events are objects in a table of live handles. Each carries the time (CLOCK_MONOTONIC ns)
 * its work completes: 0 when it has none, LLONG_MAX for never (FAKECUDA_BUSY_MS=-1). Destroyed objects are
 * taken out of the table and never freed, so a stale handle never aliases a new one.
 */
enum { STREAM = 1, EVENT = 2 };
typedef struct {
    int kind;
    long long done;
} object;
#define MAX_OBJECTS 4096
static object* objects[MAX_OBJECTS];
static atomic_flag objects_lock = ATOMIC_FLAG_INIT;

static void lock_objects(void) {
    while (atomic_flag_test_and_set_explicit(&objects_lock, memory_order_acquire)) {}
}
static void unlock_objects(void) { atomic_flag_clear_explicit(&objects_lock, memory_order_release); }

/* find returns the live object h of the kind, or NULL. The table lock is held. */
static object* find(void* h, int kind) {
    for (int i = 0; i < MAX_OBJECTS; i++) {
        if (objects[i] != NULL && objects[i] == h && objects[i]->kind == kind) return objects[i];
    }
    return NULL;
}
static CUresult create(int kind, void** out) {
    object* o = calloc(1, sizeof *o);
    if (o == NULL) return 2;
    o->kind = kind;
    lock_objects();
    for (int i = 0; i < MAX_OBJECTS; i++) {
        if (objects[i] == NULL) {
            objects[i] = o;
            unlock_objects();
            *out = o;
            return 0;
        }
    }
    unlock_objects();
    free(o);
    return 2;
}
static CUresult destroy(void* h, int kind) {
    lock_objects();
    for (int i = 0; i < MAX_OBJECTS; i++) {
        if (objects[i] != NULL && objects[i] == h && objects[i]->kind == kind) {
            objects[i] = NULL;
            unlock_objects();
            return 0;
        }
    }
    unlock_objects();
    return 400;
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
/* issued_done is when work issued now completes under FAKECUDA_BUSY_MS: 0 (at once) without it. */
static long long issued_done(void) {
    const char* v = getenv("FAKECUDA_BUSY_MS");
    if (v == NULL || *v == 0) return 0;
    long ms = strtol(v, NULL, 10);
    if (ms < 0) return LLONG_MAX;
    return now_ns() + (long long)ms * 1000000LL;
}
/* pending reports whether work that completes at done is still in flight. */
static int pending(long long done) {
    const char* v = getenv("FAKECUDA_BUSY_MS");
    if (v == NULL || *v == 0 || strcmp(v, "0") == 0) return 0;
    return done == LLONG_MAX || now_ns() < done;
}
/*
 * stream_of resolves a stream argument, with the table lock held: *o is the live stream, or NULL for the
 * legacy and per-thread streams and (without FAKECUDA_STRICT_STREAMS) for an unknown handle.
 */
static CUresult stream_of(void* s, object** o) {
    *o = NULL;
    if ((size_t)s <= 2) return 0; /* NULL, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD */
    *o = find(s, STREAM);
    if (*o == NULL && env_is("FAKECUDA_STRICT_STREAMS")) return 400;
    return 0;
}

CUresult cuMemHostAlloc(void** p, size_t n, unsigned flags) {
    NEED_CONTEXT();
    (void)flags;
    if (env_is("FAKECUDA_FAIL_HOSTALLOC")) return 2;
    *p = malloc(n ? n : 1);
    return *p ? 0 : 2;
}
CUresult cuMemFreeHost(void* p) {
    NEED_CONTEXT();
    free(p);
    return 0;
}
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) {
    NEED_CONTEXT();
    if (env_is("FAKECUDA_FAIL_ALLOC")) return 2;
    void* m = malloc(n ? n : 1);
    *p = (CUdeviceptr)(size_t)m;
    return m ? 0 : 2;
}
CUresult cuMemFree_v2(CUdeviceptr p) {
    NEED_CONTEXT();
    free((void*)(size_t)p);
    return 0;
}
CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) {
    NEED_CONTEXT();
    memset((void*)(size_t)p, v, n);
    return 0;
}
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    NEED_CONTEXT();
    memcpy(dst, (void*)(size_t)src, n);
    return 0;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void* s) {
    NEED_CONTEXT();
    object* o;
    lock_objects();
    CUresult r = stream_of(s, &o);
    if (r == 0 && o != NULL) {
        long long done = issued_done();
        if (done > o->done) o->done = done;
    }
    unlock_objects();
    if (r != 0) return r;
    memcpy((void*)(size_t)dst, src, n);
    return 0;
}
CUresult cuStreamCreate(void** s, unsigned flags) {
    NEED_CONTEXT();
    (void)flags;
    return create(STREAM, s);
}
CUresult cuStreamDestroy_v2(void* s) {
    NEED_CONTEXT();
    return destroy(s, STREAM);
}
CUresult cuStreamQuery(void* s) {
    NEED_CONTEXT();
    object* o;
    lock_objects();
    CUresult r = stream_of(s, &o);
    if (r == 0 && o != NULL && pending(o->done)) r = 600; /* CUDA_ERROR_NOT_READY */
    unlock_objects();
    return r;
}
CUresult cuStreamWaitEvent(void* s, void* e, unsigned flags) {
    NEED_CONTEXT();
    if (flags != 0) return 1;
    object* o;
    lock_objects();
    CUresult r = stream_of(s, &o);
    object* ev = find(e, EVENT);
    if (r == 0 && ev == NULL) r = 400;
    if (r == 0 && o != NULL && ev->done > o->done) o->done = ev->done; /* later work waits for the event */
    unlock_objects();
    return r;
}
CUresult cuEventCreate(void** e, unsigned flags) {
    NEED_CONTEXT();
    (void)flags;
    return create(EVENT, e);
}
CUresult cuEventDestroy_v2(void* e) {
    NEED_CONTEXT();
    return destroy(e, EVENT);
}
CUresult cuEventRecord(void* e, void* s) {
    NEED_CONTEXT();
    object* o;
    lock_objects();
    CUresult r = stream_of(s, &o);
    object* ev = find(e, EVENT);
    if (ev == NULL) r = 400;
    if (r == 0) ev->done = o != NULL ? o->done : 0;
    unlock_objects();
    return r;
}
CUresult cuEventQuery(void* e) {
    NEED_CONTEXT();
    lock_objects();
    object* ev = find(e, EVENT);
    CUresult r = ev == NULL ? 400 : pending(ev->done) ? 600 : 0;
    unlock_objects();
    return r;
}

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
    for (int i = 0; i < MAX_REGISTERED; i++)
        if (registered[i] == p) return 712;
    for (int i = 0; i < MAX_REGISTERED; i++) {
        if (registered[i] == NULL) {
            registered[i] = p;
            return 0;
        }
    }
    return 2;
}
CUresult cuMemHostUnregister(void* p) {
    NEED_CONTEXT();
    for (int i = 0; i < MAX_REGISTERED; i++) {
        if (registered[i] == p) {
            registered[i] = NULL;
            return 0;
        }
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
CUresult cuModuleLoadData(void** m, const void* image) {
    NEED_CONTEXT();
    (void)m;
    (void)image;
    return 209;
}
CUresult cuModuleUnload(void* m) {
    NEED_CONTEXT();
    (void)m;
    return 400;
}
CUresult cuModuleGetFunction(void** f, void* m, const char* name) {
    NEED_CONTEXT();
    (void)f;
    (void)m;
    (void)name;
    return 400;
}
CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, void* s, void** params, void** extra) {
    NEED_CONTEXT();
    (void)f;
    (void)gx;
    (void)gy;
    (void)gz;
    (void)bx;
    (void)by;
    (void)bz;
    (void)shared;
    (void)s;
    (void)params;
    (void)extra;
    return 400;
}
