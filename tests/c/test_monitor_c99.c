/*
 * test_monitor_c99 — the performance monitor through the plain C API, from a strict C99 program
 * (-std=c99 -Wall -Wextra -pedantic -Werror), with every background sampler off except where a test
 * starts them.
 *
 * It logs fresh random values from four threads (more per thread than a thread's ring holds, so the
 * writers fold through back-pressure) and checks the summary against the exact statistics: count, min and
 * max exactly, mean and std to rounding, the quantiles within the sketch's 0.5 % of the exact quantile.
 * It checks NaN and infinities (counted apart), ferry_metric_log_many and _many_at (with their
 * timestamps), the JSON report (FERRY_ERR_LIMIT first, then the whole text), report files (JSON and
 * HTML, mode 0644), the Prometheus endpoint (GET /metrics over a socket), and that bad input (NULL
 * pointers, wrong sizes, unknown flags, short intervals, bad names, stale and made-up handles) gets the
 * documented status.
 *
 * The last line of output is "N passed, N failed"; the exit status is non-zero when anything failed.
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "ferry.h"

#define THREADS 4
#define PER_THREAD 20000
#define ACCURACY 0.005

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

/* A value spread over three decades, 1..1000. */
static double rnd_value(void) { return exp((double)(rnd() >> 11) / 9007199254740992.0 * log(1000.0)); }

/* A monitor with every sampler off. */
static ferry_monitor quiet_monitor(void) {
    ferry_monitor_options o;
    ferry_monitor m = NULL;
    CHECK_STATUS(ferry_monitor_options_init(&o), FERRY_OK);
    o.gpu_interval_us = -1;
    o.pcie_interval_us = -1;
    o.system_interval_us = -1;
    CHECK_STATUS(ferry_monitor_create(&o, &m), FERRY_OK);
    CHECK(m != NULL);
    return m;
}

static ferry_metric_summary summary_of(ferry_monitor m, uint32_t id) {
    ferry_metric_summary s;
    memset(&s, 0, sizeof(s));
    s.size = sizeof(s);
    CHECK_STATUS(ferry_metric_summary_get(m, id, &s), FERRY_OK);
    return s;
}

