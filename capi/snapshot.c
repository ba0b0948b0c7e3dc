/*
 * Engine slots: each live engine's memory snapshot in C memory. The engine publishes it (from Go, through
 * ferry_capi_slot_publish) under a seqlock, and ferry_memory_check reads it in C without entering Go.
 * Slot i belongs to engine registry index i.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdatomic.h>
#include <string.h>

#include "capi.h"

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

ferry_status ferry_memory_check(ferry_engine engine, ferry_memory_snapshot* out) {
    uint64_t h = (uint64_t)(uintptr_t)engine;
    if (h == 0) {
        return ferry_capi_fail(FERRY_ERR_INVALID_HANDLE, "ferry_memory_check: engine is NULL");
    }
    if (ferry_capi_forked()) {
        return ferry_capi_fail_forked("ferry_memory_check");
    }
    uint32_t index = ferry_capi_handle_index(h);
    if (ferry_capi_handle_kind(h) != FERRY_CAPI_KIND_ENGINE || index >= FERRY_MAX_ENGINES) {
        return ferry_capi_fail(FERRY_ERR_INVALID_HANDLE, "ferry_memory_check: not an engine handle");
    }
    if (out == NULL) {
        return ferry_capi_fail(FERRY_ERR_INVALID_ARGUMENT, "ferry_memory_check: out is NULL");
    }
    uint32_t size = out->size;
    if (size < FERRY_CAPI_V1_MEMORY_SNAPSHOT) {
        return ferry_capi_fail(FERRY_ERR_INVALID_ARGUMENT,
                               "ferry_memory_check: out->size is smaller than ferry_memory_snapshot; set it to sizeof");
    }
    engine_slot* s = &slots[index];
    if (atomic_load_explicit(&s->owner, memory_order_acquire) != h) {
        return ferry_capi_fail(FERRY_ERR_INVALID_HANDLE, "ferry_memory_check: engine handle is stale (destroyed)");
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
                return ferry_capi_fail(FERRY_ERR_TIMEOUT, "ferry_memory_check: snapshot writer did not finish");
            }
            sched_yield();
        }
    }
    /* The slot may have changed hands during the copy; only a copy made under our handle counts. */
    if (atomic_load_explicit(&s->owner, memory_order_acquire) != h) {
        return ferry_capi_fail(FERRY_ERR_INVALID_HANDLE, "ferry_memory_check: engine handle is stale (destroyed)");
    }
    uint64_t now = ferry_capi_monotonic_ns();
    copy.snap.age_ns = now > copy.snap.timestamp_ns ? now - copy.snap.timestamp_ns : 0;
    copy.snap.size = size;
    *out = copy.snap; /* the caller's size is at least v1, which is all this version writes */
    return FERRY_OK;
}
