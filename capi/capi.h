/*
 * Internal declarations shared by the C half of the C API (last_error.c, snapshot.c, tensor.c,
 * metric_log.c) and its Go half (export_*.go, registry.go, through exports.h). Not installed.
 */
#ifndef FERRY_CAPI_INTERNAL_H
#define FERRY_CAPI_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "ferry.h"

/* Internal: not exported from libferry.so. */
#pragma GCC visibility push(hidden)

/* ---- handles (registry.go makes and checks them; snapshot.c and metric_log.c decode them) -------- */

/*
 * Handles given to C are IDs, never pointers: kind in bits 56..63, generation in bits 32..55, slot index
 * in bits 0..31. These are the only definitions of the layout and of the kinds; Go reads them through cgo
 * (C.FERRY_CAPI_KIND_ENGINE, ...). The kind values are part of the handles callers hold and that the
 * tests make up: never renumber them.
 */
#define FERRY_CAPI_HANDLE_KIND_SHIFT 56
#define FERRY_CAPI_HANDLE_GEN_SHIFT 32
#define FERRY_CAPI_HANDLE_GEN_MASK 0xFFFFFFu
#define FERRY_CAPI_HANDLE_INDEX_MASK 0xFFFFFFFFu

#define FERRY_CAPI_KIND_ADVISOR 0x41u  /* 'A' */
#define FERRY_CAPI_KIND_BATCH 0x42u    /* 'B' */
#define FERRY_CAPI_KIND_ENGINE 0x45u   /* 'E' */
#define FERRY_CAPI_KIND_FEED 0x46u     /* 'F' */
#define FERRY_CAPI_KIND_ITERATOR 0x49u /* 'I' */
#define FERRY_CAPI_KIND_MONITOR 0x4Du  /* 'M' */
#define FERRY_CAPI_KIND_SOURCE 0x53u   /* 'S' */

/* The kind and the slot index of handle h (not checked: compare the kind, bound the index). */
static inline uint64_t ferry_capi_handle_kind(uint64_t h) { return h >> FERRY_CAPI_HANDLE_KIND_SHIFT; }
static inline uint32_t ferry_capi_handle_index(uint64_t h) { return (uint32_t)(h & FERRY_CAPI_HANDLE_INDEX_MASK); }

/* ---- shared by the C files ----------------------------------------------------------------------- */

/* CLOCK_MONOTONIC in nanoseconds: the clock of snapshot timestamps and of metric entries without TSC. */
static inline uint64_t ferry_capi_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- last_error.c: the thread-local last error, status strings, version -------------------------- */

/* Records msg[0:len] as the calling thread's last error. */
void ferry_capi_set_error(const char* msg, size_t len);

/* Records the NUL-terminated msg as the calling thread's last error and returns s. */
ferry_status ferry_capi_fail(ferry_status s, const char* msg);

/* ---- snapshot.c: engine slots -------------------------------------------------------------------- */

/* Engine slots: the memory snapshot of each live engine, published under a seqlock so that
   ferry_memory_check reads it in C without entering Go. Slot i belongs to engine registry index i. */
void ferry_capi_slot_publish(uint32_t slot, const ferry_memory_snapshot* snap);
void ferry_capi_slot_open(uint32_t slot, uint64_t handle);
void ferry_capi_slot_close(uint32_t slot);

/* ---- callback.c: sample callbacks ---------------------------------------------------------------- */

/* Calls fn(user, index, dst, dst_bytes, n), marking the calling thread as running a callback of source
   (a callback source's id, never 0) until it returns. */
int32_t ferry_capi_call_sample(uintptr_t fn, uintptr_t user, uint64_t source, int64_t index, void* const* dst,
                               const int64_t* dst_bytes, int32_t n);
/* The id of the callback source whose function the calling thread runs (the innermost), or 0. */
uint64_t ferry_capi_running_source(void);

/* ---- fork.c: a child forked after the library loaded ---------------------------------------------- */

/* Non-zero in a child forked after the library loaded, where nothing may enter Go. */
int ferry_capi_forked(void);
/* Records and returns the FERRY_ERR_UNSUPPORTED of a C entry point called in such a child. */
ferry_status ferry_capi_fail_forked(const char* fn);

/* ---- tensor.c: DLPack tensors -------------------------------------------------------------------- */

/* A DLPack tensor over ferry memory, holding one reference on batch; its deleter drops the reference
   (through the Go export ferryTensorDeleted) and frees the tensor. NULL when out of memory. */