static int cmp_double(const void* a, const void* b) {
    const double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

/* 1 when got is within the sketch's accuracy of the exact inverted-CDF quantile q of sorted[0..n), or of
   a neighbouring rank (the sketch rounds the rank its own way). */
static int quantile_ok(const double* sorted, size_t n, double q, double got) {
    long k = (long)ceil((double)n * q) - 1, j;
    if (k < 0) {
        k = 0;
    }
    if (k >= (long)n) {
        k = (long)n - 1;
    }
    for (j = k - 1; j <= k + 1; j++) {
        if (j >= 0 && j < (long)n && fabs(got - sorted[j]) <= ACCURACY * fabs(sorted[j]) * (1 + 1e-9)) {
            return 1;
        }
    }
    printf("  p%g = %.17g, exact %.17g\n", q * 100, got, sorted[k]);
    return 0;
}

static int close_rel(double want, double got, double eps) { return fabs(want - got) <= eps * fabs(want); }

/* Checks s against values[0..n) (sorted in place). */
static void check_summary(double* values, size_t n, const ferry_metric_summary* s) {
    double sum = 0, ss = 0, mean, lo = INFINITY, hi = -INFINITY;
    size_t i;
    for (i = 0; i < n; i++) {
        sum += values[i];
        lo = values[i] < lo ? values[i] : lo;
        hi = values[i] > hi ? values[i] : hi;
    }
    mean = sum / (double)n;
    for (i = 0; i < n; i++) {
        ss += (values[i] - mean) * (values[i] - mean);
    }
    qsort(values, n, sizeof(double), cmp_double);
    CHECK(s->count == n);
    CHECK(s->min == lo && s->max == hi);
    CHECK(close_rel(mean, s->mean, 1e-12));
    CHECK(close_rel(sqrt(ss / (double)n), s->std, 1e-9));
    CHECK(quantile_ok(values, n, 0.5, s->p50));
    CHECK(quantile_ok(values, n, 0.9, s->p90));
    CHECK(quantile_ok(values, n, 0.99, s->p99));
    CHECK(quantile_ok(values, n, 0.999, s->p999));
}

/* ------------------------------------------------------------------------------------------------ */

static void test_options(void) {
    ferry_monitor_options o;
    ferry_monitor m = (ferry_monitor)(uintptr_t)1;
    memset(&o, 0xff, sizeof(o));
    CHECK_STATUS(ferry_monitor_options_init(&o), FERRY_OK);
    CHECK(o.size == sizeof(o) && sizeof(o) == 72 && o.flags == 0);
    CHECK(o.gpu_interval_us == 0 && o.pcie_interval_us == 0 && o.system_interval_us == 0);
    CHECK(o.sketch_accuracy == 0 && o.series_points == 0 && o.rank == 0 && o.local_rank == 0);
    CHECK(o.num_disk_paths == 0 && o.node == NULL && o.disk_paths == NULL);
    CHECK(sizeof(ferry_metric_summary) == 112);
    CHECK_STATUS(ferry_monitor_options_init(NULL), FERRY_ERR_INVALID_ARGUMENT);

    /* NULL options: the defaults. */
    CHECK_STATUS(ferry_monitor_create(NULL, &m), FERRY_OK);
    CHECK(m != NULL);
    CHECK_STATUS(ferry_monitor_destroy(m), FERRY_OK);
    CHECK_STATUS(ferry_monitor_create(NULL, NULL), FERRY_ERR_INVALID_ARGUMENT);

    ferry_monitor_options_init(&o);
    o.size = 0;
    m = (ferry_monitor)(uintptr_t)1;
    CHECK_STATUS(ferry_monitor_create(&o, &m), FERRY_ERR_INVALID_ARGUMENT);
    CHECK(m == NULL);
    ferry_monitor_options_init(&o);
    o.flags = 0x2u;
    CHECK_STATUS(ferry_monitor_create(&o, &m), FERRY_ERR_INVALID_ARGUMENT);
    ferry_monitor_options_init(&o);
    o.gpu_interval_us = 9999; /* below 10 ms */
    CHECK_STATUS(ferry_monitor_create(&o, &m), FERRY_ERR_INVALID_ARGUMENT);
    ferry_monitor_options_init(&o);
    o.system_interval_us = 1000;
    CHECK_STATUS(ferry_monitor_create(&o, &m), FERRY_ERR_INVALID_ARGUMENT);
    ferry_monitor_options_init(&o);
    o.pcie_interval_us = 1;
    CHECK_STATUS(ferry_monitor_create(&o, &m), FERRY_ERR_INVALID_ARGUMENT);
    ferry_monitor_options_init(&o);
    o.num_disk_paths = 1;
    CHECK_STATUS(ferry_monitor_create(&o, &m), FERRY_ERR_INVALID_ARGUMENT);
}

static void test_names(void) {
    ferry_monitor m = quiet_monitor();
    uint32_t a = 99, b = 99, c = 99;
    double v = 1;
    ferry_metric_summary s;
    CHECK_STATUS(ferry_metric_id(m, "loss", &a), FERRY_OK);
    CHECK_STATUS(ferry_metric_id(m, "train/acc:top-1.v2", &b), FERRY_OK);
    CHECK_STATUS(ferry_metric_id(m, "loss", &c), FERRY_OK);
    CHECK(a != b && a == c);
    CHECK_STATUS(ferry_metric_id(m, "", &c), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_metric_id(m, "has space", &c), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_metric_id(m, "semi;colon", &c), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_metric_id(m, NULL, &c), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_metric_id(m, "loss", NULL), FERRY_ERR_INVALID_ARGUMENT);
    /* ferry_metric_find looks a name up without creating it. */
    c = 99;
    CHECK_STATUS(ferry_metric_find(m, "loss", &c), FERRY_OK);
    CHECK(c == a);
    CHECK_STATUS(ferry_metric_find(m, "lsos", &c), FERRY_ERR_INVALID_ARGUMENT);
    CHECK(strstr(ferry_last_error(), "lsos") != NULL);
    CHECK_STATUS(ferry_metric_find(m, "lsos", &c), FERRY_ERR_INVALID_ARGUMENT); /* still absent */
    CHECK_STATUS(ferry_metric_find(m, NULL, &c), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_metric_find(m, "loss", NULL), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_metric_log(m, 1000, 1), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_metric_log_many(m, 1000, &v, 1), FERRY_ERR_INVALID_ARGUMENT);
    memset(&s, 0, sizeof(s));
    s.size = sizeof(s);
    CHECK_STATUS(ferry_metric_summary_get(m, 1000, &s), FERRY_ERR_INVALID_ARGUMENT);
    s.size = 8;
    CHECK_STATUS(ferry_metric_summary_get(m, a, &s), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_metric_summary_get(m, a, NULL), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_monitor_destroy(m), FERRY_OK);
}

struct writer {
    ferry_monitor m;
    uint32_t id;
    const double* values;
    ferry_status status;
};

static void* write_values(void* arg) {
    struct writer* w = arg;
    int i;
    w->status = FERRY_OK;
    for (i = 0; i < PER_THREAD && w->status == FERRY_OK; i++) {
        w->status = ferry_metric_log(w->m, w->id, w->values[i]);
    }
    return NULL;
}

static void test_threads(void) {
    ferry_monitor m = quiet_monitor();
    static double values[THREADS * PER_THREAD];
    struct writer w[THREADS];
    pthread_t th[THREADS];
    uint32_t id = 0;
    ferry_metric_summary s;
    int i;
    uint64_t before = now_ns();
    CHECK_STATUS(ferry_metric_id(m, "loss", &id), FERRY_OK);
    for (i = 0; i < THREADS * PER_THREAD; i++) {
        values[i] = rnd_value();
    }
    for (i = 0; i < THREADS; i++) {
        w[i].m = m;
        w[i].id = id;
        w[i].values = values + i * PER_THREAD;
        CHECK(pthread_create(&th[i], NULL, write_values, &w[i]) == 0);
    }
    for (i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        CHECK(w[i].status == FERRY_OK);
    }
    s = summary_of(m, id);
    CHECK(s.nonfinite == 0);
    CHECK(s.first_ns >= before && s.last_ns >= s.first_ns && s.last_ns <= now_ns());
    check_summary(values, THREADS * PER_THREAD, &s);
    CHECK_STATUS(ferry_monitor_destroy(m), FERRY_OK);
}

static void test_nonfinite_and_batches(void) {
    ferry_monitor m = quiet_monitor();
    uint32_t id = 0, many = 0, at = 0;
    double batch[3000], copy[3000];
    uint64_t ts[3000];
    double tail[3];
    ferry_metric_summary s;
    uint64_t t0;
    int i;
    CHECK_STATUS(ferry_metric_id(m, "loss", &id), FERRY_OK);
    CHECK_STATUS(ferry_metric_log(m, id, 1), FERRY_OK);
    CHECK_STATUS(ferry_metric_log(m, id, NAN), FERRY_OK);
    CHECK_STATUS(ferry_metric_log(m, id, 3), FERRY_OK);
    CHECK_STATUS(ferry_metric_log(m, id, INFINITY), FERRY_OK);
    tail[0] = -INFINITY;
    tail[1] = 5;
    tail[2] = NAN;
    CHECK_STATUS(ferry_metric_log_many(m, id, tail, 3), FERRY_OK);
    s = summary_of(m, id);
    CHECK(s.count == 3 && s.nonfinite == 4);
    CHECK(s.mean == 3 && s.min == 1 && s.max == 5 && s.last == 5);

    CHECK_STATUS(ferry_metric_id(m, "batch_loss", &many), FERRY_OK);
    for (i = 0; i < 3000; i++) {
        batch[i] = rnd_value();
    }
    memcpy(copy, batch, sizeof(batch));
    CHECK_STATUS(ferry_metric_log_many(m, many, batch, 3000), FERRY_OK);
    CHECK_STATUS(ferry_metric_log_many(m, many, NULL, 0), FERRY_OK);
    CHECK_STATUS(ferry_metric_log_many(m, many, NULL, 1), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_metric_log_many(m, many, batch, -1), FERRY_ERR_INVALID_ARGUMENT);
    s = summary_of(m, many);
    check_summary(copy, 3000, &s);
    CHECK(s.last == batch[2999]);

    CHECK_STATUS(ferry_metric_id(m, "buffered", &at), FERRY_OK);
    t0 = now_ns() - 3000u * 1000u;
    for (i = 0; i < 3000; i++) {
        batch[i] = rnd_value();
        ts[i] = t0 + (uint64_t)i * 1000u;
    }
    memcpy(copy, batch, sizeof(batch));
    CHECK_STATUS(ferry_metric_log_many_at(m, at, batch, ts, 3000), FERRY_OK);
    CHECK_STATUS(ferry_metric_log_many_at(m, at, batch, NULL, 1), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_metric_log_many_at(m, at, NULL, ts, 1), FERRY_ERR_INVALID_ARGUMENT);
    s = summary_of(m, at);
    check_summary(copy, 3000, &s);
    CHECK(s.first_ns == ts[0] && s.last_ns == ts[2999]);
    CHECK_STATUS(ferry_monitor_destroy(m), FERRY_OK);
}

/* Returns the JSON report (malloc'ed; the caller frees it), growing the buffer while it does not fit. */
static char* report(ferry_monitor m) {
    uint64_t n = 0;
    int tries;
    CHECK_STATUS(ferry_monitor_report_json(m, NULL, 0, &n), FERRY_ERR_LIMIT);
    CHECK(n > 0);
    for (tries = 0; tries < 8; tries++) {
        uint64_t got = 0;
        char* buf = malloc((size_t)n + 65);
        ferry_status st = ferry_monitor_report_json(m, buf, n + 65, &got);
        if (st == FERRY_OK) {
            CHECK(got <= n + 64 && buf[got] == '\0' && strlen(buf) == got);
            return buf;
        }
        free(buf);
        CHECK_STATUS(st, FERRY_ERR_LIMIT);
        n = got;
    }
    CHECK(0 && "the report kept outgrowing its buffer");
    return NULL;
}

static int file_has(const char* path, const char* needle) {
    FILE* f = fopen(path, "rb");
    static char buf[1 << 20];
    size_t n;
    if (f == NULL) {
        return 0;
    }
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, needle) != NULL;
}

