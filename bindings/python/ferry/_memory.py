"""``MemoryManager``: the memory façade with the seed's names, over one :class:`~ferry.Engine`."""

from __future__ import annotations

from ctypes import byref
from typing import Optional, Tuple

from . import _loader
from ._device import device_count
from ._engine import CPU, Engine, MemorySnapshot, _new_snapshot_struct
from ._errors import Status, _closed, _error

__all__ = ["MemoryManager"]

_MB = float(1 << 20)
_F_PROCESS = _loader.FERRY_MEMORY_F_PROCESS


class MemoryManager:
    """Memory checks with the seed's interface, backed by an :class:`Engine`.

    ``device=None`` picks device 0 when a GPU is visible, else the CPU (:data:`ferry.CPU`).
    ``threshold_mb`` is stored for the pressure policy; it has no effect yet.

    Ownership: the manager owns its engine; :meth:`close` (or leaving a ``with`` block) destroys it, and
    garbage collection does too as a backstop.

    Thread-safety: every method may be called from any thread. :meth:`check_memory` reuses one
    pre-allocated snapshot buffer to stay cheap, so when several threads call it at the same moment, the
    two figures one call returns may come from consecutive snapshots (each figure is one the library
    published). :meth:`snapshot` uses a fresh buffer per call and is always consistent.
    """

    def __init__(self, threshold_mb: Optional[float] = None, device: Optional[int] = None) -> None:
        if device is None:
            device = 0 if device_count() > 0 else CPU
        self.threshold_mb = threshold_mb
        self._engine = Engine(device)
        self._device = self._engine.device
        lib = self._engine._lib
        # The hot path is bound once: one snapshot struct, the handle and a byref to the struct. The
        # function is an undeclared copy of ferry_memory_check (restype int, no argtypes): its arguments
        # are already ctypes objects of the declared types, so per-call conversion is skipped.
        self._snap = _new_snapshot_struct()
        self._call = lib._FuncPtr(("ferry_memory_check", lib))
        self._args: Optional[tuple] = (self._engine._handle, byref(self._snap))

    @property
    def device(self) -> int:
        """The device checked: a CUDA ordinal, or :data:`ferry.CPU` (-1)."""
        return self._device

    @property
    def engine(self) -> Engine:
        """The engine behind this manager (owned by the manager; do not close it separately)."""
        return self._engine

    def check_memory(self) -> Tuple[float, float]:
        """Returns ``(allocated_mb, cached_mb)`` in MiB (2**20 bytes), from the latest snapshot.

        ``allocated_mb`` is this process's device memory when NVML can attribute it
        (``process_device_bytes``), else the device's used memory (``device_used_bytes``); 0.0 on the
        CPU. ``cached_mb`` is the memory held by the engine's pools (``engine_reserved_bytes``).

        This is one ctypes call into a memory read of the library; it makes no driver call.
        """
        args = self._args
        if args is None:
            raise _closed("MemoryManager")
        status = self._call(*args)
        if status:
            self._fail(status)
        snap = self._snap
        if snap.flags & _F_PROCESS:
            return snap.process_device_bytes / _MB, snap.engine_reserved_bytes / _MB
        return snap.device_used_bytes / _MB, snap.engine_reserved_bytes / _MB

    def snapshot(self) -> MemorySnapshot:
        """Returns the full latest :class:`MemorySnapshot`."""
        if self._args is None:
            raise _closed("MemoryManager")
        return self._engine.memory_check()

    def _fail(self, status: int) -> None:
        err = _error(status)
        if status == Status.INVALID_HANDLE and self._args is None:
            raise _closed("MemoryManager") from err
        raise err

    def close(self) -> None:
        """Destroys the engine. Idempotent and thread-safe."""
        self._args = None
        self._engine.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._args is None

    def __enter__(self) -> "MemoryManager":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._args is None else f"device={self._device}"
        return f"<ferry.MemoryManager {state}>"
