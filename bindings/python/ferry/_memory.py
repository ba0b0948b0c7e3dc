"""``MemoryManager``: the memory façade with the seed's names, over one :class:`~ferry.Engine`: the memory
check, the pressure policy, framework callbacks and the batch-size advice."""

from __future__ import annotations

import ctypes
import inspect
import threading
from ctypes import byref, c_uint64
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from . import _lib
from ._advisor import BatchSizeAdvisor
from ._device import device_count
from ._engine import CPU, Engine, MemorySnapshot, Pressure, _new_snapshot_struct
from ._errors import Status, _as_int, _as_int32, _check, _closed, _error, _invalid
from ._handle import _InCallback

__all__ = ["MemoryManager", "OptimizeResult"]

_MB = float(1 << 20)
_F_PROCESS = _lib.FERRY_MEMORY_F_PROCESS
_LEVELS = {int(p): p for p in Pressure}
_RESULT_SIZE = ctypes.sizeof(_lib.OptimizeResult)
_PRESSURE_SIZE = ctypes.sizeof(_lib.PressureOptions)

#: metric names accepted by MemoryManager(metric=...), with the ferry_pressure_metric they stand for.
_METRICS = {
    "device": _lib.FERRY_PRESSURE_DEVICE_USED,
    "device_used": _lib.FERRY_PRESSURE_DEVICE_USED,
    "process": _lib.FERRY_PRESSURE_PROCESS_USED,
    "process_used": _lib.FERRY_PRESSURE_PROCESS_USED,
    "engine": _lib.FERRY_PRESSURE_ENGINE_RESERVED,
    "engine_reserved": _lib.FERRY_PRESSURE_ENGINE_RESERVED,
}


def _level(value: int) -> Union[Pressure, int]:
    return _LEVELS.get(value, value)


def _metric(metric: Union[str, int]) -> int:
    if isinstance(metric, str):
        try:
            return _METRICS[metric.lower()]
        except KeyError:
            raise _invalid(f"unknown pressure metric {metric!r}; expected one of {sorted(set(_METRICS))}") from None
    return _as_int32(metric, "metric")


def _bytes_of_mb(mb: Optional[float], what: str) -> int:
    if mb is None:
        return 0
    if isinstance(mb, bool):
        raise TypeError(f"{what} must be a number of MiB, not bool")
    try:
        v = float(mb)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number of MiB, not {type(mb).__name__}") from None
    if not v > 0 or v * _MB >= 2**64:
        raise _invalid(f"{what} must be a positive number of MiB, got {mb!r}")
    return int(v * _MB)


@dataclass(frozen=True)
class OptimizeResult:
    """What :meth:`MemoryManager.optimize_memory` did: the fields of ``ferry_optimize_result``, and how the
    returned batch size was chosen."""

    level_before: Union[Pressure, int]
    """The pressure level before (a live reading)."""
    level_after: Union[Pressure, int]
    """The level after trimming the pools and the callbacks (a live reading)."""
    callbacks_called: int
    callbacks_failed: int
    """Callbacks that raised (their exceptions are in :attr:`errors`)."""
    trimmed_bytes: int
    """Memory the engine's pools gave back."""
    recommended_batch_size: int
    """The attached advisor's recommendation; 0 when none."""
    batch_size: Optional[int]
    """What :meth:`~MemoryManager.optimize_memory` returned."""
    source: str
    """How ``batch_size`` was chosen: ``"advisor"``, ``"formula"`` (the seed's proportional formula) or
    ``"unchanged"`` (the current batch size, or None when it was not given)."""
    current_bytes: int = 0
    """The metric's reading after the callbacks, in bytes (the formula's ``current_memory``)."""
    errors: Tuple[BaseException, ...] = field(default=())
    """The exceptions raised by failing callbacks, in call order."""