static void test_reports(void) {
    ferry_monitor m = quiet_monitor();
    uint32_t id = 0;
    uint64_t n = 0;
    char small[8];
    const char* tmp = getenv("TMPDIR");
    char dir[200];
    char path[256];
    struct stat st;
    char* js;
    int i;
    CHECK_STATUS(ferry_metric_id(m, "loss", &id), FERRY_OK);
    for (i = 0; i < 500; i++) {
        CHECK_STATUS(ferry_metric_log(m, id, 1.0 / (i + 1)), FERRY_OK);
    }
    memset(small, 'x', sizeof(small));
    CHECK_STATUS(ferry_monitor_report_json(m, small, sizeof(small), &n), FERRY_ERR_LIMIT);
    CHECK(n > sizeof(small) && small[0] == 'x');
    CHECK_STATUS(ferry_monitor_report_json(m, NULL, 0, NULL), FERRY_ERR_INVALID_ARGUMENT);
    js = report(m);
    if (js != NULL) {
        CHECK(strstr(js, "\"schema\": \"ferry.report/1\"") != NULL);
        CHECK(strstr(js, "\"training_metrics\"") != NULL && strstr(js, "\"loss\"") != NULL);
        CHECK(strstr(js, "\"count\": 500") != NULL);
        CHECK(strstr(js, "\"p999\"") != NULL && strstr(js, "\"series\"") != NULL);
        free(js);
    }

    snprintf(dir, sizeof(dir), "%s/ferry-monitor-XXXXXX", tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
    if (mkdtemp(dir) == NULL) {
        CHECK(0 && "mkdtemp");
    } else {
        snprintf(path, sizeof(path), "%s/report.json", dir);
        CHECK_STATUS(ferry_monitor_write_report(m, path), FERRY_OK);
        CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0644);
        CHECK(file_has(path, "ferry.report/1"));
        remove(path);
        snprintf(path, sizeof(path), "%s/report.html", dir);
        CHECK_STATUS(ferry_monitor_write_report(m, path), FERRY_OK);
        CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0644);
        CHECK(file_has(path, "<svg"));
        remove(path);
        snprintf(path, sizeof(path), "%s/missing/report.json", dir);
        CHECK_STATUS(ferry_monitor_write_report(m, path), FERRY_ERR_INVALID_ARGUMENT);
        rmdir(dir);
    }
    CHECK_STATUS(ferry_monitor_write_report(m, NULL), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_monitor_destroy(m), FERRY_OK);
}

