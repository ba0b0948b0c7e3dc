/*
 * test_iterator_c99 — sources, the prefetching iterator and batches through the plain C API, from a strict
 * C99 program (-std=c99 -Wall -Wextra -pedantic -Werror), on the CPU engine.
 *
 * It iterates a memory source over fresh random data and checks every batch against the data at the
 * batch's sample indices, through the DLPack tensors (whose deleters it calls); checks FERRY_END_OF_EPOCH,
 * state and restore (bit for bit), a tensor that outlives its batch, a callback source whose callback
 * fails a sample, and that bad input (NULL pointers, wrong sizes, unknown flags, stale, made-up and
 * foreign handles) gets the documented status.
 *
 * The last line of output is "N passed, N failed"; the exit status is non-zero when anything failed.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "ferry.h"

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* splitmix64: the test's random numbers, seeded from the clock so that every run sees fresh data. */
static uint64_t rng_state;

static uint64_t rnd(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ------------------------------------------------------------------------------------------------ */
/* The data set: field "image" uint8 [2, 3, 5], field "label" int32 scalar, field "value" float64 [3]  */
/* ------------------------------------------------------------------------------------------------ */

#define NFIELDS 3
#define NSAMPLES 61

static const int64_t field_bytes[NFIELDS] = {2 * 3 * 5, 4, 3 * 8};
static unsigned char* data[NFIELDS];

static void make_fields(ferry_field* f) {
    memset(f, 0, sizeof(ferry_field) * NFIELDS);
    f[0].name = "image";
    f[0].dtype = FERRY_DTYPE_UINT8;
    f[0].ndim = 3;
    f[0].shape[0] = 2;
    f[0].shape[1] = 3;
    f[0].shape[2] = 5;
    f[1].name = "label";
    f[1].dtype = FERRY_DTYPE_INT32;
    f[1].ndim = 0;
    f[2].name = "value";
    f[2].dtype = FERRY_DTYPE_FLOAT64;
    f[2].ndim = 1;
    f[2].shape[0] = 3;
}

static void make_data(void) {
    int k;
    int64_t i;
    for (k = 0; k < NFIELDS; k++) {
        data[k] = malloc((size_t)(NSAMPLES * field_bytes[k]));
        for (i = 0; i < NSAMPLES * field_bytes[k]; i++) {
            data[k][i] = (unsigned char)rnd();
        }
    }
}

static ferry_source memory_source(void) {
    ferry_field f[NFIELDS];
    const void* ptrs[NFIELDS];
    ferry_source s = NULL;
    int k;
    make_fields(f);
    for (k = 0; k < NFIELDS; k++) {
        ptrs[k] = data[k];
    }
    CHECK_STATUS(ferry_source_memory(NSAMPLES, f, NFIELDS, ptrs, &s), FERRY_OK);
    return s;
}

static ferry_iterator make_iterator(ferry_engine e, ferry_source s, int64_t batch, uint32_t flags, uint64_t seed,
                                    int32_t prefetch, uint32_t timeout_ms) {
    ferry_iterator_options o;
    ferry_iterator it = NULL;
    CHECK_STATUS(ferry_iterator_options_init(&o), FERRY_OK);
    o.batch_size = batch;
    o.flags = flags;
    o.seed = seed;
    o.prefetch = prefetch;
    o.timeout_ms = timeout_ms != 0 ? timeout_ms : 20000; /* a failure must not wait for the 5-minute default */
    o.workers = 3;
    CHECK_STATUS(ferry_iterator_create(e, s, &o, &it), FERRY_OK);
    return it;
}

/* An iterator in order, batches of 6, whose ring of prefetch slots may not grow (no pinned budget). */
static ferry_iterator make_fixed_ring(ferry_engine e, ferry_source s, int32_t prefetch) {
    ferry_iterator_options o;
    ferry_iterator it = NULL;
    CHECK_STATUS(ferry_iterator_options_init(&o), FERRY_OK);
    o.batch_size = 6;
    o.prefetch = prefetch;
    o.timeout_ms = 20000;
    o.pinned_budget = -1;
    CHECK_STATUS(ferry_iterator_create(e, s, &o, &it), FERRY_OK);
    return it;
}

/*
 * Checks one DLPack tensor of field k against the data at indices: the versioned header, device, shape,
 * dtype, compact layout, and every byte. Calls the deleter. Returns 1 when it all matches.
 */
static int check_tensor(DLManagedTensorVersioned* t, int k, const int64_t* indices, int64_t n) {
    static const uint8_t codes[NFIELDS] = {kDLUInt, kDLInt, kDLFloat};
    static const uint8_t bits[NFIELDS] = {8, 32, 64};
    static const int32_t ndims[NFIELDS] = {4, 1, 2};
    const unsigned char* p;
    int64_t r;
    int ok = 1;
    if (t == NULL) {
        return 0;
    }
    ok = ok && t->version.major == 1 && t->deleter != NULL;
    ok = ok && t->dl_tensor.device.device_type == kDLCPU && t->dl_tensor.ndim == ndims[k];
    ok = ok && t->dl_tensor.shape != NULL && t->dl_tensor.shape[0] == n && t->dl_tensor.strides == NULL;
    ok = ok && t->dl_tensor.dtype.code == codes[k] && t->dl_tensor.dtype.bits == bits[k] &&
         t->dl_tensor.dtype.lanes == 1;
    if (ok && k == 0) {
        ok = t->dl_tensor.shape[1] == 2 && t->dl_tensor.shape[2] == 3 && t->dl_tensor.shape[3] == 5;
    }
    if (ok && k == 2) {
        ok = t->dl_tensor.shape[1] == 3;
    }
    p = (const unsigned char*)t->dl_tensor.data + t->dl_tensor.byte_offset;
    for (r = 0; ok && r < n; r++) {
        ok = indices[r] >= 0 && indices[r] < NSAMPLES &&
             memcmp(p + r * field_bytes[k], data[k] + indices[r] * field_bytes[k], (size_t)field_bytes[k]) == 0;
    }
    if (t->deleter != NULL) {
        t->deleter(t);
    }
    return ok;
}

/* Checks every field of a batch against the data (by index and by name). Returns 1 when all match. */
static int check_batch(ferry_batch b, int64_t* indices_out, int64_t* n_out) {
    static const char* names[NFIELDS] = {"image", "label", "value"};
    ferry_batch_properties info;
    int64_t indices[64];
    int k, ok = 1;
    memset(&info, 0, sizeof(info));
    info.size = sizeof(info);
    if (ferry_batch_info(b, &info) != FERRY_OK || info.num_fields != NFIELDS || info.num_samples > 64) {
        return 0;
    }
    if (ferry_batch_indices(b, indices, 64) != FERRY_OK) {
        return 0;
    }
    for (k = 0; k < NFIELDS; k++) {
        DLManagedTensorVersioned* t = NULL;
        ferry_status st = (k % 2 == 0) ? ferry_batch_field(b, k, &t) : ferry_batch_field_by_name(b, names[k], &t);
        /* check_tensor runs (and calls the deleter) whatever came before: a leaked tensor would hold the ring */
        int match = st == FERRY_OK && check_tensor(t, k, indices, info.num_samples);
        ok = ok && match;
    }
    if (indices_out != NULL) {
        memcpy(indices_out, indices, (size_t)info.num_samples * sizeof(int64_t));
    }
    if (n_out != NULL) {
        *n_out = info.num_samples;
    }
    return ok;
}

/* ------------------------------------------------------------------------------------------------ */

static void test_options(void) {
    ferry_iterator_options o;
    ferry_token_options t;
    memset(&o, 0xff, sizeof(o));
    CHECK_STATUS(ferry_iterator_options_init(&o), FERRY_OK);
    CHECK(o.size == sizeof(o) && o.flags == 0 && o.batch_size == 0 && o.seed == 0);
    CHECK(o.workers == 0 && o.prefetch == 0 && o.rank == 0 && o.world_size == 0 && o.timeout_ms == 0);
    CHECK_STATUS(ferry_iterator_options_init(NULL), FERRY_ERR_INVALID_ARGUMENT);
    memset(&t, 0xff, sizeof(t));
    CHECK_STATUS(ferry_token_options_init(&t), FERRY_OK);
    CHECK(t.size == sizeof(t) && t.format == FERRY_TOKENS_UINT16 && t.flags == 0);
    CHECK_STATUS(ferry_token_options_init(NULL), FERRY_ERR_INVALID_ARGUMENT);
    CHECK(FERRY_END_OF_EPOCH == 13);
    CHECK(strcmp(ferry_status_string(FERRY_END_OF_EPOCH), "FERRY_END_OF_EPOCH") == 0);
}

static void test_sources(void) {
    ferry_field f[NFIELDS], one;
    const void* ptrs[NFIELDS];
    ferry_source s = NULL;
    int64_t n = 0;
    int32_t nf = 0;
    int k;
    make_fields(f);
    for (k = 0; k < NFIELDS; k++) {
        ptrs[k] = data[k];
    }

    CHECK_STATUS(ferry_source_memory(NSAMPLES, f, NFIELDS, ptrs, NULL), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_source_memory(NSAMPLES, NULL, NFIELDS, ptrs, &s), FERRY_ERR_INVALID_ARGUMENT);
    CHECK(s == NULL);
    CHECK_STATUS(ferry_source_memory(NSAMPLES, f, 0, ptrs, &s), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_source_memory(NSAMPLES, f, NFIELDS, NULL, &s), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_source_memory(0, f, NFIELDS, ptrs, &s), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_source_memory(-3, f, NFIELDS, ptrs, &s), FERRY_ERR_INVALID_ARGUMENT);
    ptrs[1] = NULL;
    CHECK_STATUS(ferry_source_memory(NSAMPLES, f, NFIELDS, ptrs, &s), FERRY_ERR_INVALID_ARGUMENT);
    ptrs[1] = data[1];
    f[0].ndim = FERRY_MAX_DIMS + 1;
    CHECK_STATUS(ferry_source_memory(NSAMPLES, f, NFIELDS, ptrs, &s), FERRY_ERR_INVALID_ARGUMENT);
    f[0].ndim = 3;
    f[0].shape[1] = 0;
    CHECK_STATUS(ferry_source_memory(NSAMPLES, f, NFIELDS, ptrs, &s), FERRY_ERR_INVALID_ARGUMENT);
    f[0].shape[1] = 3;
    f[1].dtype = 0;
    CHECK_STATUS(ferry_source_memory(NSAMPLES, f, NFIELDS, ptrs, &s), FERRY_ERR_INVALID_ARGUMENT);
    f[1].dtype = 99;
    CHECK_STATUS(ferry_source_memory(NSAMPLES, f, NFIELDS, ptrs, &s), FERRY_ERR_INVALID_ARGUMENT);
    f[1].dtype = FERRY_DTYPE_INT32;
    f[2].name = "image";
    CHECK_STATUS(ferry_source_memory(NSAMPLES, f, NFIELDS, ptrs, &s), FERRY_ERR_INVALID_ARGUMENT);
    f[2].name = NULL;
    CHECK_STATUS(ferry_source_memory(NSAMPLES, f, NFIELDS, ptrs, &s), FERRY_ERR_INVALID_ARGUMENT);
    f[2].name = "value";

    CHECK_STATUS(ferry_source_cifar10(NULL, &s), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_source_cifar10("/nonexistent/data_batch_1.bin", &s), FERRY_ERR_IO);
    CHECK_STATUS(ferry_source_records("/nonexistent/r.bin", 64, 0, f, NFIELDS, &s), FERRY_ERR_IO);
    CHECK_STATUS(ferry_source_npy(NULL, NULL, 1, &s), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_source_tokens("/nonexistent/train.bin", NULL, &s), FERRY_ERR_INVALID_ARGUMENT);
    CHECK(s == NULL);

    s = memory_source();
    CHECK_STATUS(ferry_source_len(s, &n), FERRY_OK);
    CHECK(n == NSAMPLES);
    CHECK_STATUS(ferry_source_len(s, NULL), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_source_num_fields(s, &nf), FERRY_OK);
    CHECK(nf == NFIELDS);
    for (k = 0; k < NFIELDS; k++) {
        memset(&one, 0, sizeof(one));
        CHECK_STATUS(ferry_source_field(s, k, &one), FERRY_OK);
        CHECK(one.name != NULL && strcmp(one.name, f[k].name) == 0 && one.dtype == f[k].dtype &&
              one.ndim == f[k].ndim && memcmp(one.shape, f[k].shape, sizeof(one.shape)) == 0);
    }
    CHECK_STATUS(ferry_source_field(s, NFIELDS, &one), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_source_field(s, -1, &one), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_source_field(s, 0, NULL), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_source_destroy(s), FERRY_OK);
    CHECK_STATUS(ferry_source_destroy(s), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_source_len(s, &n), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_source_destroy(NULL), FERRY_OK);
    CHECK_STATUS(ferry_source_len((ferry_source)(uintptr_t)0x5300000000001234ull, &n), FERRY_ERR_INVALID_HANDLE);
}

/* Two epochs with next(): END_OF_EPOCH once per epoch, every batch checked, each epoch a permutation. */
static void test_epochs(ferry_engine e) {
    ferry_source s = memory_source();
    ferry_iterator it = make_iterator(e, s, 8, FERRY_ITERATOR_F_SHUFFLE, rnd(), 3, 0);
    int64_t len = 0;
    uint64_t epoch;
    CHECK_STATUS(ferry_iterator_len(it, &len), FERRY_OK);
    CHECK(len == 8); /* ceil(61 / 8) */
    CHECK_STATUS(ferry_iterator_len(it, NULL), FERRY_ERR_INVALID_ARGUMENT);
    for (epoch = 0; epoch < 2; epoch++) {
        int seen[NSAMPLES];
        int64_t b, i, total = 0;
        int all_ok = 1, perm = 1;
        ferry_batch batch = NULL;
        memset(seen, 0, sizeof(seen));
        for (b = 0; b < len; b++) {
            ferry_batch_properties info;
            int64_t idx[64], n = 0;
            CHECK_STATUS(ferry_iterator_next(it, NULL, &batch), FERRY_OK);
            memset(&info, 0, sizeof(info));
            info.size = sizeof(info);
            CHECK_STATUS(ferry_batch_info(batch, &info), FERRY_OK);
            CHECK(info.epoch == epoch && info.index == b && info.num_samples == (b == 7 ? 5 : 8));
            all_ok = all_ok && check_batch(batch, idx, &n);
            for (i = 0; i < n; i++) {
                seen[idx[i]]++;
            }
            total += n;
            CHECK_STATUS(ferry_batch_release(batch, NULL), FERRY_OK);
        }
        CHECK(all_ok);
        for (i = 0; i < NSAMPLES; i++) {
            perm = perm && seen[i] == 1;
        }
        CHECK(perm && total == NSAMPLES);
        batch = (ferry_batch)(uintptr_t)1;
        CHECK_STATUS(ferry_iterator_next(it, NULL, &batch), FERRY_END_OF_EPOCH);
        CHECK(batch == NULL);
    }
    CHECK_STATUS(ferry_iterator_destroy(it), FERRY_OK);
    CHECK_STATUS(ferry_source_destroy(s), FERRY_OK);
}

/* The batch handle's lifetime, and a tensor that outlives its batch and holds its slot of a ring that may
   not grow. */
static void test_batch_handles(ferry_engine e) {
    ferry_source s = memory_source();
    ferry_iterator it = make_fixed_ring(e, s, 2);
    ferry_batch b0 = NULL, b1 = NULL, b2 = NULL;
    DLManagedTensorVersioned* kept = NULL;
    DLManagedTensorVersioned* t = NULL;
    ferry_batch_properties info;
    int64_t idx[6], small[2];
    uint64_t start;
    ferry_iterator_position pos;

    CHECK_STATUS(ferry_iterator_next(it, NULL, NULL), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_iterator_next(it, NULL, &b0), FERRY_OK);
    CHECK(check_batch(b0, NULL, NULL));
    CHECK_STATUS(ferry_batch_indices(b0, small, 2), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_batch_indices(b0, NULL, 6), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_batch_indices(b0, idx, 6), FERRY_OK);
    CHECK(idx[0] == 0 && idx[5] == 5);
    CHECK_STATUS(ferry_batch_field(b0, NFIELDS, &t), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_batch_field(b0, -1, &t), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_batch_field(b0, 0, NULL), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_batch_field_by_name(b0, "nope", &t), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_batch_field_by_name(b0, NULL, &t), FERRY_ERR_INVALID_ARGUMENT);
    CHECK(t == NULL);
    memset(&info, 0, sizeof(info));
    info.size = 4;
    CHECK_STATUS(ferry_batch_info(b0, &info), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_batch_info(b0, NULL), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_batch_wait(b0, NULL), FERRY_OK);
    /* A handle of another type is not a batch. */
    CHECK_STATUS(ferry_batch_release((ferry_batch)(void*)it, NULL), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_batch_release(NULL, NULL), FERRY_ERR_INVALID_HANDLE);

    CHECK_STATUS(ferry_batch_field_by_name(b0, "value", &kept), FERRY_OK);
    CHECK_STATUS(ferry_batch_release(b0, NULL), FERRY_OK);
    /* The handle is invalid after release; the tensor is not. */
    info.size = sizeof(info);
    CHECK_STATUS(ferry_batch_info(b0, &info), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_batch_field(b0, 0, &t), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_batch_release(b0, NULL), FERRY_ERR_INVALID_HANDLE);

    CHECK_STATUS(ferry_iterator_next(it, NULL, &b1), FERRY_OK);
    CHECK(check_batch(b1, NULL, NULL));
    CHECK_STATUS(ferry_batch_release(b1, NULL), FERRY_OK);
    /* Batch 2 needs batch 0's slot, which the tensor still holds, and the ring may not grow: refused at once. */
    start = now_ns();
    CHECK_STATUS(ferry_iterator_next(it, NULL, &b2), FERRY_ERR_LIMIT);
    CHECK(now_ns() - start < 5000000000u);
    CHECK(b2 == NULL);
    /* The tensor's batch was released: ordering another stream on it needs the tensor alone. */
    CHECK_STATUS(ferry_tensor_wait(kept, NULL), FERRY_OK);
    CHECK_STATUS(ferry_tensor_wait(NULL, NULL), FERRY_ERR_INVALID_ARGUMENT);
    memset(&pos, 0, sizeof(pos));
    pos.size = sizeof(pos);
    CHECK_STATUS(ferry_iterator_state(it, &pos), FERRY_OK);
    CHECK(pos.epoch == 0 && pos.batch == 2);
    /* The held tensor still reads batch 0: samples 0..5. */
    idx[0] = 0, idx[1] = 1, idx[2] = 2, idx[3] = 3, idx[4] = 4, idx[5] = 5;
    CHECK(check_tensor(kept, 2, idx, 6)); /* calls the deleter: the slot comes back */
    CHECK_STATUS(ferry_iterator_next(it, NULL, &b2), FERRY_OK);
    memset(&info, 0, sizeof(info));
    info.size = sizeof(info);
    CHECK_STATUS(ferry_batch_info(b2, &info), FERRY_OK);
    CHECK(info.index == 2 && info.epoch == 0);
    CHECK(check_batch(b2, NULL, NULL));
    CHECK_STATUS(ferry_batch_release(b2, NULL), FERRY_OK);

    CHECK_STATUS(ferry_iterator_destroy(it), FERRY_OK);
    CHECK_STATUS(ferry_source_destroy(s), FERRY_OK);
}

/* Records a batch's indices and bytes. */
typedef struct {
    int64_t n;
    int64_t indices[16];
    unsigned char bytes[16 * (30 + 4 + 24)];
} recorded;

static int record_batch(ferry_batch b, recorded* r) {
    int k;
    size_t at = 0;
    if (!check_batch(b, r->indices, &r->n)) {
        return 0;
    }
    for (k = 0; k < NFIELDS; k++) {
        DLManagedTensorVersioned* t = NULL;
        size_t nb = (size_t)(r->n * field_bytes[k]);
        if (ferry_batch_field(b, k, &t) != FERRY_OK) {
            return 0;
        }
        memcpy(r->bytes + at, t->dl_tensor.data, nb);
        at += nb;
        t->deleter(t);
    }
    return 1;
}

static int same(const recorded* a, const recorded* b) {
    return a->n == b->n && memcmp(a->indices, b->indices, (size_t)a->n * sizeof(int64_t)) == 0 &&
           memcmp(a->bytes, b->bytes, (size_t)a->n * (30 + 4 + 24)) == 0;
}

/* state and restore: positions of an uninterrupted run give the same batches, bit for bit. */
static void test_state_restore(ferry_engine e) {
    enum { LEN = 4, STEPS = 3 * (LEN + 1) }; /* 61 samples in batches of 16; steps include epoch ends */
    static recorded run[STEPS], got;
    ferry_iterator_position before[STEPS], pos;
    int is_end[STEPS];
    const uint64_t seed = rnd();
    ferry_source s = memory_source();
    ferry_iterator it = make_iterator(e, s, 16, FERRY_ITERATOR_F_SHUFFLE, seed, 3, 0);
    ferry_iterator again;
    ferry_batch b;
    int i, all_ok = 1;
    const int starts[] = {0, 2, 4, 5, 9, 14};
    size_t k;

    memset(run, 0, sizeof(run));
    for (i = 0; i < STEPS; i++) {
        ferry_status st;
        memset(&before[i], 0, sizeof(before[i]));
        before[i].size = sizeof(before[i]);
        CHECK_STATUS(ferry_iterator_state(it, &before[i]), FERRY_OK);
        st = ferry_iterator_next(it, NULL, &b);
        is_end[i] = st == FERRY_END_OF_EPOCH;
        CHECK(is_end[i] == (i % (LEN + 1) == LEN));
        CHECK(before[i].epoch == (uint64_t)(i / (LEN + 1)) && before[i].batch == i % (LEN + 1));
        if (st == FERRY_OK) {
            all_ok = all_ok && record_batch(b, &run[i]);
            CHECK_STATUS(ferry_batch_release(b, NULL), FERRY_OK);
        }
    }
    CHECK(all_ok);

    for (k = 0; k < sizeof(starts) / sizeof(starts[0]); k++) {
        int ok = 1;
        again = make_iterator(e, s, 16, FERRY_ITERATOR_F_SHUFFLE, seed, 2, 0);
        CHECK_STATUS(ferry_iterator_restore(again, &before[starts[k]]), FERRY_OK);
        for (i = starts[k]; i < STEPS; i++) {
            ferry_status st = ferry_iterator_next(again, NULL, &b);
            if (is_end[i]) {
                ok = ok && st == FERRY_END_OF_EPOCH;
                continue;
            }
            ok = ok && st == FERRY_OK && record_batch(b, &got) && same(&got, &run[i]);
            if (st == FERRY_OK) {
                ferry_batch_release(b, NULL);
            }
        }
        if (!ok) {
            printf("restore to step %d does not replay the run\n", starts[k]);
        }
        CHECK(ok);
        CHECK_STATUS(ferry_iterator_destroy(again), FERRY_OK);
    }

    /* set_epoch: epoch 1 from its first batch. */
    CHECK_STATUS(ferry_iterator_set_epoch(it, 1), FERRY_OK);
    memset(&pos, 0, sizeof(pos));
    pos.size = sizeof(pos);
    CHECK_STATUS(ferry_iterator_state(it, &pos), FERRY_OK);
    CHECK(pos.epoch == 1 && pos.batch == 0);
    CHECK_STATUS(ferry_iterator_next(it, NULL, &b), FERRY_OK);
    CHECK(record_batch(b, &got) && same(&got, &run[LEN + 1]));
    CHECK_STATUS(ferry_batch_release(b, NULL), FERRY_OK);

    /* Bad positions. */
    pos.batch = LEN + 1;
    CHECK_STATUS(ferry_iterator_restore(it, &pos), FERRY_ERR_INVALID_ARGUMENT);
    pos.batch = -1;
    CHECK_STATUS(ferry_iterator_restore(it, &pos), FERRY_ERR_INVALID_ARGUMENT);
    pos.batch = 0;
    pos.size = 4;
    CHECK_STATUS(ferry_iterator_restore(it, &pos), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_iterator_state(it, &pos), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_iterator_restore(it, NULL), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_iterator_state(it, NULL), FERRY_ERR_INVALID_ARGUMENT);

    CHECK_STATUS(ferry_iterator_destroy(it), FERRY_OK);
    CHECK_STATUS(ferry_source_destroy(s), FERRY_OK);
}

/* A callback source: copies from the data set, and fails one sample. */
typedef struct {
    int64_t bad;
    int wrong_args;
    int magic;
} callback_user;

static int32_t fill_sample(void* user, int64_t index, void* const* dst, const int64_t* dst_bytes, int32_t num_fields) {
    callback_user* u = (callback_user*)user;
    int k;
    if (u->magic != 0x600d || num_fields != NFIELDS || index < 0 || index >= NSAMPLES) {
        u->wrong_args = 1; /* a benign race: every writer stores 1 */
        return 2;
    }
    if (index == u->bad) {
        return 7;
    }
    for (k = 0; k < NFIELDS; k++) {
        if (dst_bytes[k] != field_bytes[k]) {
            u->wrong_args = 1;
            return 3;
        }
        memcpy(dst[k], data[k] + index * field_bytes[k], (size_t)field_bytes[k]);
    }
    return 0;
}

static void test_callback(ferry_engine e) {
    ferry_field f[NFIELDS];
    callback_user u;
    ferry_source s = NULL;
    ferry_iterator it;
    ferry_batch b;
    char want[64];
    int64_t k;
    int ok = 1;
    make_fields(f);
    u.bad = (int64_t)(rnd() % NSAMPLES);
    u.wrong_args = 0;
    u.magic = 0x600d;
    CHECK_STATUS(ferry_source_callback(NSAMPLES, f, NFIELDS, NULL, &u, &s), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_source_callback(0, f, NFIELDS, fill_sample, &u, &s), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_source_callback(NSAMPLES, f, NFIELDS, fill_sample, &u, NULL), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_source_callback(NSAMPLES, f, NFIELDS, fill_sample, &u, &s), FERRY_OK);

    it = make_iterator(e, s, 10, 0, 0, 3, 0);
    for (k = 0; k < 7; k++) {
        ferry_status st = ferry_iterator_next(it, NULL, &b);
        if (k == u.bad / 10) {
            CHECK_STATUS(st, FERRY_ERR_IO);
            sprintf(want, "sample %lld", (long long)u.bad);
            if (strstr(ferry_last_error(), want) == NULL) {
                printf("FAIL: the message \"%s\" does not name %s\n", ferry_last_error(), want);
                failed++;
            } else {
                passed++;
            }
            CHECK(b == NULL);
            continue;
        }
        CHECK_STATUS(st, FERRY_OK);
        if (st == FERRY_OK) {
            ok = ok && check_batch(b, NULL, NULL);
            ferry_batch_release(b, NULL);
        }
    }
    CHECK(ok);
    CHECK_STATUS(ferry_iterator_next(it, NULL, &b), FERRY_END_OF_EPOCH);
    /* Another epoch fails the same batch again and delivers the others. */
    CHECK_STATUS(ferry_iterator_set_epoch(it, 5), FERRY_OK);
    for (k = 0; k < 7; k++) {
        ferry_status st = ferry_iterator_next(it, NULL, &b);
        CHECK_STATUS(st, k == u.bad / 10 ? FERRY_ERR_IO : FERRY_OK);
        if (st == FERRY_OK) {
            CHECK(check_batch(b, NULL, NULL));
            ferry_batch_release(b, NULL);
        }
    }
    CHECK_STATUS(ferry_iterator_next(it, NULL, &b), FERRY_END_OF_EPOCH);
    CHECK(u.wrong_args == 0);
    CHECK_STATUS(ferry_iterator_destroy(it), FERRY_OK);
    CHECK_STATUS(ferry_source_destroy(s), FERRY_OK);
}

/* A callback source whose samples from 12 on wait until `open` is set: a slow read. */
static int gate_open;

static int32_t gated_sample(void* user, int64_t index, void* const* dst, const int64_t* dst_bytes, int32_t num_fields) {
    while (index >= 12 && !__atomic_load_n(&gate_open, __ATOMIC_ACQUIRE)) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    return fill_sample(user, index, dst, dst_bytes, num_fields);
}

/* ferry_iterator_next_wait: a NULL batch while none is ready (a slow source), the batch once one is; and a
   ring whose every slot is held, which may not grow, refuses at once instead of waiting. */
static void test_next_wait(ferry_engine e) {
    ferry_field f[NFIELDS];
    callback_user u;
    ferry_source s = NULL;
    ferry_source mem = memory_source();
    ferry_iterator it, fixed;
    ferry_batch b0 = NULL, b1 = NULL, b = NULL;
    int64_t idx[6];
    int tries = 0;

    make_fields(f);
    u.bad = -1;
    u.wrong_args = 0;
    u.magic = 0x600d;
    __atomic_store_n(&gate_open, 0, __ATOMIC_RELEASE);
    CHECK_STATUS(ferry_source_callback(NSAMPLES, f, NFIELDS, gated_sample, &u, &s), FERRY_OK);
    it = make_iterator(e, s, 6, 0, 0, 2, 0);
    CHECK_STATUS(ferry_iterator_next_wait(it, NULL, 10, NULL), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_iterator_next_wait(it, NULL, 0, &b), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_iterator_next_wait(NULL, NULL, 10, &b), FERRY_ERR_INVALID_HANDLE);
    do { /* the first batch may still be on its way */
        CHECK_STATUS(ferry_iterator_next_wait(it, NULL, 50, &b0), FERRY_OK);
    } while (b0 == NULL && ++tries < 400);
    CHECK(b0 != NULL && check_batch(b0, NULL, NULL));
    CHECK_STATUS(ferry_iterator_next(it, NULL, &b1), FERRY_OK);
    CHECK(check_batch(b1, NULL, NULL));
    /* The third batch's samples are still being read: each slice says so without an error. */
    b = (ferry_batch)(uintptr_t)1;
    CHECK_STATUS(ferry_iterator_next_wait(it, NULL, 20, &b), FERRY_OK);
    CHECK(b == NULL);
    CHECK_STATUS(ferry_iterator_next_wait(it, NULL, 20, &b), FERRY_OK);
    CHECK(b == NULL);
    __atomic_store_n(&gate_open, 1, __ATOMIC_RELEASE);
    tries = 0;
    do {
        CHECK_STATUS(ferry_iterator_next_wait(it, NULL, 50, &b), FERRY_OK);
    } while (b == NULL && ++tries < 400);
    CHECK(b != NULL);
    if (b != NULL) {
        CHECK(check_batch(b, NULL, NULL));
        CHECK_STATUS(ferry_batch_indices(b, idx, 6), FERRY_OK);
        CHECK(idx[0] == 12 && idx[5] == 17); /* the third batch: nothing was skipped by the empty slices */
        CHECK_STATUS(ferry_batch_release(b, NULL), FERRY_OK);
    }
    CHECK_STATUS(ferry_batch_release(b0, NULL), FERRY_OK);
    CHECK_STATUS(ferry_batch_release(b1, NULL), FERRY_OK);
    CHECK(u.wrong_args == 0);

    fixed = make_fixed_ring(e, mem, 2);
    CHECK_STATUS(ferry_iterator_next(fixed, NULL, &b0), FERRY_OK);
    CHECK_STATUS(ferry_iterator_next(fixed, NULL, &b1), FERRY_OK);
    b = (ferry_batch)(uintptr_t)1;
    CHECK_STATUS(ferry_iterator_next_wait(fixed, NULL, 20, &b), FERRY_ERR_LIMIT);
    CHECK(b == NULL);
    CHECK_STATUS(ferry_batch_release(b0, NULL), FERRY_OK);
    CHECK_STATUS(ferry_iterator_next_wait(fixed, NULL, 5000, &b), FERRY_OK);
    CHECK(b != NULL);
    if (b != NULL) {
        CHECK_STATUS(ferry_batch_indices(b, idx, 6), FERRY_OK);
        CHECK(idx[0] == 12 && idx[5] == 17); /* the refusal took nothing */
        CHECK_STATUS(ferry_batch_release(b, NULL), FERRY_OK);
    }
    CHECK_STATUS(ferry_batch_release(b1, NULL), FERRY_OK);
    CHECK_STATUS(ferry_iterator_destroy(fixed), FERRY_OK);
    CHECK_STATUS(ferry_source_destroy(mem), FERRY_OK);
    CHECK_STATUS(ferry_iterator_destroy(it), FERRY_OK);
    CHECK_STATUS(ferry_iterator_next_wait(it, NULL, 10, &b), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_source_destroy(s), FERRY_OK);
}

/* Bad iterator input: options, handles, and use after destroy. */
static void test_bad_iterator_input(ferry_engine e) {
    ferry_source s = memory_source();
    ferry_iterator_options o;
    ferry_iterator it = NULL, live;
    ferry_iterator_position pos;
    ferry_engine dead = NULL;
    ferry_engine_options eo;
    ferry_batch b = NULL;
    int64_t n;

    CHECK_STATUS(ferry_iterator_options_init(&o), FERRY_OK);
    CHECK_STATUS(ferry_iterator_create(e, s, &o, &it), FERRY_ERR_INVALID_ARGUMENT); /* batch_size 0 */
    o.batch_size = 4;
    CHECK_STATUS(ferry_iterator_create(e, s, NULL, &it), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_iterator_create(e, s, &o, NULL), FERRY_ERR_INVALID_ARGUMENT);
    o.flags = 0x80;
    CHECK_STATUS(ferry_iterator_create(e, s, &o, &it), FERRY_ERR_INVALID_ARGUMENT);
    o.flags = 0;
    o.size = 8;
    CHECK_STATUS(ferry_iterator_create(e, s, &o, &it), FERRY_ERR_INVALID_ARGUMENT);
    o.size = sizeof(o);
    o.prefetch = 1;
    CHECK_STATUS(ferry_iterator_create(e, s, &o, &it), FERRY_ERR_INVALID_ARGUMENT);
    o.prefetch = 65;
    CHECK_STATUS(ferry_iterator_create(e, s, &o, &it), FERRY_ERR_INVALID_ARGUMENT);
    o.prefetch = 0;
    o.workers = -2;
    CHECK_STATUS(ferry_iterator_create(e, s, &o, &it), FERRY_ERR_INVALID_ARGUMENT);
    o.workers = 0;
    o.batch_size = NSAMPLES + 1;
    o.flags = FERRY_ITERATOR_F_DROP_LAST; /* no batch at all */
    CHECK_STATUS(ferry_iterator_create(e, s, &o, &it), FERRY_ERR_INVALID_ARGUMENT);
    o.batch_size = 4;
    o.flags = 0;
    o.rank = 3;
    o.world_size = 2;
    CHECK_STATUS(ferry_iterator_create(e, s, &o, &it), FERRY_ERR_INVALID_ARGUMENT);
    o.rank = 0;
    o.world_size = 0;
    CHECK(it == NULL);
    CHECK_STATUS(ferry_iterator_create(NULL, s, &o, &it), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_iterator_create(e, NULL, &o, &it), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_iterator_create((ferry_engine)(void*)s, s, &o, &it), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_iterator_create(e, (ferry_source)(uintptr_t)0x1234567, &o, &it), FERRY_ERR_INVALID_HANDLE);
    /* A destroyed engine. */
    CHECK_STATUS(ferry_engine_options_init(&eo), FERRY_OK);
    eo.device = FERRY_DEVICE_CPU;
    eo.sample_interval_ms = 0;
    CHECK_STATUS(ferry_engine_create(&eo, &dead), FERRY_OK);
    CHECK_STATUS(ferry_engine_destroy(dead), FERRY_OK);
    CHECK_STATUS(ferry_iterator_create(dead, s, &o, &it), FERRY_ERR_INVALID_HANDLE);

    /* A destroyed iterator: every call says so. */
    CHECK_STATUS(ferry_iterator_create(e, s, &o, &live), FERRY_OK);
    CHECK_STATUS(ferry_iterator_next(live, NULL, &b), FERRY_OK);
    CHECK_STATUS(ferry_batch_release(b, NULL), FERRY_OK);
    CHECK_STATUS(ferry_iterator_destroy(live), FERRY_OK);
    CHECK_STATUS(ferry_iterator_next(live, NULL, &b), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_iterator_len(live, &n), FERRY_ERR_INVALID_HANDLE);
    memset(&pos, 0, sizeof(pos));
    pos.size = sizeof(pos);
    CHECK_STATUS(ferry_iterator_state(live, &pos), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_iterator_restore(live, &pos), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_iterator_set_epoch(live, 1), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_iterator_destroy(live), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_iterator_destroy(NULL), FERRY_OK);
    CHECK_STATUS(ferry_iterator_next(NULL, NULL, &b), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_iterator_len((ferry_iterator)(void*)s, &n), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_iterator_destroy((ferry_iterator)(uintptr_t)0x4900000000000042ull), FERRY_ERR_INVALID_HANDLE);
    /* The source survived all of it. */
    CHECK_STATUS(ferry_source_len(s, &n), FERRY_OK);
    CHECK(n == NSAMPLES);
    CHECK_STATUS(ferry_source_destroy(s), FERRY_OK);
}

int main(void) {
    ferry_engine_options eo;
    ferry_engine e = NULL;
    int k;

    rng_state = now_ns() ^ ((uint64_t)time(NULL) << 32);
    printf("seed %llu\n", (unsigned long long)rng_state);
    make_data();
    test_options();
    test_sources();

    ferry_engine_options_init(&eo);
    eo.device = FERRY_DEVICE_CPU;
    eo.sample_interval_ms = 0;
    CHECK_STATUS(ferry_engine_create(&eo, &e), FERRY_OK);
    test_epochs(e);
    test_batch_handles(e);
    test_state_restore(e);
    test_callback(e);
    test_next_wait(e);
    test_bad_iterator_input(e);
    CHECK_STATUS(ferry_engine_destroy(e), FERRY_OK);

    for (k = 0; k < NFIELDS; k++) {
        free(data[k]);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
