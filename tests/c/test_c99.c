/*
 * test_c99 — the C API exercised from a strict C99 program (-std=c99 -Wall -Wextra -pedantic -Werror).
 *
 * It checks the status strings, the thread-local last error, the version, device enumeration, the CPU
 * engine's memory check, and that bad input (NULL pointers, wrong struct sizes, stale, made-up and foreign
 * handles, invalid options) gets the documented status without breaking a live engine. The GPU section
 * runs when ferry_device_count() > 0; without a GPU it is skipped, or fails when FERRY_REQUIRE_GPU=1.
 *
 * The last line of output is "N passed, N failed"; the exit status is non-zero when anything failed.
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "ferry.h"

/* A no-device message names the missing driver library, or the driver's own CUDA_ERROR_NO_DEVICE where
   the driver is installed without a GPU (a container, a CPU host). */
static int names_missing_driver(const char* msg) {
    return strstr(msg, "libcuda.so.1") != NULL || strstr(msg, "CUDA_ERROR_NO_DEVICE") != NULL;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int require_gpu(void) {
    const char* v = getenv("FERRY_REQUIRE_GPU");
    return v != NULL && v[0] != '\0' && strcmp(v, "0") != 0;
}

static int all_bytes(const unsigned char* p, size_t n, unsigned char value) {
    size_t i;
    for (i = 0; i < n; i++) {
        if (p[i] != value) {
            return 0;
        }
    }
    return 1;
}

/* ------------------------------------------------------------------------------------------------ */

static void test_status_strings(void) {
    static const struct {
        ferry_status status;
        const char* name;
    } table[] = {
        {FERRY_OK, "FERRY_OK"},
        {FERRY_ERR_INVALID_ARGUMENT, "FERRY_ERR_INVALID_ARGUMENT"},
        {FERRY_ERR_INVALID_HANDLE, "FERRY_ERR_INVALID_HANDLE"},
        {FERRY_ERR_NO_DEVICE, "FERRY_ERR_NO_DEVICE"},
        {FERRY_ERR_CUDA, "FERRY_ERR_CUDA"},
        {FERRY_ERR_NVML, "FERRY_ERR_NVML"},
        {FERRY_ERR_OUT_OF_MEMORY, "FERRY_ERR_OUT_OF_MEMORY"},
        {FERRY_ERR_UNSUPPORTED, "FERRY_ERR_UNSUPPORTED"},
        {FERRY_ERR_IO, "FERRY_ERR_IO"},
        {FERRY_ERR_FORMAT, "FERRY_ERR_FORMAT"},
        {FERRY_ERR_CLOSED, "FERRY_ERR_CLOSED"},
        {FERRY_ERR_TIMEOUT, "FERRY_ERR_TIMEOUT"},
        {FERRY_ERR_LIMIT, "FERRY_ERR_LIMIT"},
        {FERRY_END_OF_EPOCH, "FERRY_END_OF_EPOCH"},
        {FERRY_ERR_INTERNAL, "FERRY_ERR_INTERNAL"},
    };
    static const int unknown[] = {-1, 14, 42, 98, 100, 1000};
    size_t i;

    /* The values are part of the ABI. */
    CHECK(FERRY_OK == 0 && FERRY_ERR_INVALID_ARGUMENT == 1 && FERRY_ERR_INVALID_HANDLE == 2);
    CHECK(FERRY_ERR_NO_DEVICE == 3 && FERRY_ERR_LIMIT == 12 && FERRY_END_OF_EPOCH == 13 && FERRY_ERR_INTERNAL == 99);

    for (i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        const char* s = ferry_status_string(table[i].status);
        if (s == NULL || strcmp(s, table[i].name) != 0) {
            failed++;
            printf("FAIL: ferry_status_string(%d) = \"%s\", want \"%s\"\n", (int)table[i].status, s ? s : "(null)",
                   table[i].name);
        } else {
            passed++;
        }
    }
    for (i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
        const char* s = ferry_status_string((ferry_status)unknown[i]);
        if (s == NULL || strcmp(s, "FERRY_ERR_UNKNOWN_STATUS") != 0) {
            failed++;
            printf("FAIL: ferry_status_string(%d) = \"%s\", want FERRY_ERR_UNKNOWN_STATUS\n", unknown[i],
                   s ? s : "(null)");
        } else {
            passed++;
        }
    }
}

static void* last_error_thread(void* arg) {
    const char** out = (const char**)arg;
    static char copy[256];
    const char* e = ferry_last_error();
    /* Copy: the string stays valid only until this thread's next ferry call. */
    strncpy(copy, e ? e : "(null)", sizeof(copy) - 1);
    *out = copy;
    return NULL;
}

/* Runs first: no ferry call has failed on this thread yet. */
static void test_last_error(void) {
    const char* e = ferry_last_error();
    char saved[512];
    pthread_t t;
    const char* other = NULL;
    int32_t n = 0;

    CHECK(e != NULL && e[0] == '\0');

    CHECK_STATUS(ferry_device_count(NULL), FERRY_ERR_INVALID_ARGUMENT);
    e = ferry_last_error();
    CHECK(e != NULL && e[0] != '\0');
    strncpy(saved, e, sizeof(saved) - 1);
    saved[sizeof(saved) - 1] = '\0';

    /* A successful call does not clear the message. */
    CHECK_STATUS(ferry_device_count(&n), FERRY_OK);
    CHECK(strcmp(ferry_last_error(), saved) == 0);

    /* The message is thread-local: a fresh thread sees "". */
    CHECK(pthread_create(&t, NULL, last_error_thread, &other) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(other != NULL && other[0] == '\0');
}

static void test_version(void) {
    int32_t major = -1, minor = -1, patch = -1;
    CHECK_STATUS(ferry_version(&major, &minor, &patch), FERRY_OK);
    CHECK(major == FERRY_VERSION_MAJOR);
    CHECK(minor == FERRY_VERSION_MINOR);
    CHECK(patch == FERRY_VERSION_PATCH);
    /* Every pointer may be NULL. */
    CHECK_STATUS(ferry_version(NULL, NULL, NULL), FERRY_OK);
    minor = -1;
    CHECK_STATUS(ferry_version(NULL, &minor, NULL), FERRY_OK);
    CHECK(minor == FERRY_VERSION_MINOR);
}

static void test_struct_sizes(void) {
    /* The x86-64 layout is the ABI; the other bindings mirror it. */
    CHECK(sizeof(ferry_device_properties) == 416);
    CHECK(sizeof(ferry_system_properties) == 688);
    CHECK(sizeof(ferry_engine_options) == 16);
    CHECK(sizeof(ferry_memory_snapshot) == 160);
}

static int32_t test_devices(void) {
    int32_t n = -1;
    ferry_system_properties sys;
    ferry_device_properties dev;
    struct {
        ferry_system_properties p;
        unsigned char tail[64];
    } big;

    CHECK_STATUS(ferry_device_count(&n), FERRY_OK);
    CHECK(n >= 0);
    CHECK_STATUS(ferry_device_count(NULL), FERRY_ERR_INVALID_ARGUMENT);

    memset(&sys, 0xAB, sizeof(sys));
    sys.size = sizeof(sys);
    CHECK_STATUS(ferry_system_info(&sys), FERRY_OK);
    CHECK(sys.size == sizeof(sys));
    CHECK(sys.device_count == n);
    CHECK(memchr(sys.driver_version, '\0', sizeof(sys.driver_version)) != NULL);
    CHECK(memchr(sys.nvml_version, '\0', sizeof(sys.nvml_version)) != NULL);
    CHECK(memchr(sys.cuda_status, '\0', sizeof(sys.cuda_status)) != NULL);
    CHECK(memchr(sys.nvml_status, '\0', sizeof(sys.nvml_status)) != NULL);
    if (sys.flags & FERRY_SYSTEM_F_CUDA) {
        CHECK(sys.cuda_driver_version > 0);
        CHECK(sys.cuda_status[0] == '\0');
    } else {
        /* Without the driver: no version, a reason that names the library, no devices. */
        CHECK(sys.cuda_driver_version == 0);
        CHECK(names_missing_driver(sys.cuda_status));
        CHECK(n == 0);
    }
    if (!(sys.flags & FERRY_SYSTEM_F_NVML)) {
        CHECK(sys.nvml_status[0] != '\0');
        CHECK(sys.driver_version[0] == '\0');
    }

    CHECK_STATUS(ferry_system_info(NULL), FERRY_ERR_INVALID_ARGUMENT);
    sys.size = 0;
    CHECK_STATUS(ferry_system_info(&sys), FERRY_ERR_INVALID_ARGUMENT);
    sys.size = 4;
    CHECK_STATUS(ferry_system_info(&sys), FERRY_ERR_INVALID_ARGUMENT);

    /* A larger size (a newer header) is accepted; the bytes past the known struct are left alone. */
    memset(&big, 0xCD, sizeof(big));
    big.p.size = sizeof(big);
    CHECK_STATUS(ferry_system_info(&big.p), FERRY_OK);
    CHECK(big.p.device_count == n);
    CHECK(all_bytes(big.tail, sizeof(big.tail), 0xCD));

    /* Device info: out of range, NULL, bad size. */
    memset(&dev, 0, sizeof(dev));
    dev.size = sizeof(dev);
    CHECK_STATUS(ferry_device_info(n, &dev), FERRY_ERR_NO_DEVICE);
    CHECK_STATUS(ferry_device_info(n + 1000, &dev), FERRY_ERR_NO_DEVICE);
    CHECK_STATUS(ferry_device_info(0, NULL), FERRY_ERR_INVALID_ARGUMENT);
    dev.size = 0;
    CHECK_STATUS(ferry_device_info(0, &dev), FERRY_ERR_INVALID_ARGUMENT);
    dev.size = 4;
    CHECK_STATUS(ferry_device_info(0, &dev), FERRY_ERR_INVALID_ARGUMENT);
    return n;
}

static void test_options(void) {
    ferry_engine_options o;
    memset(&o, 0xFF, sizeof(o));
    CHECK_STATUS(ferry_engine_options_init(&o), FERRY_OK);
    CHECK(o.size == sizeof(ferry_engine_options));
    CHECK(o.device == 0);
    CHECK(o.sample_interval_ms == 100);
    CHECK(o.flags == 0);
    CHECK_STATUS(ferry_engine_options_init(NULL), FERRY_ERR_INVALID_ARGUMENT);
}

static void check_cpu_snapshot(const ferry_memory_snapshot* s, uint64_t not_before, uint64_t not_after) {
    CHECK(s->size == sizeof(*s));
    CHECK(s->flags & FERRY_MEMORY_F_HOST);
    CHECK(!(s->flags & FERRY_MEMORY_F_DEVICE));
    CHECK(!(s->flags & FERRY_MEMORY_F_PROCESS));
    CHECK(s->device == FERRY_DEVICE_CPU);
    CHECK(s->level == FERRY_PRESSURE_NONE);
    CHECK(s->sequence >= 1);
    CHECK(s->host_total_bytes > 0);
    CHECK(s->host_available_bytes > 0);
    CHECK(s->host_available_bytes <= s->host_total_bytes);
    CHECK(s->device_total_bytes == 0 && s->device_free_bytes == 0 && s->device_used_bytes == 0);
    CHECK(s->process_device_bytes == 0);
    CHECK(s->engine_allocated_bytes == 0 && s->engine_peak_bytes == 0 && s->engine_alloc_failures == 0);
    CHECK(s->engine_reserved_bytes >= s->engine_allocated_bytes);
    CHECK(s->warn_threshold_bytes == 0 && s->critical_threshold_bytes == 0);
    /* CLOCK_MONOTONIC nanoseconds, taken between the two readings of the caller's clock. */
    CHECK(s->timestamp_ns >= not_before && s->timestamp_ns <= not_after);
    /* A live check may carry the process and host figures of an earlier sample. */
    CHECK(s->sample_timestamp_ns <= not_after);
    if (!(s->flags & FERRY_MEMORY_F_LIVE)) {
        CHECK(s->sample_timestamp_ns == s->timestamp_ns);
    }
    CHECK(s->age_ns <= not_after - s->timestamp_ns);
}

static void test_cpu_engine(void) {
    ferry_engine_options o;
    ferry_engine e = NULL;
    ferry_memory_snapshot s, s2;
    int32_t device = 12345;
    uint64_t t0, t1;

    /* Sampler off: the snapshot changes only through sample_now, so the sequence is exact. */
    CHECK_STATUS(ferry_engine_options_init(&o), FERRY_OK);
    o.device = FERRY_DEVICE_CPU;
    o.sample_interval_ms = 0;
    t0 = now_ns();
    CHECK_STATUS(ferry_engine_create(&o, &e), FERRY_OK);
    CHECK(e != NULL);
    if (e == NULL) {
        return;
    }

    CHECK_STATUS(ferry_engine_device(e, &device), FERRY_OK);
    CHECK(device == FERRY_DEVICE_CPU);

    memset(&s, 0xEE, sizeof(s));
    s.size = sizeof(s);
    CHECK_STATUS(ferry_memory_check(e, &s), FERRY_OK);
    t1 = now_ns();
    check_cpu_snapshot(&s, t0, t1);
    CHECK(!(s.flags & FERRY_MEMORY_F_LIVE));

    memset(&s2, 0, sizeof(s2));
    s2.size = sizeof(s2);
    CHECK_STATUS(ferry_memory_check(e, &s2), FERRY_OK);
    CHECK(s2.sequence == s.sequence);
    CHECK(s2.timestamp_ns == s.timestamp_ns);
    CHECK(s2.age_ns >= s.age_ns);

    t0 = now_ns();
    CHECK_STATUS(ferry_engine_sample_now(e), FERRY_OK);
    CHECK_STATUS(ferry_memory_check(e, &s2), FERRY_OK);
    t1 = now_ns();
    CHECK(s2.sequence == s.sequence + 1);
    check_cpu_snapshot(&s2, t0, t1);

    t0 = now_ns();
    memset(&s2, 0, sizeof(s2));
    s2.size = sizeof(s2);
    CHECK_STATUS(ferry_memory_check_live(e, &s2), FERRY_OK);
    t1 = now_ns();
    CHECK(s2.flags & FERRY_MEMORY_F_LIVE);
    check_cpu_snapshot(&s2, t0, t1);

    CHECK_STATUS(ferry_engine_destroy(e), FERRY_OK);
}

static void test_background_sampler(void) {
    ferry_engine_options o;
    ferry_engine e = NULL;
    ferry_memory_snapshot s;
    uint64_t first, deadline;

    ferry_engine_options_init(&o);
    o.device = FERRY_DEVICE_CPU;
    o.sample_interval_ms = 5;
    CHECK_STATUS(ferry_engine_create(&o, &e), FERRY_OK);
    if (e == NULL) {
        return;
    }
    memset(&s, 0, sizeof(s));
    s.size = sizeof(s);
    CHECK_STATUS(ferry_memory_check(e, &s), FERRY_OK);
    first = s.sequence;
    /* At 5 ms the sampler publishes a new snapshot well within two seconds. */
    deadline = now_ns() + 2000000000u;
    while (s.sequence == first && now_ns() < deadline) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
        if (ferry_memory_check(e, &s) != FERRY_OK) {
            break;
        }
    }
    CHECK(s.sequence > first);
    CHECK_STATUS(ferry_engine_destroy(e), FERRY_OK);
}

/* Out-struct sizes and NULL out-pointers on a live engine, which keeps working afterwards. */
static void test_out_struct_rules(ferry_engine e) {
    ferry_memory_snapshot s;
    struct {
        ferry_memory_snapshot s;
        unsigned char tail[32];
    } big;

    CHECK_STATUS(ferry_memory_check(e, NULL), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_memory_check_live(e, NULL), FERRY_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(ferry_engine_device(e, NULL), FERRY_ERR_INVALID_ARGUMENT);

    memset(&s, 0, sizeof(s));
    s.size = 0;
    CHECK_STATUS(ferry_memory_check(e, &s), FERRY_ERR_INVALID_ARGUMENT);
    s.size = 4;
    CHECK_STATUS(ferry_memory_check(e, &s), FERRY_ERR_INVALID_ARGUMENT);
    s.size = sizeof(s) - 8;
    CHECK_STATUS(ferry_memory_check(e, &s), FERRY_ERR_INVALID_ARGUMENT);
    s.size = 0;
    CHECK_STATUS(ferry_memory_check_live(e, &s), FERRY_ERR_INVALID_ARGUMENT);

    memset(&big, 0xCD, sizeof(big));
    big.s.size = sizeof(big);
    CHECK_STATUS(ferry_memory_check(e, &big.s), FERRY_OK);
    CHECK(big.s.flags & FERRY_MEMORY_F_HOST);
    CHECK(big.s.host_total_bytes > 0 && big.s.host_total_bytes != 0xCDCDCDCDCDCDCDCDu);
    CHECK(all_bytes(big.tail, sizeof(big.tail), 0xCD));
    memset(&big, 0xCD, sizeof(big));
    big.s.size = sizeof(big);
    CHECK_STATUS(ferry_memory_check_live(e, &big.s), FERRY_OK);
    CHECK(big.s.flags & FERRY_MEMORY_F_LIVE);
    CHECK(all_bytes(big.tail, sizeof(big.tail), 0xCD));

    memset(&s, 0, sizeof(s));
    s.size = sizeof(s);
    CHECK_STATUS(ferry_memory_check(e, &s), FERRY_OK);
    CHECK(s.host_total_bytes > 0);
}

static void check_bad_handle(ferry_engine h, const char* what) {
    ferry_memory_snapshot s;
    int32_t d;
    int before = failed;
    memset(&s, 0, sizeof(s));
    s.size = sizeof(s);
    CHECK_STATUS(ferry_memory_check(h, &s), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_memory_check_live(h, &s), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_engine_sample_now(h), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_engine_device(h, &d), FERRY_ERR_INVALID_HANDLE);
    if (failed != before) {
        printf("  (handle: %s)\n", what);
    }
}

static void test_handles(void) {
    ferry_engine_options o;
    ferry_engine live = NULL, stale = NULL, other = NULL;
    int local = 0;
    void* heap = malloc(64);

    ferry_engine_options_init(&o);
    o.device = FERRY_DEVICE_CPU;
    CHECK_STATUS(ferry_engine_create(&o, &live), FERRY_OK);
    CHECK_STATUS(ferry_engine_create(&o, &stale), FERRY_OK);
    CHECK(live != NULL && stale != NULL && live != stale);
    if (live == NULL || stale == NULL) {
        free(heap);
        return;
    }
    CHECK_STATUS(ferry_engine_destroy(stale), FERRY_OK);

    check_bad_handle(NULL, "NULL");
    check_bad_handle(stale, "destroyed");
    check_bad_handle((ferry_engine)(uintptr_t)0x1234, "0x1234");
    check_bad_handle((ferry_engine)(uintptr_t)0xdeadbeef, "0xdeadbeef");
    check_bad_handle((ferry_engine)(uintptr_t)UINTPTR_MAX, "all ones");
    check_bad_handle((ferry_engine)(void*)&local, "address of a stack variable");
    check_bad_handle((ferry_engine)heap, "address of a heap block");

    /* A new engine does not bring the destroyed handle back to life. */
    CHECK_STATUS(ferry_engine_create(&o, &other), FERRY_OK);
    CHECK(other != NULL && other != stale);
    check_bad_handle(stale, "destroyed, after a new engine was created");

    /* Destroy: NULL is a no-op; stale, double and made-up handles are rejected. */
    CHECK_STATUS(ferry_engine_destroy(NULL), FERRY_OK);
    CHECK_STATUS(ferry_engine_destroy(stale), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_engine_destroy((ferry_engine)(uintptr_t)0xdeadbeef), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_engine_destroy((ferry_engine)(void*)&local), FERRY_ERR_INVALID_HANDLE);
    CHECK_STATUS(ferry_engine_destroy(other), FERRY_OK);
    CHECK_STATUS(ferry_engine_destroy(other), FERRY_ERR_INVALID_HANDLE);

    /* The live engine saw all of this and still works. */
    test_out_struct_rules(live);
    CHECK_STATUS(ferry_engine_sample_now(live), FERRY_OK);
    CHECK_STATUS(ferry_engine_destroy(live), FERRY_OK);
    check_bad_handle(live, "destroyed live engine");
    free(heap);
}

static void test_invalid_options(int32_t n, int driver_loaded) {
    ferry_engine_options o;
    ferry_engine e = NULL;
    struct {
        ferry_engine_options o;
        unsigned char tail[32];
    } big;

    ferry_engine_options_init(&o);
    o.device = -2;
    CHECK_STATUS(ferry_engine_create(&o, &e), FERRY_ERR_INVALID_ARGUMENT);
    o.device = INT32_MIN;
    CHECK_STATUS(ferry_engine_create(&o, &e), FERRY_ERR_INVALID_ARGUMENT);

    ferry_engine_options_init(&o);
    o.device = FERRY_DEVICE_CPU;
    o.sample_interval_ms = 60001;
    CHECK_STATUS(ferry_engine_create(&o, &e), FERRY_ERR_INVALID_ARGUMENT);
    o.sample_interval_ms = UINT32_MAX;
    CHECK_STATUS(ferry_engine_create(&o, &e), FERRY_ERR_INVALID_ARGUMENT);

    ferry_engine_options_init(&o);
    o.device = FERRY_DEVICE_CPU;
    o.flags = 1;
    CHECK_STATUS(ferry_engine_create(&o, &e), FERRY_ERR_INVALID_ARGUMENT);
    o.flags = 0x80000000u;
    CHECK_STATUS(ferry_engine_create(&o, &e), FERRY_ERR_INVALID_ARGUMENT);

    ferry_engine_options_init(&o);
    o.device = FERRY_DEVICE_CPU;
    o.size = 0;
    CHECK_STATUS(ferry_engine_create(&o, &e), FERRY_ERR_INVALID_ARGUMENT);
    o.size = 4;
    CHECK_STATUS(ferry_engine_create(&o, &e), FERRY_ERR_INVALID_ARGUMENT);
    o.size = sizeof(o) - 4;
    CHECK_STATUS(ferry_engine_create(&o, &e), FERRY_ERR_INVALID_ARGUMENT);

    ferry_engine_options_init(&o);
    o.device = FERRY_DEVICE_CPU;
    CHECK_STATUS(ferry_engine_create(&o, NULL), FERRY_ERR_INVALID_ARGUMENT);

    /* Device out of range. */
    ferry_engine_options_init(&o);
    o.device = n;
    CHECK_STATUS(ferry_engine_create(&o, &e), FERRY_ERR_NO_DEVICE);
    o.device = 1000;
    CHECK_STATUS(ferry_engine_create(&o, &e), FERRY_ERR_NO_DEVICE);

    /* Defaults (device 0) without a driver: the message names the missing library. */
    if (!driver_loaded) {
        CHECK_STATUS(ferry_engine_create(NULL, &e), FERRY_ERR_NO_DEVICE);
        CHECK(names_missing_driver(ferry_last_error()));
    }

    /* Limits that are valid: interval 0 and 60000, and a larger options struct (a newer header). */
    ferry_engine_options_init(&o);
    o.device = FERRY_DEVICE_CPU;
    o.sample_interval_ms = 60000;
    e = NULL;
    CHECK_STATUS(ferry_engine_create(&o, &e), FERRY_OK);
    CHECK_STATUS(ferry_engine_destroy(e), FERRY_OK);

    memset(&big, 0, sizeof(big));
    ferry_engine_options_init(&big.o);
    big.o.size = sizeof(big);
    big.o.device = FERRY_DEVICE_CPU;
    e = NULL;
    CHECK_STATUS(ferry_engine_create(&big.o, &e), FERRY_OK);
    CHECK_STATUS(ferry_engine_destroy(e), FERRY_OK);
}

static void test_engine_limit(void) {
    static ferry_engine engines[FERRY_MAX_ENGINES];
    ferry_engine_options o;
    ferry_engine extra = NULL;
    int created = 0, i;

    ferry_engine_options_init(&o);
    o.device = FERRY_DEVICE_CPU;
    o.sample_interval_ms = 0;
    for (i = 0; i < FERRY_MAX_ENGINES; i++) {
        if (ferry_engine_create(&o, &engines[i]) != FERRY_OK) {
            printf("FAIL: engine %d of %d: %s\n", i + 1, FERRY_MAX_ENGINES, ferry_last_error());
            break;
        }
        created++;
    }
    CHECK(created == FERRY_MAX_ENGINES);
    if (created == FERRY_MAX_ENGINES) {
        CHECK_STATUS(ferry_engine_create(&o, &extra), FERRY_ERR_LIMIT);
    }
    for (i = 0; i < created; i++) {
        if (ferry_engine_destroy(engines[i]) != FERRY_OK) {
            failed++;
            printf("FAIL: destroying engine %d: %s\n", i + 1, ferry_last_error());
        }
    }
    /* After the cleanup a new engine fits again. */
    CHECK_STATUS(ferry_engine_create(&o, &extra), FERRY_OK);
    CHECK_STATUS(ferry_engine_destroy(extra), FERRY_OK);
}

static void test_gpu(int32_t n) {
    ferry_device_properties p;
    ferry_system_properties sys;
    ferry_engine_options o;
    ferry_engine e = NULL;
    ferry_memory_snapshot s;
    int32_t device = -5;
    double diff;

    if (n == 0) {
        if (require_gpu()) {
            failed++;
            printf("FAIL: FERRY_REQUIRE_GPU is set but ferry_device_count() is 0\n");
        } else {
            printf("SKIP: GPU checks (no GPU; set FERRY_REQUIRE_GPU=1 to make this a failure)\n");
        }
        return;
    }

    memset(&sys, 0, sizeof(sys));
    sys.size = sizeof(sys);
    CHECK_STATUS(ferry_system_info(&sys), FERRY_OK);
    CHECK(sys.flags & FERRY_SYSTEM_F_CUDA);
    CHECK(sys.cuda_driver_version >= 11000);

    memset(&p, 0, sizeof(p));
    p.size = sizeof(p);
    CHECK_STATUS(ferry_device_info(0, &p), FERRY_OK);
    CHECK(p.index == 0);
    CHECK(p.name[0] != '\0');
    CHECK(memchr(p.name, '\0', sizeof(p.name)) != NULL);
    CHECK(p.compute_capability_major * 10 + p.compute_capability_minor >= 70);
    CHECK(p.multiprocessor_count > 0);
    CHECK(p.total_memory_bytes >= ((uint64_t)1 << 30));
    CHECK(strncmp(p.uuid_string, "GPU-", 4) == 0 && strlen(p.uuid_string) == 40);
    CHECK(!all_bytes(p.uuid, sizeof(p.uuid), 0));
    CHECK(strlen(p.pci_bus_id) >= 12 && p.pci_bus_id[4] == ':');
    CHECK(p.l2_cache_bytes > 0);
    CHECK(p.memory_bus_width_bits > 0);
    CHECK(p.async_engine_count > 0);
    if (p.flags & FERRY_DEVICE_F_PCIE) {
        CHECK(p.pcie_generation_max >= 1 && p.pcie_generation_current >= 1);
        CHECK(p.pcie_generation_current <= p.pcie_generation_max);
        CHECK(p.pcie_width_max >= 1 && p.pcie_width_current <= p.pcie_width_max);
    }
    if (sys.flags & FERRY_SYSTEM_F_NVML) {
        CHECK(sys.driver_version[0] != '\0');
        CHECK(p.flags & FERRY_DEVICE_F_PCIE);
    }

    ferry_engine_options_init(&o);
    o.device = 0;
    CHECK_STATUS(ferry_engine_create(&o, &e), FERRY_OK);
    if (e == NULL) {
        return;
    }
    CHECK_STATUS(ferry_engine_device(e, &device), FERRY_OK);
    CHECK(device == 0);

    memset(&s, 0, sizeof(s));
    s.size = sizeof(s);
    CHECK_STATUS(ferry_memory_check(e, &s), FERRY_OK);
    CHECK(s.flags & FERRY_MEMORY_F_DEVICE);
    CHECK(s.flags & FERRY_MEMORY_F_HOST);
    CHECK(s.device == 0);
    CHECK(s.device_total_bytes > 0);
    CHECK(s.device_free_bytes <= s.device_total_bytes);
    CHECK(s.device_used_bytes == s.device_total_bytes - s.device_free_bytes);
    /* The snapshot's total agrees with the device's (cuMemGetInfo may exclude a reserved sliver). */
    diff = (double)p.total_memory_bytes - (double)s.device_total_bytes;
    CHECK((diff < 0 ? -diff : diff) <= 0.01 * (double)p.total_memory_bytes);
    if (s.flags & FERRY_MEMORY_F_PROCESS) {
        CHECK(s.process_device_bytes > 0);
        CHECK(s.process_device_bytes <= s.device_used_bytes);
    }

    memset(&s, 0, sizeof(s));
    s.size = sizeof(s);
    CHECK_STATUS(ferry_memory_check_live(e, &s), FERRY_OK);
    CHECK(s.flags & FERRY_MEMORY_F_LIVE);
    CHECK(s.flags & FERRY_MEMORY_F_DEVICE);
    CHECK(s.device_total_bytes > 0 && s.device_free_bytes <= s.device_total_bytes);
    CHECK_STATUS(ferry_engine_sample_now(e), FERRY_OK);
    CHECK_STATUS(ferry_engine_destroy(e), FERRY_OK);
}

int main(void) {
    int32_t n;
    ferry_system_properties sys;

    test_last_error(); /* first: it needs a thread with no failed call yet */
    test_status_strings();
    test_version();
    test_struct_sizes();
    n = test_devices();
    memset(&sys, 0, sizeof(sys));
    sys.size = sizeof(sys);
    ferry_system_info(&sys);
    test_options();
    test_cpu_engine();
    test_background_sampler();
    test_handles();
    test_invalid_options(n, (sys.flags & FERRY_SYSTEM_F_CUDA) != 0);
    test_engine_limit();
    test_gpu(n);

    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
