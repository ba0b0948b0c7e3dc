/*
 * ferry.h — the C interface of libferry.
 *
 * ferry is a GPU data-staging, memory and metrics engine for training programs. This header is the whole
 * contract: C and C++ programs include it and link libferry.so; Python loads the same library with ctypes.
 *
 * Conventions (they hold for every declaration below):
 *
 *  - Every function returns a ferry_status, except ferry_status_string() and ferry_last_error(), which
 *    return strings. FERRY_OK is 0. Status values are explicit and are never renumbered.
 *  - On failure, ferry_last_error() returns a message that names the problem. It is thread-local: it
 *    describes the last failed ferry call made on the calling thread.
 *  - Options and out-structs start with `uint32_t size`, which the caller sets to sizeof(the struct) it
 *    was compiled with. ferry_X_options_init() sets size and fills the defaults. Fields are only ever
 *    appended, so a program built against an older header keeps working with a newer library: the library
 *    reads and writes only the bytes the caller's size covers. A size smaller than the first published
 *    version of the struct is rejected with FERRY_ERR_INVALID_ARGUMENT.
 *  - Handles (ferry_engine, …) are opaque IDs, not pointers. A stale handle (already destroyed), a handle
 *    of another type, or a made-up value returns FERRY_ERR_INVALID_HANDLE and never crashes. Destroying
 *    NULL is a no-op that returns FERRY_OK; destroying twice returns FERRY_ERR_INVALID_HANDLE.
 *  - Out-parameters come last. A NULL out-parameter returns FERRY_ERR_INVALID_ARGUMENT.
 *  - Every function may be called from any thread. Handles may be shared between threads; a call that
 *    races with the destruction of its handle either completes, or returns FERRY_ERR_INVALID_HANDLE (or
 *    FERRY_ERR_CLOSED when the destruction began while the call was under way). It never crashes.
 *  - Loading the library touches no GPU library. The first call that needs the GPU loads libcuda.so.1
 *    (and libnvidia-ml.so.1 for NVML figures). Without them, GPU calls return FERRY_ERR_NO_DEVICE and
 *    everything else keeps working.
 *  - A sample callback (ferry_sample_fn) runs on an iterator's worker. From inside it, the calls that
 *    would wait for that worker (ferry_iterator_next, _next_wait, _state, _restore, _restore_elastic,
 *    _set_epoch on an iterator over the callback's own source) return FERRY_ERR_INVALID_ARGUMENT at once,
 *    and a destroy (of an iterator, engine or source) returns FERRY_OK at once and completes on another
 *    thread once the callback has returned: the handle is invalid from the call on, and the callback's
 *    fn and user must stay valid until then (destroy a callback source from outside its callbacks to know
 *    when it is done).
 *  - The library's runtime does not survive fork(). A child forked after the library was loaded must not
 *    call it: the entry points written in C (ferry_memory_check, ferry_metric_log) return
 *    FERRY_ERR_UNSUPPORTED there and a DLPack tensor's deleter only frees the tensor, but the others would
 *    hang. Fork before loading the library, or exec (posix_spawn, multiprocessing's spawn).
 *
 * The header compiles as C99 and as C++.
 */
#ifndef FERRY_H
#define FERRY_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define FERRY_API __declspec(dllimport)
#else
#define FERRY_API __attribute__((visibility("default")))
#endif

/** The version of this header. ferry_version() gives the version of the loaded library. */
#define FERRY_VERSION_MAJOR 0
#define FERRY_VERSION_MINOR 1
#define FERRY_VERSION_PATCH 0

/** Status codes. Values are explicit and never renumbered; new codes are appended. */
typedef enum ferry_status {
    FERRY_OK = 0,
    /** An argument is wrong: a NULL pointer, a wrong struct size, an unknown enum or flag value. */
    FERRY_ERR_INVALID_ARGUMENT = 1,
    /** The handle is NULL where one is required, stale (destroyed), of another type, or made up. */
    FERRY_ERR_INVALID_HANDLE = 2,
    /** No usable GPU: the driver library is missing, no device is present, or the index is out of range. */
    FERRY_ERR_NO_DEVICE = 3,
    /** A CUDA driver call failed; the message carries the driver's error name and string. */
    FERRY_ERR_CUDA = 4,
    /** An NVML call failed; the message carries NVML's error string. */
    FERRY_ERR_NVML = 5,
    /** Host or device memory could not be allocated. */
    FERRY_ERR_OUT_OF_MEMORY = 6,
    /** The operation is not supported on this device, platform or build. */
    FERRY_ERR_UNSUPPORTED = 7,
    /** A file or operating-system call failed. */
    FERRY_ERR_IO = 8,
    /** Data is malformed: a bad magic number, a short file, a size that does not divide. */
    FERRY_ERR_FORMAT = 9,
    /** The object was closed, or is shutting down. */
    FERRY_ERR_CLOSED = 10,
    /** A bounded wait ran out. */
    FERRY_ERR_TIMEOUT = 11,
    /** A fixed limit was reached, e.g. too many live handles of one type. */
    FERRY_ERR_LIMIT = 12,
    /** Not an error: ferry_iterator_next reached the end of an epoch; the next call starts the next one. */
    FERRY_END_OF_EPOCH = 13,
    /** A bug in ferry (a recovered panic, a broken invariant). Please report it with the message. */
    FERRY_ERR_INTERNAL = 99
} ferry_status;

/**
 * Returns a static, human-readable name for a status, e.g. "FERRY_ERR_NO_DEVICE". Never NULL; an unknown
 * value gives "FERRY_ERR_UNKNOWN_STATUS". The string is owned by the library and lives forever.
 */
FERRY_API const char* ferry_status_string(ferry_status status);

/**
 * Returns the message of the last failed ferry call on the calling thread, or "" when there is none. The
 * string is owned by the library and stays valid until the next ferry call on the same thread; copy it to
 * keep it. A successful call does not clear it.
 */
FERRY_API const char* ferry_last_error(void);

/** Writes the version of the loaded library. Any pointer may be NULL when that part is not wanted. */
FERRY_API ferry_status ferry_version(int32_t* major, int32_t* minor, int32_t* patch);

/* ------------------------------------------------------------------------------------------------ */
/* Devices                                                                                          */
/* ------------------------------------------------------------------------------------------------ */

/** The device value that selects the CPU: an engine with no GPU, with the host figures only. */
#define FERRY_DEVICE_CPU (-1)

/**
 * Writes the number of CUDA devices visible to this process (CUDA_VISIBLE_DEVICES applies). Writes 0 and
 * returns FERRY_OK when the driver library is absent or no device is present; ferry_system_info() says
 * why. The first call loads the CUDA driver.
 */
FERRY_API ferry_status ferry_device_count(int32_t* count);

/** ferry_device_properties.flags: the PCIe link fields are valid (they come from NVML). */
#define FERRY_DEVICE_F_PCIE 0x1u

/** Facts about one device. Strings are NUL-terminated. */
typedef struct ferry_device_properties {
    uint32_t size;                   /**< set by the caller: sizeof(ferry_device_properties) */
    int32_t index;                   /**< CUDA device ordinal */
    char name[256];                  /**< e.g. "NVIDIA H100 80GB HBM3" */
    uint8_t uuid[16];                /**< raw UUID bytes */
    char uuid_string[48];            /**< "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", as nvidia-smi prints it */
    char pci_bus_id[32];             /**< "0000:1b:00.0" (domain:bus:device.function, lower case) */
    int32_t compute_capability_major;
    int32_t compute_capability_minor;
    int32_t multiprocessor_count;
    int32_t pcie_generation_current; /**< valid with FERRY_DEVICE_F_PCIE; an idle link may run below max */
    int32_t pcie_generation_max;     /**< valid with FERRY_DEVICE_F_PCIE */
    int32_t pcie_width_current;      /**< lanes; valid with FERRY_DEVICE_F_PCIE */
    int32_t pcie_width_max;          /**< lanes; valid with FERRY_DEVICE_F_PCIE */
    uint32_t flags;                  /**< FERRY_DEVICE_F_* */
    uint64_t total_memory_bytes;     /**< device memory, from the driver */
    int32_t l2_cache_bytes;
    int32_t memory_bus_width_bits;
    int32_t async_engine_count;      /**< copy engines that can overlap copies with kernels */
    int32_t reserved0;
} ferry_device_properties;

/**
 * Fills *info for the device with the given CUDA ordinal. info->size must be set. Returns
 * FERRY_ERR_NO_DEVICE when the driver is absent or the index is out of range.
 */
FERRY_API ferry_status ferry_device_info(int32_t index, ferry_device_properties* info);

/** ferry_system_properties.flags: libcuda.so.1 was loaded and initialized. */
#define FERRY_SYSTEM_F_CUDA 0x1u
/** ferry_system_properties.flags: libnvidia-ml.so.1 was loaded and initialized. */
#define FERRY_SYSTEM_F_NVML 0x2u

/** The driver stack as ferry sees it. Strings are NUL-terminated. */
typedef struct ferry_system_properties {
    uint32_t size;                /**< set by the caller: sizeof(ferry_system_properties) */
    uint32_t flags;               /**< FERRY_SYSTEM_F_* */
    int32_t cuda_driver_version;  /**< cuDriverGetVersion, e.g. 13000 for CUDA 13.0; 0 when absent */
    int32_t device_count;         /**< as ferry_device_count */
    char driver_version[80];      /**< the kernel driver's version from NVML, e.g. "580.159.04"; "" when absent */
    char nvml_version[80];        /**< NVML's own version, e.g. "13.580.159.04"; "" when absent */
    char cuda_status[256];        /**< "" when CUDA is usable, else why not (names the missing library) */
    char nvml_status[256];        /**< "" when NVML is usable, else why not */
} ferry_system_properties;

