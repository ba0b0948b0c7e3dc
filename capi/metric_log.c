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
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

#include "capi.h"

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
        if (atomic_load(&x->head) == atomic_load(&x->tail) && atomic_compare_exchange_strong(&x->owned, &expected, 1)) {
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
    return ferry_capi_monotonic_ns();
}

extern void ferryMonitorFull(uint64_t handle);

ferry_status ferry_metric_log(ferry_monitor monitor, uint32_t metric, double value) {
    uint64_t h = (uint64_t)(uintptr_t)monitor;
    if (ferry_capi_forked()) {
        return ferry_capi_fail_forked("ferry_metric_log");
    }
    uint32_t index = ferry_capi_handle_index(h);
    if (ferry_capi_handle_kind(h) != FERRY_CAPI_KIND_MONITOR || index >= FERRY_CAPI_MAX_MONITORS) {
        return ferry_capi_fail(FERRY_ERR_INVALID_HANDLE,
                               h == 0 ? "ferry_metric_log: monitor is NULL" : "ferry_metric_log: not a monitor handle");
    }
    mon_slot* m = &mon_slots[index];
    if (atomic_load_explicit(&m->handle, memory_order_acquire) != h) {
        return ferry_capi_fail(FERRY_ERR_INVALID_HANDLE, "ferry_metric_log: monitor handle is stale (destroyed)");
    }
    if (metric >= atomic_load_explicit(&m->nids, memory_order_acquire)) {
        return ferry_capi_fail(FERRY_ERR_INVALID_ARGUMENT, "ferry_metric_log: unknown metric id (use ferry_metric_id)");
    }
    mring* r = thread_ring(m, h);
    if (r == NULL) {
        return ferry_capi_fail(FERRY_ERR_OUT_OF_MEMORY, "ferry_metric_log: no memory for this thread's ring");
    }
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    while (head - atomic_load_explicit(&r->tail, memory_order_acquire) >= RING_ENTRIES) {
        ferryMonitorFull(h); /* back-pressure: fold now; bounded by one fold */
        if (atomic_load_explicit(&m->handle, memory_order_acquire) != h) {
            return ferry_capi_fail(FERRY_ERR_INVALID_HANDLE, "ferry_metric_log: monitor handle is stale (destroyed)");
        }
    }
    ferry_capi_mentry* e = &r->entries[head & (RING_ENTRIES - 1)];
    e->id = metric;
    e->ticks = log_ticks();
    e->value = value;
    atomic_store_explicit(&r->head, head + 1, memory_order_release);
    return FERRY_OK;
}
