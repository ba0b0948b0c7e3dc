/*
 * test_memory_c99 — the memory manager through the plain C API, from a strict C99 program
 * (-std=c99 -Wall -Wextra -pedantic -Werror): pressure options and thresholds, pressure callbacks,
 * ferry_memory_optimize, and the batch-size advisor.
 *
 * On the CPU engine it checks that fractions are refused and byte thresholds accepted, the callbacks' order,
 * failures and removal, the trim after an iterator gave its ring back, the advisor on exact, noisy and
 * convex curves, rounding, the OOM ceiling, the reduce hook (a fake other rank), and that bad input (NULL
 * pointers, wrong sizes, bad values, stale, made-up and foreign handles, double destroy) gets the
 * documented status. With FERRY_FAKE_GPU=1 and FERRY_CUDA_LIBRARY naming the stand-in driver
 * (engine/testdata/fakecuda.c: one 80 GiB device with 10 GiB used) it checks the levels, the snapshot's
 * thresholds, the level given to callbacks, the trim of device memory and the engine's recommendation.
 *
 * The last line of output is "N passed, N failed"; the exit status is non-zero when anything failed.
 */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "ferry.h"

/* CHECK_FAILS(call): the call fails (any status but FERRY_OK) with a message. */
#define CHECK_FAILS(call) check_fails_at((call), #call, __LINE__)

static void check_fails_at(ferry_status got, const char* expr, int line) {
    if (got == FERRY_OK || ferry_last_error()[0] == '\0') {
        failed++;
        printf("FAIL line %d: %s returned %s (last error: %s), want a failure with a message\n", line, expr,
               ferry_status_string(got), ferry_last_error());
        return;
    }
    passed++;
}

/* CHECK_MENTIONS(word): the calling thread's last error mentions word. */
#define CHECK_MENTIONS(word) check_at(strstr(ferry_last_error(), (word)) != NULL, "last error mentions " word, __LINE__)

#define MIB ((uint64_t)1 << 20)
#define GIB ((uint64_t)1 << 30)

/* splitmix64, seeded from the clock so that every run sees fresh curves. */
static uint64_t rng_state;