/** Fills *info; loads the CUDA driver and NVML if they are not loaded yet. info->size must be set. */
FERRY_API ferry_status ferry_system_info(ferry_system_properties* info);

/* ------------------------------------------------------------------------------------------------ */
/* Engine                                                                                           */
/* ------------------------------------------------------------------------------------------------ */

/** An engine: one device (or the CPU), its context, its memory sampler. An opaque ID, not a pointer. */
typedef struct ferry_engine_s* ferry_engine;

/** The most engines that may be alive at once in one process. */
#define FERRY_MAX_ENGINES 256

/** Options for ferry_engine_create(). Fill with ferry_engine_options_init() first. */
typedef struct ferry_engine_options {
    uint32_t size;                /**< set by ferry_engine_options_init */
    int32_t device;               /**< CUDA ordinal, or FERRY_DEVICE_CPU; default 0 */
    uint32_t sample_interval_ms;  /**< memory sampler period, 1..60000; default 100. 0 turns the
                                       background sampler off: the snapshot is then taken at creation and
                                       refreshed only by ferry_engine_sample_now(). */
    uint32_t flags;               /**< reserved; must be 0 */
} ferry_engine_options;

/** Sets opts->size and the defaults. */
FERRY_API ferry_status ferry_engine_options_init(ferry_engine_options* opts);

/**
 * Creates an engine. opts may be NULL for the defaults (device 0). On a GPU device this retains the
 * device's primary context, so ferry shares one context with PyTorch and other runtime-API users.
 * Returns FERRY_ERR_NO_DEVICE when the driver is absent (the message names the library) or the device
 * index is out of range, FERRY_ERR_LIMIT when FERRY_MAX_ENGINES engines are alive.
 */
FERRY_API ferry_status ferry_engine_create(const ferry_engine_options* opts, ferry_engine* engine);

/**
 * Stops the engine's sampler, destroys its iterators, releases its context and invalidates the handle.
 * NULL is a no-op. After this returns, any call with the handle returns FERRY_ERR_INVALID_HANDLE. Memory
 * that tensors or batch handles still point to stays valid: the engine's pools and context are freed when
 * the last of them is released (its deleter, or ferry_batch_release). This call does not wait for that.
 */
FERRY_API ferry_status ferry_engine_destroy(ferry_engine engine);

/** Writes the engine's device: a CUDA ordinal or FERRY_DEVICE_CPU. */
FERRY_API ferry_status ferry_engine_device(ferry_engine engine, int32_t* device);

/** Takes a memory sample now and publishes it as the snapshot that ferry_memory_check() reads. */
FERRY_API ferry_status ferry_engine_sample_now(ferry_engine engine);

/* ------------------------------------------------------------------------------------------------ */
/* Memory check                                                                                     */
/* ------------------------------------------------------------------------------------------------ */

/** ferry_memory_snapshot.flags: the device_* fields are valid (a GPU engine). */
#define FERRY_MEMORY_F_DEVICE 0x1u
/**
 * ferry_memory_snapshot.flags: process_device_bytes is valid. It is absent when NVML is missing or cannot
 * attribute memory to this process (e.g. in a container that does not share the host's PID namespace).
 */
#define FERRY_MEMORY_F_PROCESS 0x2u
/** ferry_memory_snapshot.flags: the host_total/available fields are valid. */
#define FERRY_MEMORY_F_HOST 0x4u
/** ferry_memory_snapshot.flags: the device and engine figures were queried by this call (a live check). */
#define FERRY_MEMORY_F_LIVE 0x8u

/** Memory pressure levels. Thresholds come with the memory manager; until set, the level is NONE. */
typedef enum ferry_pressure {
    FERRY_PRESSURE_NONE = 0,
    FERRY_PRESSURE_WARN = 1,
    FERRY_PRESSURE_CRITICAL = 2
} ferry_pressure;

/**
 * A memory snapshot. Timestamps are CLOCK_MONOTONIC nanoseconds, the clock of clock_gettime(), so they
 * compare with the caller's own readings of that clock.
 */
typedef struct ferry_memory_snapshot {
    uint32_t size;                     /**< set by the caller: sizeof(ferry_memory_snapshot) */
    uint32_t flags;                    /**< FERRY_MEMORY_F_* */
    int32_t device;                    /**< CUDA ordinal, or FERRY_DEVICE_CPU */
    int32_t level;                     /**< ferry_pressure */
    uint64_t sequence;                 /**< number of the sample this came from; grows by one per sample */
    uint64_t timestamp_ns;             /**< when the device and engine figures were taken */
    uint64_t age_ns;                   /**< how old timestamp_ns was when this call returned */
    uint64_t sample_timestamp_ns;      /**< when the process and host figures were taken (the latest
                                            sample; equals timestamp_ns except in a live check) */
    uint64_t device_total_bytes;       /**< driver (cuMemGetInfo) */
    uint64_t device_free_bytes;        /**< driver */
    uint64_t device_used_bytes;        /**< total - free: every process on the device */
    uint64_t process_device_bytes;     /**< this process's device memory (NVML); see FERRY_MEMORY_F_PROCESS */
    uint64_t engine_allocated_bytes;   /**< handed out by this engine's pools */
    uint64_t engine_reserved_bytes;    /**< held by this engine's pools (allocated + cached) */
    uint64_t engine_peak_bytes;        /**< highest engine_allocated_bytes since creation */
    uint64_t engine_alloc_count;       /**< allocations served by the pools */
    uint64_t engine_alloc_failures;    /**< allocations that failed */
    uint64_t host_total_bytes;         /**< physical RAM */
    uint64_t host_available_bytes;     /**< RAM available without swapping (MemAvailable) */
    uint64_t host_pinned_bytes;        /**< page-locked host memory held by this engine */
    uint64_t warn_threshold_bytes;     /**< reserved for the pressure policy; 0 = unset */
    uint64_t critical_threshold_bytes; /**< reserved for the pressure policy; 0 = unset */
} ferry_memory_snapshot;

/**
 * Copies the engine's latest published memory snapshot into *out (out->size must be set) and sets
 * out->age_ns. This is a read of memory: it makes no driver call and never enters the Go runtime, so it
 * costs tens of nanoseconds. A background sampler refreshes the snapshot every sample_interval_ms, and
 * the engine republishes it whenever its own pools change, so the engine_* fields are always exact.
 */
FERRY_API ferry_status ferry_memory_check(ferry_engine engine, ferry_memory_snapshot* out);

/**
 * Queries the device now (cuMemGetInfo) and fills *out with FERRY_MEMORY_F_LIVE set. The engine_* fields
 * are exact; the process and host figures come from the latest sample (see sample_timestamp_ns), since
 * NVML's per-process query costs ~30 µs. On the CPU engine the host figures are queried now instead.
 */
FERRY_API ferry_status ferry_memory_check_live(ferry_engine engine, ferry_memory_snapshot* out);

/* ------------------------------------------------------------------------------------------------ */
/* DLPack                                                                                           */
/* ------------------------------------------------------------------------------------------------ */

/*
 * The DLPack 1.0 ABI (https://dmlc.github.io/dlpack/latest/), declared here so that ferry.h needs no other
 * header. If the program includes dlpack.h first, its definitions are used; they are the same.
 */
#ifndef DLPACK_MAJOR_VERSION
#define DLPACK_MAJOR_VERSION 1
#define DLPACK_MINOR_VERSION 0
#define DLPACK_FLAG_BITMASK_READ_ONLY (1ULL << 0)
#define DLPACK_FLAG_BITMASK_IS_COPIED (1ULL << 1)

/** DLPack's ABI version, carried by every versioned tensor. */
typedef struct {
    uint32_t major;
    uint32_t minor;
} DLPackVersion;

/** Where a tensor's memory is. ferry hands out kDLCPU (CPU engine) and kDLCUDA tensors. */
typedef enum { kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3 } DLDeviceType;

/** A device: its type and ordinal. */
typedef struct {
    DLDeviceType device_type;
    int32_t device_id;
} DLDevice;

/** Element type codes. */
typedef enum {
    kDLInt = 0U,
    kDLUInt = 1U,
    kDLFloat = 2U,
    kDLOpaqueHandle = 3U,
    kDLBfloat = 4U,
    kDLComplex = 5U,
    kDLBool = 6U
} DLDataTypeCode;

/** An element type: code, bits per lane, lanes. */
typedef struct {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
} DLDataType;

/** A tensor view: no ownership. strides NULL means compact row-major. */
typedef struct {
    void* data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t* shape;
    int64_t* strides;
    uint64_t byte_offset;
} DLTensor;

/** A tensor with its owner: call deleter(self) exactly once when done with it. */
typedef struct DLManagedTensorVersioned {
    DLPackVersion version;
    void* manager_ctx;
    void (*deleter)(struct DLManagedTensorVersioned* self);
    uint64_t flags;
    DLTensor dl_tensor;
} DLManagedTensorVersioned;
#endif /* DLPACK_MAJOR_VERSION */

/* ------------------------------------------------------------------------------------------------ */
/* Sources                                                                                          */
/* ------------------------------------------------------------------------------------------------ */

/** Element types of fields. */
typedef enum ferry_dtype {
    FERRY_DTYPE_BOOL = 1,
    FERRY_DTYPE_UINT8 = 2,
    FERRY_DTYPE_INT8 = 3,
    FERRY_DTYPE_UINT16 = 4,
    FERRY_DTYPE_INT16 = 5,
    FERRY_DTYPE_UINT32 = 6,
    FERRY_DTYPE_INT32 = 7,
    FERRY_DTYPE_UINT64 = 8,
    FERRY_DTYPE_INT64 = 9,
    FERRY_DTYPE_FLOAT16 = 10,
    FERRY_DTYPE_BFLOAT16 = 11,
    FERRY_DTYPE_FLOAT32 = 12,
    FERRY_DTYPE_FLOAT64 = 13
} ferry_dtype;