def _wants_level(fn: Callable[..., Any]) -> bool:
    """Whether a pressure callback is called with the level: when it has a required positional parameter,
    or a parameter named ``level``. A callable whose parameters are all optional (``torch.cuda.empty_cache``,
    ``model.gradient_checkpointing_enable``) is called with no argument, so that the level never lands in
    an unrelated optional parameter."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature: call them bare
        return False
    params = list(sig.parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in params if p.kind in positional and p.default is inspect.Parameter.empty]
    if len(required) > 1:
        raise TypeError(f"a pressure callback takes the level or nothing; {fn!r} requires {len(required)} arguments")
    if required:
        return True
    named = [p for p in params if p.name == "level" and p.kind in positional]
    if named:
        return True
    if any(p.kind == inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty for p in params):
        raise TypeError(f"a pressure callback takes the level or nothing; {fn!r} requires keyword arguments")
    return False


class _PressureCallback:
    """The C side of one Python pressure callback. Nothing raised in it crosses into C: the exception is
    recorded, and the call reports a failure (1) so that the library counts it."""

    def __init__(self, fn: Callable[..., Any], pass_level: bool, sink: List[BaseException]) -> None:
        self.fn = fn
        self.pass_level = pass_level
        self.sink = sink

    def __call__(self, user: Any, level: int) -> int:
        try:
            with _InCallback(self):  # ferry objects the garbage collector finalizes here are destroyed later
                if self.pass_level:
                    self.fn(_level(level))
                else:
                    self.fn()
            return 0
        except BaseException as exc:  # noqa: BLE001 - nothing may propagate into C
            try:
                exc.__traceback__ = None  # frames may hold large tensors
                self.sink.append(exc)
            except BaseException:  # pragma: no cover - recording must not raise into C
                pass
            return 1


class MemoryManager:
    """Memory checks, the pressure policy and batch-size advice with the seed's interface, backed by an
    :class:`Engine`.

    ``device=None`` picks device 0 when a GPU is visible, else the CPU (:data:`ferry.CPU`).
    ``threshold_mb`` and ``critical_mb`` are the WARN and CRITICAL thresholds of the engine's pressure
    policy, in MiB (2**20 bytes), compared with ``metric``: ``"device"`` (memory used on the device by
    every process; the default), ``"process"`` (this process's device memory; NVML, else device used)
    or ``"engine"`` (memory held by the engine's pools). Left at None, a threshold is unset; with both
    unset the level is always NONE. :meth:`set_thresholds` changes them later, also as fractions of the
    device's memory.

    The seed's flow::

        mm = ferry.MemoryManager(threshold_mb=60_000)
        mm.on_pressure(torch.cuda.empty_cache)
        allocated_mb, cached_mb = mm.check_memory()
        if allocated_mb > mm.threshold_mb:          # or: mm.pressure() >= ferry.Pressure.WARN
            batch_size = mm.optimize_memory(current_batch_size=batch_size)

    Ownership: the manager owns its engine and the callbacks registered on it; :meth:`close` (or leaving
    a ``with`` block) destroys the engine, and garbage collection does too as a backstop. An attached
    advisor stays the caller's.

    Thread-safety: every method may be called from any thread. :meth:`check_memory` reuses one
    pre-allocated snapshot buffer to stay cheap, so when several threads call it at the same moment, the
    two figures one call returns may come from consecutive snapshots (each figure is one the library
    published). :meth:`snapshot` uses a fresh buffer per call and is always consistent. Callbacks run on
    the thread that calls :meth:`optimize_memory`; calls to it are serialized.
    """

    def __init__(self, threshold_mb: Optional[float] = None, critical_mb: Optional[float] = None,
                 device: Optional[int] = None, metric: Union[str, int] = "device") -> None:
        if device is None:
            device = 0 if device_count() > 0 else CPU
        self.threshold_mb = threshold_mb
        self.critical_mb = critical_mb
        self._metric = _metric(metric)
        warn_bytes = _bytes_of_mb(threshold_mb, "threshold_mb")
        critical_bytes = _bytes_of_mb(critical_mb, "critical_mb")
        self._args: Optional[tuple] = None
        self._engine = Engine(device)
        self._device = self._engine.device
        lib = self._engine._lib
        self._lib = lib
        self._lock = threading.RLock()  # a callback may register or remove callbacks
        self._callbacks: Dict[int, Tuple[Any, _PressureCallback]] = {}
        self._errors: List[BaseException] = []
        self._advisor: Optional[BatchSizeAdvisor] = None
        self.last_optimize: Optional[OptimizeResult] = None
        try:
            if warn_bytes or critical_bytes or self._metric != _lib.FERRY_PRESSURE_DEVICE_USED:
                self._set_pressure(self._metric, warn_bytes, critical_bytes, 0.0, 0.0)
        except BaseException:
            self._engine.close()
            raise
        # The hot path is bound once: one snapshot struct, the handle and a byref to the struct. The
        # function is an undeclared copy of ferry_memory_check (restype int, no argtypes): its arguments
        # are already ctypes objects of the declared types, so per-call conversion is skipped.
        self._snap = _new_snapshot_struct()
        self._call = lib._FuncPtr(("ferry_memory_check", lib))
        self._args = (self._engine._handle, byref(self._snap))

    @property
    def device(self) -> int:
        """The device checked: a CUDA ordinal, or :data:`ferry.CPU` (-1)."""
        return self._device

    @property
    def engine(self) -> Engine:
        """The engine behind this manager (owned by the manager; do not close it separately)."""
        return self._engine

    @property
    def metric(self) -> int:
        """The ``ferry_pressure_metric`` the thresholds compare with."""
        return self._metric

    # --- the memory check -----------------------------------------------------------------------------------

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

    # --- the pressure policy ------------------------------------------------------------------------------

    def pressure(self, live: bool = False) -> Union[Pressure, int]:
        """The pressure level (:class:`ferry.Pressure`) of the latest snapshot, a read of memory; with
        ``live=True``, of a snapshot taken now (one driver query)."""
        if self._args is None:
            raise _closed("MemoryManager")
        snap = self._engine.memory_check_live() if live else self._engine.memory_check()
        return snap.level

    def _set_pressure(self, metric: int, warn_bytes: int, critical_bytes: int, warn_fraction: float,
                      critical_fraction: float) -> None:
        opts = _lib.PressureOptions()
        _check(self._lib.ferry_pressure_options_init(byref(opts)))
        opts.metric = metric
        opts.warn_bytes = warn_bytes
        opts.critical_bytes = critical_bytes
        opts.warn_fraction = warn_fraction
        opts.critical_fraction = critical_fraction
        status = self._lib.ferry_engine_set_pressure(self._engine._h(), byref(opts))
        if status:
            self._fail(status)

    def set_thresholds(self, threshold_mb: Optional[float] = None, critical_mb: Optional[float] = None, *,
                       warn_fraction: float = 0.0, critical_fraction: float = 0.0,
                       metric: Union[str, int, None] = None) -> None:
        """Replaces the thresholds: in MiB, or as fractions (0..1) of the device's total memory, used
        where the MiB value is None (fractions need a GPU engine). ``metric`` None keeps the current one.
        The current snapshot is re-evaluated at once. Raises InvalidArgumentError for a critical threshold
        below the warn threshold, a fraction outside 0..1, or fractions on the CPU engine."""
        if self._args is None:
            raise _closed("MemoryManager")
        m = self._metric if metric is None else _metric(metric)
        self._set_pressure(m, _bytes_of_mb(threshold_mb, "threshold_mb"), _bytes_of_mb(critical_mb, "critical_mb"),
                           float(warn_fraction), float(critical_fraction))
        self._metric = m
        self.threshold_mb = threshold_mb
        self.critical_mb = critical_mb

    def on_pressure(self, callback: Callable[..., Any], *, pass_level: Optional[bool] = None) -> int:
        """Registers ``callback``, called by :meth:`optimize_memory` after the callbacks registered before
        it. Returns its ID for :meth:`remove_callback`.

        ``callback`` is any callable: one that takes the level (a :class:`ferry.Pressure`), or one that
        takes no argument, such as ``torch.cuda.empty_cache`` or ``model.gradient_checkpointing_enable``.
        The level is passed when the callable has a required positional parameter or a parameter named
        ``level``; ``pass_level`` overrides that choice. Its return value is ignored; it fails by raising:
        the exception is caught (it never crosses into the library), counted in
        :attr:`OptimizeResult.callbacks_failed` and kept in :attr:`OptimizeResult.errors`, and the later
        callbacks still run. ``KeyboardInterrupt`` and ``SystemExit`` are re-raised by
        :meth:`optimize_memory` once every callback has run.
        """
        if not callable(callback):
            raise TypeError(f"a pressure callback must be callable, not {type(callback).__name__}")
        wants = _wants_level(callback) if pass_level is None else bool(pass_level)
        state = _PressureCallback(callback, wants, self._errors)
        c_fn = _lib.PRESSURE_FN(state)
        cid = c_uint64()
        with self._lock:
            status = self._lib.ferry_memory_on_pressure(self._engine._h(), c_fn, None, byref(cid))
            if status:
                self._fail(status)
            # The library calls c_fn until it is removed: keep it alive as long as it is registered.
            self._callbacks[cid.value] = (c_fn, state)
        return cid.value

    def remove_callback(self, callback_id: int) -> None:
        """Removes a callback registered with :meth:`on_pressure`. InvalidArgumentError for an unknown
        ID (also one already removed)."""
        cid = _as_int(callback_id, "callback_id")
        if not 0 <= cid < 2**64:
            raise _invalid(f"unknown pressure callback ID {cid}")
        with self._lock:
            status = self._lib.ferry_memory_remove_callback(self._engine._h(), cid)
            if status:
                self._fail(status)
            self._callbacks.pop(cid, None)

    @property
    def callbacks(self) -> List[Callable[..., Any]]:
        """The registered callbacks, in call order."""
        with self._lock:
            return [state.fn for _, (_, state) in sorted(self._callbacks.items())]

    # --- the batch size ---------------------------------------------------------------------------------------

    @property
    def advisor(self) -> Optional[BatchSizeAdvisor]:
        """The attached :class:`BatchSizeAdvisor`, or None. Setting it attaches (None detaches)."""
        return self._advisor

    @advisor.setter
    def advisor(self, advisor: Optional[BatchSizeAdvisor]) -> None:
        self.attach(advisor)

    def attach(self, advisor: Optional[BatchSizeAdvisor]) -> None:
        """Attaches ``advisor`` to the engine (None detaches it): :meth:`optimize_memory` then returns its
        recommendation for the device's memory below the critical threshold (the whole device without
        one), never above the current batch size under pressure. The advisor stays the caller's: detach
        it before closing it."""
        if advisor is not None and not isinstance(advisor, BatchSizeAdvisor):
            raise TypeError(f"expected a ferry.BatchSizeAdvisor, not {type(advisor).__name__}")
        handle = advisor._h() if advisor is not None else None
        status = self._lib.ferry_engine_set_advisor(self._engine._h(), handle)
        if status:
            self._fail(status)
        self._advisor = advisor

    def optimize_memory(self, current_batch_size: Optional[int] = None) -> Optional[int]:
        """The engine's empty-cache, then the framework's: trims the engine's pools, calls every registered
        callback in order with the level, and returns the batch size to use from now on.

        The batch size is the attached advisor's recommendation when it has one; else the seed's formula
        (:meth:`calculate_optimal_batch_size`) applied to the metric's reading before the call (the memory
        that raised the pressure) against the warn threshold (the critical one when only that is set), when
        ``current_batch_size`` is given and that reading is above the threshold (a manager never grows the
        batch from a proportion: memory is not proportional to the batch); else ``current_batch_size``
        unchanged (None when not given). The full
        :class:`OptimizeResult` is kept in :attr:`last_optimize`.

        Call it from the training loop's thread: the callbacks run on the calling thread.
        """
        current = 0
        if current_batch_size is not None:
            current = _as_int(current_batch_size, "current_batch_size")
            if current <= 0:
                raise _invalid(f"current_batch_size must be > 0, got {current}")
            if current >= 2**63:
                raise _invalid(f"current_batch_size {current} does not fit int64_t")
        before = self._engine.memory_check_live()
        res = _lib.OptimizeResult()
        res.size = _RESULT_SIZE
        with self._lock:
            if self._args is None:
                raise _closed("MemoryManager")
            del self._errors[:]
            status = self._lib.ferry_memory_optimize(self._engine._h(), current, byref(res))
            errors = tuple(self._errors)
            del self._errors[:]
        if status:
            self._fail(status)
        reading = self._reading(before)
        target = before.warn_threshold_bytes or before.critical_threshold_bytes
        if res.recommended_batch_size > 0:
            batch, source = int(res.recommended_batch_size), "advisor"
        elif current and target and reading > target:
            batch, source = self.calculate_optimal_batch_size(current, reading, target), "formula"
        else:
            batch, source = (current or None), "unchanged"
        result = OptimizeResult(
            level_before=_level(res.level_before),
            level_after=_level(res.level_after),
            callbacks_called=res.callbacks_called,
            callbacks_failed=res.callbacks_failed,
            trimmed_bytes=res.trimmed_bytes,
            recommended_batch_size=res.recommended_batch_size,
            batch_size=batch,
            source=source,
            current_bytes=reading,
            errors=errors,
        )
        self.last_optimize = result
        for exc in errors:
            if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: not a failed callback
                raise exc
        return batch

    def _reading(self, snap: MemorySnapshot) -> int:
        """The figure the thresholds compare with, in bytes."""
        if self._metric == _lib.FERRY_PRESSURE_ENGINE_RESERVED:
            return snap.engine_reserved_bytes
        if self._metric == _lib.FERRY_PRESSURE_PROCESS_USED and snap.process_valid:
            return snap.process_device_bytes
        return snap.device_used_bytes

    @staticmethod
    def calculate_optimal_batch_size(current_batch_size: int, current_memory: float, target_memory: float) -> int:
        """The seed's formula, ``max(1, int(current_batch_size × target_memory / current_memory))``, with
        the batch size in use an explicit argument. The memories are in the same unit (any). It assumes
        memory proportional to the batch; :class:`BatchSizeAdvisor` models the fixed part too.

        Raises InvalidArgumentError for ``current_batch_size <= 0`` or memories that are not > 0.
        """
        b = _as_int(current_batch_size, "current_batch_size")
        if b <= 0:
            raise _invalid(f"current_batch_size must be > 0, got {b}")
        values = []
        for what, v in (("current_memory", current_memory), ("target_memory", target_memory)):
            # numbers, numpy scalars, 0-d tensors: anything with __float__ but a bool or a string
            if isinstance(v, bool) or not (hasattr(type(v), "__float__") or hasattr(type(v), "__index__")):
                raise TypeError(f"{what} must be a number, not {type(v).__name__}")
            f = float(v)
            if not 0.0 < f < float("inf"):
                raise _invalid(f"{what} must be a positive finite number, got {v!r}")
            values.append(f)
        current_f, target_f = values
        return max(1, int(b * target_f / current_f))

    # --- lifetime ---------------------------------------------------------------------------------------------

    def _fail(self, status: int) -> None:
        err = _error(status)
        if status == Status.INVALID_HANDLE and self._args is None:
            raise _closed("MemoryManager") from err
        raise err

    def close(self) -> None:
        """Destroys the engine, then drops the callbacks. Idempotent and thread-safe."""
        self._args = None
        self._engine.close()
        with self._lock:
            self._callbacks.clear()
        self._advisor = None

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
