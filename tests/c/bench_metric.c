/*
 * bench_metric — what logging a metric costs from C.
 *
 *   bench_metric [--json PATH]
 *
 * It times ferry_metric_log, which is written in C and never enters Go:
 *   - from one thread: ns/call over bursts of 2,048 calls (half a thread's ring), with the monitor's fold
 *     between bursts outside the timed region, as the background fold does between a training loop's
 *     logs; 5 repeats x 4,194,304 calls, median;
 *   - from 8 threads at once, each with its own ring: the cost each thread sees, same bursts;
 *   - sustained: 4,194,304 calls back to back from one thread, folds included (a full ring folds in the
 *     logging thread: back-pressure, never a drop);
 *   - ferry_metric_log_many: ns per value for batches of 4,096;
 *   - ferry_metric_summary_get after 10,000,000 values: us/call.
 * Every status is checked; the final counts are checked against what was logged.
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ferry.h"

enum { REPEATS = 5, CALLS = 1 << 22, BURST = 2048, THREADS = 8, MANY = 4096 }; /* CALLS: whole bursts */

static void check(ferry_status st, const char* what) {
    if (st != FERRY_OK) {
        fprintf(stderr, "bench_metric: %s: %s: %s\n", what, ferry_status_string(st), ferry_last_error());
        exit(1);
    }
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

static double median(double* v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

static ferry_monitor mon;
static uint32_t metric;
static pthread_barrier_t barrier;

/* Logs CALLS values in bursts; returns the ns spent inside the bursts. */
static double bursts(uint32_t id) {
    double spent = 0;
    ferry_metric_summary s;
    s.size = sizeof s;
    for (int done = 0; done < CALLS; done += BURST) {
        double t0 = now_ns();
        for (int i = 0; i < BURST; i++) {
            check(ferry_metric_log(mon, id, (double)i), "ferry_metric_log");
        }
        spent += now_ns() - t0;
        check(ferry_metric_summary_get(mon, id, &s), "ferry_metric_summary_get"); /* the fold, untimed */
    }
    return spent;
}

static void* thread_main(void* arg) {
    double* out = arg;
    pthread_barrier_wait(&barrier);
    *out = bursts(metric);
    return NULL;
}

int main(int argc, char** argv) {
    const char* json = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
            json = argv[++i];
        } else {
            fprintf(stderr, "usage: bench_metric [--json PATH]\n");
            return 2;
        }
    }
    ferry_monitor_options o;
    check(ferry_monitor_options_init(&o), "options");
    o.gpu_interval_us = -1;
    o.system_interval_us = -1;
    check(ferry_monitor_create(&o, &mon), "ferry_monitor_create");
    check(ferry_metric_id(mon, "loss", &metric), "ferry_metric_id");
    uint64_t expected = 0;

    double single[REPEATS];
    for (int r = 0; r < REPEATS; r++) {
        single[r] = bursts(metric) / CALLS;
        expected += CALLS;
    }
    double one = median(single, REPEATS);

    double per_thread[REPEATS];
    for (int r = 0; r < REPEATS; r++) {
        pthread_t th[THREADS];
        double spent[THREADS];
        pthread_barrier_init(&barrier, NULL, THREADS);
        for (int t = 0; t < THREADS; t++) {
            pthread_create(&th[t], NULL, thread_main, &spent[t]);
        }
        double sum = 0;
        for (int t = 0; t < THREADS; t++) {
            pthread_join(th[t], NULL);
            sum += spent[t];
        }
        pthread_barrier_destroy(&barrier);
        per_thread[r] = sum / THREADS / CALLS;
        expected += (uint64_t)THREADS * CALLS;
    }
    double threaded = median(per_thread, REPEATS);

    double sustained[REPEATS];
    for (int r = 0; r < REPEATS; r++) {
        double t0 = now_ns();
        for (int i = 0; i < CALLS; i++) {
            check(ferry_metric_log(mon, metric, (double)i), "ferry_metric_log");
        }
        sustained[r] = (now_ns() - t0) / CALLS;
        expected += CALLS;
    }
    double sus = median(sustained, REPEATS);

    double* vals = malloc(MANY * sizeof *vals);
    for (int i = 0; i < MANY; i++) vals[i] = i * 0.001;
    double many[REPEATS];
    for (int r = 0; r < REPEATS; r++) {
        double t0 = now_ns();
        for (int k = 0; k < 250; k++) {
            check(ferry_metric_log_many(mon, metric, vals, MANY), "ferry_metric_log_many");
        }
        many[r] = (now_ns() - t0) / (250.0 * MANY);
        expected += 250u * MANY;
    }
    double many_ns = median(many, REPEATS);

    ferry_metric_summary s;
    s.size = sizeof s;
    double sum_t[REPEATS];
    for (int r = 0; r < REPEATS; r++) {
        double t0 = now_ns();
        check(ferry_metric_summary_get(mon, metric, &s), "summary");
        sum_t[r] = (now_ns() - t0) / 1e3;
    }
    double summary_us = median(sum_t, REPEATS);
    if (s.count != expected) {
        fprintf(stderr, "bench_metric: the summary counts %llu values, %llu were logged\n", (unsigned long long)s.count,
                (unsigned long long)expected);
        return 1;
    }
    check(ferry_monitor_destroy(mon), "ferry_monitor_destroy");

    printf("| what | cost |\n|---|---:|\n");
    printf("| ferry_metric_log, 1 thread | %.1f ns/call |\n", one);
    printf("| ferry_metric_log, %d threads at once (each) | %.1f ns/call |\n", THREADS, threaded);
    printf("| ferry_metric_log, sustained (folds included) | %.1f ns/call |\n", sus);
    printf("| ferry_metric_log_many, batches of %d | %.1f ns/value |\n", MANY, many_ns);
    printf("| ferry_metric_summary_get after %llu values | %.1f us |\n", (unsigned long long)expected, summary_us);
    if (json != NULL) {
        FILE* f = fopen(json, "w");
        if (f == NULL) {
            perror(json);
            return 1;
        }
        fprintf(f,
                "{\"log_ns\": %.3f, \"log_threads\": %d, \"log_threaded_ns\": %.3f, \"log_sustained_ns\": %.3f, "
                "\"log_many_ns_per_value\": %.3f, \"summary_us\": %.3f, \"values\": %llu}\n",
                one, THREADS, threaded, sus, many_ns, summary_us, (unsigned long long)expected);
        fclose(f);
    }
    free(vals);
    return 0;
}