/** The most dimensions a field's per-sample shape may have. */
#define FERRY_MAX_DIMS 8

/**
 * One named field of a sample: its element type and per-sample shape (a batch holds it as
 * [batch, shape...]). This struct is frozen (it travels in arrays, so it has no size field). The library
 * copies name; the caller keeps nothing alive after the call.
 */
typedef struct ferry_field {
    const char* name;              /**< NUL-terminated, unique within a source */
    int32_t dtype;                 /**< ferry_dtype */
    int32_t ndim;                  /**< 0 (a scalar per sample) .. FERRY_MAX_DIMS */
    int64_t shape[FERRY_MAX_DIMS]; /**< the first ndim entries are used, each > 0 */
    int64_t offset;                /**< byte offset inside a record (ferry_source_records); else ignored */
} ferry_field;

/** A source of samples: an opaque ID, not a pointer. */
typedef struct ferry_source_s* ferry_source;

/**
 * A source over caller memory: data[k] points to num_samples samples of fields[k], back to back (a C-order
 * array whose first dimension is the sample, e.g. a numpy array). Nothing is copied at creation: the
 * caller keeps the memory alive, unchanged, until the source and every iterator over it are destroyed.
 */
FERRY_API ferry_status ferry_source_memory(int64_t num_samples, const ferry_field* fields, int32_t num_fields,
                                           const void* const* data, ferry_source* source);

/**
 * A memory-mapped file of fixed-size records after an optional header, each field at its offset inside
 * the record. A file whose size past the header is not a whole number of records is an error
 * (FERRY_ERR_FORMAT), never a silent truncation.
 */
FERRY_API ferry_status ferry_source_records(const char* path, int64_t record_size, int64_t header_size,
                                            const ferry_field* fields, int32_t num_fields, ferry_source* source);

/** The CIFAR-10 binary format as is: fields "label" (uint8) and "image" (uint8 [3, 32, 32], CHW). */
FERRY_API ferry_status ferry_source_cifar10(const char* path, ferry_source* source);

/**
 * One .npy file per field (C order, little-endian or byte-sized types), memory-mapped. The first dimension
 * is the sample and must agree across files.
 */
FERRY_API ferry_status ferry_source_npy(const char* const* names, const char* const* paths, int32_t count,
                                        ferry_source* source);

/** Token file formats. */
typedef enum ferry_token_format {
    FERRY_TOKENS_UINT16 = 1, /**< a flat file of little-endian uint16 tokens (nanoGPT's .bin) */
    FERRY_TOKENS_UINT32 = 2, /**< a flat file of little-endian uint32 tokens */
    FERRY_TOKENS_LLMC = 3    /**< an llm.c shard: a 256 x int32 header (magic, version, count), then tokens */
} ferry_token_format;

/** ferry_token_options.flags: windows start at seeded random offsets (nanoGPT's get_batch); else in order. */
#define FERRY_TOKENS_F_RANDOM 0x1u
/**
 * ferry_token_options.flags: each sample is one field, "tokens", of seq_len + 1 tokens (the window x
 * followed by its last target) instead of "x" and "y"; the samples and windows are the same. Each token
 * crosses PCIe once, and the iterator's token-shift layout makes x and y on the device.
 */
#define FERRY_TOKENS_F_WINDOW 0x2u

/** Options for ferry_source_tokens(). Fill with ferry_token_options_init() first. */
typedef struct ferry_token_options {
    uint32_t size;   /**< set by ferry_token_options_init */
    int32_t format;  /**< ferry_token_format; default FERRY_TOKENS_UINT16 */
    int64_t seq_len; /**< tokens per window T; required */
    uint64_t seed;   /**< seed of the random offsets */
    uint32_t flags;  /**< FERRY_TOKENS_F_* */
    uint32_t reserved;
} ferry_token_options;

/** Sets opts->size and the defaults. */
FERRY_API ferry_status ferry_token_options_init(ferry_token_options* opts);

/**
 * A token file whose samples are windows of seq_len + 1 tokens, as fields "x" and "y" (y is x shifted by
 * one), each [seq_len] of the file's token type; with FERRY_TOKENS_F_WINDOW, as one field "tokens",
 * [seq_len + 1]. There are (tokens - 1) / seq_len samples either way. The file stays memory-mapped until
 * the source is destroyed.
 */
FERRY_API ferry_status ferry_source_tokens(const char* path, const ferry_token_options* opts, ferry_source* source);

/** Options for ferry_source_ragged_tokens(). Fill with ferry_ragged_options_init() first. */
typedef struct ferry_ragged_options {
    uint32_t size;          /**< set by ferry_ragged_options_init */
    int32_t format;         /**< FERRY_TOKENS_UINT16 (default) or FERRY_TOKENS_UINT32 */
    int64_t max_len;        /**< the field's length; longer samples are cut to their first max_len tokens; required */
    const char* field_name; /**< the field's name, NUL-terminated, copied; NULL (the default) means "tokens" */
} ferry_ragged_options;

/** Sets opts->size and the defaults. */
FERRY_API ferry_status ferry_ragged_options_init(ferry_ragged_options* opts);

/**
 * Variable-length token sequences: tokens_path is a flat file of little-endian tokens (opts->format);
 * offsets_path is a .npy file of N + 1 int64 or uint64 token offsets, non-decreasing, the first >= 0 and
 * the last at most the token count, so that sample i is tokens[off[i], off[i+1]). The source has N samples
 * and one field, [max_len] of the token type: a sample's tokens, at most max_len, then zeros. A malformed
 * file is FERRY_ERR_FORMAT with a message naming the file and the problem. The token file stays
 * memory-mapped until the source is destroyed; the offsets are read at creation.
 */
FERRY_API ferry_status ferry_source_ragged_tokens(const char* tokens_path, const char* offsets_path,
                                                  const ferry_ragged_options* opts, ferry_source* source);

/** Options for ferry_source_megatron(). Fill with ferry_megatron_options_init() first. */
typedef struct ferry_megatron_options {
    uint32_t size;          /**< set by ferry_megatron_options_init */
    int32_t reserved;
    int64_t max_len; /**< the field's length; longer sequences are cut to their first max_len tokens; required */
    const char* field_name; /**< the field's name, NUL-terminated, copied; NULL (the default) means "tokens" */
} ferry_megatron_options;

/** Sets opts->size and the defaults. */
FERRY_API ferry_status ferry_megatron_options_init(ferry_megatron_options* opts);

/**
 * A Megatron indexed dataset (prefix.idx + prefix.bin, as Megatron-LM's preprocess_data.py and NeMo write
 * them) whose samples are its sequences: one field, [max_len] of the index's token type, and variable
 * length (FERRY_TRANSFORM_PAD_SEQUENCES lays a batch out). count prefixes make one corpus, their sequences
 * one after another. Every field of every index is checked here: a malformed file is FERRY_ERR_FORMAT with
 * a message naming the file and the field. The files stay memory-mapped until the source is destroyed.
 */
FERRY_API ferry_status ferry_source_megatron(const char* const* prefixes, int32_t count,
                                             const ferry_megatron_options* opts, ferry_source* source);

/** ferry_gpt_options.order. */
typedef enum ferry_gpt_order {
    /** windows in corpus order, window i of a file at token i*seq_len of its stream; no index to build;
        shuffle with the iterator (FERRY_ITERATOR_F_SHUFFLE), which gives exact and elastic resume */
    FERRY_GPT_ORDER_FERRY = 0,
    /** megatron-core's GPTDataset order, sample for sample (seed, split, which, num_samples); the source
        orders itself: iterate it without FERRY_ITERATOR_F_SHUFFLE */
    FERRY_GPT_ORDER_MEGATRON = 1
} ferry_gpt_order;

/** ferry_gpt_options.which: Megatron's splits. */
typedef enum ferry_megatron_split {
    FERRY_SPLIT_TRAIN = 0,
    FERRY_SPLIT_VALID = 1,
    FERRY_SPLIT_TEST = 2
} ferry_megatron_split;

/** ferry_gpt_options.flags: build the Megatron-order index at every creation and write no cache. */
#define FERRY_GPT_F_NO_CACHE 0x1u

/** Options for ferry_source_gpt(). Fill with ferry_gpt_options_init() first. */
typedef struct ferry_gpt_options {
    uint32_t size; /**< set by ferry_gpt_options_init */
    int32_t order; /**< ferry_gpt_order; default FERRY_GPT_ORDER_FERRY */
    int64_t seq_len; /**< inputs per sample; each window holds seq_len + 1 tokens; required */
    const char* field_name; /**< NULL (the default) means "tokens" */
    /* FERRY_GPT_ORDER_MEGATRON */
    uint64_t seed; /**< Megatron's random_seed, 0 .. 2^32-1 */
    const char* split; /**< Megatron's split string, e.g. "969,30,1"; NULL means "1" (all in train) */
    int32_t which; /**< ferry_megatron_split */
    uint32_t flags; /**< FERRY_GPT_F_* */
    int64_t num_samples; /**< samples asked for (train_iters x global batch); 0 builds one epoch */
    const char* cache_dir; /**< where built indices are kept; NULL means a "cache" directory beside the first prefix */
} ferry_gpt_options;

/** Sets opts->size and the defaults. */
FERRY_API ferry_status ferry_gpt_options_init(ferry_gpt_options* opts);

/**
 * GPT samples over a Megatron corpus: windows of seq_len + 1 tokens packed across document boundaries as
 * Megatron's GPTDataset packs them, one field of the corpus's token type (FERRY_TRANSFORM_SHIFT_TOKENS
 * makes int64 x/y, the loss mask and the position ids on the device). FERRY_GPT_ORDER_MEGATRON reads one
 * prefix; its indices are built here (or mapped from the cache, a file keyed by every file and parameter,
 * so a second creation costs milliseconds).
 */
