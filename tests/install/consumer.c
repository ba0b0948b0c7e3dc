/*
 * consumer.c — a C program built against an installed ferry, the way a user builds one:
 *
 *     cc -std=c99 consumer.c $(pkg-config --cflags --libs ferry) -Wl,-rpath,$(pkg-config --variable=libdir ferry)
 *
 * or through find_package(ferry) and ferry::ferry (tests/install/cmake). It includes only <ferry.h> from the
 * install tree and checks that the library it loaded really works:
 *
 *  - ferry_version() equals the header's FERRY_VERSION_* and, when given, the version in argv[1] (the
 *    pc file's --modversion or the CMake package's ferry_VERSION);
 *  - a CPU engine (FERRY_DEVICE_CPU) is created;
 *  - a memory source over NSAMPLES known samples, iterated in order in batches of BATCH, yields every
 *    sample's values in order, then FERRY_END_OF_EPOCH;
 *  - a bad call gets its status, ferry_status_string names it and ferry_last_error says why.
 *
 * Prints one line per check; exits 0 when all pass, 1 otherwise.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <ferry.h>

#define NSAMPLES 10
#define BATCH 4

static int failures;

static void expect(int ok, const char* what) {
    printf("consumer: %s %s\n", ok ? "ok  " : "FAIL", what);
    if (!ok) {
        failures++;
    }
}

/* Checks a ferry call; on failure prints the status and ferry_last_error(). Returns 1 when it is FERRY_OK. */
static int ok_call(ferry_status st, const char* what) {
    if (st != FERRY_OK) {
        printf("consumer: FAIL %s: %s: %s\n", what, ferry_status_string(st), ferry_last_error());
        failures++;
        return 0;
    }
    return 1;
}

/* Checks one batch: its size, its indices (in order from first) and every value of both fields. */
static int check_batch(ferry_batch b, int64_t first, int64_t want_n, const int32_t* ids, const float* pairs) {
    ferry_batch_properties info;
    DLManagedTensorVersioned* id_t = NULL;
    DLManagedTensorVersioned* pair_t = NULL;
    int64_t indices[BATCH];
    int64_t r;
    int ok = 1;
    memset(&info, 0, sizeof(info));
    info.size = sizeof(info);
    if (!ok_call(ferry_batch_info(b, &info), "ferry_batch_info") || info.num_samples != want_n ||
        info.num_fields != 2) {
        return 0;
    }
    if (!ok_call(ferry_batch_indices(b, indices, BATCH), "ferry_batch_indices")) {
        return 0;
    }
    if (!ok_call(ferry_batch_field_by_name(b, "id", &id_t), "ferry_batch_field_by_name(id)") ||
        !ok_call(ferry_batch_field(b, 1, &pair_t), "ferry_batch_field(1)")) {
        ok = 0;
    }
    if (ok) {
        const int32_t* got_ids = (const int32_t*)((const char*)id_t->dl_tensor.data + id_t->dl_tensor.byte_offset);
        const float* got_pairs = (const float*)((const char*)pair_t->dl_tensor.data + pair_t->dl_tensor.byte_offset);
        ok = id_t->dl_tensor.device.device_type == kDLCPU && id_t->dl_tensor.ndim == 1 &&
             id_t->dl_tensor.shape[0] == want_n && id_t->dl_tensor.dtype.code == kDLInt &&
             id_t->dl_tensor.dtype.bits == 32 && pair_t->dl_tensor.ndim == 2 && pair_t->dl_tensor.shape[0] == want_n &&
             pair_t->dl_tensor.shape[1] == 2 && pair_t->dl_tensor.dtype.code == kDLFloat &&
             pair_t->dl_tensor.dtype.bits == 32;
        for (r = 0; ok && r < want_n; r++) {
            const int64_t i = first + r;
            ok = indices[r] == i && got_ids[r] == ids[i] && got_pairs[2 * r] == pairs[2 * i] &&
                 got_pairs[2 * r + 1] == pairs[2 * i + 1];
        }
    }
    if (id_t != NULL) {
        id_t->deleter(id_t);
    }
    if (pair_t != NULL) {
        pair_t->deleter(pair_t);
    }
    return ok;
}

