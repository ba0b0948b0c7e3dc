"""Finding and loading libferry, and the ctypes mirror of ``ferry.h``.

Everything in this module follows the C header field by field and symbol by symbol; nothing here has
logic of its own beyond locating the library. The library is loaded on first use (:func:`lib`), not at
``import ferry``, so that the package imports on a machine where the library is not built yet.

Search order (the first hit wins):

1. the environment variable ``FERRY_LIBRARY``, a path to the library file (it must exist);
2. the copy bundled in the package, ``ferry/_lib/libferry.so``;
3. an in-tree build: the first ``build/lib/libferry.so`` found walking up from the package directory;
4. ``ctypes.util.find_library("ferry")`` (the system's library search path).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char,
    c_char_p,
    c_double,
    c_float,
    c_int,
    c_int32,
    c_int64,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path
from typing import Iterator, Optional, Tuple

__all__ = [
    "LibraryNotFoundError",
    "lib",
    "library_path",
    "DeviceProperties",
    "SystemProperties",
    "EngineOptions",
    "MemorySnapshotStruct",
    "FieldStruct",
    "TokenOptions",
    "RaggedOptions",
    "Transform",
    "IteratorOptions",
    "IteratorPosition",
    "BatchProperties",
    "DLPackVersion",
    "DLDevice",
    "DLDataType",
    "DLTensor",
    "DLManagedTensorVersioned",
    "DLManagedTensor",
    "SAMPLE_FN",
    "PressureOptions",
    "OptimizeResult",
    "AdvisorFit",
    "PRESSURE_FN",
    "REDUCE_FN",
    "MonitorOptions",
    "MetricSummary",
]

# --- constants from ferry.h -------------------------------------------------------------------------

FERRY_VERSION_MAJOR = 0
FERRY_VERSION_MINOR = 1
FERRY_VERSION_PATCH = 0

FERRY_DEVICE_CPU = -1
FERRY_DEVICE_F_PCIE = 0x1
FERRY_SYSTEM_F_CUDA = 0x1
FERRY_SYSTEM_F_NVML = 0x2
FERRY_MAX_ENGINES = 256
FERRY_MEMORY_F_DEVICE = 0x1
FERRY_MEMORY_F_PROCESS = 0x2
FERRY_MEMORY_F_HOST = 0x4
FERRY_MEMORY_F_LIVE = 0x8
FERRY_END_OF_EPOCH = 13

FERRY_DTYPE_BOOL = 1
FERRY_DTYPE_UINT8 = 2
FERRY_DTYPE_INT8 = 3
FERRY_DTYPE_UINT16 = 4
FERRY_DTYPE_INT16 = 5
FERRY_DTYPE_UINT32 = 6
FERRY_DTYPE_INT32 = 7
FERRY_DTYPE_UINT64 = 8
FERRY_DTYPE_INT64 = 9
FERRY_DTYPE_FLOAT16 = 10
FERRY_DTYPE_BFLOAT16 = 11
FERRY_DTYPE_FLOAT32 = 12
FERRY_DTYPE_FLOAT64 = 13
FERRY_MAX_DIMS = 8

FERRY_TOKENS_UINT16 = 1
FERRY_TOKENS_UINT32 = 2
FERRY_TOKENS_LLMC = 3
FERRY_TOKENS_F_RANDOM = 0x1
FERRY_TOKENS_F_WINDOW = 0x2
FERRY_GPT_ORDER_FERRY = 0
FERRY_GPT_ORDER_MEGATRON = 1
FERRY_SPLIT_TRAIN = 0
FERRY_SPLIT_VALID = 1
FERRY_SPLIT_TEST = 2
FERRY_GPT_F_NO_CACHE = 0x1
FERRY_BLEND_ORDER_FERRY = 0
FERRY_BLEND_ORDER_MEGATRON = 1
FERRY_SHIFT_F_MASK_EOD = 0x1
FERRY_SHIFT_F_RESET_POSITIONS = 0x2

FERRY_ITERATOR_F_SHUFFLE = 0x1
FERRY_ITERATOR_F_DROP_LAST = 0x2

FERRY_TRANSFORM_NORMALIZE = 1
FERRY_TRANSFORM_SHIFT_TOKENS = 2
FERRY_TRANSFORM_PAD_SEQUENCES = 3
FERRY_TRANSFORM_RANDOM_RESIZED_CROP = 4
FERRY_TRANSFORM_CENTER_CROP = 5
FERRY_TRANSFORM_DECODE_IMAGE = 6
FERRY_CROP_F_ANTIALIAS = 0x1
FERRY_ON_ERROR_RAISE = 0
FERRY_ON_ERROR_SKIP = 1
FERRY_IMAGES_F_ALLOW_EMPTY = 0x1
FERRY_IMAGES_F_NO_CACHE = 0x2
FERRY_LAYOUT_CHW = 0
FERRY_LAYOUT_HWC = 1
FERRY_STAGING_AUTO = 0
FERRY_STAGING_GATHER = 1
FERRY_STAGING_DMA = 2
FERRY_STAGING_MAPPED = 3

FERRY_PRESSURE_NONE = 0
FERRY_PRESSURE_WARN = 1
FERRY_PRESSURE_CRITICAL = 2
FERRY_PRESSURE_DEVICE_USED = 1
FERRY_PRESSURE_PROCESS_USED = 2
FERRY_PRESSURE_ENGINE_RESERVED = 3

FERRY_MONITOR_F_START = 0x1

DLPACK_MAJOR_VERSION = 1
DLPACK_MINOR_VERSION = 0
DLPACK_FLAG_BITMASK_READ_ONLY = 1 << 0
DLPACK_FLAG_BITMASK_IS_COPIED = 1 << 1
kDLCPU = 1
kDLCUDA = 2
kDLCUDAHost = 3
kDLInt = 0
kDLUInt = 1
kDLFloat = 2
kDLOpaqueHandle = 3
kDLBfloat = 4
kDLComplex = 5
kDLBool = 6

# ferry_status is a C enum; it travels as an int.
ferry_status = c_int
# ferry_engine is an opaque handle (an ID, not a pointer); it travels as a pointer-sized value.
ferry_engine = c_void_p
# ferry_source, ferry_iterator and ferry_batch are opaque IDs too.
ferry_source = c_void_p
ferry_iterator = c_void_p
ferry_batch = c_void_p
# ferry_advisor is an opaque ID too.
ferry_advisor = c_void_p
# ferry_monitor is an opaque ID too.
ferry_monitor = c_void_p
# ferry_feed is an opaque ID too.
ferry_feed = c_void_p


# --- structs, field by field as in ferry.h ------------------------------------------------------------


class DeviceProperties(Structure):
    """ctypes mirror of ``ferry_device_properties`` (416 bytes on x86-64)."""

    _fields_ = [
        ("size", c_uint32),
        ("index", c_int32),
        ("name", c_char * 256),
        ("uuid", c_uint8 * 16),
        ("uuid_string", c_char * 48),
        ("pci_bus_id", c_char * 32),
        ("compute_capability_major", c_int32),
        ("compute_capability_minor", c_int32),
        ("multiprocessor_count", c_int32),
        ("pcie_generation_current", c_int32),
        ("pcie_generation_max", c_int32),
        ("pcie_width_current", c_int32),
        ("pcie_width_max", c_int32),
        ("flags", c_uint32),
        ("total_memory_bytes", c_uint64),
        ("l2_cache_bytes", c_int32),
        ("memory_bus_width_bits", c_int32),
        ("async_engine_count", c_int32),
        ("reserved0", c_int32),
    ]


class SystemProperties(Structure):
    """ctypes mirror of ``ferry_system_properties`` (688 bytes)."""

    _fields_ = [
        ("size", c_uint32),
        ("flags", c_uint32),
        ("cuda_driver_version", c_int32),
        ("device_count", c_int32),
        ("driver_version", c_char * 80),
        ("nvml_version", c_char * 80),
        ("cuda_status", c_char * 256),
        ("nvml_status", c_char * 256),
    ]


class EngineOptions(Structure):
    """ctypes mirror of ``ferry_engine_options`` (16 bytes)."""

    _fields_ = [
        ("size", c_uint32),
        ("device", c_int32),
        ("sample_interval_ms", c_uint32),
        ("flags", c_uint32),
    ]


class MemorySnapshotStruct(Structure):
    """ctypes mirror of ``ferry_memory_snapshot`` (160 bytes)."""

    _fields_ = [
        ("size", c_uint32),
        ("flags", c_uint32),
        ("device", c_int32),
        ("level", c_int32),
        ("sequence", c_uint64),
        ("timestamp_ns", c_uint64),
        ("age_ns", c_uint64),
        ("sample_timestamp_ns", c_uint64),
        ("device_total_bytes", c_uint64),
        ("device_free_bytes", c_uint64),
        ("device_used_bytes", c_uint64),
        ("process_device_bytes", c_uint64),
        ("engine_allocated_bytes", c_uint64),
        ("engine_reserved_bytes", c_uint64),
        ("engine_peak_bytes", c_uint64),
        ("engine_alloc_count", c_uint64),
        ("engine_alloc_failures", c_uint64),
        ("host_total_bytes", c_uint64),
        ("host_available_bytes", c_uint64),
        ("host_pinned_bytes", c_uint64),
        ("warn_threshold_bytes", c_uint64),
        ("critical_threshold_bytes", c_uint64),
    ]


class FieldStruct(Structure):
    """ctypes mirror of ``ferry_field`` (88 bytes). Frozen: it has no size field."""

    _fields_ = [
        ("name", c_char_p),
        ("dtype", c_int32),
        ("ndim", c_int32),
        ("shape", c_int64 * FERRY_MAX_DIMS),
        ("offset", c_int64),
    ]


class TokenOptions(Structure):
    """ctypes mirror of ``ferry_token_options`` (32 bytes)."""

    _fields_ = [
        ("size", c_uint32),
        ("format", c_int32),
        ("seq_len", c_int64),
        ("seed", c_uint64),
        ("flags", c_uint32),
        ("reserved", c_uint32),
    ]


class RaggedOptions(Structure):
    """ctypes mirror of ``ferry_ragged_options`` (24 bytes)."""

    _fields_ = [
        ("size", c_uint32),
        ("format", c_int32),
        ("max_len", c_int64),
        ("field_name", c_char_p),
    ]


class ImageSourceOptions(Structure):
    """ctypes mirror of ``ferry_image_source_options`` (40 bytes)."""

    _fields_ = [
        ("size", c_uint32),
        ("flags", c_uint32),
        ("max_bytes", c_int64),
        ("image_keys", c_char_p),
        ("label_key", c_char_p),
        ("cache_dir", c_char_p),
    ]


class MegatronOptions(Structure):
    """ctypes mirror of ``ferry_megatron_options`` (24 bytes)."""

    _fields_ = [
        ("size", c_uint32),
        ("reserved", c_int32),
        ("max_len", c_int64),
        ("field_name", c_char_p),
    ]


class GPTOptions(Structure):
    """ctypes mirror of ``ferry_gpt_options`` (64 bytes)."""

    _fields_ = [
        ("size", c_uint32),
        ("order", c_int32),
        ("seq_len", c_int64),
        ("field_name", c_char_p),
        ("seed", c_uint64),
        ("split", c_char_p),
        ("which", c_int32),
        ("flags", c_uint32),
        ("num_samples", c_int64),
        ("cache_dir", c_char_p),
    ]


class GPTIndexInfo(Structure):
    """ctypes mirror of ``ferry_gpt_index_info`` (2072 bytes)."""

    _fields_ = [
        ("size", c_uint32),
        ("cached", c_int32),
        ("epochs", c_int64),
        ("seconds", c_double),
        ("path", c_char * 1024),
        ("cache_error", c_char * 1024),
    ]


class BlendOptions(Structure):
    """ctypes mirror of ``ferry_blend_options`` (24 bytes)."""

    _fields_ = [
        ("size", c_uint32),
        ("order", c_int32),
        ("num_samples", c_int64),
        ("seed", c_uint64),
    ]


class Transform(Structure):
    """ctypes mirror of ``ferry_transform`` (216 bytes)."""

    _fields_ = [
        ("size", c_uint32),
        ("kind", c_int32),
        ("field", c_char_p),
        ("channels", c_int32),
        ("layout", c_int32),
        ("mean", c_float * 4),
        ("std", c_float * 4),
        ("scale", c_float),
        ("dtype", c_int32),
        ("flip", c_double),
        ("x_name", c_char_p),
        ("y_name", c_char_p),
        ("pad_value", c_int64),
        ("fixed_length", c_int32),
        ("reserved", c_int32),
        ("mask_name", c_char_p),
        ("lengths_name", c_char_p),
        ("input_layout", c_int32),
        ("reserved2", c_int32),
        ("loss_mask_name", c_char_p),
        ("position_ids_name", c_char_p),
        ("eod", c_int64),
        ("shift_flags", c_uint32),
        ("crop_flags", c_uint32),
        ("crop_size", c_int32),
        ("resize_to", c_int32),
        ("scale_min", c_double),
        ("scale_max", c_double),
        ("ratio_min", c_double),
        ("ratio_max", c_double),
        ("max_pixels", c_int64),
        ("height", c_int32),
        ("width", c_int32),
    ]


class IteratorOptions(Structure):
    """ctypes mirror of ``ferry_iterator_options`` (80 bytes)."""

    _fields_ = [
        ("size", c_uint32),
        ("flags", c_uint32),
        ("batch_size", c_int64),
        ("seed", c_uint64),
        ("workers", c_int32),
        ("prefetch", c_int32),
        ("rank", c_int32),
        ("world_size", c_int32),
        ("timeout_ms", c_uint32),
        ("reserved", c_uint32),
        ("transforms", POINTER(Transform)),
        ("num_transforms", c_int32),
        ("staging", c_int32),
        ("pinned_budget", c_int64),
        ("on_error", c_int32),
        ("reserved2", c_int32),
    ]


class PipelineStats(Structure):
    """ctypes mirror of ``ferry_pipeline_stats`` (48 bytes)."""

    _fields_ = [
        ("size", c_uint32),
        ("reserved", c_uint32),
        ("batches", c_uint64),
        ("samples", c_uint64),
        ("bytes", c_uint64),
        ("stall_ns", c_uint64),
        ("skipped", c_uint64),
    ]


class FeedOptions(Structure):
    """ctypes mirror of ``ferry_feed_options`` (40 bytes)."""

    _fields_ = [
        ("size", c_uint32),
        ("slots", c_int32),
        ("workers", c_int32),
        ("timeout_ms", c_uint32),
        ("transforms", POINTER(Transform)),
        ("num_transforms", c_int32),
        ("reserved", c_int32),
        ("pinned_budget", c_int64),
    ]


class HostTensor(Structure):
    """ctypes mirror of ``ferry_host_tensor`` (104 bytes)."""

    _fields_ = [
        ("name", c_char_p),
        ("dtype", c_int32),
        ("ndim", c_int32),
        ("shape", c_int64 * (FERRY_MAX_DIMS + 1)),
        ("data", c_void_p),
        ("bytes", c_int64),
    ]


class IteratorPosition(Structure):
    """ctypes mirror of ``ferry_iterator_position`` (48 bytes)."""

    _fields_ = [
        ("size", c_uint32),
        ("reserved", c_uint32),
        ("epoch", c_uint64),
        ("batch", c_int64),
        ("offset", c_int64),
        ("consumed", c_int64),
        ("world_size", c_int64),
    ]


class BatchProperties(Structure):
    """ctypes mirror of ``ferry_batch_properties`` (32 bytes)."""

    _fields_ = [
        ("size", c_uint32),
        ("num_fields", c_int32),
        ("epoch", c_uint64),
        ("index", c_int64),
        ("num_samples", c_int64),
    ]


class PressureOptions(Structure):
    """ctypes mirror of ``ferry_pressure_options`` (40 bytes)."""

    _fields_ = [
        ("size", c_uint32),
        ("metric", c_int32),
        ("warn_bytes", c_uint64),
        ("critical_bytes", c_uint64),
        ("warn_fraction", c_double),
        ("critical_fraction", c_double),
    ]


class OptimizeResult(Structure):
    """ctypes mirror of ``ferry_optimize_result`` (40 bytes)."""

    _fields_ = [
        ("size", c_uint32),
        ("level_before", c_int32),
        ("level_after", c_int32),
        ("callbacks_called", c_int32),
        ("callbacks_failed", c_int32),
        ("reserved", c_int32),
        ("trimmed_bytes", c_uint64),
        ("recommended_batch_size", c_int64),
    ]


class AdvisorFit(Structure):
    """ctypes mirror of ``ferry_advisor_fit`` (56 bytes)."""

    _fields_ = [
        ("size", c_uint32),
        ("observations", c_int32),
        ("fixed_bytes", c_double),
        ("per_sample_bytes", c_double),
        ("r_squared", c_double),
        ("max_residual_bytes", c_double),
        ("oom_ceiling", c_int64),
        ("reserved", c_int64),
    ]


class MonitorOptions(Structure):
    """ctypes mirror of ``ferry_monitor_options`` (72 bytes)."""

    _fields_ = [
        ("size", c_uint32),
        ("flags", c_uint32),
        ("gpu_interval_us", c_int64),
        ("pcie_interval_us", c_int64),
        ("system_interval_us", c_int64),
        ("sketch_accuracy", c_double),
        ("series_points", c_int32),
        ("rank", c_int32),
        ("local_rank", c_int32),
        ("num_disk_paths", c_int32),
        ("node", c_char_p),
        ("disk_paths", POINTER(c_char_p)),
    ]


class MetricSummary(Structure):
    """ctypes mirror of ``ferry_metric_summary`` (112 bytes)."""

    _fields_ = [
        ("size", c_uint32),
        ("reserved", c_uint32),
        ("count", c_uint64),
        ("nonfinite", c_uint64),
        ("mean", c_double),
        ("min", c_double),
        ("max", c_double),
        ("std", c_double),
        ("last", c_double),
        ("p50", c_double),
        ("p90", c_double),
        ("p99", c_double),
        ("p999", c_double),
        ("first_ns", c_uint64),
        ("last_ns", c_uint64),
    ]


# --- DLPack 1.0, as declared in ferry.h --------------------------------------------------------------


class DLPackVersion(Structure):
    _fields_ = [("major", c_uint32), ("minor", c_uint32)]


class DLDevice(Structure):
    _fields_ = [("device_type", c_int32), ("device_id", c_int32)]


class DLDataType(Structure):
    _fields_ = [("code", c_uint8), ("bits", c_uint8), ("lanes", c_uint16)]


class DLTensor(Structure):
    """ctypes mirror of ``DLTensor`` (48 bytes)."""

    _fields_ = [
        ("data", c_void_p),
        ("device", DLDevice),
        ("ndim", c_int32),
        ("dtype", DLDataType),
        ("shape", POINTER(c_int64)),
        ("strides", POINTER(c_int64)),
        ("byte_offset", c_uint64),
    ]


class DLManagedTensorVersioned(Structure):
    """ctypes mirror of ``DLManagedTensorVersioned`` (80 bytes)."""


#: ``void (*deleter)(DLManagedTensorVersioned*)``
DLPACK_VERSIONED_DELETER = CFUNCTYPE(None, POINTER(DLManagedTensorVersioned))

DLManagedTensorVersioned._fields_ = [
    ("version", DLPackVersion),
    ("manager_ctx", c_void_p),
    ("deleter", DLPACK_VERSIONED_DELETER),
    ("flags", c_uint64),
    ("dl_tensor", DLTensor),
]


class DLManagedTensor(Structure):
    """The pre-1.0 ``DLManagedTensor`` (64 bytes): not in ferry.h; the binding builds it for consumers
    that ask for the old protocol."""


#: ``void (*deleter)(DLManagedTensor*)``
DLPACK_LEGACY_DELETER = CFUNCTYPE(None, POINTER(DLManagedTensor))

DLManagedTensor._fields_ = [
    ("dl_tensor", DLTensor),
    ("manager_ctx", c_void_p),
    ("deleter", DLPACK_LEGACY_DELETER),
]

#: ``ferry_sample_fn``: int32_t (*)(void* user, int64_t index, void* const* dst, const int64_t* dst_bytes,
#: int32_t num_fields)
SAMPLE_FN = CFUNCTYPE(c_int32, c_void_p, c_int64, POINTER(c_void_p), POINTER(c_int64), c_int32)

#: ``ferry_pressure_fn``: int32_t (*)(void* user, int32_t level)
PRESSURE_FN = CFUNCTYPE(c_int32, c_void_p, c_int32)

#: ``ferry_reduce_fn``: int32_t (*)(void* user, int64_t* value)
REDUCE_FN = CFUNCTYPE(c_int32, c_void_p, POINTER(c_int64))


# --- symbols: (name, restype, argtypes), every declaration of ferry.h ------------------------------------

_SIGNATURES = [
    ("ferry_status_string", c_char_p, [ferry_status]),
    ("ferry_last_error", c_char_p, []),
    ("ferry_version", ferry_status, [POINTER(c_int32), POINTER(c_int32), POINTER(c_int32)]),
    ("ferry_device_count", ferry_status, [POINTER(c_int32)]),
    ("ferry_device_info", ferry_status, [c_int32, POINTER(DeviceProperties)]),
    ("ferry_system_info", ferry_status, [POINTER(SystemProperties)]),
    ("ferry_engine_options_init", ferry_status, [POINTER(EngineOptions)]),
    ("ferry_engine_create", ferry_status, [POINTER(EngineOptions), POINTER(ferry_engine)]),
    ("ferry_engine_destroy", ferry_status, [ferry_engine]),
    ("ferry_engine_device", ferry_status, [ferry_engine, POINTER(c_int32)]),
    ("ferry_engine_sample_now", ferry_status, [ferry_engine]),
    ("ferry_memory_check", ferry_status, [ferry_engine, POINTER(MemorySnapshotStruct)]),
    ("ferry_memory_check_live", ferry_status, [ferry_engine, POINTER(MemorySnapshotStruct)]),
    # sources
    ("ferry_source_memory", ferry_status,
     [c_int64, POINTER(FieldStruct), c_int32, POINTER(c_void_p), POINTER(ferry_source)]),
    ("ferry_source_records", ferry_status,
     [c_char_p, c_int64, c_int64, POINTER(FieldStruct), c_int32, POINTER(ferry_source)]),
    ("ferry_source_cifar10", ferry_status, [c_char_p, POINTER(ferry_source)]),
    ("ferry_source_npy", ferry_status, [POINTER(c_char_p), POINTER(c_char_p), c_int32, POINTER(ferry_source)]),
    ("ferry_token_options_init", ferry_status, [POINTER(TokenOptions)]),
    ("ferry_source_tokens", ferry_status, [c_char_p, POINTER(TokenOptions), POINTER(ferry_source)]),
    ("ferry_ragged_options_init", ferry_status, [POINTER(RaggedOptions)]),
    ("ferry_source_ragged_tokens", ferry_status,
     [c_char_p, c_char_p, POINTER(RaggedOptions), POINTER(ferry_source)]),
    ("ferry_image_source_options_init", ferry_status, [POINTER(ImageSourceOptions)]),
    ("ferry_source_image_folder", ferry_status, [c_char_p, POINTER(ImageSourceOptions), POINTER(ferry_source)]),
    ("ferry_source_webdataset", ferry_status,
     [POINTER(c_char_p), c_int32, POINTER(ImageSourceOptions), POINTER(ferry_source)]),
    ("ferry_source_sample_name", ferry_status, [ferry_source, c_int64, c_char_p, c_uint32]),
    ("ferry_megatron_options_init", ferry_status, [POINTER(MegatronOptions)]),
    ("ferry_source_megatron", ferry_status,
     [POINTER(c_char_p), c_int32, POINTER(MegatronOptions), POINTER(ferry_source)]),
    ("ferry_gpt_options_init", ferry_status, [POINTER(GPTOptions)]),
    ("ferry_source_gpt", ferry_status, [POINTER(c_char_p), c_int32, POINTER(GPTOptions), POINTER(ferry_source)]),
    ("ferry_source_gpt_index_info", ferry_status, [ferry_source, POINTER(GPTIndexInfo)]),
    ("ferry_blend_options_init", ferry_status, [POINTER(BlendOptions)]),
    ("ferry_source_blend", ferry_status,
     [POINTER(ferry_source), POINTER(c_double), c_int32, POINTER(BlendOptions), POINTER(ferry_source)]),
    ("ferry_megatron_blend_sizes", ferry_status,
     [POINTER(c_double), c_int32, c_int64, POINTER(c_int64), POINTER(c_int64)]),
    ("ferry_source_callback", ferry_status,
     [c_int64, POINTER(FieldStruct), c_int32, SAMPLE_FN, c_void_p, POINTER(ferry_source)]),
    ("ferry_source_len", ferry_status, [ferry_source, POINTER(c_int64)]),
    ("ferry_source_num_fields", ferry_status, [ferry_source, POINTER(c_int32)]),
    ("ferry_source_field", ferry_status, [ferry_source, c_int32, POINTER(FieldStruct)]),
    ("ferry_source_destroy", ferry_status, [ferry_source]),
    # iterator
    ("ferry_iterator_options_init", ferry_status, [POINTER(IteratorOptions)]),
    ("ferry_iterator_create", ferry_status,
     [ferry_engine, ferry_source, POINTER(IteratorOptions), POINTER(ferry_iterator)]),
    ("ferry_iterator_next", ferry_status, [ferry_iterator, c_void_p, POINTER(ferry_batch)]),
    ("ferry_iterator_next_wait", ferry_status, [ferry_iterator, c_void_p, c_uint32, POINTER(ferry_batch)]),
    ("ferry_iterator_len", ferry_status, [ferry_iterator, POINTER(c_int64)]),
    ("ferry_iterator_state", ferry_status, [ferry_iterator, POINTER(IteratorPosition)]),
    ("ferry_iterator_restore", ferry_status, [ferry_iterator, POINTER(IteratorPosition)]),
    ("ferry_iterator_set_epoch", ferry_status, [ferry_iterator, c_uint64]),
    ("ferry_iterator_restore_elastic", ferry_status, [ferry_iterator, c_uint64, c_int64]),
    ("ferry_iterator_destroy", ferry_status, [ferry_iterator]),
    ("ferry_iterator_stats", ferry_status, [ferry_iterator, POINTER(PipelineStats)]),
    ("ferry_iterator_next_tensors", ferry_status,
     [ferry_iterator, c_void_p, c_uint32, POINTER(c_void_p), c_int32, POINTER(BatchProperties)]),
    # feeds
    ("ferry_feed_options_init", ferry_status, [POINTER(FeedOptions)]),
    ("ferry_feed_create", ferry_status, [ferry_engine, POINTER(FeedOptions), POINTER(ferry_feed)]),
    ("ferry_feed_push", ferry_status, [ferry_feed, POINTER(HostTensor), c_int32, POINTER(ferry_batch)]),
    ("ferry_feed_add_stall", ferry_status, [ferry_feed, c_uint64]),
    ("ferry_feed_stats", ferry_status, [ferry_feed, POINTER(PipelineStats)]),
    ("ferry_feed_destroy", ferry_status, [ferry_feed]),
    ("ferry_iterator_staging", ferry_status, [ferry_iterator, POINTER(c_int32), POINTER(c_char), c_uint32]),
    ("ferry_iterator_num_fields", ferry_status, [ferry_iterator, POINTER(c_int32)]),
    ("ferry_iterator_field", ferry_status, [ferry_iterator, c_int32, POINTER(FieldStruct)]),
    # transforms
    ("ferry_transform_init", ferry_status, [POINTER(Transform), c_int32, c_char_p]),
    ("ferry_transform_launch", ferry_status,
     [ferry_engine, POINTER(Transform), POINTER(FieldStruct), c_int64, c_uint64, POINTER(c_uint64), c_int32,
      c_void_p]),
    # batches
    ("ferry_batch_info", ferry_status, [ferry_batch, POINTER(BatchProperties)]),
    ("ferry_batch_indices", ferry_status, [ferry_batch, POINTER(c_int64), c_int64]),
    ("ferry_batch_field", ferry_status, [ferry_batch, c_int32, POINTER(POINTER(DLManagedTensorVersioned))]),
    ("ferry_batch_field_by_name", ferry_status,
     [ferry_batch, c_char_p, POINTER(POINTER(DLManagedTensorVersioned))]),
    ("ferry_batch_wait", ferry_status, [ferry_batch, c_void_p]),
    ("ferry_batch_field_name", ferry_status, [ferry_batch, c_int32, POINTER(c_char), c_uint32]),
    ("ferry_batch_field_origin", ferry_status, [ferry_batch, c_int32, POINTER(c_int32)]),
    ("ferry_batch_release", ferry_status, [ferry_batch, c_void_p]),
    ("ferry_tensor_wait", ferry_status, [c_void_p, c_void_p]),
    # memory pressure
    ("ferry_pressure_options_init", ferry_status, [POINTER(PressureOptions)]),
    ("ferry_engine_set_pressure", ferry_status, [ferry_engine, POINTER(PressureOptions)]),
    ("ferry_memory_on_pressure", ferry_status, [ferry_engine, PRESSURE_FN, c_void_p, POINTER(c_uint64)]),
    ("ferry_memory_remove_callback", ferry_status, [ferry_engine, c_uint64]),
    ("ferry_memory_optimize", ferry_status, [ferry_engine, c_int64, POINTER(OptimizeResult)]),
    # batch-size advisor
    ("ferry_advisor_create", ferry_status, [c_int64, POINTER(ferry_advisor)]),
    ("ferry_advisor_observe", ferry_status, [ferry_advisor, c_int64, c_uint64]),
    ("ferry_advisor_report_oom", ferry_status, [ferry_advisor, c_int64]),
    ("ferry_advisor_model", ferry_status, [ferry_advisor, POINTER(AdvisorFit)]),
    ("ferry_advisor_recommend", ferry_status, [ferry_advisor, c_uint64, c_double, POINTER(c_int64)]),
    ("ferry_advisor_set_reduce", ferry_status, [ferry_advisor, REDUCE_FN, c_void_p]),
    ("ferry_engine_set_advisor", ferry_status, [ferry_engine, ferry_advisor]),
    ("ferry_advisor_destroy", ferry_status, [ferry_advisor]),
    # performance monitor
    ("ferry_monitor_options_init", ferry_status, [POINTER(MonitorOptions)]),
    ("ferry_monitor_create", ferry_status, [POINTER(MonitorOptions), POINTER(ferry_monitor)]),
    ("ferry_monitor_start", ferry_status, [ferry_monitor]),
    ("ferry_monitor_stop", ferry_status, [ferry_monitor]),
    ("ferry_metric_id", ferry_status, [ferry_monitor, c_char_p, POINTER(c_uint32)]),
    ("ferry_metric_find", ferry_status, [ferry_monitor, c_char_p, POINTER(c_uint32)]),
    ("ferry_metric_log", ferry_status, [ferry_monitor, c_uint32, c_double]),
    ("ferry_metric_log_many", ferry_status, [ferry_monitor, c_uint32, POINTER(c_double), c_int64]),
    ("ferry_metric_log_many_at", ferry_status,
     [ferry_monitor, c_uint32, POINTER(c_double), POINTER(c_uint64), c_int64]),
    ("ferry_metric_summary_get", ferry_status, [ferry_monitor, c_uint32, POINTER(MetricSummary)]),
    ("ferry_monitor_report_json", ferry_status, [ferry_monitor, POINTER(c_char), c_uint64, POINTER(c_uint64)]),
    ("ferry_monitor_write_report", ferry_status, [ferry_monitor, c_char_p]),
    ("ferry_monitor_stream_jsonl", ferry_status, [ferry_monitor, c_char_p]),
    ("ferry_monitor_serve_prometheus", ferry_status, [ferry_monitor, c_char_p, POINTER(c_char), c_uint32]),
    ("ferry_monitor_attach_iterator", ferry_status, [ferry_monitor, c_char_p, ferry_iterator]),
    ("ferry_monitor_attach_feed", ferry_status, [ferry_monitor, c_char_p, ferry_feed]),
    ("ferry_monitor_destroy", ferry_status, [ferry_monitor]),
]

SYMBOLS = tuple(name for name, _, _ in _SIGNATURES)


class LibraryNotFoundError(ImportError):
    """libferry could not be found or loaded. The message lists every place that was tried."""


_lock = threading.Lock()
_cdll: Optional[ctypes.CDLL] = None
_path: Optional[str] = None

_PACKAGE_DIR = Path(__file__).resolve().parent


def _candidates() -> Iterator[Tuple[str, Optional[str]]]:
    """Yields (description, path-or-None) pairs in search order, each looked up only when reached."""
    env = os.environ.get("FERRY_LIBRARY")
    if env:
        yield ("FERRY_LIBRARY", env)
    yield ("bundled copy", str(_PACKAGE_DIR / "_lib" / "libferry.so"))
    tree = None
    for parent in _PACKAGE_DIR.parents:
        probe = parent / "build" / "lib" / "libferry.so"
        if probe.exists():
            tree = str(probe)
            break
    yield ("in-tree build (build/lib/libferry.so above the package)", tree)
    yield ('ctypes.util.find_library("ferry")', ctypes.util.find_library("ferry"))


def _declare(cdll: ctypes.CDLL) -> None:
    for name, restype, argtypes in _SIGNATURES:
        fn = getattr(cdll, name)
        fn.restype = restype
        fn.argtypes = argtypes


def _nvjpeg_from_python() -> Optional[str]:
    """The nvJPEG that Python has where the library path may not: the nvidia-nvjpeg wheel's copy, else the
    CUDA toolkit's (CUDA_HOME or CUDA_PATH). None when neither is there."""
    dirs = []
    try:
        import importlib.util

        spec = importlib.util.find_spec("nvidia.nvjpeg")
        if spec is not None and spec.submodule_search_locations:
            dirs += [os.path.join(p, "lib") for p in spec.submodule_search_locations]
    except (ImportError, ValueError):
        pass
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            dirs.append(os.path.join(os.environ[var], "lib64"))
    for d in dirs:
        for major in (13, 12, 11):
            path = os.path.join(d, f"libnvjpeg.so.{major}")
            if os.path.exists(path):
                return path
    return None