FERRY_API ferry_status ferry_source_gpt(const char* const* prefixes, int32_t count, const ferry_gpt_options* opts,
                                        ferry_source* source);

/** How a GPT source got its Megatron-order index (ferry_source_gpt_index_info). */
typedef struct ferry_gpt_index_info {
    uint32_t size; /**< set by the caller to sizeof(ferry_gpt_index_info) */
    int32_t cached; /**< 1 when the index was mapped from the cache */
    int64_t epochs; /**< passes over the split the windows make */
    double seconds; /**< time to build or map the index */
    char path[1024]; /**< the cache file read or written, NUL-terminated; empty when none */
    char cache_error[1024]; /**< why the cache could not be used, if it could not; the source works without it */
} ferry_gpt_index_info;

/** Writes how a GPT source got its index (zeros for FERRY_GPT_ORDER_FERRY). Other sources: FERRY_ERR_INVALID_ARGUMENT. */
FERRY_API ferry_status ferry_source_gpt_index_info(ferry_source source, ferry_gpt_index_info* info);

/** ferry_blend_options.order. */
typedef enum ferry_blend_order {
    /** position p of epoch e is a pure function of (seed, e, p): exact shares per block of 128 positions,
        each source in its own seeded order; resume needs no state */
    FERRY_BLEND_ORDER_FERRY = 0,
    /** megatron-core's BlendedDataset: the source furthest behind its weight, and its next sample */
    FERRY_BLEND_ORDER_MEGATRON = 1
} ferry_blend_order;

/** Options for ferry_source_blend(). Fill with ferry_blend_options_init() first. */
typedef struct ferry_blend_options {
    uint32_t size; /**< set by ferry_blend_options_init */
    int32_t order; /**< ferry_blend_order; default FERRY_BLEND_ORDER_FERRY */
    int64_t num_samples; /**< the blend's size (an epoch); required */
    uint64_t seed; /**< keys FERRY_BLEND_ORDER_FERRY */
} ferry_blend_options;

/** Sets opts->size and the defaults. */
FERRY_API ferry_status ferry_blend_options_init(ferry_blend_options* opts);

/**
 * Mixes count sources (equal fields) by weight (positive; normalized here). The blend refers to the
 * sources and does not own them: destroy the blend and its iterators first. A source destroyed while the
 * blend is in use makes its reads fail with FERRY_ERR_CLOSED, never a crash.
 */
FERRY_API ferry_status ferry_source_blend(const ferry_source* sources, const double* weights, int32_t count,
                                          const ferry_blend_options* opts, ferry_source* source);

/**
 * The numbers Megatron's builder uses for a blend of size samples with these weights: per_source[k] (count
 * entries) is the number of samples to build source k with (num_samples of ferry_source_gpt), and
 * *blend_size the blend's size (num_samples of ferry_source_blend), so that FERRY_BLEND_ORDER_MEGATRON
 * matches megatron-core sample for sample.
 */
FERRY_API ferry_status ferry_megatron_blend_sizes(const double* weights, int32_t count, int64_t size,
                                                  int64_t* per_source, int64_t* blend_size);

/** ferry_image_source_options.flags: accept class folders without an image (torchvision's allow_empty). */
#define FERRY_IMAGES_F_ALLOW_EMPTY 0x1u
/** ferry_image_source_options.flags: index every WebDataset shard at every creation and write no cache. */
#define FERRY_IMAGES_F_NO_CACHE 0x2u

/** Options for ferry_source_image_folder() and ferry_source_webdataset(). Fill with ferry_image_source_options_init() first. */
typedef struct ferry_image_source_options {
    uint32_t size; /**< set by ferry_image_source_options_init */
    uint32_t flags; /**< FERRY_IMAGES_F_* */
    int64_t max_bytes; /**< the largest encoded image served (the image field's length); 0: 8 MiB */
    const char*
        image_keys; /**< WebDataset: the image member's extensions, ";"-separated, the first present taken; NULL: "jpg;jpeg;png;webp" */
    const char* label_key; /**< WebDataset: an ASCII integer member; NULL: "cls"; "-": none */
    const char*
        cache_dir; /**< WebDataset: where shard indexes are kept; NULL: a "cache" directory beside the first shard */
} ferry_image_source_options;

/** Sets opts->size and the defaults. */
FERRY_API ferry_status ferry_image_source_options_init(ferry_image_source_options* opts);

/**
 * A folder per class, as torchvision's ImageFolder reads it (class folders sorted into labels, files found
 * by a sorted walk following links, its extensions in any case): sample i is torchvision's sample i for the
 * same root. Fields "image" (the file's bytes, uint8 [max_bytes], variable length; decode and crop it with
 * FERRY_TRANSFORM_RANDOM_RESIZED_CROP or FERRY_TRANSFORM_CENTER_CROP) and "label" (int64). Files are read
 * when their samples are.
 */
FERRY_API ferry_status ferry_source_image_folder(const char* root, const ferry_image_source_options* opts,
                                                 ferry_source* source);

/**
 * WebDataset tar shards (count patterns, brace ranges like "train-{0000..0147}.tar" expanded), with random
 * access: members grouped into samples by key as the webdataset package groups them, each shard's member
 * index built from its tar headers and cached. Fields "image" and, unless label_key is "-", "label", as for
 * ferry_source_image_folder. A malformed or truncated shard is FERRY_ERR_FORMAT naming it.
 */
FERRY_API ferry_status ferry_source_webdataset(const char* const* shards, int32_t count,
                                               const ferry_image_source_options* opts, ferry_source* source);

/**
 * Writes the name of sample index (a file, "shard.tar:key.jpg"), NUL-terminated and cut to len bytes, for a
 * source that names its samples (image folders, WebDataset); an empty string for others.
 */
FERRY_API ferry_status ferry_source_sample_name(ferry_source source, int64_t index, char* name, uint32_t len);

/**
 * Fills sample `index`: dst[k] is dst_bytes[k] bytes for field k. Returns 0, or non-zero to fail the
 * batch (the iterator reports FERRY_ERR_IO naming the sample). Called from ferry's worker threads, several
 * at once, so it must be thread-safe; it must not call back into ferry with the same iterator.
 */
typedef int32_t (*ferry_sample_fn)(void* user, int64_t index, void* const* dst, const int64_t* dst_bytes,
                                   int32_t num_fields);

/** A source whose samples a callback fills: custom decoding in C, C++ or Python. */
FERRY_API ferry_status ferry_source_callback(int64_t num_samples, const ferry_field* fields, int32_t num_fields,
                                             ferry_sample_fn fn, void* user, ferry_source* source);

/** Writes the number of samples. */
FERRY_API ferry_status ferry_source_len(ferry_source source, int64_t* num_samples);

/** Writes the source's field count. */
FERRY_API ferry_status ferry_source_num_fields(ferry_source source, int32_t* num_fields);

/**
 * Writes field `index` of the source. out->name points into the source and stays valid until the source
 * is destroyed.
 */
FERRY_API ferry_status ferry_source_field(ferry_source source, int32_t index, ferry_field* field);

/** Destroys the source. Destroy its iterators first. NULL is a no-op. */
FERRY_API ferry_status ferry_source_destroy(ferry_source source);

/* ------------------------------------------------------------------------------------------------ */
/* Iterator                                                                                         */
/* ------------------------------------------------------------------------------------------------ */

/** A prefetching iterator: an opaque ID. */
typedef struct ferry_iterator_s* ferry_iterator;
/** A batch handed out by ferry_iterator_next: an opaque ID. */
typedef struct ferry_batch_s* ferry_batch;

/** ferry_iterator_options.flags: a seeded permutation per epoch (else sequential). */
#define FERRY_ITERATOR_F_SHUFFLE 0x1u
/** ferry_iterator_options.flags: drop the last incomplete batch (and cut the tail when sharding). */
#define FERRY_ITERATOR_F_DROP_LAST 0x2u

/** ferry_transform.kind: a layout op on one source field (see ferry_transform). */
typedef enum ferry_transform_kind {
    /** u8 images [H, W, C] (C <= 4) to float, out = (x*scale - mean[c]) / std[c], CHW or HWC, optional
        random horizontal flip. Keeps the field's name. */
    FERRY_TRANSFORM_NORMALIZE = 1,
    /** a uint16/uint32/int32 window [SeqLen+1] to int64 x = window[:-1] and y = window[1:], each [SeqLen];
        optionally a float32 loss mask and int64 position ids (loss_mask_name, position_ids_name) */
    FERRY_TRANSFORM_SHIFT_TOKENS = 2,
    /** a variable-length uint16/uint32 field (ferry_source_ragged_tokens) to int64 tokens [B, L] padded
        with pad_value, a bool attention mask [B, L] and int64 lengths [B]; L is the batch's longest */
    FERRY_TRANSFORM_PAD_SEQUENCES = 3,
    /** an encoded image (JPEG, PNG, WebP, BMP, TIFF or PPM/PGM/PBM bytes: ferry_source_image_folder,
        ferry_source_webdataset) or a decoded uint8 [H, W, 3] image to a random crop (torchvision's
        RandomResizedCrop: crop_size, scale_*, ratio_*) resized bilinearly to [crop_size, crop_size], flipped
        with probability flip and normalized as FERRY_TRANSFORM_NORMALIZE (mean, std, channels, layout, dtype).
        On a GPU one kernel crops the batch, from images decoded into device memory (JPEGs by nvJPEG where it
        loads, the others on the host). */
    FERRY_TRANSFORM_RANDOM_RESIZED_CROP = 4,
    /** as FERRY_TRANSFORM_RANDOM_RESIZED_CROP, with torchvision's evaluation crop: the shorter side resized to
        resize_to (0: crop_size * 256 / 224), then the central [crop_size, crop_size]; no flip */
    FERRY_TRANSFORM_CENTER_CROP = 5,
    /** an encoded image to its pixels, uint8 [height, width, 3] (RGB as the crops decode it), for data sets
        whose images all have one size; an image of another size fails its batch naming the file. On a GPU,
        JPEGs are decoded by nvJPEG straight into the batch. Reads height, width and max_pixels. */
    FERRY_TRANSFORM_DECODE_IMAGE = 6
} ferry_transform_kind;