int main(int argc, char** argv) {
    int32_t major = -1, minor = -1, patch = -1;
    char version[64];
    ferry_engine_options eo;
    ferry_iterator_options io;
    ferry_engine engine = NULL;
    ferry_source source = NULL;
    ferry_iterator it = NULL;
    ferry_field fields[2];
    const void* data[2];
    int32_t ids[NSAMPLES];
    float pairs[2 * NSAMPLES];
    int64_t i, first = 0;
    int batches = 0, all_match = 1;
    ferry_status st;

    /* The version: library, header and packaging agree. */
    ok_call(ferry_version(&major, &minor, &patch), "ferry_version");
    snprintf(version, sizeof(version), "%d.%d.%d", (int)major, (int)minor, (int)patch);
    printf("consumer: libferry %s, header %d.%d.%d\n", version, FERRY_VERSION_MAJOR, FERRY_VERSION_MINOR,
           FERRY_VERSION_PATCH);
    expect(major == FERRY_VERSION_MAJOR && minor == FERRY_VERSION_MINOR && patch == FERRY_VERSION_PATCH,
           "ferry_version() equals FERRY_VERSION_MAJOR/MINOR/PATCH");
    if (argc > 1) {
        expect(strcmp(argv[1], version) == 0, "ferry_version() equals the packaged version given as argv[1]");
    }

    /* A CPU engine. */
    ok_call(ferry_engine_options_init(&eo), "ferry_engine_options_init");
    eo.device = FERRY_DEVICE_CPU;
    eo.sample_interval_ms = 0;
    expect(ok_call(ferry_engine_create(&eo, &engine), "ferry_engine_create(CPU)") && engine != NULL,
           "a CPU engine is created");

    /* A memory source of known samples: id = 7 i + 3 (int32), pair = (i / 2, -i) (float32 [2]). */
    for (i = 0; i < NSAMPLES; i++) {
        ids[i] = (int32_t)(7 * i + 3);
        pairs[2 * i] = (float)i / 2.0f;
        pairs[2 * i + 1] = -(float)i;
    }
    memset(fields, 0, sizeof(fields));
    fields[0].name = "id";
    fields[0].dtype = FERRY_DTYPE_INT32;
    fields[0].ndim = 0;
    fields[1].name = "pair";
    fields[1].dtype = FERRY_DTYPE_FLOAT32;
    fields[1].ndim = 1;
    fields[1].shape[0] = 2;
    data[0] = ids;
    data[1] = pairs;
    expect(ok_call(ferry_source_memory(NSAMPLES, fields, 2, data, &source), "ferry_source_memory"),
           "a memory source over 10 samples is created");

    /* One epoch in order: batches of 4, 4, 2, then the end of the epoch. */
    ok_call(ferry_iterator_options_init(&io), "ferry_iterator_options_init");
    io.batch_size = BATCH;
    io.workers = 2;
    io.prefetch = 2;
    io.timeout_ms = 20000;
    if (engine != NULL && source != NULL &&
        ok_call(ferry_iterator_create(engine, source, &io, &it), "ferry_iterator_create")) {
        int call;
        for (call = 0; call < 5; call++) {
            ferry_batch b = NULL;
            const int64_t want_n = NSAMPLES - first < BATCH ? NSAMPLES - first : BATCH;
            st = ferry_iterator_next(it, NULL, &b);
            if (st != FERRY_OK) {
                break;
            }
            all_match = all_match && want_n > 0 && check_batch(b, first, want_n, ids, pairs);
            ok_call(ferry_batch_release(b, NULL), "ferry_batch_release");
            first += want_n;
            batches++;
        }
        expect(st == FERRY_END_OF_EPOCH, "the epoch ends with FERRY_END_OF_EPOCH");
        expect(batches == 3 && first == NSAMPLES, "the epoch has 3 batches (4 + 4 + 2 samples)");
        expect(all_match && batches == 3, "every batch holds the expected samples and values, in order");
    } else {
        expect(0, "an iterator over the source is created");
    }

    /* A bad call: its status, the status's name and a message that says why. */
    st = ferry_iterator_options_init(NULL);
    expect(st == FERRY_ERR_INVALID_ARGUMENT, "ferry_iterator_options_init(NULL) returns FERRY_ERR_INVALID_ARGUMENT");
    expect(strcmp(ferry_status_string(st), "FERRY_ERR_INVALID_ARGUMENT") == 0,
           "ferry_status_string names FERRY_ERR_INVALID_ARGUMENT");
    expect(ferry_last_error()[0] != '\0', "ferry_last_error() explains the failed call");
    printf("consumer: ferry_last_error() = \"%s\"\n", ferry_last_error());
    expect(strcmp(ferry_status_string((ferry_status)12345), "FERRY_ERR_UNKNOWN_STATUS") == 0,
           "ferry_status_string of an unknown value is FERRY_ERR_UNKNOWN_STATUS");

    /* Teardown; a second destroy of the same handle is refused, not a crash. */
    expect(ferry_iterator_destroy(it) == FERRY_OK && ferry_source_destroy(source) == FERRY_OK &&
               ferry_engine_destroy(engine) == FERRY_OK,
           "the iterator, source and engine are destroyed");
    expect(ferry_engine_destroy(engine) == FERRY_ERR_INVALID_HANDLE,
           "destroying the engine again returns FERRY_ERR_INVALID_HANDLE");

    printf("consumer: %s\n", failures == 0 ? "all checks passed" : "FAILED");
    return failures == 0 ? 0 : 1;
}