/* GETs /metrics from host:port over a plain socket; returns 1 when the response holds needle. */
static int http_get_has(const char* bound, const char* needle) {
    static char resp[1 << 20];
    char host[64], req[256];
    const char* colon = strrchr(bound, ':');
    struct sockaddr_in sa;
    size_t got = 0;
    ssize_t r;
    int fd, ok;
    if (colon == NULL || (size_t)(colon - bound) >= sizeof(host)) {
        return 0;
    }
    memcpy(host, bound, (size_t)(colon - bound));
    host[colon - bound] = '\0';
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        return 0;
    }
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        return 0;
    }
    if (connect(fd, (struct sockaddr*)&sa, sizeof(sa)) != 0) {
        close(fd);
        return 0;
    }
    snprintf(req, sizeof(req), "GET /metrics HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n", bound);
    if (write(fd, req, strlen(req)) != (ssize_t)strlen(req)) {
        close(fd);
        return 0;
    }
    while (got < sizeof(resp) - 1 && (r = read(fd, resp + got, sizeof(resp) - 1 - got)) > 0) {
        got += (size_t)r;
    }
    close(fd);
    resp[got] = '\0';
    ok = strncmp(resp, "HTTP/1.", 7) == 0 && strstr(resp, " 200 ") != NULL && strstr(resp, needle) != NULL;
    if (!ok) {
        printf("  GET /metrics: %.300s\n", resp);
    }
    return ok;
}