def _load() -> ctypes.CDLL:
    tried = []
    # Name nvJPEG for the engine when Python has a copy and nothing else was asked for (the engine reads
    # the variable when it first decodes on a GPU).
    if not os.environ.get("FERRY_NVJPEG_LIBRARY"):
        nvjpeg = _nvjpeg_from_python()
        if nvjpeg is not None:
            os.environ["FERRY_NVJPEG_LIBRARY"] = nvjpeg
    env = os.environ.get("FERRY_LIBRARY")
    for what, path in _candidates():
        if path is None:
            tried.append(f"{what}: not found")
            continue
        # find_library returns a bare soname that the dynamic loader resolves; other entries are files.
        is_soname = os.sep not in path
        if not is_soname and not os.path.exists(path):
            tried.append(f"{what}: {path} does not exist")
            if what == "FERRY_LIBRARY":
                # An explicit choice is never silently replaced by another copy.
                break
            continue
        try:
            cdll = ctypes.CDLL(path)
            _declare(cdll)
        except (OSError, AttributeError) as exc:
            tried.append(f"{what}: {path}: {exc}")
            if what == "FERRY_LIBRARY":
                break
            continue
        global _path
        _path = path if is_soname else os.path.abspath(path)
        return cdll
    hint = "" if env else " Set FERRY_LIBRARY to the path of libferry.so, or build it with `make build`."
    raise LibraryNotFoundError(
        "libferry could not be loaded; tried, in order:\n  " + "\n  ".join(tried) + "\n" + hint.strip()
    )


