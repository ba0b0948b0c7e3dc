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

/* ---- the metric log ------------------------------------------------------------------------------ */

/*
 * ferry_metric_log never enters Go. Each thread that logs to a monitor gets a ring in C memory (one
 * writer: that thread; one reader: the monitor's fold in Go, which takes entries with
 * ferry_capi_monitor_take). An entry is stamped with the CPU's time-stamp counter where the engine trusts
 * it (ferry_capi_use_tsc), else CLOCK_MONOTONIC; the fold maps both to CLOCK_MONOTONIC nanoseconds. A full
 * ring is folded by the writer through Go (ferryMonitorFull): values are never dropped.
 *
 * Monitor slots are never freed: a slot's rings are reused by the next monitor in it, so a call racing
 * ferry_monitor_destroy on another thread writes into memory that stays valid.
 */
#include <pthread.h>
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

#define HANDLE_KIND_MONITOR 0x4du
#define RING_ENTRIES 4096u
#define TL_CACHE 4

typedef struct mring {
    _Atomic uint64_t head;
    char pad0[56];
    _Atomic uint64_t tail;
    char pad1[56];
    struct mring* next;
    _Atomic int owned; /* a live thread writes it */
    ferry_capi_mentry entries[RING_ENTRIES];
} mring;

typedef struct mon_slot {
    _Atomic uint64_t handle; /* 0 when no monitor holds the slot */
    _Atomic uint32_t nids;
    pthread_mutex_t mu; /* guards rings */
    mring* _Atomic rings;
} mon_slot;

static mon_slot mon_slots[FERRY_CAPI_MAX_MONITORS];
static pthread_once_t mon_once = PTHREAD_ONCE_INIT;
static pthread_key_t mon_key;
static _Atomic int ferry_capi_use_tsc;

static _Thread_local struct {
    uint64_t handle;
    mring* ring;
} tl_rings[TL_CACHE];

/* At thread exit, the thread's rings become free for other threads (once drained). */
static void release_rings(void* unused) {
    (void)unused;
    for (int i = 0; i < TL_CACHE; i++) {
        if (tl_rings[i].ring != NULL) {
            atomic_store_explicit(&tl_rings[i].ring->owned, 0, memory_order_release);
            tl_rings[i].ring = NULL;
            tl_rings[i].handle = 0;
        }
    }
}

static void mon_init(void) {
    pthread_key_create(&mon_key, release_rings);
    for (int i = 0; i < FERRY_CAPI_MAX_MONITORS; i++) {
        pthread_mutex_init(&mon_slots[i].mu, NULL);
    }
}

void ferry_capi_monitor_bind(uint32_t slot, uint64_t handle, int use_tsc) {
    pthread_once(&mon_once, mon_init);
    mon_slot* m = &mon_slots[slot];
    atomic_store(&ferry_capi_use_tsc, use_tsc);
    pthread_mutex_lock(&m->mu);
    for (mring* r = atomic_load(&m->rings); r != NULL; r = r->next) { /* leftovers of a racing writer */
        atomic_store(&r->tail, atomic_load(&r->head));
    }
    pthread_mutex_unlock(&m->mu);
    atomic_store(&m->nids, 0);
    atomic_store_explicit(&m->handle, handle, memory_order_release);
}

void ferry_capi_monitor_unbind(uint32_t slot) {
    atomic_store_explicit(&mon_slots[slot].handle, 0, memory_order_release);
}

void ferry_capi_monitor_set_metrics(uint32_t slot, uint32_t n) {
    atomic_store_explicit(&mon_slots[slot].nids, n, memory_order_release);
}

int ferry_capi_monitor_take(uint32_t slot, ferry_capi_mentry* out, int cap) {
    mon_slot* m = &mon_slots[slot];
    int n = 0;
    pthread_mutex_lock(&m->mu);
    for (mring* r = atomic_load(&m->rings); r != NULL && n < cap; r = r->next) {
        uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
        uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
        while (tail < head && n < cap) {
            out[n++] = r->entries[tail & (RING_ENTRIES - 1)];
            tail++;
        }
        atomic_store_explicit(&r->tail, tail, memory_order_release);
    }
    pthread_mutex_unlock(&m->mu);
    return n;
}