static void test_prometheus(void) {
    ferry_monitor m = quiet_monitor();
    uint32_t id = 0;
    char bound[64], other[64];
    CHECK_STATUS(ferry_metric_id(m, "loss", &id), FERRY_OK);
    CHECK_STATUS(ferry_metric_log(m, id, 0.25), FERRY_OK);
    memset(bound, 'x', sizeof(bound));
    CHECK_STATUS(ferry_monitor_serve_prometheus(m, "127.0.0.1:0", bound, sizeof(bound)), FERRY_OK);
    CHECK(memchr(bound, '\0', sizeof(bound)) != NULL);
    CHECK(strncmp(bound, "127.0.0.1:", 10) == 0 && atoi(bound + 10) > 0);
    CHECK(http_get_has(bound, "ferry_loss"));
    CHECK_STATUS(ferry_monitor_serve_prometheus(m, "127.0.0.1:0", other, sizeof(other)), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_monitor_destroy(m), FERRY_OK);
    CHECK(!http_get_has(bound, "ferry_loss")); /* the endpoint went with the monitor */
}

static void test_handles(void) {
    ferry_monitor m = quiet_monitor();
    uint32_t id = 0;
    double v = 1;
    uint64_t n = 0;
    ferry_metric_summary s;
    ferry_engine e = NULL;
    ferry_engine_options eo;
    CHECK_STATUS(ferry_metric_id(m, "loss", &id), FERRY_OK);
    CHECK_STATUS(ferry_metric_log(m, id, 1), FERRY_OK);
    CHECK_STATUS(ferry_monitor_destroy(m), FERRY_OK);
    memset(&s, 0, sizeof(s));
    s.size = sizeof(s);
    /* stale */
    CHECK_STATUS(ferry_metric_log(m, id, 1), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_metric_log_many(m, id, &v, 1), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_metric_id(m, "loss", &id), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_metric_summary_get(m, id, &s), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_monitor_report_json(m, NULL, 0, &n), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_monitor_start(m), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_monitor_destroy(m), FERRY_ERR_INVALID_HANDLE);
    /* NULL */
    CHECK_STATUS(ferry_metric_log(NULL, 0, 1), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_metric_summary_get(NULL, 0, &s), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_monitor_stop(NULL), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_monitor_destroy(NULL), FERRY_OK);
    /* made up, and a handle of another kind */
    CHECK_STATUS(ferry_metric_log((ferry_monitor)(uintptr_t)0x1234, 0, 1), FERRY_ERR_INVALID_HANDLE);
    ferry_engine_options_init(&eo);
    eo.device = FERRY_DEVICE_CPU;
    CHECK_STATUS(ferry_engine_create(&eo, &e), FERRY_OK);
    CHECK_STATUS(ferry_metric_log((ferry_monitor)(void*)e, 0, 1), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_monitor_start((ferry_monitor)(void*)e), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_engine_destroy(e), FERRY_OK);
}