/** ferry_transform.layout of FERRY_TRANSFORM_NORMALIZE. */
typedef enum ferry_image_layout {
    FERRY_LAYOUT_CHW = 0, /**< channels first: [C, H, W] per sample (torchvision models) */
    FERRY_LAYOUT_HWC = 1 /**< channels last: [H, W, C] per sample */
} ferry_image_layout;

/**
 * A layout transform of one source field. On a GPU it runs as a kernel on the iterator's stream right after
 * the batch's data crosses PCIe (fused with the gather when the source memory is mapped); on the CPU
 * engine, or where the kernels cannot load, the same op runs on the host, with the same results within
 * float rounding. Fill with ferry_transform_init(); set only the kind's fields.
 */
typedef struct ferry_transform {
    uint32_t size; /**< set by ferry_transform_init */
    int32_t kind; /**< ferry_transform_kind */
    const char* field; /**< the source field it applies to (copied at iterator create) */
    /* FERRY_TRANSFORM_NORMALIZE */
    int32_t channels; /**< how many mean/std values are given: 0 (none), 1 (every channel) or C */
    int32_t layout; /**< ferry_image_layout */
    float mean[4]; /**< in units of x*scale: torchvision's ImageNet mean is 0.485, 0.456, 0.406 */
    float std[4];
    float scale; /**< 0 means 1/255 */
    int32_t dtype; /**< FERRY_DTYPE_FLOAT32 (or 0), FERRY_DTYPE_FLOAT16 or FERRY_DTYPE_BFLOAT16 */
    double flip; /**< probability of a horizontal flip, a pure function of (seed, epoch, sample) */
    /* FERRY_TRANSFORM_SHIFT_TOKENS */
    const char* x_name; /**< NULL means "x" */
    const char* y_name; /**< NULL means "y" */
    /* FERRY_TRANSFORM_PAD_SEQUENCES */
    int64_t pad_value;
    int32_t fixed_length; /**< nonzero pads to the field's full length instead of the batch's longest */
    int32_t reserved;
    const char* mask_name; /**< NULL means "attention_mask" */
    const char* lengths_name; /**< NULL means "lengths" */
    /* Appended in 0.1 (FERRY_TRANSFORM_NORMALIZE); a caller whose size stops before it gets the default. */
    int32_t input_layout; /**< ferry_image_layout of the u8 input: FERRY_LAYOUT_HWC ([H, W, C], as decoded;
                               the default) or FERRY_LAYOUT_CHW ([C, H, W] channel planes, as CIFAR stores them) */
    int32_t reserved2;
    /* Appended in 0.1 after input_layout (FERRY_TRANSFORM_SHIFT_TOKENS): what Megatron's GPTDataset returns beside tokens and
       labels, made on the device. A caller whose size stops before them gets neither output. */
    const char* loss_mask_name; /**< a float32 [SeqLen] loss mask output; NULL for none */
    const char* position_ids_name; /**< an int64 [SeqLen] position-id output; NULL for none */
    int64_t eod; /**< the end-of-document token, for the FERRY_SHIFT_F_* flags */
    uint32_t shift_flags; /**< FERRY_SHIFT_F_* */
    uint32_t crop_flags; /**< FERRY_CROP_F_* (the crops; read with the crop fields below) */
    /* Appended in 0.1 after the GPT outputs (FERRY_TRANSFORM_RANDOM_RESIZED_CROP, FERRY_TRANSFORM_CENTER_CROP). */
    int32_t crop_size; /**< the output's side; required */
    int32_t resize_to; /**< FERRY_TRANSFORM_CENTER_CROP: the shorter side before the crop; 0: crop_size * 256 / 224 */
    double scale_min; /**< the crop's area fraction, drawn uniformly; 0 and 0: 0.08 and 1 */
    double scale_max;
    double ratio_min; /**< the crop's aspect ratio, drawn log-uniformly; 0 and 0: 3/4 and 4/3 */
    double ratio_max;
    int64_t max_pixels; /**< larger images are refused, naming them; 0: 64 Mpx */
    /* Appended in 0.1 after the crops (FERRY_TRANSFORM_DECODE_IMAGE). */
    int32_t height; /**< the images' height; required */
    int32_t width; /**< the images' width; required */
} ferry_transform;

/** ferry_transform.crop_flags: widen the bilinear filter by the downscale factor when the crop shrinks the
    image (Pillow's resize, torchvision's antialias=True). */
#define FERRY_CROP_F_ANTIALIAS 0x1u
/** ferry_transform.shift_flags: the loss mask is 0 where the input token is eod (Megatron's eod_mask_loss). */
#define FERRY_SHIFT_F_MASK_EOD 0x1u
/** ferry_transform.shift_flags: position ids restart after each eod input (Megatron's reset_position_ids). */
#define FERRY_SHIFT_F_RESET_POSITIONS 0x2u

/**
 * Sets t->size, kind and field and the kind's defaults (ImageNet-free: no mean, std 1, HWC input, CHW
 * output, float32). An array of transforms is read with the stride t[0].size, so each element must carry
 * the same size.
 */
FERRY_API ferry_status ferry_transform_init(ferry_transform* t, int32_t kind, const char* field);

/** ferry_iterator_options.staging: how samples cross to the device. */
typedef enum ferry_staging {
    /** the fastest that applies: FERRY_STAGING_MAPPED when the source's memory can be registered within
        the pinned budget and the kernels load, else FERRY_STAGING_GATHER */
    FERRY_STAGING_AUTO = 0,
    /** worker threads copy samples into page-locked staging, then one DMA per field; any source */
    FERRY_STAGING_GATHER = 1,
    /** the source's memory is registered; one DMA per sample straight from it; no host copy */
    FERRY_STAGING_DMA = 2,
    /** the source's memory is registered and mapped; a kernel reads the samples in place, fused with the
        transforms; no host copy and no host thread per sample */
    FERRY_STAGING_MAPPED = 3
} ferry_staging;

/** Options for ferry_iterator_create(). Fill with ferry_iterator_options_init() first. */
typedef struct ferry_iterator_options {
    uint32_t size; /**< set by ferry_iterator_options_init */
    uint32_t flags; /**< FERRY_ITERATOR_F_* */
    int64_t batch_size; /**< samples per batch; required */
    uint64_t seed; /**< the shuffle's seed: the order is a pure function of (seed, epoch, position) */
    int32_t workers; /**< gather threads; 0 picks min(cores, 16) */
    int32_t prefetch; /**< batches in flight (the ring depth), 2..64; 0 picks 4 */
    int32_t rank; /**< this rank, as torch's DistributedSampler shards */
    int32_t world_size; /**< ranks; 0 reads RANK and WORLD_SIZE when set (torchrun), else 1 */
    uint32_t timeout_ms; /**< the longest ferry_iterator_next waits; 0 picks 300000 (5 min) */
    uint32_t reserved;
    /* Appended in 0.1: layout transforms and staging. */
    const ferry_transform* transforms; /**< num_transforms transforms (copied at create), or NULL */
    int32_t num_transforms;
    int32_t staging; /**< ferry_staging; FERRY_STAGING_AUTO picks the fastest that applies */
    /** Bytes the iterator may take beyond its ring, counted separately for the source memory it registers
        and for the slots the ring grows by when the caller holds batches; 0: a quarter of RAM; < 0: none */
    int64_t pinned_budget;
    /* Appended in 0.1 after pinned_budget. */
    int32_t on_error; /**< ferry_on_error: what a sample that fails to read or lay out does */
    int32_t reserved2;
} ferry_iterator_options;

/** ferry_iterator_options.on_error. */
typedef enum ferry_on_error {
    /** the batch fails with an error naming the sample (its file, its shard member) */
    FERRY_ON_ERROR_RAISE = 0,
    /** the next readable sample takes its place (the batch's indices say which); the skips are counted
        (ferry_pipeline_stats.skipped, the monitor's pipeline/NAME/samples_skipped) and logged */
    FERRY_ON_ERROR_SKIP = 1
} ferry_on_error;

/** Sets opts->size and the defaults. */
FERRY_API ferry_status ferry_iterator_options_init(ferry_iterator_options* opts);

/**
 * Creates an iterator over source on the engine's device and starts prefetching. It allocates its ring
 * once: prefetch x B x (bytes per sample) of page-locked host memory and as much device memory (host
 * memory only on the CPU engine), where B is the largest batch this rank gets: batch_size, or the rank's
 * samples per epoch when fewer. The source must outlive the iterator.
 */
FERRY_API ferry_status ferry_iterator_create(ferry_engine engine, ferry_source source,
                                             const ferry_iterator_options* opts, ferry_iterator* iterator);

/**
 * Returns the next batch. consumer_stream is the CUDA stream that will use the batch (a CUstream or
 * cudaStream_t; NULL is the legacy default stream): ferry makes it wait on the batch's copy with
 * cuStreamWaitEvent, so the host never waits for the copy. On the CPU engine it is ignored. Returns
 * FERRY_END_OF_EPOCH (with *batch NULL) once at the end of each epoch; the call after it returns the next
 * epoch's first batch, already prefetched. A sample the source cannot read fails its batch with that error;
 * the iterator stays usable. When the caller holds the batch (or a tensor of it) whose ring slot the next
 * batch needs, the ring grows by a slot instead of waiting, within pinned_budget; beyond it the call returns
 * FERRY_ERR_LIMIT at once, naming the budget and the batches held, and the batch stays the next one.
 * Waits at most timeout_ms (FERRY_ERR_TIMEOUT). Call from one thread at a time.
 */