def lib() -> ctypes.CDLL:
    """Returns the loaded library, loading it on the first call (thread-safe).

    Raises:
        LibraryNotFoundError: (an ImportError) naming every place that was tried.
    """
    global _cdll, _loaded_pid
    cdll = _cdll
    if cdll is None:
        with _lock:
            if _cdll is None:
                _cdll = _load()
                _loaded_pid = os.getpid()
            cdll = _cdll
    elif _loaded_pid != os.getpid() and not _forked:
        _after_fork_in_child()  # a fork that bypassed os.register_at_fork (e.g. one made in C)
    return cdll


# --- fork -------------------------------------------------------------------------------------------------

#: The message of the error that every ferry call raises in a process forked after the library loaded.
FORK_MESSAGE = ("ferry objects cannot be used after fork(): the library's Go runtime does not survive it, so "
                "this process (forked after ferry was loaded) cannot call ferry; use the spawn start method "
                "(multiprocessing.set_start_method('spawn'), or torch DataLoader(multiprocessing_context="
                "'spawn')), or create ferry objects only after the fork")

# Calls that stay callable after fork: they never enter Go (a status string, the thread's last error).
_SAFE_AFTER_FORK = frozenset({"ferry_status_string", "ferry_last_error"})
# Exit paths (destroys, releases, stops): no-ops after fork, so that closing objects, finalizers and
# interpreter exit do not try to reach the runtime that is gone. The parent's objects are the parent's.
_NOOP_AFTER_FORK = frozenset(name for name in SYMBOLS if name.endswith("_destroy")) | {
    "ferry_batch_release", "ferry_monitor_stop", "ferry_memory_remove_callback"}

