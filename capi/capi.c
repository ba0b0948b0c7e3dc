/*
 * The part of the C API that never enters Go: status strings, the thread-local last error, the version,
 * and ferry_memory_check, which reads an engine's snapshot from C memory under a seqlock. Everything else
 * is exported from Go (export_*.go).
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "capi.h"

/* ---- last error ---------------------------------------------------------------------------------- */

static _Thread_local char last_error[1024];

void ferry_capi_set_error(const char* msg, size_t len) {
    size_t n = len;
    if (n >= sizeof last_error) {
        n = sizeof last_error - 1;
    }
    memcpy(last_error, msg, n);
    last_error[n] = '\0';
}

static ferry_status fail(ferry_status s, const char* msg) {
    strncpy(last_error, msg, sizeof last_error - 1);
    last_error[sizeof last_error - 1] = '\0';
    return s;
}

const char* ferry_last_error(void) { return last_error; }

/* ---- status strings and version ------------------------------------------------------------------ */

const char* ferry_status_string(ferry_status status) {
    switch (status) {
    case FERRY_OK: return "FERRY_OK";
    case FERRY_ERR_INVALID_ARGUMENT: return "FERRY_ERR_INVALID_ARGUMENT";
    case FERRY_ERR_INVALID_HANDLE: return "FERRY_ERR_INVALID_HANDLE";
    case FERRY_ERR_NO_DEVICE: return "FERRY_ERR_NO_DEVICE";
    case FERRY_ERR_CUDA: return "FERRY_ERR_CUDA";
    case FERRY_ERR_NVML: return "FERRY_ERR_NVML";
    case FERRY_ERR_OUT_OF_MEMORY: return "FERRY_ERR_OUT_OF_MEMORY";
    case FERRY_ERR_UNSUPPORTED: return "FERRY_ERR_UNSUPPORTED";
    case FERRY_ERR_IO: return "FERRY_ERR_IO";
    case FERRY_ERR_FORMAT: return "FERRY_ERR_FORMAT";
    case FERRY_ERR_CLOSED: return "FERRY_ERR_CLOSED";
    case FERRY_ERR_TIMEOUT: return "FERRY_ERR_TIMEOUT";
    case FERRY_ERR_LIMIT: return "FERRY_ERR_LIMIT";
    case FERRY_END_OF_EPOCH: return "FERRY_END_OF_EPOCH";
    case FERRY_ERR_INTERNAL: return "FERRY_ERR_INTERNAL";
    }
    return "FERRY_ERR_UNKNOWN_STATUS";
}

ferry_status ferry_version(int32_t* major, int32_t* minor, int32_t* patch) {
    if (major) *major = FERRY_VERSION_MAJOR;
    if (minor) *minor = FERRY_VERSION_MINOR;
    if (patch) *patch = FERRY_VERSION_PATCH;
    return FERRY_OK;
}

/* ---- engine snapshot slots ----------------------------------------------------------------------- */

#define SNAP_WORDS (sizeof(ferry_memory_snapshot) / sizeof(uint64_t))
_Static_assert(sizeof(ferry_memory_snapshot) % sizeof(uint64_t) == 0, "snapshot must be whole words");
_Static_assert(sizeof(ferry_memory_snapshot) == FERRY_CAPI_V1_MEMORY_SNAPSHOT, "v1 snapshot size changed");

typedef struct {
    _Atomic uint64_t owner; /* the engine handle that owns the slot, 0 when free */
    _Atomic uint64_t seq;   /* odd while a write is in progress */
    _Atomic uint64_t words[SNAP_WORDS];
} engine_slot;

static engine_slot slots[FERRY_MAX_ENGINES];

