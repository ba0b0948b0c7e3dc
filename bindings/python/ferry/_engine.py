"""The engine: one device (or the CPU), its context and its memory sampler."""

from __future__ import annotations

import ctypes
import enum
import struct
from ctypes import byref, c_int32
from dataclasses import dataclass
from typing import Optional, Union

from . import _lib
from ._errors import Status, _as_int32, _as_uint32, _check, _closed, _error
from ._handle import _Owner

__all__ = ["CPU", "Engine", "MemorySnapshot", "Pressure"]

#: The device value that selects the CPU: an engine with no GPU and the host figures only.
CPU = _lib.FERRY_DEVICE_CPU

_SNAPSHOT_SIZE = ctypes.sizeof(_lib.MemorySnapshotStruct)


class Pressure(enum.IntEnum):
    """Memory pressure levels (``ferry_pressure``). Until thresholds are set the level is NONE."""

    NONE = 0
    WARN = 1
    CRITICAL = 2


@dataclass(frozen=True)
class MemorySnapshot:
    """One memory snapshot of an engine: a plain value the caller owns.

    Sizes are in bytes; timestamps are ``CLOCK_MONOTONIC`` nanoseconds, the clock of
    :func:`time.monotonic_ns` on Linux, so they compare with the caller's own readings.
    """

    flags: int
    """``FERRY_MEMORY_F_*`` bits; the booleans below spell them out."""
    device: int
    """The CUDA ordinal, or :data:`ferry.CPU` (-1)."""
    level: Union[Pressure, int]
    """The pressure level (:class:`Pressure`; a plain int for a level this binding does not know)."""
    sequence: int
    """The number of the sample this came from; it grows by one per sample."""
    timestamp_ns: int
    """When the device and engine figures were taken."""
    age_ns: int
    """How old ``timestamp_ns`` was when the call returned."""
    sample_timestamp_ns: int
    """When the process and host figures were taken (equals ``timestamp_ns`` except in a live check)."""
    device_total_bytes: int
    device_free_bytes: int
    device_used_bytes: int
    """total - free: every process on the device."""
    process_device_bytes: int
    """This process's device memory (NVML); valid when ``process_valid``."""
    engine_allocated_bytes: int
    """Handed out by this engine's pools."""
    engine_reserved_bytes: int
    """Held by this engine's pools (allocated + cached)."""
    engine_peak_bytes: int
    engine_alloc_count: int
    engine_alloc_failures: int
    host_total_bytes: int
    """Physical RAM."""
    host_available_bytes: int
    """RAM available without swapping (MemAvailable)."""
    host_pinned_bytes: int
    """Page-locked host memory held by this engine."""
    warn_threshold_bytes: int
    critical_threshold_bytes: int
    device_valid: bool
    """The ``device_*`` fields are valid (a GPU engine)."""
    process_valid: bool
    """``process_device_bytes`` is valid (NVML could attribute memory to this process)."""
    host_valid: bool
    """The ``host_*`` fields are valid."""
    live: bool
    """The device and engine figures were queried by this call (:meth:`Engine.memory_check_live`)."""

    @classmethod
    def _from_struct(cls, s: _lib.MemorySnapshotStruct) -> "MemorySnapshot":
        # Built by filling __dict__ rather than through the generated __init__: a frozen dataclass's
        # __init__ sets 25 fields through object.__setattr__, which doubles the cost of a memory check.
        d = dict(zip(_STRUCT_NAMES, _unpack_struct(s)))
        del d["size"]
        flags = d["flags"]
        level = d["level"]
        d["level"] = _LEVELS.get(level, level)
        d["device_valid"] = bool(flags & _lib.FERRY_MEMORY_F_DEVICE)
        d["process_valid"] = bool(flags & _lib.FERRY_MEMORY_F_PROCESS)
        d["host_valid"] = bool(flags & _lib.FERRY_MEMORY_F_HOST)
        d["live"] = bool(flags & _lib.FERRY_MEMORY_F_LIVE)
        obj = object.__new__(cls)
        obj.__dict__.update(d)
        return obj