_loaded_pid: Optional[int] = None
_forked = False


def forked() -> bool:
    """True in a process forked after the library was loaded: ferry calls raise there, exit paths do
    nothing."""
    return _forked


def _refuse_after_fork(name: str):  # type: ignore[no-untyped-def]
    def refuse(*args: object) -> int:
        from ._errors import Status, UnsupportedError

        raise UnsupportedError(Status.UNSUPPORTED, f"{name}: {FORK_MESSAGE}", "FERRY_ERR_UNSUPPORTED")

    return refuse


def _noop_after_fork(*args: object) -> int:
    return 0  # FERRY_OK


def _after_fork_in_child() -> None:
    """Runs in the child of a fork: when the library was loaded before it, every ferry call of this
    process raises UnsupportedError (FORK_MESSAGE) and every exit path does nothing. The bindings call
    the library through the loaded CDLL's attributes, so replacing those covers every object."""
    global _forked
    cdll = _cdll
    if cdll is None or _forked:
        return
    _forked = True
    for name in SYMBOLS:
        if name in _SAFE_AFTER_FORK:
            continue
        setattr(cdll, name, _noop_after_fork if name in _NOOP_AFTER_FORK else _refuse_after_fork(name))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def library_path() -> str:
    """Returns the absolute path (or, when found by soname, the soname) of the loaded library, loading it
    first if needed."""
    lib()
    assert _path is not None
    return _path