/* The calling thread's ring for the monitor in slot m (handle h): cached, else a free drained ring of the
   slot, else a new one. NULL when out of memory. */
static mring* thread_ring(mon_slot* m, uint64_t h) {
    for (int i = 0; i < TL_CACHE; i++) {
        if (tl_rings[i].handle == h) {
            return tl_rings[i].ring;
        }
    }
    pthread_once(&mon_once, mon_init);
    pthread_mutex_lock(&m->mu);
    mring* r = NULL;
    for (mring* x = atomic_load(&m->rings); x != NULL; x = x->next) {
        int expected = 0;
        if (atomic_load(&x->head) == atomic_load(&x->tail) &&
            atomic_compare_exchange_strong(&x->owned, &expected, 1)) {
            r = x;
            break;
        }
        /* a ring this thread owned under the slot's previous monitor is this thread's again */
        for (int i = 0; i < TL_CACHE; i++) {
            if (tl_rings[i].ring == x) {
                r = x;
            }
        }
        if (r != NULL) {
            break;
        }
    }
    if (r == NULL) {
        r = calloc(1, sizeof *r);
        if (r == NULL) {
            pthread_mutex_unlock(&m->mu);
            return NULL;
        }
        atomic_store(&r->owned, 1);
        r->next = atomic_load(&m->rings);
        atomic_store(&m->rings, r);
    }
    pthread_mutex_unlock(&m->mu);
    /* Cache it, evicting the oldest entry (its ring stays owned by this thread until it exits). */
    int slot = TL_CACHE - 1;
    for (int i = 0; i < TL_CACHE; i++) {
        if (tl_rings[i].ring == NULL || tl_rings[i].ring == r) {
            slot = i;
            break;
        }
    }
    if (tl_rings[slot].ring != NULL && tl_rings[slot].ring != r) {
        atomic_store(&tl_rings[slot].ring->owned, 0);
    }
    tl_rings[slot].handle = h;
    tl_rings[slot].ring = r;
    pthread_setspecific(mon_key, (void*)1);
    return r;
}

static inline uint64_t log_ticks(void) {
#if defined(__x86_64__)
    if (atomic_load_explicit(&ferry_capi_use_tsc, memory_order_relaxed)) {
        return __rdtsc();
    }
#endif
    return monotonic_ns();
}

extern void ferryMonitorFull(uint64_t handle);

ferry_status ferry_metric_log(ferry_monitor monitor, uint32_t metric, double value) {
    uint64_t h = (uint64_t)(uintptr_t)monitor;
    uint32_t index = (uint32_t)(h & 0xffffffffu);
    if ((h >> 56) != HANDLE_KIND_MONITOR || index >= FERRY_CAPI_MAX_MONITORS) {
        return fail(FERRY_ERR_INVALID_HANDLE, h == 0 ? "ferry_metric_log: monitor is NULL"
                                                     : "ferry_metric_log: not a monitor handle");
    }
    mon_slot* m = &mon_slots[index];
    if (atomic_load_explicit(&m->handle, memory_order_acquire) != h) {
        return fail(FERRY_ERR_INVALID_HANDLE, "ferry_metric_log: monitor handle is stale (destroyed)");
    }
    if (metric >= atomic_load_explicit(&m->nids, memory_order_acquire)) {
        return fail(FERRY_ERR_INVALID_ARGUMENT, "ferry_metric_log: unknown metric id (use ferry_metric_id)");
    }
    mring* r = thread_ring(m, h);
    if (r == NULL) {
        return fail(FERRY_ERR_OUT_OF_MEMORY, "ferry_metric_log: no memory for this thread's ring");
    }
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    while (head - atomic_load_explicit(&r->tail, memory_order_acquire) >= RING_ENTRIES) {
        ferryMonitorFull(h); /* back-pressure: fold now; bounded by one fold */
        if (atomic_load_explicit(&m->handle, memory_order_acquire) != h) {
            return fail(FERRY_ERR_INVALID_HANDLE, "ferry_metric_log: monitor handle is stale (destroyed)");
        }
    }
    ferry_capi_mentry* e = &r->entries[head & (RING_ENTRIES - 1)];
    e->id = metric;
    e->ticks = log_ticks();
    e->value = value;
    atomic_store_explicit(&r->head, head + 1, memory_order_release);
    return FERRY_OK;
}
