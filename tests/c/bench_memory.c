/*
 * bench_memory — what a memory check costs from C.
 *
 *   bench_memory [--device N] [--interval MS] [--json PATH]
 *
 * It times, on one engine (device N, a CUDA ordinal or -1 for the CPU engine; default 0 when there is a
 * GPU, else -1):
 *   - ferry_memory_check: the cached snapshot (ns/call; 5 repeats x 2,000,000 calls, median);
 *   - ferry_memory_check_live: a query now (us/call; 5 x 20,000);
 *   - on a GPU, the raw driver call cuMemGetInfo_v2 with the device's primary context current, for
 *     comparison (us/call; 5 x 20,000). libcuda.so.1 is opened with dlopen; no CUDA headers are needed;
 *   - ferry_memory_check from 8 threads at once on the same engine: the aggregate cost (wall time / all
 *     calls) and the cost each thread sees (ns/call; 5 x 8 x 1,000,000).
 * Times come from clock_gettime(CLOCK_MONOTONIC). It prints a Markdown table and, with --json, writes the
 * same figures as JSON. Every status is checked; any failure exits with status 1.
 */
#define _POSIX_C_SOURCE 200809L

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ferry.h"

enum {
    REPEATS = 5,
    CHECK_CALLS = 2000000,
    LIVE_CALLS = 20000,
    RAW_CALLS = 20000,
    THREADS = 8,
    THREAD_CALLS = 1000000,
};

static void die(const char* what, ferry_status st) {
    fprintf(stderr, "bench_memory: %s: %s: %s\n", what, ferry_status_string(st), ferry_last_error());
    exit(1);
}