/* Calls the deleter of a tensor made by ferry_capi_tensor_new. */
void ferry_capi_tensor_delete(DLManagedTensorVersioned* tensor);
/* Writes the batch a tensor made by ferry_capi_tensor_new holds and returns 1; 0 for any other tensor. */
int ferry_capi_tensor_batch(const DLManagedTensorVersioned* tensor, uint64_t* batch);
DLManagedTensorVersioned* ferry_capi_tensor_new(uint64_t batch, uint64_t data, int32_t device_type, int32_t device_id,
                                                int32_t ndim, const int64_t* shape, uint8_t code, uint8_t bits);

/* ---- metric_log.c: monitor slots and per-thread metric rings ------------------------------------- */

/* Monitor slots, a thread's ring entries as the Go fold takes them (the layout of the engine's own log
   entries), and the calls the Go side of the monitor makes. */
#define FERRY_CAPI_MAX_MONITORS 64
typedef struct ferry_capi_mentry {
    uint32_t id;
    uint32_t reserved;
    uint64_t ticks;
    double value;
} ferry_capi_mentry;
void ferry_capi_monitor_bind(uint32_t slot, uint64_t handle, int use_tsc);
void ferry_capi_monitor_unbind(uint32_t slot);
void ferry_capi_monitor_set_metrics(uint32_t slot, uint32_t n);
int ferry_capi_monitor_take(uint32_t slot, ferry_capi_mentry* out, int cap);

/* ---- size-prefixed structs (export_*.go) --------------------------------------------------------- */

/* Minimum (version 1) sizes of the size-prefixed structs. */
#define FERRY_CAPI_V1_DEVICE_PROPERTIES 416u
#define FERRY_CAPI_V1_SYSTEM_PROPERTIES 688u
#define FERRY_CAPI_V1_ENGINE_OPTIONS 16u
#define FERRY_CAPI_V1_MEMORY_SNAPSHOT 160u
#define FERRY_CAPI_V1_TOKEN_OPTIONS 32u
#define FERRY_CAPI_V1_RAGGED_OPTIONS 24u
#define FERRY_CAPI_V1_ITERATOR_OPTIONS 48u
/* ferry_iterator_options with transforms, staging and pinned_budget. */
#define FERRY_CAPI_V2_ITERATOR_OPTIONS 72u
/* ferry_iterator_options with on_error. */
#define FERRY_CAPI_V3_ITERATOR_OPTIONS 80u
#define FERRY_CAPI_V1_TRANSFORM 120u
/* ferry_transform with input_layout. */
#define FERRY_CAPI_V2_TRANSFORM 128u
/* ferry_transform with the GPT outputs of FERRY_TRANSFORM_SHIFT_TOKENS. */
#define FERRY_CAPI_V3_TRANSFORM 160u
/* ferry_transform with the crops. */
#define FERRY_CAPI_V4_TRANSFORM 208u
/* ferry_transform with DecodeImage's height and width. */
#define FERRY_CAPI_V5_TRANSFORM 216u
#define FERRY_CAPI_V1_IMAGE_SOURCE_OPTIONS 40u
#define FERRY_CAPI_V1_MEGATRON_OPTIONS 24u
#define FERRY_CAPI_V1_GPT_OPTIONS 64u
#define FERRY_CAPI_V1_GPT_INDEX_INFO 2072u
#define FERRY_CAPI_V1_BLEND_OPTIONS 24u
#define FERRY_CAPI_V1_MONITOR_OPTIONS 72u
#define FERRY_CAPI_V1_METRIC_SUMMARY 112u
#define FERRY_CAPI_V1_ITERATOR_POSITION 24u
#define FERRY_CAPI_V2_ITERATOR_POSITION 48u
#define FERRY_CAPI_V1_BATCH_PROPERTIES 32u
#define FERRY_CAPI_V1_PIPELINE_STATS 40u
/* ferry_pipeline_stats with skipped. */
#define FERRY_CAPI_V2_PIPELINE_STATS 48u
#define FERRY_CAPI_V1_FEED_OPTIONS 40u
#define FERRY_CAPI_V1_PRESSURE_OPTIONS 40u
#define FERRY_CAPI_V1_OPTIMIZE_RESULT 40u
#define FERRY_CAPI_V1_ADVISOR_FIT 56u

#pragma GCC visibility pop

#endif