/* One writer per slot at a time: the engine serializes its publishes. */
void ferry_capi_slot_publish(uint32_t slot, const ferry_memory_snapshot* snap) {
    engine_slot* s = &slots[slot];
    uint64_t src[SNAP_WORDS];
    memcpy(src, snap, sizeof src);
    uint64_t seq = atomic_load_explicit(&s->seq, memory_order_relaxed);
    atomic_store_explicit(&s->seq, seq + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    for (size_t i = 0; i < SNAP_WORDS; i++) {
        atomic_store_explicit(&s->words[i], src[i], memory_order_relaxed);
    }
    atomic_store_explicit(&s->seq, seq + 2, memory_order_release);
}

void ferry_capi_slot_open(uint32_t slot, uint64_t handle) {
    atomic_store_explicit(&slots[slot].owner, handle, memory_order_release);
}

void ferry_capi_slot_close(uint32_t slot) { atomic_store_explicit(&slots[slot].owner, 0, memory_order_release); }

static uint64_t monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Handle layout, shared with registry.go: kind in bits 56..63, generation in 32..55, index in 0..31. */
#define HANDLE_KIND_ENGINE 0x45u

ferry_status ferry_memory_check(ferry_engine engine, ferry_memory_snapshot* out) {
    uint64_t h = (uint64_t)(uintptr_t)engine;
    if (h == 0) {
        return fail(FERRY_ERR_INVALID_HANDLE, "ferry_memory_check: engine is NULL");
    }
    uint32_t index = (uint32_t)(h & 0xffffffffu);
    if ((h >> 56) != HANDLE_KIND_ENGINE || index >= FERRY_MAX_ENGINES) {
        return fail(FERRY_ERR_INVALID_HANDLE, "ferry_memory_check: not an engine handle");
    }
    if (out == NULL) {
        return fail(FERRY_ERR_INVALID_ARGUMENT, "ferry_memory_check: out is NULL");
    }
    uint32_t size = out->size;
    if (size < FERRY_CAPI_V1_MEMORY_SNAPSHOT) {
        return fail(FERRY_ERR_INVALID_ARGUMENT,
                    "ferry_memory_check: out->size is smaller than ferry_memory_snapshot; set it to sizeof");
    }
    engine_slot* s = &slots[index];
    if (atomic_load_explicit(&s->owner, memory_order_acquire) != h) {
        return fail(FERRY_ERR_INVALID_HANDLE, "ferry_memory_check: engine handle is stale (destroyed)");
    }
    union {
        uint64_t words[SNAP_WORDS];
        ferry_memory_snapshot snap;
    } copy;
    for (unsigned spins = 0;; spins++) {
        uint64_t s1 = atomic_load_explicit(&s->seq, memory_order_acquire);
        if ((s1 & 1u) == 0) {
            for (size_t i = 0; i < SNAP_WORDS; i++) {
                copy.words[i] = atomic_load_explicit(&s->words[i], memory_order_relaxed);
            }
            atomic_thread_fence(memory_order_acquire);
            if (atomic_load_explicit(&s->seq, memory_order_relaxed) == s1) {
                break;
            }
        }
        if (spins >= 64) {
            /* A writer was preempted mid-publish: give it the CPU. Bounded: ~1 s of yields at most. */
            if (spins >= 1000000) {
                return fail(FERRY_ERR_TIMEOUT, "ferry_memory_check: snapshot writer did not finish");
            }
            sched_yield();
        }
    }
    /* The slot may have changed hands during the copy; only a copy made under our handle counts. */
    if (atomic_load_explicit(&s->owner, memory_order_acquire) != h) {
        return fail(FERRY_ERR_INVALID_HANDLE, "ferry_memory_check: engine handle is stale (destroyed)");
    }
    uint64_t now = monotonic_ns();
    copy.snap.age_ns = now > copy.snap.timestamp_ns ? now - copy.snap.timestamp_ns : 0;
    copy.snap.size = size;
    *out = copy.snap; /* the caller's size is at least v1, which is all this version writes */
    return FERRY_OK;
}

/* ---- DLPack tensors ------------------------------------------------------------------------------ */

/* Implemented in Go (export_batch.go): drops the tensor's reference on its batch. */
extern void ferryTensorDeleted(uint64_t batch);

typedef struct {
    DLManagedTensorVersioned managed; /* first: the pointer handed out is the struct's */
    uint64_t batch;
    int64_t shape[FERRY_MAX_DIMS + 1];
} ferry_tensor;

static void tensor_deleter(DLManagedTensorVersioned* self) {
    if (self == NULL) {
        return;
    }
    ferry_tensor* t = (ferry_tensor*)self;
    ferryTensorDeleted(t->batch);
    free(t);
}

DLManagedTensorVersioned* ferry_capi_tensor_new(uint64_t batch, uint64_t data, int32_t device_type, int32_t device_id,
                                                int32_t ndim, const int64_t* shape, uint8_t code, uint8_t bits) {
    if (ndim < 0 || ndim > FERRY_MAX_DIMS + 1) {
        return NULL;
    }
    ferry_tensor* t = calloc(1, sizeof *t);
    if (t == NULL) {
        return NULL;
    }
    t->batch = batch;
    memcpy(t->shape, shape, (size_t)ndim * sizeof(int64_t));
    t->managed.version.major = DLPACK_MAJOR_VERSION;
    t->managed.version.minor = DLPACK_MINOR_VERSION;
    t->managed.manager_ctx = t;
    t->managed.deleter = tensor_deleter;
    t->managed.flags = 0;
    t->managed.dl_tensor.data = (void*)(uintptr_t)data; /* a device address, or ferry host memory */
    t->managed.dl_tensor.device.device_type = (DLDeviceType)device_type;
    t->managed.dl_tensor.device.device_id = device_id;
    t->managed.dl_tensor.ndim = ndim;
    t->managed.dl_tensor.dtype.code = code;
    t->managed.dl_tensor.dtype.bits = bits;
    t->managed.dl_tensor.dtype.lanes = 1;
    t->managed.dl_tensor.shape = t->shape;
    t->managed.dl_tensor.strides = NULL;
    t->managed.dl_tensor.byte_offset = 0;
    return &t->managed;
}