FERRY_API ferry_status ferry_iterator_next(ferry_iterator iterator, void* consumer_stream, ferry_batch* batch);

/**
 * ferry_iterator_next that waits at most wait_ms (>= 1) in this call, for a caller that must react to
 * something between waits (a binding that checks for Ctrl-C, an event loop). When no batch came within
 * wait_ms it returns FERRY_OK with *batch NULL and changes nothing: call it again. Consecutive such calls
 * continue one wait, so that timeout_ms bounds the whole wait and its FERRY_ERR_TIMEOUT is the one
 * ferry_iterator_next would have returned; a call of ferry_iterator_next, _restore or _set_epoch in between
 * starts a new wait. Everything else is as ferry_iterator_next. Call from one thread at a time.
 */
FERRY_API ferry_status ferry_iterator_next_wait(ferry_iterator iterator, void* consumer_stream, uint32_t wait_ms,
                                                ferry_batch* batch);

/**
 * Writes the staging strategy the iterator uses (ferry_staging) and, into why (why_len bytes, always
 * NUL-terminated; why may be NULL), the reason it was picked: e.g. why it fell back to gather.
 */
FERRY_API ferry_status ferry_iterator_staging(ferry_iterator iterator, int32_t* staging, char* why, uint32_t why_len);

/** Writes the number of fields of the iterator's batches: the source's fields after the transforms. */
FERRY_API ferry_status ferry_iterator_num_fields(ferry_iterator iterator, int32_t* num_fields);

/**
 * Writes field `index` of the iterator's batches (after the transforms), per sample. out->name stays valid
 * until the iterator is destroyed. A field that PAD_SEQUENCES pads has its full length here; a batch
 * padded to its longest sample is shorter (see the batch's DLPack shape).
 */
FERRY_API ferry_status ferry_iterator_field(ferry_iterator iterator, int32_t index, ferry_field* field);

/**
 * Runs transform t's kernel on stream (a CUstream; NULL is the legacy stream) over batch samples of the
 * field in that lie back to back at the device address src (device memory, or page-locked host memory,
 * which the kernel reads across PCIe), writing its outputs, [batch, ...] each in order (NORMALIZE: the
 * image; SHIFT_TOKENS: x then y), at the device addresses dst[0..num_dst). The iterator's layout step on
 * its own, for data already on the device. NORMALIZE runs without flips; PAD_SEQUENCES needs an iterator.
 * The host does not wait. FERRY_ERR_UNSUPPORTED when the kernels cannot load on this device.
 */
FERRY_API ferry_status ferry_transform_launch(ferry_engine engine, const ferry_transform* t, const ferry_field* in,
                                              int64_t batch, uint64_t src, const uint64_t* dst, int32_t num_dst,
                                              void* stream);

/** Writes the number of batches per epoch on this rank. */
FERRY_API ferry_status ferry_iterator_len(ferry_iterator iterator, int64_t* batches);

/** An iterator position: the next batch ferry_iterator_next returns. */
typedef struct ferry_iterator_position {
    uint32_t size; /**< set by the caller: sizeof(ferry_iterator_position) */
    uint32_t reserved;
    uint64_t epoch;
    int64_t batch; /**< 0 .. batches per epoch (the last value means: the epoch's end comes next) */
    /* Appended in 0.1: the job's global position, for an elastic resume. */
    int64_t offset; /**< where the epoch's sharding began in its global order; 0 unless resumed elastically */
    int64_t consumed; /**< samples of the epoch's global order all ranks have consumed: the same on every rank */
    int64_t world_size; /**< the world size the position was taken under */
} ferry_iterator_position;

/**
 * Writes the iterator's position: all that an exact resume needs (epoch, batch, offset under the same
 * world size), and the job's global position (consumed) for an elastic one. Fields past state->size are
 * left alone.
 */
FERRY_API ferry_status ferry_iterator_state(ferry_iterator iterator, ferry_iterator_position* state);

/**
 * Moves the iterator to state, in O(1): the batches that follow equal, bit for bit, those an
 * uninterrupted iterator would have returned from there. Prefetched batches are discarded; batches the
 * caller holds stay valid until released. A state saved under another world size is refused: use
 * ferry_iterator_restore_elastic.
 */
FERRY_API ferry_status ferry_iterator_restore(ferry_iterator iterator, const ferry_iterator_position* state);

/**
 * Continues a data-parallel job from its global position (epoch, consumed: a ferry_iterator_position's
 * fields, from any rank) under this iterator's world size, which may differ from the one it was saved
 * under: the rest of the epoch is sharded among the current ranks, so that every remaining sample comes
 * exactly once across them (DistributedSampler's padding may repeat up to world_size - 1; drop_last may
 * drop as many), and later epochs are whole. Which rank sees which sample differs from an uninterrupted
 * run. Call it on every rank with the same arguments.
 */
FERRY_API ferry_status ferry_iterator_restore_elastic(ferry_iterator iterator, uint64_t epoch, int64_t consumed);

/** Starts epoch `epoch` from its first batch, like DistributedSampler.set_epoch. */
FERRY_API ferry_status ferry_iterator_set_epoch(ferry_iterator iterator, uint64_t epoch);

/**
 * Stops prefetching, waits (bounded by timeout_ms) for copies in flight, and returns the ring to the
 * engine's pools. Batches still held can no longer be used with the ferry_batch_* calls (they return
 * FERRY_ERR_INVALID_HANDLE; ferry_batch_release still drops the handle's reference), but the memory of
 * their tensors stays valid: each batch's memory is freed when its handle is released and the deleter of
 * every tensor handed out has run. NULL is a no-op.
 */
FERRY_API ferry_status ferry_iterator_destroy(ferry_iterator iterator);

/** What a pipeline (an iterator or a feed) delivered so far. */
typedef struct ferry_pipeline_stats {
    uint32_t size; /**< set by the caller: sizeof(ferry_pipeline_stats) */
    uint32_t reserved;
    uint64_t batches; /**< batches handed out */
    uint64_t samples; /**< samples in them */
    uint64_t bytes; /**< bytes of input data in them: what crossed to the device on a GPU */
    uint64_t stall_ns; /**< time the consumer waited for data: the input-bound share of a training loop */
    /* Appended in 0.1 after stall_ns; a caller whose size stops before it does not get it. */
    uint64_t skipped; /**< samples that failed and were replaced (FERRY_ON_ERROR_SKIP) */
} ferry_pipeline_stats;

/** Writes what the iterator delivered so far. Any thread. */
FERRY_API ferry_status ferry_iterator_stats(ferry_iterator iterator, ferry_pipeline_stats* stats);

/* ---- feeds: batches the caller already has, staged onto the device ------------------------------------ */

/**
 * A feed stages batches that the caller already has in host memory (those a Python DataLoader's worker
 * processes made, say) onto the engine's device: ferry_feed_push copies the tensors into a page-locked
 * staging slot (several threads for a large batch), issues the host-to-device copy and the layout
 * transforms on the feed's own stream, and returns a ferry_batch, used as an iterator's. Slots are sized to
 * the largest batch seen and grow when a batch is larger; when the caller holds every slot, the feed adds
 * one, within pinned_budget. On the CPU engine the batch stays in host memory.
 */
typedef struct ferry_feed_s* ferry_feed;

/** Options for ferry_feed_create(). Fill with ferry_feed_options_init() first. */
typedef struct ferry_feed_options {
    uint32_t size; /**< set by ferry_feed_options_init */
    int32_t slots; /**< staging slots to start with (batches queued and held); 0 picks 6 */
    int32_t workers; /**< threads that copy a large batch; 0 picks min(cores, 8) */
    uint32_t timeout_ms; /**< the longest a push waits for a slot's previous copy; 0 picks 300000 (5 min) */
    const ferry_transform* transforms; /**< by tensor name (the transform's field), copied at create, or NULL;
                                            Normalize flips and pad_sequences need an iterator and are refused */
    int32_t num_transforms;
    int32_t reserved;
    int64_t pinned_budget; /**< the most memory (page-locked and device) the slots hold; 0: a quarter of RAM;
                                < 0: no bound on the memory, but never more than `slots` slots */
} ferry_feed_options;

/** Sets opts->size and the defaults. */
FERRY_API ferry_status ferry_feed_options_init(ferry_feed_options* opts);

/** Creates a feed on the engine's device. It allocates its staging at the first push. */
FERRY_API ferry_status ferry_feed_create(ferry_engine engine, const ferry_feed_options* opts, ferry_feed* feed);

/** One tensor of a batch given to ferry_feed_push: dense, row-major host memory. */
typedef struct ferry_host_tensor {
    const char* name; /**< what a transform is keyed by; not NULL or empty */
    int32_t dtype; /**< ferry_dtype */
    int32_t ndim; /**< 1..FERRY_MAX_DIMS + 1: the batch, then a sample's shape */
    int64_t shape[FERRY_MAX_DIMS + 1]; /**< the first ndim entries; shape[0] is the same for every tensor */
    const void* data; /**< the tensor's first byte; read during the call only */
    int64_t bytes; /**< the tensor's size: the product of shape times the dtype's size */
} ferry_host_tensor;

/**
 * Stages one batch of num_tensors tensors and writes its handle to *batch: the copy out of the caller's
 * memory is done when the call returns (the memory may be reused then), and on a GPU the device work is
 * queued on the feed's stream; make the consuming stream wait for it with ferry_batch_wait (the batch's
 * fields are the tensors, or their transforms' outputs, in order). Memory that faults while read (a file
 * mapping truncated under the caller) returns FERRY_ERR_IO; more than pinned_budget returns FERRY_ERR_LIMIT
 * at once. Call from one thread at a time.
 */
FERRY_API ferry_status ferry_feed_push(ferry_feed feed, const ferry_host_tensor* tensors, int32_t num_tensors,
                                       ferry_batch* batch);

