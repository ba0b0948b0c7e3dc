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
    POINTER,
    Structure,
    c_char,
    c_char_p,
    c_int,
    c_int32,
    c_uint8,
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

# ferry_status is a C enum; it travels as an int.
ferry_status = c_int
# ferry_engine is an opaque handle (an ID, not a pointer); it travels as a pointer-sized value.
ferry_engine = c_void_p


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
]

SYMBOLS = tuple(name for name, _, _ in _SIGNATURES)


class LibraryNotFoundError(ImportError):
    """libferry could not be found or loaded. The message lists every place that was tried."""


_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
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


def _load() -> ctypes.CDLL:
    tried = []
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
    global _lib
    cdll = _lib
    if cdll is None:
        with _lock:
            if _lib is None:
                _lib = _load()
            cdll = _lib
    return cdll


def library_path() -> str:
    """Returns the absolute path (or, when found by soname, the soname) of the loaded library, loading it
    first if needed."""
    lib()
    assert _path is not None
    return _path