#define FERRY_CHECK(call)                     \
    do {                                      \
        ferry_status st_ = (call);            \
        if (st_ != FERRY_OK) die(#call, st_); \
    } while (0)

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_double(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

/* One row of the table: per-call cost over REPEATS runs. */
typedef struct {
    const char* name;
    const char* unit; /* "ns/call" or "us/call" */
    int threads;
    long calls; /* per repeat and per thread */
    double v[REPEATS];
    double median, min, max;
} result;

static void finish(result* r) {
    double s[REPEATS];
    memcpy(s, r->v, sizeof(s));
    qsort(s, REPEATS, sizeof(double), cmp_double);
    r->min = s[0];
    r->max = s[REPEATS - 1];
    r->median = s[REPEATS / 2];
}

/* ------------------------------------------------------------------------------------------------ */
/* The CUDA driver, for the raw comparison                                                           */
/* ------------------------------------------------------------------------------------------------ */

typedef int CUresult;
typedef int CUdevice;
typedef struct CUctx_st* CUcontext;

typedef struct {
    void* lib;
    CUresult (*init)(unsigned int flags);
    CUresult (*device_get)(CUdevice* dev, int ordinal);
    CUresult (*primary_retain)(CUcontext* ctx, CUdevice dev);
    CUresult (*primary_release)(CUdevice dev);
    CUresult (*push)(CUcontext ctx);
    CUresult (*pop)(CUcontext* ctx);
    CUresult (*mem_get_info)(size_t* free_bytes, size_t* total_bytes);
    CUresult (*error_name)(CUresult err, const char** name);
} cuda_driver;

static int load_symbol(void* lib, const char* name, void* fn_ptr, size_t fn_size) {
    void* sym = dlsym(lib, name);
    if (sym == NULL) {
        fprintf(stderr, "bench_memory: libcuda.so.1 has no %s\n", name);
        return 0;
    }
    memcpy(fn_ptr, &sym, fn_size); /* the POSIX way to turn dlsym's result into a function pointer */
    return 1;
}

#define LOAD(drv, field, name) load_symbol((drv)->lib, name, &(drv)->field, sizeof((drv)->field))

static int cuda_open(cuda_driver* d) {
    memset(d, 0, sizeof(*d));
    d->lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (d->lib == NULL) {
        fprintf(stderr, "bench_memory: dlopen libcuda.so.1: %s\n", dlerror());
        return 0;
    }
    return LOAD(d, init, "cuInit") && LOAD(d, device_get, "cuDeviceGet") &&
           LOAD(d, primary_retain, "cuDevicePrimaryCtxRetain") &&
           LOAD(d, primary_release, "cuDevicePrimaryCtxRelease_v2") && LOAD(d, push, "cuCtxPushCurrent_v2") &&
           LOAD(d, pop, "cuCtxPopCurrent_v2") && LOAD(d, mem_get_info, "cuMemGetInfo_v2") &&
           LOAD(d, error_name, "cuGetErrorName");
}

static int cuda_ok(const cuda_driver* d, CUresult r, const char* what) {
    const char* name = "?";
    if (r == 0) {
        return 1;
    }
    if (d->error_name != NULL) {
        d->error_name(r, &name);
    }
    fprintf(stderr, "bench_memory: %s: CUDA error %d (%s)\n", what, r, name ? name : "?");
    return 0;
}

static void bench_check(ferry_engine e, int live, result* r);

/*
 * Times, on the device's primary context (the one ferry and PyTorch share):
 *   raw_current:  cuMemGetInfo_v2 with the context already current on this thread;
 *   raw_pushpop:  cuCtxPushCurrent + cuMemGetInfo_v2 + cuCtxPopCurrent per call, as a library that must
 *                 leave the caller's thread as it found it does when the context is not current;
 *   live_current: ferry_memory_check_live while the context is current on this thread (as on a thread
 *                 where PyTorch runs), where ferry can skip the push and pop.
 */
static int bench_raw_driver(int ordinal, ferry_engine e, result* raw_current, result* raw_pushpop,
                            result* live_current) {
    cuda_driver d;
    CUdevice dev = 0;
    CUcontext ctx = NULL, popped = NULL;
    size_t free_bytes = 0, total_bytes = 0;
    int i, ok = 1;
    long k;

    if (!cuda_open(&d)) {
        return 0;
    }
    if (!cuda_ok(&d, d.init(0), "cuInit") || !cuda_ok(&d, d.device_get(&dev, ordinal), "cuDeviceGet") ||
        !cuda_ok(&d, d.primary_retain(&ctx, dev), "cuDevicePrimaryCtxRetain")) {
        return 0;
    }
    for (i = 0; i < REPEATS && ok; i++) {
        uint64_t t0 = now_ns();
        for (k = 0; k < raw_pushpop->calls && ok; k++) {
            ok = cuda_ok(&d, d.push(ctx), "cuCtxPushCurrent_v2") &&
                 cuda_ok(&d, d.mem_get_info(&free_bytes, &total_bytes), "cuMemGetInfo_v2") &&
                 cuda_ok(&d, d.pop(&popped), "cuCtxPopCurrent_v2");
        }
        raw_pushpop->v[i] = (double)(now_ns() - t0) / 1e3 / (double)raw_pushpop->calls;
    }
    if (!ok || !cuda_ok(&d, d.push(ctx), "cuCtxPushCurrent_v2")) {
        d.primary_release(dev);
        return 0;
    }
    for (i = 0; i < REPEATS && ok; i++) {
        uint64_t t0 = now_ns();
        for (k = 0; k < raw_current->calls; k++) {
            CUresult cr = d.mem_get_info(&free_bytes, &total_bytes);
            if (cr != 0) {
                ok = cuda_ok(&d, cr, "cuMemGetInfo_v2");
                break;
            }
        }
        raw_current->v[i] = (double)(now_ns() - t0) / 1e3 / (double)raw_current->calls;
    }
    if (ok && (total_bytes == 0 || free_bytes > total_bytes)) {
        fprintf(stderr, "bench_memory: cuMemGetInfo_v2 gave free %zu of total %zu\n", free_bytes, total_bytes);
        ok = 0;
    }
    if (ok) {
        bench_check(e, 1, live_current);
    }
    ok = cuda_ok(&d, d.pop(&popped), "cuCtxPopCurrent_v2") && ok;
    ok = cuda_ok(&d, d.primary_release(dev), "cuDevicePrimaryCtxRelease_v2") && ok;
    /* libcuda stays loaded: ferry holds it too, and unloading a driver is never worth it. */
    return ok;
}

/* ------------------------------------------------------------------------------------------------ */
/* ferry                                                                                             */
/* ------------------------------------------------------------------------------------------------ */

static void bench_check(ferry_engine e, int live, result* r) {
    ferry_memory_snapshot s;
    int i;
    long k;
    memset(&s, 0, sizeof(s));
    s.size = sizeof(s);
    for (i = 0; i < REPEATS; i++) {
        uint64_t t0 = now_ns();
        if (live) {
            for (k = 0; k < r->calls; k++) {
                ferry_status st = ferry_memory_check_live(e, &s);
                if (st != FERRY_OK) die("ferry_memory_check_live", st);
            }
            r->v[i] = (double)(now_ns() - t0) / 1e3 / (double)r->calls;
        } else {
            for (k = 0; k < r->calls; k++) {
                ferry_status st = ferry_memory_check(e, &s);
                if (st != FERRY_OK) die("ferry_memory_check", st);
            }
            r->v[i] = (double)(now_ns() - t0) / (double)r->calls;
        }
    }
    if (!(s.flags & FERRY_MEMORY_F_HOST) || (live && !(s.flags & FERRY_MEMORY_F_LIVE))) {
        fprintf(stderr, "bench_memory: the snapshot lacks expected flags (0x%x)\n", (unsigned)s.flags);
        exit(1);
    }
}

typedef struct {
    ferry_engine engine;
    long calls;
    pthread_barrier_t* start;
    uint64_t elapsed_ns;
    ferry_status status;
} worker;

static void* worker_main(void* arg) {
    worker* w = (worker*)arg;
    ferry_memory_snapshot s;
    uint64_t t0;
    long k;
    memset(&s, 0, sizeof(s));
    s.size = sizeof(s);
    w->status = FERRY_OK;
    pthread_barrier_wait(w->start);
    t0 = now_ns();
    for (k = 0; k < w->calls; k++) {
        ferry_status st = ferry_memory_check(w->engine, &s);
        if (st != FERRY_OK) {
            w->status = st;
            fprintf(stderr, "bench_memory: ferry_memory_check in a thread: %s: %s\n", ferry_status_string(st),
                    ferry_last_error());
            break;
        }
    }
    w->elapsed_ns = now_ns() - t0;
    return NULL;
}

/* 8 threads call ferry_memory_check on one engine at once. */
static void bench_threads(ferry_engine e, result* aggregate, result* per_thread) {
    pthread_t tid[THREADS];
    worker w[THREADS];
    pthread_barrier_t start;
    int i, j, rc;

    for (i = 0; i < REPEATS; i++) {
        uint64_t t0, wall;
        double sum = 0;
        if ((rc = pthread_barrier_init(&start, NULL, THREADS + 1)) != 0) {
            fprintf(stderr, "bench_memory: pthread_barrier_init: %s\n", strerror(rc));
            exit(1);
        }
        for (j = 0; j < THREADS; j++) {
            w[j].engine = e;
            w[j].calls = per_thread->calls;
            w[j].start = &start;
            w[j].elapsed_ns = 0;
            if ((rc = pthread_create(&tid[j], NULL, worker_main, &w[j])) != 0) {
                fprintf(stderr, "bench_memory: pthread_create: %s\n", strerror(rc));
                exit(1);
            }
        }
        pthread_barrier_wait(&start);
        t0 = now_ns();
        for (j = 0; j < THREADS; j++) {
            pthread_join(tid[j], NULL);
        }
        wall = now_ns() - t0;
        pthread_barrier_destroy(&start);
        for (j = 0; j < THREADS; j++) {
            if (w[j].status != FERRY_OK) {
                exit(1);
            }
            sum += (double)w[j].elapsed_ns / (double)w[j].calls;
        }
        aggregate->v[i] = (double)wall / ((double)THREADS * (double)per_thread->calls);
        per_thread->v[i] = sum / THREADS;
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* Output                                                                                            */
/* ------------------------------------------------------------------------------------------------ */

static void json_string(FILE* f, const char* s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            fprintf(f, "\\%c", c);
        } else if (c < 0x20) {
            fprintf(f, "\\u%04x", c);
        } else {
            fputc(c, f);
        }
    }
    fputc('"', f);
}

static int write_json(const char* path, const char* device_name, int device, const char* date, const result* r, int n) {
    int i, j;
    int32_t major = 0, minor = 0, patch = 0;
    FILE* f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "bench_memory: %s: %s\n", path, strerror(errno));
        return 0;
    }
    FERRY_CHECK(ferry_version(&major, &minor, &patch));
    fprintf(f, "{\n  \"benchmark\": \"bench_memory\",\n  \"ferry_version\": \"%d.%d.%d\",\n", major, minor, patch);
    fprintf(f, "  \"date\": \"%s\",\n  \"device\": %d,\n  \"device_name\": ", date, device);
    json_string(f, device_name);
    fprintf(f, ",\n  \"results\": [\n");
    for (i = 0; i < n; i++) {
        fprintf(f, "    {\"name\": ");
        json_string(f, r[i].name);
        fprintf(f, ", \"unit\": \"%s\", \"threads\": %d, \"repeats\": %d, \"calls\": %ld, ", r[i].unit, r[i].threads,
                REPEATS, r[i].calls);
        fprintf(f, "\"median\": %.4f, \"min\": %.4f, \"max\": %.4f, \"values\": [", r[i].median, r[i].min, r[i].max);
        for (j = 0; j < REPEATS; j++) {
            fprintf(f, "%s%.4f", j ? ", " : "", r[i].v[j]);
        }
        fprintf(f, "]}%s\n", i + 1 < n ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    if (fclose(f) != 0) {
        fprintf(stderr, "bench_memory: %s: %s\n", path, strerror(errno));
        return 0;
    }
    return 1;
}

static void usage(void) {
    fprintf(stderr, "usage: bench_memory [--device N] [--interval MS] [--json PATH]\n"
                    "  --device N   CUDA ordinal, or -1 for the CPU engine (default: 0 with a GPU, else -1)\n"
                    "  --interval MS  the engine's sample interval (default 100; 0: no background sampler)\n"
                    "  --json PATH  also write the results as JSON\n");
}

int main(int argc, char** argv) {
    int device = -2; /* not given */
    const char* json_path = NULL;
    uint32_t interval_ms = 100;
    int32_t count = 0;
    ferry_engine_options opts;
    ferry_engine engine = NULL;
    char device_name[300];
    char date[32];
    time_t t = time(NULL);
    struct tm tm;
    result r[9];
    int n = 0, i, ok = 1;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--device") == 0 && i + 1 < argc) {
            char* end = NULL;
            long v = strtol(argv[++i], &end, 10);
            if (end == argv[i] || *end != '\0' || v < -1 || v > 1024) {
                fprintf(stderr, "bench_memory: bad device \"%s\"\n", argv[i]);
                usage();
                return 2;
            }
            device = (int)v;
        } else if (strcmp(argv[i], "--interval") == 0 && i + 1 < argc) {
            char* end = NULL;
            long v = strtol(argv[++i], &end, 10);
            if (end == argv[i] || *end != '\0' || v < 0 || v > 60000) {
                fprintf(stderr, "bench_memory: bad interval \"%s\"\n", argv[i]);
                return 2;
            }
            interval_ms = (uint32_t)v;
        } else if (strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
            json_path = argv[++i];
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage();
            return 0;
        } else {
            fprintf(stderr, "bench_memory: unknown argument \"%s\"\n", argv[i]);
            usage();
            return 2;
        }
    }

    FERRY_CHECK(ferry_device_count(&count));
    if (device == -2) {
        device = count > 0 ? 0 : FERRY_DEVICE_CPU;
    }
    if (device == FERRY_DEVICE_CPU) {
        snprintf(device_name, sizeof(device_name), "CPU engine (%ld CPUs)", sysconf(_SC_NPROCESSORS_ONLN));
    } else {
        ferry_device_properties p;
        memset(&p, 0, sizeof(p));
        p.size = sizeof(p);
        FERRY_CHECK(ferry_device_info(device, &p));
        snprintf(device_name, sizeof(device_name), "%s", p.name);
    }
    gmtime_r(&t, &tm);
    strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", &tm);

    FERRY_CHECK(ferry_engine_options_init(&opts));
    opts.device = device;
    opts.sample_interval_ms = interval_ms;
    FERRY_CHECK(ferry_engine_create(&opts, &engine));

    memset(r, 0, sizeof(r));
    r[n].name = "ferry_memory_check";
    r[n].unit = "ns/call";
    r[n].threads = 1;
    r[n].calls = CHECK_CALLS;
    bench_check(engine, 0, &r[n]);
    n++;

    r[n].name = "ferry_memory_check_live (no context current)";
    r[n].unit = "us/call";
    r[n].threads = 1;
    r[n].calls = LIVE_CALLS;
    bench_check(engine, 1, &r[n]);
    n++;

    if (device != FERRY_DEVICE_CPU) {
        r[n].name = "cuMemGetInfo_v2 (raw driver, context current)";
        r[n].unit = "us/call";
        r[n].threads = 1;
        r[n].calls = RAW_CALLS;
        r[n + 1].name = "cuMemGetInfo_v2 (raw driver, push + pop per call)";
        r[n + 1].unit = "us/call";
        r[n + 1].threads = 1;
        r[n + 1].calls = RAW_CALLS;
        r[n + 2].name = "ferry_memory_check_live (context current on the caller)";
        r[n + 2].unit = "us/call";
        r[n + 2].threads = 1;
        r[n + 2].calls = LIVE_CALLS;
        if (bench_raw_driver(device, engine, &r[n], &r[n + 1], &r[n + 2])) {
            n += 3;
        } else {
            ok = 0;
        }
    }

    r[n].name = "ferry_memory_check, 8 threads: aggregate";
    r[n].unit = "ns/call";
    r[n].threads = THREADS;
    r[n].calls = THREAD_CALLS;
    r[n + 1].name = "ferry_memory_check, 8 threads: per thread";
    r[n + 1].unit = "ns/call";
    r[n + 1].threads = THREADS;
    r[n + 1].calls = THREAD_CALLS;
    bench_threads(engine, &r[n], &r[n + 1]);
    n += 2;

    FERRY_CHECK(ferry_engine_destroy(engine));

    /* The live check again with no background sampler in the process, to see whether the sampler's
       own driver and NVML calls slow it down. */
    opts.sample_interval_ms = 0;
    FERRY_CHECK(ferry_engine_create(&opts, &engine));
    r[n].name = "ferry_memory_check_live (no background sampler)";
    r[n].unit = "us/call";
    r[n].threads = 1;
    r[n].calls = LIVE_CALLS;
    bench_check(engine, 1, &r[n]);
    n++;
    FERRY_CHECK(ferry_engine_destroy(engine));

    for (i = 0; i < n; i++) {
        finish(&r[i]);
    }
    printf("bench_memory: device %d, %s, %s, sample interval %u ms\n\n", device, device_name, date, interval_ms);
    printf("| call | threads | repeats x calls (per thread) | median | min | max | unit |\n");
    printf("|---|---:|---:|---:|---:|---:|---|\n");
    for (i = 0; i < n; i++) {
        printf("| %s | %d | %d x %ld | %.3f | %.3f | %.3f | %s |\n", r[i].name, r[i].threads, REPEATS, r[i].calls,
               r[i].median, r[i].min, r[i].max, r[i].unit);
    }
    if (json_path != NULL) {
        ok = write_json(json_path, device_name, device, date, r, n) && ok;
    }
    return ok ? 0 : 1;
}