# The struct's fields in header order (the dataclass declares them in the same order, less size), and
# one unpack of its bytes: much cheaper than reading 22 ctypes fields one by one.
_STRUCT_NAMES = tuple(name for name, _ in _lib.MemorySnapshotStruct._fields_)
_unpack_struct = struct.Struct(
    "=" + "".join({ctypes.c_uint32: "I", ctypes.c_int32: "i", ctypes.c_uint64: "Q"}[t]
                  for _, t in _lib.MemorySnapshotStruct._fields_)
).unpack_from
_LEVELS = {int(p): p for p in Pressure}


def _new_snapshot_struct() -> _lib.MemorySnapshotStruct:
    s = _lib.MemorySnapshotStruct()
    s.size = _SNAPSHOT_SIZE
    return s


class Engine(_Owner):
    """A ferry engine for one device, or for the CPU (``device=ferry.CPU``).

    On a GPU the engine retains the device's primary context, so it shares one context with PyTorch. A
    background sampler refreshes the memory snapshot every ``sample_interval_ms`` (0 turns it off; then
    only :meth:`sample_now` refreshes it).

    Ownership: the Engine owns its library handle. :meth:`close` (or leaving a ``with`` block) destroys it;
    if neither happens, the handle is destroyed when the Engine is garbage-collected or at interpreter
    exit. Thread-safety: every method may be called from any thread, also concurrently with
    :meth:`close`; a call that loses that race raises :class:`ClosedError`.

    Raises (from the constructor):
        NoDeviceError: no driver, or ``device`` is out of range (the message names what was missing).
        InvalidArgumentError: ``device < -1`` or ``sample_interval_ms > 60000``.
        LimitError: ``FERRY_MAX_ENGINES`` engines are alive.
    """

    def __init__(self, device: int = 0, sample_interval_ms: int = 100) -> None:
        self._handle: Optional[_lib.ferry_engine] = None
        lib = _lib.lib()
        self._lib = lib
        opts = _lib.EngineOptions()
        _check(lib.ferry_engine_options_init(byref(opts)))
        opts.device = _as_int32(device, "device")
        opts.sample_interval_ms = _as_uint32(sample_interval_ms, "sample_interval_ms")
        handle = _lib.ferry_engine()
        _check(lib.ferry_engine_create(byref(opts), byref(handle)))
        self._own(handle, lib.ferry_engine_destroy, handle)

    # --- lifetime ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Destroys the engine: stops its sampler and releases its context. Idempotent and thread-safe."""
        super().close()

    def __repr__(self) -> str:
        if self._handle is None:
            return "<ferry.Engine closed>"
        return f"<ferry.Engine device={self.device}>"

    # --- calls --------------------------------------------------------------------------------------------

    def _fail(self, status: int) -> None:
        """Raises for a failed call; a handle that went stale because another thread closed the engine
        meanwhile reads as ClosedError."""
        err = _error(status)
        if status == Status.INVALID_HANDLE and self._handle is None:
            raise _closed("Engine") from err
        raise err

    @property
    def device(self) -> int:
        """The engine's device: a CUDA ordinal, or :data:`ferry.CPU` (-1)."""
        d = c_int32()
        status = self._lib.ferry_engine_device(self._h(), byref(d))
        if status:
            self._fail(status)
        return d.value

    def sample_now(self) -> None:
        """Takes a memory sample now and publishes it as the snapshot :meth:`memory_check` reads."""
        status = self._lib.ferry_engine_sample_now(self._h())
        if status:
            self._fail(status)

    def memory_check(self) -> MemorySnapshot:
        """Returns the latest published snapshot. This reads memory only (no driver call): tens of
        nanoseconds in the library, plus the cost of building the dataclass."""
        s = _new_snapshot_struct()
        status = self._lib.ferry_memory_check(self._h(), byref(s))
        if status:
            self._fail(status)
        return MemorySnapshot._from_struct(s)

    def memory_check_live(self) -> MemorySnapshot:
        """Queries the device now (``cuMemGetInfo``) and returns a snapshot with ``live`` set.

        The engine figures are exact; the process and host figures come from the latest sample (see
        ``sample_timestamp_ns``). On the CPU engine the host figures are queried now instead.
        """
        s = _new_snapshot_struct()
        status = self._lib.ferry_memory_check_live(self._h(), byref(s))
        if status:
            self._fail(status)
        return MemorySnapshot._from_struct(s)