static uint64_t rnd(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A uniform double in [0, 1). */
static double unit(void) { return (double)(rnd() >> 11) / 9007199254740992.0; }

static ferry_engine cpu_engine(void) {
    ferry_engine_options eo;
    ferry_engine e = NULL;
    CHECK_STATUS(ferry_engine_options_init(&eo), FERRY_OK);
    eo.device = FERRY_DEVICE_CPU;
    eo.sample_interval_ms = 0;
    CHECK_STATUS(ferry_engine_create(&eo, &e), FERRY_OK);
    return e;
}

static ferry_pressure_options bytes_opts(int32_t metric, uint64_t warn, uint64_t critical) {
    ferry_pressure_options o;
    ferry_pressure_options_init(&o);
    o.metric = metric;
    o.warn_bytes = warn;
    o.critical_bytes = critical;
    return o;
}

static ferry_memory_snapshot snapshot(ferry_engine e, int live) {
    ferry_memory_snapshot s;
    memset(&s, 0, sizeof(s));
    s.size = sizeof(s);
    CHECK_STATUS(live ? ferry_memory_check_live(e, &s) : ferry_memory_check(e, &s), FERRY_OK);
    return s;
}

static ferry_optimize_result optimize(ferry_engine e, int64_t current) {
    ferry_optimize_result r;
    memset(&r, 0, sizeof(r));
    r.size = sizeof(r);
    CHECK_STATUS(ferry_memory_optimize(e, current, &r), FERRY_OK);
    return r;
}

static ferry_advisor new_advisor(int64_t multiple) {
    ferry_advisor a = NULL;
    CHECK_STATUS(ferry_advisor_create(multiple, &a), FERRY_OK);
    CHECK(a != NULL);
    return a;
}

static void linear(ferry_advisor a, uint64_t fixed, uint64_t per_sample, const int64_t* sizes, int n) {
    int i;
    for (i = 0; i < n; i++) {
        CHECK_STATUS(ferry_advisor_observe(a, sizes[i], fixed + per_sample * (uint64_t)sizes[i]), FERRY_OK);
    }
}

static int64_t recommend(ferry_advisor a, uint64_t budget, double headroom) {
    int64_t b = -7;
    CHECK_STATUS(ferry_advisor_recommend(a, budget, headroom, &b), FERRY_OK);
    return b;
}

static ferry_advisor_fit model(ferry_advisor a) {
    ferry_advisor_fit f;
    memset(&f, 0, sizeof(f));
    f.size = sizeof(f);
    CHECK_STATUS(ferry_advisor_model(a, &f), FERRY_OK);
    return f;
}

/* A small memory source: one uint8 field of 64 bytes per sample. */
#define NSAMPLES 256
static unsigned char source_data[NSAMPLES * 64];

static ferry_source small_source(void) {
    ferry_field f;
    const void* ptr = source_data;
    ferry_source s = NULL;
    memset(&f, 0, sizeof(f));
    f.name = "x";
    f.dtype = FERRY_DTYPE_UINT8;
    f.ndim = 1;
    f.shape[0] = 64;
    CHECK_STATUS(ferry_source_memory(NSAMPLES, &f, 1, &ptr, &s), FERRY_OK);
    return s;
}

/* Creates an iterator, takes and releases one batch, and destroys it: its ring goes back to the pools. */
static void run_iterator(ferry_engine e, ferry_source s, uint64_t* reserved_while_running,
                         int32_t* level_while_running) {
    ferry_iterator_options o;
    ferry_iterator it = NULL;
    ferry_batch b = NULL;
    ferry_memory_snapshot snap;
    CHECK_STATUS(ferry_iterator_options_init(&o), FERRY_OK);
    o.batch_size = 32;
    o.world_size = 1;
    o.prefetch = 2;
    o.timeout_ms = 20000;
    CHECK_STATUS(ferry_iterator_create(e, s, &o, &it), FERRY_OK);
    CHECK_STATUS(ferry_iterator_next(it, NULL, &b), FERRY_OK);
    snap = snapshot(e, 0);
    *reserved_while_running = snap.engine_reserved_bytes;
    *level_while_running = snap.level;
    CHECK_STATUS(ferry_batch_release(b, NULL), FERRY_OK);
    CHECK_STATUS(ferry_iterator_destroy(it), FERRY_OK);
}

/* ------------------------------------------------------------------------------------------------ */
/* Pressure callbacks                                                                               */
/* ------------------------------------------------------------------------------------------------ */

#define MAX_CALLS 64

typedef struct call_log {
    int n;
    int tag[MAX_CALLS];
    int32_t level[MAX_CALLS];
} call_log;

typedef struct recorder {
    call_log* log;
    int tag;
    int32_t ret;
} recorder;

static int32_t record(void* user, int32_t level) {
    recorder* r = (recorder*)user;
    if (r->log->n < MAX_CALLS) {
        r->log->tag[r->log->n] = r->tag;
        r->log->level[r->log->n] = level;
        r->log->n++;
    }
    return r->ret;
}

/* The log holds exactly the tags want[0..n) in order, each with level. */
static int log_is(call_log* log, const int* want, int n, int32_t level) {
    int i;
    int ok = log->n == n;
    for (i = 0; ok && i < n; i++) {
        ok = log->tag[i] == want[i] && log->level[i] == level;
    }
    if (!ok) {
        printf("  calls:");
        for (i = 0; i < log->n; i++) {
            printf(" %d(level %d)", log->tag[i], (int)log->level[i]);
        }
        printf("\n");
    }
    log->n = 0;
    return ok;
}

/* ------------------------------------------------------------------------------------------------ */
/* Options and sizes                                                                                */
/* ------------------------------------------------------------------------------------------------ */

static void test_options_and_sizes(void) {
    unsigned char buf[sizeof(ferry_advisor_fit) + 64];
    ferry_pressure_options o;
    ferry_optimize_result r;
    ferry_advisor_fit f;
    ferry_engine e = cpu_engine();
    ferry_advisor a = new_advisor(8);
    static const int64_t sizes[] = {8, 16};
    size_t i;

    CHECK(sizeof(ferry_pressure_options) == 40);
    CHECK(sizeof(ferry_optimize_result) == 40);
    CHECK(sizeof(ferry_advisor_fit) == 56);

    memset(buf, 0xA5, sizeof(buf));
    CHECK_STATUS(ferry_pressure_options_init((ferry_pressure_options*)(void*)buf), FERRY_OK);
    memcpy(&o, buf, sizeof(o));
    CHECK(o.size == sizeof(o));
    CHECK(o.metric == FERRY_PRESSURE_DEVICE_USED);
    CHECK(o.warn_bytes == 0 && o.critical_bytes == 0 && o.warn_fraction == 0 && o.critical_fraction == 0);
    for (i = sizeof(o); i < sizeof(buf); i++) {
        if (buf[i] != 0xA5) {
            break;
        }
    }
    CHECK(i == sizeof(buf));
    CHECK_STATUS(ferry_pressure_options_init(NULL), FERRY_ERR_INVALID_ARGUMENT);

    /* Sizes too small are refused; the struct is untouched past its size field. */
    o = bytes_opts(FERRY_PRESSURE_ENGINE_RESERVED, 3 * GIB, 4 * GIB);
    o.size = sizeof(o) - 1;
    CHECK_STATUS(ferry_engine_set_pressure(e, &o), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_MENTIONS("size");
    o.size = 0;
    CHECK_STATUS(ferry_engine_set_pressure(e, &o), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_engine_set_pressure(e, NULL), FERRY_ERR_INVALID_ARGUMENT);
    CHECK(snapshot(e, 0).warn_threshold_bytes == 0);

    memset(&r, 0x5A, sizeof(r));
    r.size = sizeof(r) - 1;
    CHECK_STATUS(ferry_memory_optimize(e, 0, &r), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_MENTIONS("size");
    CHECK(r.level_before == 0x5A5A5A5A && r.recommended_batch_size == 0x5A5A5A5A5A5A5A5All);
    r.size = 4;
    CHECK_STATUS(ferry_memory_optimize(e, 0, &r), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_memory_optimize(e, 0, NULL), FERRY_ERR_INVALID_ARGUMENT);

    linear(a, GIB, 10 * MIB, sizes, 2);
    memset(&f, 0x5A, sizeof(f));
    f.size = sizeof(f) - 1;
    CHECK_STATUS(ferry_advisor_model(a, &f), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_MENTIONS("size");
    CHECK(f.observations == 0x5A5A5A5A);
    f.size = 0;
    CHECK_STATUS(ferry_advisor_model(a, &f), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_advisor_model(a, NULL), FERRY_ERR_INVALID_ARGUMENT);

    /* A larger size (a newer caller) works, and nothing past the struct is written. */
    memset(buf, 0xA5, sizeof(buf));
    memset(buf, 0, sizeof(ferry_advisor_fit));
    *(uint32_t*)(void*)buf = (uint32_t)sizeof(ferry_advisor_fit) + 32;
    CHECK_STATUS(ferry_advisor_model(a, (ferry_advisor_fit*)(void*)buf), FERRY_OK);
    for (i = sizeof(ferry_advisor_fit); i < sizeof(buf); i++) {
        if (buf[i] != 0xA5) {
            break;
        }
    }
    CHECK(i == sizeof(buf));
    memcpy(&f, buf, sizeof(f));
    CHECK(f.observations == 2);

    CHECK_STATUS(ferry_advisor_destroy(a), FERRY_OK);
    CHECK_STATUS(ferry_engine_destroy(e), FERRY_OK);
}

/* ------------------------------------------------------------------------------------------------ */
/* The CPU engine                                                                                   */
/* ------------------------------------------------------------------------------------------------ */

static void test_cpu_pressure(void) {
    ferry_engine e = cpu_engine();
    ferry_pressure_options o;
    ferry_memory_snapshot s;
    ferry_optimize_result r;
    int32_t metric;

    for (metric = FERRY_PRESSURE_DEVICE_USED; metric <= FERRY_PRESSURE_ENGINE_RESERVED; metric++) {
        o = bytes_opts(metric, 0, 0);
        o.warn_fraction = 0.5;
        CHECK_STATUS(ferry_engine_set_pressure(e, &o), FERRY_ERR_INVALID_ARGUMENT);
        CHECK_MENTIONS("fraction");
        o.warn_fraction = 0;
        o.critical_fraction = 0.9;
        CHECK_STATUS(ferry_engine_set_pressure(e, &o), FERRY_ERR_INVALID_ARGUMENT);

        o = bytes_opts(metric, 1, 2);
        CHECK_STATUS(ferry_engine_set_pressure(e, &o), FERRY_OK);
        s = snapshot(e, 0);
        CHECK(s.level == FERRY_PRESSURE_NONE);
        CHECK(s.warn_threshold_bytes == 1 && s.critical_threshold_bytes == 2);
        s = snapshot(e, 1);
        CHECK(s.level == FERRY_PRESSURE_NONE);
        CHECK(s.warn_threshold_bytes == 1 && s.critical_threshold_bytes == 2);
        r = optimize(e, 0);
        CHECK(r.level_before == FERRY_PRESSURE_NONE && r.level_after == FERRY_PRESSURE_NONE);
        CHECK(r.recommended_batch_size == 0);
    }
    /* Bad values: unknown metrics, critical below warn. Nothing changes. */
    o = bytes_opts(4, 1, 2);
    CHECK_STATUS(ferry_engine_set_pressure(e, &o), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_MENTIONS("metric");
    o = bytes_opts(-1, 1, 2);
    CHECK_STATUS(ferry_engine_set_pressure(e, &o), FERRY_ERR_INVALID_ARGUMENT);
    o = bytes_opts(FERRY_PRESSURE_ENGINE_RESERVED, 5 * GIB, 4 * GIB);
    CHECK_STATUS(ferry_engine_set_pressure(e, &o), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_MENTIONS("critical");
    s = snapshot(e, 0);
    CHECK(s.warn_threshold_bytes == 1 && s.critical_threshold_bytes == 2);
    CHECK_STATUS(ferry_memory_optimize(e, -1, &r), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_engine_destroy(e), FERRY_OK);
}

static void test_cpu_callbacks(void) {
    ferry_engine e = cpu_engine();
    ferry_engine other = cpu_engine();
    call_log log;
    recorder rec[5];
    uint64_t id[5];
    uint64_t extra = 0;
    ferry_optimize_result r;
    int i;
    static const int all[] = {1, 2, 3, 4, 5};
    static const int some[] = {1, 3, 5};

    memset(&log, 0, sizeof(log));
    for (i = 0; i < 5; i++) {
        rec[i].log = &log;
        rec[i].tag = i + 1;
        rec[i].ret = (i == 1 || i == 3) ? (int32_t)(i + 10) : 0; /* 2 and 4 fail */
        CHECK_STATUS(ferry_memory_on_pressure(e, record, &rec[i], &id[i]), FERRY_OK);
    }
    CHECK(id[0] != id[1] && id[1] != id[2] && id[2] != id[3] && id[3] != id[4]);
    r = optimize(e, 64);
    CHECK(r.callbacks_called == 5);
    CHECK(r.callbacks_failed == 2);
    CHECK(log_is(&log, all, 5, FERRY_PRESSURE_NONE));

    CHECK_STATUS(ferry_memory_remove_callback(e, id[1]), FERRY_OK);
    CHECK_STATUS(ferry_memory_remove_callback(e, id[3]), FERRY_OK);
    r = optimize(e, 64);
    CHECK(r.callbacks_called == 3);
    CHECK(r.callbacks_failed == 0);
    CHECK(log_is(&log, some, 3, FERRY_PRESSURE_NONE));

    CHECK_STATUS(ferry_memory_remove_callback(e, id[1]), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_memory_remove_callback(other, id[0]), FERRY_ERR_INVALID_ARGUMENT);
    CHECK(optimize(other, 0).callbacks_called == 0);
    CHECK_STATUS(ferry_memory_on_pressure(e, NULL, NULL, &extra), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_memory_on_pressure(e, record, &rec[0], NULL), FERRY_ERR_INVALID_ARGUMENT);
    CHECK(optimize(e, 0).callbacks_called == 3);
    log.n = 0;

    /* A destroyed engine: every memory call says so. */
    CHECK_STATUS(ferry_engine_destroy(other), FERRY_OK);
    CHECK_STATUS(ferry_memory_on_pressure(other, record, &rec[0], &extra), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_memory_remove_callback(other, id[0]), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_memory_optimize(other, 0, &r), FERRY_ERR_INVALID_HANDLE);
    {
        const ferry_pressure_options o = bytes_opts(FERRY_PRESSURE_ENGINE_RESERVED, 1, 2);
        CHECK_STATUS(ferry_engine_set_pressure(other, &o), FERRY_ERR_INVALID_HANDLE);
    }
    CHECK_STATUS(ferry_engine_set_advisor(other, NULL), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_memory_optimize(NULL, 0, &r), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_memory_optimize((ferry_engine)(uintptr_t)0x1234, 0, &r), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_engine_destroy(e), FERRY_OK);
}

static void test_cpu_trim_and_advisor(void) {
    ferry_engine e = cpu_engine();
    ferry_source s = small_source();
    ferry_advisor a = new_advisor(8);
    ferry_optimize_result r;
    uint64_t reserved = 0;
    int32_t level = 0;
    static const int64_t sizes[] = {8, 16, 32};

    run_iterator(e, s, &reserved, &level);
    r = optimize(e, 32);
    CHECK(r.trimmed_bytes > 0);
    CHECK(optimize(e, 32).trimmed_bytes == 0);

    linear(a, GIB, 100 * MIB, sizes, 3);
    CHECK_STATUS(ferry_engine_set_advisor(e, a), FERRY_OK);
    (void)optimize(e, 32);
    CHECK_STATUS(ferry_engine_set_advisor(e, NULL), FERRY_OK);
    CHECK(optimize(e, 32).recommended_batch_size == 0);
    CHECK_STATUS(ferry_engine_set_advisor(e, a), FERRY_OK);
    CHECK_STATUS(ferry_advisor_destroy(a), FERRY_OK); /* destroyed while attached */
    CHECK(optimize(e, 32).recommended_batch_size == 0);
    CHECK(optimize(e, 32).recommended_batch_size == 0);
    CHECK_STATUS(ferry_engine_set_advisor(e, a), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_engine_set_advisor(e, (ferry_advisor)(void*)s), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_engine_set_advisor(e, (ferry_advisor)(void*)e), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_source_destroy(s), FERRY_OK);
    CHECK_STATUS(ferry_engine_destroy(e), FERRY_OK);
}

/* ------------------------------------------------------------------------------------------------ */
/* The advisor                                                                                      */
/* ------------------------------------------------------------------------------------------------ */

static void test_advisor_linear_and_rounding(void) {
    const uint64_t fixed = 3 * GIB + 12345, per_sample = 50 * MIB + 7;
    static const int64_t sizes[] = {8, 16, 32, 40};
    static const int64_t two[] = {4, 8};
    ferry_advisor a = new_advisor(8);
    ferry_advisor_fit f;
    int i;
    /* multiple, unrounded batch that fits, answer */
    static const struct {
        int64_t multiple;
        double fits;
        int64_t want;
    } cases[] = {{8, 92.16, 88}, {1, 92.16, 92}, {7, 92.16, 91}, {64, 92.16, 64},
                 {64, 40.5, 40}, {8, 5.5, 5},    {8, 1.2, 1}};
    int64_t b = 0;

    linear(a, fixed, per_sample, sizes, 4);
    f = model(a);
    CHECK(f.size == sizeof(f));
    CHECK(f.observations == 4);
    CHECK(fabs(f.fixed_bytes - (double)fixed) <= 1.0);
    CHECK(fabs(f.per_sample_bytes - (double)per_sample) <= 1e-3);
    CHECK(fabs(f.r_squared - 1.0) <= 1e-12);
    CHECK(f.max_residual_bytes >= 0.0 && f.max_residual_bytes <= 1.0);
    CHECK(f.oom_ceiling == 0);
    /* (16 GiB - fixed) / per_sample = 266.24 -> 264; 10% headroom 233.47 -> 232; 25% 184.32 -> 184. */
    CHECK(recommend(a, 16 * GIB, 0) == 264);
    CHECK(recommend(a, 16 * GIB, 0.1) == 232);
    CHECK(recommend(a, 16 * GIB, 0.25) == 184);
    CHECK_STATUS(ferry_advisor_destroy(a), FERRY_OK);

    for (i = 0; i < (int)(sizeof(cases) / sizeof(cases[0])); i++) {
        a = new_advisor(cases[i].multiple);
        linear(a, GIB, 100 * MIB, two, 2);
        b = recommend(a, (uint64_t)((double)GIB + cases[i].fits * (double)(100 * MIB)), 0);
        if (b != cases[i].want) {
            printf("  multiple %lld, fits %.2f: got %lld, want %lld\n", (long long)cases[i].multiple, cases[i].fits,
                   (long long)b, (long long)cases[i].want);
        }
        CHECK(b == cases[i].want);
        CHECK(model(a).r_squared > 1.0 - 1e-12);
        CHECK_STATUS(ferry_advisor_destroy(a), FERRY_OK);
    }
    /* Less than one sample fits. */
    a = new_advisor(8);
    linear(a, GIB, 100 * MIB, two, 2);
    CHECK_FAILS(ferry_advisor_recommend(a, GIB + 50 * MIB, 0, &b));
    CHECK_STATUS(ferry_advisor_destroy(a), FERRY_OK);
}

static void test_advisor_noisy(void) {
    static double peak[257];
    int trial;
    for (trial = 0; trial < 10; trial++) {
        const double fixed = (double)GIB * (1 + 3 * unit());
        const double per_sample = (double)MIB * (8 + 64 * unit());
        const double noise = per_sample * (0.1 + unit());
        ferry_advisor a = new_advisor(8);
        ferry_advisor_fit f;
        double max_res = 0;
        uint64_t budget;
        int64_t b, limit = 0, got;
        for (b = 1; b <= 256; b++) {
            peak[b] = floor(fixed + per_sample * (double)b + noise * (2 * unit() - 1) + 0.5);
            CHECK_STATUS(ferry_advisor_observe(a, b, (uint64_t)peak[b]), FERRY_OK);
        }
        f = model(a);
        for (b = 1; b <= 256; b++) {
            const double res = peak[b] - (f.fixed_bytes + f.per_sample_bytes * (double)b);
            if (res > max_res) {
                max_res = res;
            }
        }
        CHECK(f.observations == 256);
        CHECK(f.max_residual_bytes > 0);
        CHECK(fabs(f.max_residual_bytes - max_res) <= 1.0);
        CHECK(f.r_squared < 1.0 && f.r_squared > 0.99);
        budget = (uint64_t)(fixed + per_sample * (40 + 180 * unit()));
        while (limit < 256 && peak[limit + 1] <= (double)budget) {
            limit++;
        }
        got = recommend(a, budget, 0);
        if (!(got >= 1 && got <= limit)) {
            printf("  trial %d: recommended %lld, true limit %lld\n", trial, (long long)got, (long long)limit);
        }
        CHECK(got >= 1 && got <= limit);
        CHECK(got >= limit - (int64_t)ceil(4 * noise / per_sample) - 16);
        CHECK(got % 8 == 0);
        CHECK_STATUS(ferry_advisor_destroy(a), FERRY_OK);
    }
}

static double convex(double b) { return (double)GIB + 20.0 * (double)MIB * b + 0.5 * (double)MIB * b * b; }

static void test_advisor_convex(void) {
    static const int64_t sizes[] = {8, 16, 32, 64};
    ferry_advisor a = new_advisor(8);
    ferry_advisor_fit f;
    double target;
    int i;
    for (i = 0; i < 4; i++) {
        CHECK_STATUS(ferry_advisor_observe(a, sizes[i], (uint64_t)convex((double)sizes[i])), FERRY_OK);
    }
    f = model(a);
    CHECK(f.max_residual_bytes > 0);
    CHECK(f.r_squared < 1.0);
    for (target = 30; target <= 63; target += 3.3) {
        const uint64_t budget = (uint64_t)convex(target);
        int64_t limit = (int64_t)target;
        int64_t got;
        while (convex((double)(limit + 1)) <= (double)budget) {
            limit++;
        }
        got = recommend(a, budget, 0);
        CHECK(got >= 1 && got <= limit);
    }
    CHECK_STATUS(ferry_advisor_destroy(a), FERRY_OK);
}

static void test_advisor_oom(void) {
    static const int64_t sizes[] = {16, 32};
    const uint64_t budget = 16 * GIB; /* (16384 - 1024) / 100 = 153.6 samples fit */
    ferry_advisor a = new_advisor(8);
    int64_t second, third, b = 0;
    linear(a, GIB, 100 * MIB, sizes, 2);
    CHECK(recommend(a, budget, 0) == 152);
    CHECK_STATUS(ferry_advisor_report_oom(a, 100), FERRY_OK);
    CHECK(model(a).oom_ceiling == 100);
    CHECK(recommend(a, budget, 0) == 96);
    CHECK_STATUS(ferry_advisor_report_oom(a, 96), FERRY_OK);
    second = recommend(a, budget, 0);
    CHECK(second >= 1 && second <= 88);
    CHECK_STATUS(ferry_advisor_report_oom(a, second), FERRY_OK); /* the size recommended after the OOM ran out too */
    third = recommend(a, budget, 0);
    CHECK(model(a).oom_ceiling == second);
    CHECK(third >= 1 && third < second);
    CHECK_STATUS(ferry_advisor_report_oom(a, 0), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_MENTIONS("batch");
    CHECK_STATUS(ferry_advisor_report_oom(a, -4), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_advisor_destroy(a), FERRY_OK);

    a = new_advisor(8);
    linear(a, GIB, 100 * MIB, sizes, 2);
    CHECK_STATUS(ferry_advisor_report_oom(a, 5), FERRY_OK);
    b = recommend(a, budget, 0);
    CHECK(b >= 1 && b < 5);
    CHECK_STATUS(ferry_advisor_report_oom(a, 1), FERRY_OK);
    CHECK_FAILS(ferry_advisor_recommend(a, budget, 0, &b));
    CHECK_STATUS(ferry_advisor_destroy(a), FERRY_OK);
}

/* A fake other rank: the reduction writes min(value, other). */
typedef struct fake_rank {
    int64_t other;
    int32_t fail;
    int calls;
    int64_t last_seen;
} fake_rank;

static int32_t reduce_min(void* user, int64_t* value) {
    fake_rank* r = (fake_rank*)user;
    r->calls++;
    r->last_seen = *value;
    if (r->fail != 0) {
        return r->fail;
    }
    if (r->other < *value) {
        *value = r->other;
    }
    return 0;
}

static void test_advisor_reduce(void) {
    static const int64_t sizes[] = {16, 32};
    const uint64_t budget = 16 * GIB;
    ferry_advisor a = new_advisor(8);
    fake_rank rank;
    int64_t b = 0;
    linear(a, GIB, 100 * MIB, sizes, 2);
    memset(&rank, 0, sizeof(rank));
    rank.other = 24;
    CHECK_STATUS(ferry_advisor_set_reduce(a, reduce_min, &rank), FERRY_OK);
    CHECK(recommend(a, budget, 0) == 24);
    CHECK(rank.calls == 1 && rank.last_seen == 152);
    rank.other = 1000;
    CHECK(recommend(a, budget, 0) == 152);
    CHECK_STATUS(ferry_advisor_report_oom(a, 100), FERRY_OK);
    CHECK(recommend(a, budget, 0) == 96);
    CHECK(rank.last_seen == 96); /* the ceiling applies before the reduction */
    rank.fail = 5;
    CHECK_FAILS(ferry_advisor_recommend(a, budget, 0, &b));
    CHECK_STATUS(ferry_advisor_set_reduce(a, NULL, NULL), FERRY_OK);
    rank.calls = 0;
    CHECK(recommend(a, budget, 0) == 96);
    CHECK(rank.calls == 0);
    CHECK_STATUS(ferry_advisor_destroy(a), FERRY_OK);
}

static void test_advisor_bad_input(void) {
    ferry_advisor a = NULL, dead = NULL;
    ferry_advisor_fit f;
    ferry_engine e = cpu_engine();
    int64_t b = 0;
    int64_t good;

    CHECK_STATUS(ferry_advisor_create(0, &a), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_MENTIONS("multiple");
    CHECK(a == NULL);
    CHECK_STATUS(ferry_advisor_create(-8, &a), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_advisor_create(8, NULL), FERRY_ERR_INVALID_ARGUMENT);

    a = new_advisor(8);
    CHECK_STATUS(ferry_advisor_observe(a, 0, GIB), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_MENTIONS("batch");
    CHECK_STATUS(ferry_advisor_observe(a, -16, GIB), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_advisor_observe(a, 16, 0), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_MENTIONS("peak");

    memset(&f, 0, sizeof(f));
    f.size = sizeof(f);
    CHECK_STATUS(ferry_advisor_model(a, &f), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_advisor_recommend(a, 16 * GIB, 0, &b), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_advisor_observe(a, 16, 2 * GIB), FERRY_OK);
    CHECK_STATUS(ferry_advisor_model(a, &f), FERRY_ERR_INVALID_ARGUMENT); /* one observation */
    CHECK_STATUS(ferry_advisor_recommend(a, 16 * GIB, 0, &b), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_advisor_observe(a, 32, 3 * GIB), FERRY_OK);
    good = recommend(a, 16 * GIB, 0);
    CHECK(good > 0);
    CHECK_STATUS(ferry_advisor_recommend(a, 16 * GIB, -0.1, &b), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_MENTIONS("headroom");
    CHECK_STATUS(ferry_advisor_recommend(a, 16 * GIB, 1.0, &b), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_advisor_recommend(a, 16 * GIB, NAN, &b), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_advisor_recommend(a, 512 * MIB, 0, &b), FERRY_ERR_INVALID_ARGUMENT); /* below the fixed cost */
    CHECK_MENTIONS("budget");
    CHECK_STATUS(ferry_advisor_recommend(a, 16 * GIB, 0, NULL), FERRY_ERR_INVALID_ARGUMENT);
    CHECK(recommend(a, 16 * GIB, 0) == good);

    /* Memory that falls as the batch grows. */
    dead = new_advisor(8);
    CHECK_STATUS(ferry_advisor_observe(dead, 8, 4 * GIB), FERRY_OK);
    CHECK_STATUS(ferry_advisor_observe(dead, 64, 3 * GIB), FERRY_OK);
    CHECK(model(dead).per_sample_bytes < 0);
    CHECK_STATUS(ferry_advisor_recommend(dead, 16 * GIB, 0, &b), FERRY_ERR_INVALID_ARGUMENT);

    /* Stale, made-up, foreign and NULL handles; double destroy. */
    CHECK_STATUS(ferry_advisor_destroy(dead), FERRY_OK);
    CHECK_STATUS(ferry_advisor_destroy(dead), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_advisor_observe(dead, 8, GIB), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_advisor_report_oom(dead, 8), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_advisor_model(dead, &f), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_advisor_recommend(dead, GIB, 0, &b), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_advisor_set_reduce(dead, NULL, NULL), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_engine_set_advisor(e, dead), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_advisor_observe(NULL, 8, GIB), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_advisor_observe((ferry_advisor)(uintptr_t)0x1234, 8, GIB), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_advisor_observe((ferry_advisor)(void*)e, 8, GIB), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_advisor_destroy((ferry_advisor)(void*)e), FERRY_ERR_INVALID_HANDLE);
    {
        ferry_optimize_result r;
        memset(&r, 0, sizeof(r));
        r.size = sizeof(r);
        CHECK_STATUS(ferry_memory_optimize((ferry_engine)(void*)a, 0, &r), FERRY_ERR_INVALID_HANDLE);
    }
    CHECK_STATUS(ferry_advisor_destroy(NULL), FERRY_OK);
    /* The live ones survived it all. */
    CHECK(recommend(a, 16 * GIB, 0) == good);
    CHECK(optimize(e, 0).level_before == FERRY_PRESSURE_NONE);
    CHECK_STATUS(ferry_advisor_destroy(a), FERRY_OK);
    CHECK_STATUS(ferry_engine_destroy(e), FERRY_OK);
}

/* ------------------------------------------------------------------------------------------------ */
/* The stand-in GPU                                                                                 */
/* ------------------------------------------------------------------------------------------------ */

static void check_level(ferry_engine e, int32_t level, uint64_t warn, uint64_t critical, const char* what) {
    int live;
    for (live = 0; live < 2; live++) {
        const ferry_memory_snapshot s = snapshot(e, live);
        const int ok = s.device_used_bytes == 10 * GIB && s.level == level &&
                       fabs((double)s.warn_threshold_bytes - (double)warn) <= 1.0 &&
                       fabs((double)s.critical_threshold_bytes - (double)critical) <= 1.0;
        if (!ok) {
            printf("  %s (%s): level %d, thresholds %llu/%llu, used %llu\n", what, live ? "live" : "cached",
                   (int)s.level, (unsigned long long)s.warn_threshold_bytes,
                   (unsigned long long)s.critical_threshold_bytes, (unsigned long long)s.device_used_bytes);
        }
        CHECK(ok);
    }
}

static void test_fake_gpu(void) {
    ferry_engine_options eo;
    ferry_engine e = NULL;
    ferry_device_properties p;
    ferry_pressure_options o;
    ferry_optimize_result r;
    ferry_memory_snapshot s;
    ferry_source src;
    ferry_advisor a;
    call_log log;
    recorder rec[2];
    uint64_t id[2];
    uint64_t reserved = 0;
    int32_t level = 0, count = 0;
    static const int order[] = {1, 2};

    CHECK_STATUS(ferry_device_count(&count), FERRY_OK);
    CHECK(count == 1);
    memset(&p, 0, sizeof(p));
    p.size = sizeof(p);
    CHECK_STATUS(ferry_device_info(0, &p), FERRY_OK);
    CHECK(strcmp(p.name, "Fake GPU") == 0);
    if (count != 1) {
        return;
    }
    CHECK_STATUS(ferry_engine_options_init(&eo), FERRY_OK);
    eo.device = 0;
    eo.sample_interval_ms = 0;
    CHECK_STATUS(ferry_engine_create(&eo, &e), FERRY_OK);

    /* Levels with 10 GiB used. */
    check_level(e, FERRY_PRESSURE_NONE, 0, 0, "no thresholds");
    o = bytes_opts(FERRY_PRESSURE_DEVICE_USED, 5 * GIB, 20 * GIB);
    CHECK_STATUS(ferry_engine_set_pressure(e, &o), FERRY_OK);
    check_level(e, FERRY_PRESSURE_WARN, 5 * GIB, 20 * GIB, "5/20 GiB");
    o = bytes_opts(FERRY_PRESSURE_DEVICE_USED, 5 * GIB, 8 * GIB);
    CHECK_STATUS(ferry_engine_set_pressure(e, &o), FERRY_OK);
    check_level(e, FERRY_PRESSURE_CRITICAL, 5 * GIB, 8 * GIB, "5/8 GiB");
    CHECK_STATUS(ferry_pressure_options_init(&o), FERRY_OK);
    CHECK_STATUS(ferry_engine_set_pressure(e, &o), FERRY_OK);
    check_level(e, FERRY_PRESSURE_NONE, 0, 0, "none");
    o.warn_fraction = 0.1;
    o.critical_fraction = 0.5;
    CHECK_STATUS(ferry_engine_set_pressure(e, &o), FERRY_OK);
    check_level(e, FERRY_PRESSURE_WARN, 8 * GIB, 40 * GIB, "fractions 0.1/0.5");
    o.warn_fraction = 1.5;
    CHECK_STATUS(ferry_engine_set_pressure(e, &o), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_MENTIONS("fraction");
    o.warn_fraction = -0.1;
    CHECK_STATUS(ferry_engine_set_pressure(e, &o), FERRY_ERR_INVALID_ARGUMENT);
    check_level(e, FERRY_PRESSURE_WARN, 8 * GIB, 40 * GIB, "after refused calls");
    o = bytes_opts(FERRY_PRESSURE_DEVICE_USED, 10 * GIB, 0);
    CHECK_STATUS(ferry_engine_set_pressure(e, &o), FERRY_OK);
    check_level(e, FERRY_PRESSURE_WARN, 10 * GIB, 0, "warn at exactly the used bytes");

    /* Callbacks get the level. */
    memset(&log, 0, sizeof(log));
    rec[0].log = rec[1].log = &log;
    rec[0].tag = 1;
    rec[1].tag = 2;
    rec[0].ret = 0;
    rec[1].ret = 1;
    CHECK_STATUS(ferry_memory_on_pressure(e, record, &rec[0], &id[0]), FERRY_OK);
    CHECK_STATUS(ferry_memory_on_pressure(e, record, &rec[1], &id[1]), FERRY_OK);
    o = bytes_opts(FERRY_PRESSURE_DEVICE_USED, 5 * GIB, 20 * GIB);
    CHECK_STATUS(ferry_engine_set_pressure(e, &o), FERRY_OK);
    r = optimize(e, 16);
    CHECK(r.level_before == FERRY_PRESSURE_WARN && r.level_after == FERRY_PRESSURE_WARN);
    CHECK(r.callbacks_called == 2 && r.callbacks_failed == 1);
    CHECK(log_is(&log, order, 2, FERRY_PRESSURE_WARN));
    o = bytes_opts(FERRY_PRESSURE_DEVICE_USED, 5 * GIB, 8 * GIB);
    CHECK_STATUS(ferry_engine_set_pressure(e, &o), FERRY_OK);
    r = optimize(e, 16);
    CHECK(r.level_before == FERRY_PRESSURE_CRITICAL);
    CHECK(log_is(&log, order, 2, FERRY_PRESSURE_CRITICAL));
    CHECK_STATUS(ferry_memory_remove_callback(e, id[0]), FERRY_OK);
    CHECK_STATUS(ferry_memory_remove_callback(e, id[1]), FERRY_OK);

    /* The ring's device memory: reserved while it runs, cached after, trimmed to 0 by optimize. */
    o = bytes_opts(FERRY_PRESSURE_ENGINE_RESERVED, 1, 0);
    CHECK_STATUS(ferry_engine_set_pressure(e, &o), FERRY_OK);
    CHECK(snapshot(e, 0).engine_reserved_bytes == 0);
    CHECK(snapshot(e, 0).level == FERRY_PRESSURE_NONE);
    src = small_source();
    run_iterator(e, src, &reserved, &level);
    CHECK(reserved > 0);
    CHECK(level == FERRY_PRESSURE_WARN);
    s = snapshot(e, 0);
    reserved = s.engine_reserved_bytes;
    CHECK(reserved > 0);
    CHECK(s.level == FERRY_PRESSURE_WARN);
    r = optimize(e, 32);
    CHECK(r.trimmed_bytes >= reserved);
    CHECK(r.level_before == FERRY_PRESSURE_WARN && r.level_after == FERRY_PRESSURE_NONE);
    s = snapshot(e, 0);
    CHECK(s.engine_reserved_bytes == 0);
    CHECK(s.level == FERRY_PRESSURE_NONE);
    CHECK(optimize(e, 32).trimmed_bytes == 0);
    CHECK_STATUS(ferry_source_destroy(src), FERRY_OK);

    /* The recommendation: 1 GiB fixed, 4 GiB per sample; the whole device gives 16 at a multiple of 8. */
    CHECK_STATUS(ferry_pressure_options_init(&o), FERRY_OK);
    CHECK_STATUS(ferry_engine_set_pressure(e, &o), FERRY_OK);
    CHECK(optimize(e, 0).recommended_batch_size == 0);
    a = new_advisor(8);
    CHECK_STATUS(ferry_engine_set_advisor(e, a), FERRY_OK);
    CHECK_STATUS(ferry_advisor_observe(a, 2, 9 * GIB), FERRY_OK);
    CHECK(optimize(e, 0).recommended_batch_size == 0);
    CHECK_STATUS(ferry_advisor_observe(a, 4, 17 * GIB), FERRY_OK);
    CHECK(optimize(e, 0).recommended_batch_size == 16);
    CHECK(optimize(e, 8).recommended_batch_size == 16);
    o = bytes_opts(FERRY_PRESSURE_DEVICE_USED, 5 * GIB, 20 * GIB);
    CHECK_STATUS(ferry_engine_set_pressure(e, &o), FERRY_OK);
    r = optimize(e, 16);
    CHECK(r.recommended_batch_size >= 1 && r.recommended_batch_size <= 4);
    r = optimize(e, 2);
    CHECK(r.recommended_batch_size >= 1 && r.recommended_batch_size <= 2);
    CHECK_STATUS(ferry_advisor_destroy(a), FERRY_OK); /* destroyed while attached */
    CHECK(optimize(e, 16).recommended_batch_size == 0);
    CHECK_STATUS(ferry_engine_destroy(e), FERRY_OK);
}

int main(void) {
    const char* fake = getenv("FERRY_FAKE_GPU");
    rng_state = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ull ^ (uint64_t)clock();
    printf("seed %llu\n", (unsigned long long)rng_state);
    memset(source_data, 7, sizeof(source_data));

    test_options_and_sizes();
    test_cpu_pressure();
    test_cpu_callbacks();
    test_cpu_trim_and_advisor();
    test_advisor_linear_and_rounding();
    test_advisor_noisy();
    test_advisor_convex();
    test_advisor_oom();
    test_advisor_reduce();
    test_advisor_bad_input();
    if (fake != NULL && strcmp(fake, "1") == 0) {
        printf("the stand-in GPU\n");
        test_fake_gpu();
    }

    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