/** Adds stall_ns to the time a consumer waited for the feed's batches (its stats, and a monitor's). */
FERRY_API ferry_status ferry_feed_add_stall(ferry_feed feed, uint64_t stall_ns);

/** Writes what the feed staged so far, and the stall its consumer reported. Any thread. */
FERRY_API ferry_status ferry_feed_stats(ferry_feed feed, ferry_pipeline_stats* stats);

/**
 * Waits (bounded by timeout_ms) for copies in flight and frees the staging slots. Batches still held stay
 * valid, as an iterator's do at its destroy. NULL is a no-op.
 */
FERRY_API ferry_status ferry_feed_destroy(ferry_feed feed);

/** Facts about a batch. */
typedef struct ferry_batch_properties {
    uint32_t size; /**< set by the caller: sizeof(ferry_batch_properties) */
    int32_t num_fields;
    uint64_t epoch;
    int64_t index; /**< the batch's number within its epoch */
    int64_t num_samples; /**< the batch size (the last batch may be short) */
} ferry_batch_properties;

/**
 * ferry_iterator_next_wait that hands every field of the batch out at once, for a binding that spends one
 * call per batch: tensors[k] gets field k as a DLPack tensor (as ferry_batch_field), info the batch's
 * properties, and no batch handle is kept (the tensors hold the batch; each deleter drops its reference, the
 * last one on the stream given here). wait_ms 0 waits as ferry_iterator_next; when no batch came within
 * wait_ms >= 1 it returns FERRY_OK with info->num_fields 0. capacity must be at least the batch's field count
 * (ferry_iterator_num_fields). Call from one thread at a time.
 */
FERRY_API ferry_status ferry_iterator_next_tensors(ferry_iterator iterator, void* consumer_stream, uint32_t wait_ms,
                                                   DLManagedTensorVersioned** tensors, int32_t capacity,
                                                   ferry_batch_properties* info);

/** Fills *info. */
FERRY_API ferry_status ferry_batch_info(ferry_batch batch, ferry_batch_properties* info);

/** Copies the batch's sample indices (num_samples of them) into indices, which has room for capacity. */
FERRY_API ferry_status ferry_batch_indices(ferry_batch batch, int64_t* indices, int64_t capacity);

/**
 * Hands field `index` of the batch out as a DLPack tensor, with no copy: [num_samples, shape...] on the
 * engine's device (kDLCUDA), or in host memory on the CPU engine (kDLCPU). Each tensor holds the batch:
 * its memory is reused only after ferry_batch_release and the deleter of every tensor handed out have been
 * called. The caller owns *tensor and must call (*tensor)->deleter(*tensor) exactly once, from any thread.
 */
FERRY_API ferry_status ferry_batch_field(ferry_batch batch, int32_t index, DLManagedTensorVersioned** tensor);

/**
 * Writes the name of the batch's field `index` (a tensor's name, or its transform's output) to name, NUL
 * terminated: at most len bytes, FERRY_ERR_LIMIT when it does not fit (the message gives the length needed).
 */
FERRY_API ferry_status ferry_batch_field_name(ferry_batch batch, int32_t index, char* name, uint32_t len);

/**
 * Writes which input the batch's field `index` comes from: the tensor's position in ferry_feed_push, or the
 * source field's index for an iterator's batch. A transform with several outputs gives them the same one.
 */
FERRY_API ferry_status ferry_batch_field_origin(ferry_batch batch, int32_t index, int32_t* origin);

/** As ferry_batch_field, by field name. */
FERRY_API ferry_status ferry_batch_field_by_name(ferry_batch batch, const char* name,
                                                 DLManagedTensorVersioned** tensor);

/**
 * Makes stream wait for the batch's copy too: for consumers that use the batch on a stream other than
 * the one given to ferry_iterator_next.
 */
FERRY_API ferry_status ferry_batch_wait(ferry_batch batch, void* stream);

/**
 * Makes stream wait for the copy of the batch that tensor (a DLPack tensor from ferry_batch_field) belongs
 * to: what a consumer on another stream than the one given to ferry_iterator_next needs before it reads the
 * tensor. Valid for as long as the tensor is alive (until its deleter runs), also after ferry_batch_release
 * and after the iterator was destroyed: the tensor keeps its batch. Returns FERRY_ERR_INVALID_ARGUMENT for
 * a tensor that ferry did not make. Does nothing on the CPU engine. Any thread.
 */
FERRY_API ferry_status ferry_tensor_wait(DLManagedTensorVersioned* tensor, void* stream);

/**
 * Gives the batch back. stream (NULL: the stream given to ferry_iterator_next) is the stream whose work
 * uses the batch: ferry records an event on it, and refills the batch's memory only after that event, so
 * the host never waits. Tensors handed out stay valid until their deleters run. The handle is invalid
 * afterwards.
 */
FERRY_API ferry_status ferry_batch_release(ferry_batch batch, void* stream);

/* ------------------------------------------------------------------------------------------------ */
/* Memory pressure                                                                                  */
/* ------------------------------------------------------------------------------------------------ */

/** What the pressure thresholds compare against. */
typedef enum ferry_pressure_metric {
    FERRY_PRESSURE_DEVICE_USED = 1, /**< device used by every process (total - free); the default */
    FERRY_PRESSURE_PROCESS_USED = 2, /**< this process's device memory (NVML; falls back to device used) */
    FERRY_PRESSURE_ENGINE_RESERVED = 3 /**< the memory held by the engine's pools */
} ferry_pressure_metric;

/**
 * Pressure thresholds. A threshold is given in bytes, or as a fraction of the device's total memory (used
 * when the bytes are 0); a threshold left at 0 is unset. With both unset, the level is always NONE.
 * critical must not be below warn. Fill with ferry_pressure_options_init() first.
 */
typedef struct ferry_pressure_options {
    uint32_t size; /**< set by ferry_pressure_options_init */
    int32_t metric; /**< ferry_pressure_metric */
    uint64_t warn_bytes; /**< level WARN at or above this */
    uint64_t critical_bytes; /**< level CRITICAL at or above this */
    double warn_fraction; /**< of device total, 0..1; used when warn_bytes is 0 */
    double critical_fraction; /**< of device total, 0..1; used when critical_bytes is 0 */
} ferry_pressure_options;

/** Sets opts->size and the defaults (metric DEVICE_USED, no thresholds). */
FERRY_API ferry_status ferry_pressure_options_init(ferry_pressure_options* opts);

/**
 * Sets the engine's thresholds. From then on every snapshot carries the level (ferry_memory_snapshot.level)
 * and the thresholds in bytes (warn_threshold_bytes, critical_threshold_bytes); the current snapshot is
 * re-evaluated at once. Fractions need a GPU engine (FERRY_ERR_INVALID_ARGUMENT on the CPU engine).
 */
FERRY_API ferry_status ferry_engine_set_pressure(ferry_engine engine, const ferry_pressure_options* opts);

/**
 * A pressure callback: called by ferry_memory_optimize with the level at the time of the call. Returns 0,
 * or non-zero to report that it failed (counted in ferry_optimize_result.callbacks_failed; the later
 * callbacks still run). It runs on the thread that called ferry_memory_optimize.
 */
typedef int32_t (*ferry_pressure_fn)(void* user, int32_t level);

/**
 * Registers a callback, called after those registered before it. Writes an ID for
 * ferry_memory_remove_callback. user is passed back unchanged; the caller keeps what it points to alive.
 */
FERRY_API ferry_status ferry_memory_on_pressure(ferry_engine engine, ferry_pressure_fn fn, void* user, uint64_t* id);

/** Removes a callback; FERRY_ERR_INVALID_ARGUMENT when the ID is unknown. */
FERRY_API ferry_status ferry_memory_remove_callback(ferry_engine engine, uint64_t id);

/** What ferry_memory_optimize did. */
typedef struct ferry_optimize_result {
    uint32_t size; /**< set by the caller: sizeof(ferry_optimize_result) */
    int32_t level_before; /**< the pressure level before (live) */
    int32_t level_after; /**< the level after trimming and the callbacks (live) */
    int32_t callbacks_called;
    int32_t callbacks_failed; /**< callbacks that returned non-zero */
    int32_t reserved;
    uint64_t trimmed_bytes; /**< memory the engine's pools gave back */
    int64_t recommended_batch_size; /**< from the engine's advisor (ferry_engine_set_advisor); 0 when none */
} ferry_optimize_result;

/**
 * The engine's empty-cache: trims its pools, then calls every registered callback in order with the level,
 * then re-reads memory. When an advisor is attached and has a model, recommends a batch size for the
 * device's memory below the critical threshold (or the whole device without one), never above
 * current_batch_size when the level is WARN or CRITICAL. current_batch_size is the size in use (> 0), or 0
 * when unknown. Call it from the training loop's thread: the callbacks run there.
 */
FERRY_API ferry_status ferry_memory_optimize(ferry_engine engine, int64_t current_batch_size,
                                             ferry_optimize_result* result);

/* ------------------------------------------------------------------------------------------------ */
/* Batch-size advisor                                                                               */
/* ------------------------------------------------------------------------------------------------ */

/** A batch-size advisor: an opaque ID. */
typedef struct ferry_advisor_s* ferry_advisor;

/**
 * Creates an advisor that fits peak memory = fixed + per_sample x batch from observations, and rounds its
 * recommendations down to a multiple of `multiple` (>= 1; 8 is customary).
 */
FERRY_API ferry_status ferry_advisor_create(int64_t multiple, ferry_advisor* advisor);

/** Records the peak memory of a step at batch_size (> 0). peak_bytes must be > 0. */
FERRY_API ferry_status ferry_advisor_observe(ferry_advisor advisor, int64_t batch_size, uint64_t peak_bytes);

/** Records that batch_size ran out of memory: recommendations stay below it from then on. */
FERRY_API ferry_status ferry_advisor_report_oom(ferry_advisor advisor, int64_t batch_size);