/* A CPU iterator attached to a started monitor reports its pipeline figures. */
static void test_attach(void) {
    static uint8_t data[64 * 16];
    ferry_field f;
    const void* ptrs[1];
    ferry_source src = NULL;
    ferry_engine e = NULL;
    ferry_engine_options eo;
    ferry_iterator_options io;
    ferry_iterator it = NULL;
    ferry_batch b = NULL;
    ferry_monitor_options o;
    ferry_monitor m = NULL;
    char* js = NULL;
    int i, found = 0;
    for (i = 0; i < (int)sizeof(data); i++) {
        data[i] = (uint8_t)rnd();
    }
    memset(&f, 0, sizeof(f));
    f.name = "x";
    f.dtype = FERRY_DTYPE_UINT8;
    f.ndim = 1;
    f.shape[0] = 16;
    ptrs[0] = data;
    CHECK_STATUS(ferry_source_memory(64, &f, 1, ptrs, &src), FERRY_OK);
    ferry_engine_options_init(&eo);
    eo.device = FERRY_DEVICE_CPU;
    CHECK_STATUS(ferry_engine_create(&eo, &e), FERRY_OK);
    ferry_iterator_options_init(&io);
    io.batch_size = 8;
    io.world_size = 1;
    CHECK_STATUS(ferry_iterator_create(e, src, &io, &it), FERRY_OK);

    ferry_monitor_options_init(&o);
    o.gpu_interval_us = -1;
    o.system_interval_us = 20000;
    o.flags = FERRY_MONITOR_F_START;
    CHECK_STATUS(ferry_monitor_create(&o, &m), FERRY_OK);
    CHECK_STATUS(ferry_monitor_attach_iterator(m, "train", it), FERRY_OK);
    CHECK_STATUS(ferry_monitor_attach_iterator(m, "train", it), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_monitor_attach_iterator(m, NULL, it), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_monitor_attach_iterator(m, "other", NULL), FERRY_ERR_INVALID_HANDLE);
    for (i = 0; i < 8; i++) {
        if (ferry_iterator_next(it, NULL, &b) == FERRY_OK) {
            ferry_batch_release(b, NULL);
        }
    }
    for (i = 0; i < 500 && !found; i++) { /* up to 10 s */
        struct timespec ts = {0, 20000000};
        js = report(m);
        found =
            js != NULL && strstr(js, "\"pipeline_metrics\"") != NULL && strstr(js, "\"batches_per_second\"") != NULL;
        free(js);
        if (!found) {
            nanosleep(&ts, NULL);
        }
    }
    CHECK(found);
    CHECK_STATUS(ferry_monitor_stop(m), FERRY_OK);
    CHECK_STATUS(ferry_monitor_destroy(m), FERRY_OK);
    CHECK_STATUS(ferry_iterator_destroy(it), FERRY_OK);
    CHECK_STATUS(ferry_engine_destroy(e), FERRY_OK);
    CHECK_STATUS(ferry_source_destroy(src), FERRY_OK);
}

int main(void) {
    rng_state = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ull ^ (uint64_t)clock();
    printf("seed %llu\n", (unsigned long long)rng_state);

    test_options();
    test_names();
    test_threads();
    test_nonfinite_and_batches();
    test_reports();
    test_prometheus();
    test_handles();
    test_attach();

    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