/** The fitted model and its confidence. */
typedef struct ferry_advisor_fit {
    uint32_t size; /**< set by the caller: sizeof(ferry_advisor_fit) */
    int32_t observations; /**< distinct batch sizes observed */
    double fixed_bytes; /**< the least-squares intercept */
    double per_sample_bytes; /**< the least-squares slope */
    double r_squared; /**< the fit's R^2 (1 with two observations) */
    double max_residual_bytes; /**< the largest observation above the line: the safety margin added */
    int64_t oom_ceiling; /**< the smallest batch size reported out of memory; 0 when none */
    int64_t reserved;
} ferry_advisor_fit;

/** Fills *model. FERRY_ERR_INVALID_ARGUMENT with fewer than two distinct batch sizes observed. */
FERRY_API ferry_status ferry_advisor_model(ferry_advisor advisor, ferry_advisor_fit* model);

/**
 * The largest batch whose predicted peak fits budget_bytes x (1 - headroom), rounded down to the multiple,
 * below any OOM ceiling, and reduced across ranks by the reduce hook when one is set. The prediction is the
 * least-squares line raised by its largest positive residual, so noisy or convex curves stay on the safe
 * side. Errors: fewer than two observations, memory that does not grow with the batch, a budget below the
 * fixed cost, headroom outside [0, 1).
 */
FERRY_API ferry_status ferry_advisor_recommend(ferry_advisor advisor, uint64_t budget_bytes, double headroom,
                                               int64_t* batch_size);

/**
 * A reduction across ranks: replaces *value with the minimum over every rank (e.g. an all-reduce with MIN)
 * and returns 0, or non-zero on failure. Every rank must call ferry_advisor_recommend for it to complete.
 */
typedef int32_t (*ferry_reduce_fn)(void* user, int64_t* value);

/** Sets (or with fn NULL, clears) the advisor's reduction across ranks. */
FERRY_API ferry_status ferry_advisor_set_reduce(ferry_advisor advisor, ferry_reduce_fn fn, void* user);

/** Attaches the advisor to the engine (NULL detaches it), for ferry_memory_optimize's recommendation. */
FERRY_API ferry_status ferry_engine_set_advisor(ferry_engine engine, ferry_advisor advisor);

/** Destroys the advisor (detach it from engines first). NULL is a no-op. */
FERRY_API ferry_status ferry_advisor_destroy(ferry_advisor advisor);

/* ------------------------------------------------------------------------------------------------ */
/* Performance monitor                                                                               */
/* ------------------------------------------------------------------------------------------------ */

/** A performance monitor: an opaque ID, not a pointer. */
typedef struct ferry_monitor_s* ferry_monitor;

/** ferry_monitor_options.flags: start the background samplers at create (else ferry_monitor_start). */
#define FERRY_MONITOR_F_START 0x1u

/** Options for ferry_monitor_create(). Fill with ferry_monitor_options_init() first. */
typedef struct ferry_monitor_options {
    uint32_t size; /**< set by ferry_monitor_options_init */
    uint32_t flags; /**< FERRY_MONITOR_F_* */
    int64_t gpu_interval_us; /**< NVML sampling of the GPUs; 0: 100 ms; at least 10 ms; < 0: off */
    int64_t pcie_interval_us; /**< PCIe throughput (each reading blocks ~20 ms); 0: 1 s; < 0: off */
    int64_t system_interval_us; /**< host and pipeline sampling; 0: 1 s; < 0: off */
    double sketch_accuracy; /**< the quantiles' relative accuracy; 0: 0.005 */
    int32_t series_points; /**< points per metric time series; 0: 512 */
    int32_t rank; /**< labels; 0 and 0 read RANK and LOCAL_RANK when set */
    int32_t local_rank;
    int32_t num_disk_paths;
    const char* node; /**< a label, or NULL */
    const char* const* disk_paths; /**< num_disk_paths paths whose disks are sampled, or NULL */
} ferry_monitor_options;

/** Sets opts->size and the defaults. */
FERRY_API ferry_status ferry_monitor_options_init(ferry_monitor_options* opts);

/**
 * Creates a monitor (NULL opts: defaults). Logging works at once; the samplers run after
 * ferry_monitor_start (or with FERRY_MONITOR_F_START). At most 64 monitors are alive at a time.
 */
FERRY_API ferry_status ferry_monitor_create(const ferry_monitor_options* opts, ferry_monitor* monitor);

/** Starts the background samplers (GPU, host, pipelines); a running monitor is left alone. */
FERRY_API ferry_status ferry_monitor_start(ferry_monitor monitor);

/** Stops the background samplers; the metrics stay. */
FERRY_API ferry_status ferry_monitor_stop(ferry_monitor monitor);

/**
 * Interns a metric name (1..256 bytes of letters, digits and . _ - / :) and writes its ID: the same name
 * always gives the same ID. The names gpu<N>/..., system/..., disk/... and pipeline/... are the samplers'.
 */
FERRY_API ferry_status ferry_metric_id(ferry_monitor monitor, const char* name, uint32_t* id);

/**
 * Writes the ID of the metric named name without creating it: FERRY_ERR_INVALID_ARGUMENT, naming it, when
 * no metric has that name yet (logged from any thread or binding, or by a sampler).
 */
FERRY_API ferry_status ferry_metric_find(ferry_monitor monitor, const char* name, uint32_t* id);

/**
 * Logs value for metric id, stamped now. Written in C: it never enters Go, takes no lock, allocates only
 * the calling thread's ring on its first log (~100 KB), and costs about as much as reading the clock. Safe
 * from any thread. The value is folded into the metric's summary within 100 ms, or at the next summary or
 * report. NaN and infinities are counted apart and left out of the statistics.
 */
FERRY_API ferry_status ferry_metric_log(ferry_monitor monitor, uint32_t id, double value);

/** Logs count values for metric id with one timestamp (e.g. a batch's per-sample losses). */
FERRY_API ferry_status ferry_metric_log_many(ferry_monitor monitor, uint32_t id, const double* values, int64_t count);

/**
 * Logs count values for metric id, values[i] at timestamps_ns[i] (CLOCK_MONOTONIC nanoseconds): for
 * callers that buffer their logs and hand them over in batches (Python's log_metric does).
 */
FERRY_API ferry_status ferry_metric_log_many_at(ferry_monitor monitor, uint32_t id, const double* values,
                                                const uint64_t* timestamps_ns, int64_t count);

/** A metric's summary: exact count, mean, min, max, std; quantiles within the sketch's relative accuracy. */
typedef struct ferry_metric_summary {
    uint32_t size; /**< set by the caller: sizeof(ferry_metric_summary) */
    uint32_t reserved;
    uint64_t count; /**< finite values logged */
    uint64_t nonfinite; /**< NaN and infinite values logged */
    double mean, min, max, std, last; /**< NaN when count is 0 */
    double p50, p90, p99, p999;
    uint64_t first_ns, last_ns; /**< CLOCK_MONOTONIC of the first and last value */
} ferry_metric_summary;

/** Folds pending values and writes the metric's summary; its cost does not grow with the values logged. */
FERRY_API ferry_status ferry_metric_summary_get(ferry_monitor monitor, uint32_t id, ferry_metric_summary* out);

/**
 * Writes the JSON report (schema "ferry.report/1": training_metrics, gpu_metrics, system_metrics,
 * pipeline_metrics, each metric with its summary and time series) into buf, NUL-terminated, and its length
 * (without the NUL) into *length. When buf is NULL or capacity too small, writes nothing into buf, sets
 * *length and returns FERRY_ERR_LIMIT: call again with a buffer of *length + 1 bytes.
 */
FERRY_API ferry_status ferry_monitor_report_json(ferry_monitor monitor, char* buf, uint64_t capacity, uint64_t* length);

/**
 * Writes the report to path: HTML with charts when path ends in .html or .htm, else JSON. The file is
 * created 0644 (through a temporary file renamed over path); its directory must exist.
 */
FERRY_API ferry_status ferry_monitor_write_report(ferry_monitor monitor, const char* path);

/**
 * Streams every value logged from now on to path as JSON lines ({"t": seconds since the monitor started,
 * "metric": name, "value": v, null when not finite}), flushed at each fold (every 100 ms). The file is
 * created 0644 or truncated; a symbolic link at path is refused. A NULL path stops the stream; destroying
 * the monitor stops it too. One stream per monitor.
 */
FERRY_API ferry_status ferry_monitor_stream_jsonl(ferry_monitor monitor, const char* path);

/**
 * Serves Prometheus metrics at http://addr/metrics while the monitor lives: addr NULL or "" binds
 * 127.0.0.1:9400, ":PORT" binds 127.0.0.1:PORT; give a host (e.g. "0.0.0.0:9400") to listen beyond
 * loopback. Writes the bound address into bound (bound_len bytes, NUL-terminated; may be NULL).
 * FERRY_ERR_IO when the port is taken.
 */
FERRY_API ferry_status ferry_monitor_serve_prometheus(ferry_monitor monitor, const char* addr, char* bound,
                                                      uint32_t bound_len);

/**
 * Reports the iterator's pipeline figures under pipeline/<name>/...: batches/s, samples/s, H2D bytes/s,
 * queue depth, data stall %. The iterator must outlive the monitor or be destroyed first (then dropped).
 */
FERRY_API ferry_status ferry_monitor_attach_iterator(ferry_monitor monitor, const char* name, ferry_iterator iterator);

/** As ferry_monitor_attach_iterator, for a feed. */
FERRY_API ferry_status ferry_monitor_attach_feed(ferry_monitor monitor, const char* name, ferry_feed feed);

/** Stops the samplers and the endpoint and destroys the monitor. NULL is a no-op. */
FERRY_API ferry_status ferry_monitor_destroy(ferry_monitor monitor);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FERRY_H */
