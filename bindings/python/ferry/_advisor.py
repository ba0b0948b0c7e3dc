"""``BatchSizeAdvisor``: the library's batch-size advisor (``ferry_advisor_*``), and the reduction across
ranks that makes every rank of a distributed job train with the same size."""

from __future__ import annotations

import ctypes
import threading
from ctypes import byref, c_int64
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

from . import _lib
from ._errors import Status, _as_int, _as_int64, _check, _closed, _error, _invalid
from ._handle import _InCallback, _Owner

__all__ = ["AdvisorFit", "BatchSizeAdvisor", "torch_min_reduce"]

_FIT_SIZE = ctypes.sizeof(_lib.AdvisorFit)


@dataclass(frozen=True)
class AdvisorFit:
    """The advisor's model of peak memory, ``fixed + per_sample × batch``, and its confidence: every
    field of ``ferry_advisor_fit`` but the struct size. Bytes are floats (least-squares values)."""

    observations: int
    """Distinct batch sizes observed."""
    fixed_bytes: float
    """The least-squares intercept: memory that does not grow with the batch (weights, optimizer state)."""
    per_sample_bytes: float
    """The least-squares slope: memory per sample of the batch."""
    r_squared: float
    """The fit's R² (1 with two observations)."""
    max_residual_bytes: float
    """The largest observation above the line: the safety margin every recommendation adds."""
    oom_ceiling: int
    """The smallest batch size reported out of memory; 0 when none."""
    reserved: int
    """Reserved by the library (0)."""

    def predict(self, batch_size: int) -> float:
        """The peak the recommendations assume for ``batch_size``: the line raised by its largest
        positive residual."""
        return self.fixed_bytes + self.max_residual_bytes + self.per_sample_bytes * batch_size


def _destroy_advisor(lib: ctypes.CDLL, handle: Any, keep: List[Any]) -> int:
    """Destroys an advisor handle. ``keep`` holds the C reduce callback: the library may call it until
    the handle is gone."""
    status = lib.ferry_advisor_destroy(handle)
    keep.clear()
    return status


class _ReduceState:
    """The C side of a Python reduce function. Nothing raised in it crosses into C: the exception is kept
    and re-raised by :meth:`BatchSizeAdvisor.recommend` on the calling thread."""

    def __init__(self, fn: Callable[[int], int]) -> None:
        self.fn = fn
        self.error: Optional[BaseException] = None

    def __call__(self, user: Any, value: Any) -> int:
        try:
            with _InCallback(self):
                result = self.fn(int(value[0]))
            out = _as_int(result, "the reduce function's result")
            if not -(2**63) <= out < 2**63:
                raise ValueError(f"the reduce function returned {out}, which does not fit int64_t")
            value[0] = out
            return 0
        except BaseException as exc:  # noqa: BLE001 - nothing may propagate into C
            self.error = exc
            return 1


class BatchSizeAdvisor(_Owner):
    """Learns how peak memory grows with the batch size and recommends the largest batch that fits.

    ``observe(batch_size, peak_bytes)`` after steps at two or more distinct sizes; the library fits
    ``peak = fixed + per_sample × batch`` by least squares. ``recommend(budget_bytes, headroom)`` returns the
    largest batch whose predicted peak (the line raised by its largest positive residual, so that noisy or
    convex curves stay on the safe side) fits ``budget_bytes × (1 - headroom)``, rounded down to a multiple
    of ``multiple``, below any size reported out of memory (:meth:`report_oom`), and reduced across ranks
    by the function given to :meth:`set_reduce`.

    Bad input raises :class:`~ferry.InvalidArgumentError` with the library's message: a batch size ≤ 0, a
    peak of 0, headroom outside [0, 1), fewer than two distinct sizes observed, memory that does not grow
    with the batch, a budget below the fixed cost.

    Ownership: the advisor owns its library handle; :meth:`close` (or leaving a ``with`` block) destroys
    it, and garbage collection does too as a backstop. Detach it from a :class:`~ferry.MemoryManager`
    before closing it. Thread-safety: methods may be called from any thread; the reduce function runs on
    the thread that calls :meth:`recommend`.
    """

    def __init__(self, multiple: int = 8) -> None:
        self._handle: Optional[Any] = None
        lib = _lib.lib()
        self._lib = lib
        self._multiple = _as_int64(multiple, "multiple")
        handle = _lib.ferry_advisor()
        _check(lib.ferry_advisor_create(self._multiple, byref(handle)))
        self._keep: List[Any] = []  # [c callback, state] of the reduce hook; held by the finalizer too
        self._reduce_lock = threading.Lock()
        self._own(handle, _destroy_advisor, lib, handle, self._keep)

    # --- lifetime ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Destroys the advisor. Idempotent and thread-safe."""
        super().close()

    def __repr__(self) -> str:
        if self._handle is None:
            return "<ferry.BatchSizeAdvisor closed>"
        return f"<ferry.BatchSizeAdvisor multiple={self._multiple}>"

    def _fail(self, status: int) -> None:
        err = _error(status)
        if status == Status.INVALID_HANDLE and self._handle is None:
            raise _closed("BatchSizeAdvisor") from err
        raise err

    # --- calls --------------------------------------------------------------------------------------------

    @property
    def multiple(self) -> int:
        """Recommendations are rounded down to a multiple of this."""
        return self._multiple

    def observe(self, batch_size: int, peak_bytes: int) -> None:
        """Records the peak memory (bytes, > 0) of one step at ``batch_size`` (> 0)."""
        b = _as_int(batch_size, "batch_size")
        p = _as_int(peak_bytes, "peak_bytes")
        if p < 0 or p >= 2**64:
            raise _invalid(f"peak_bytes {p} is not a byte count")
        if not -(2**63) <= b < 2**63:
            raise _invalid(f"batch_size {b} does not fit int64_t")
        status = self._lib.ferry_advisor_observe(self._h(), b, p)
        if status:
            self._fail(status)

    def report_oom(self, batch_size: int) -> None:
        """Records that ``batch_size`` ran out of memory: recommendations stay below it from then on, and a
        repeated report lowers the ceiling further."""
        b = _as_int(batch_size, "batch_size")
        if not -(2**63) <= b < 2**63:
            raise _invalid(f"batch_size {b} does not fit int64_t")
        status = self._lib.ferry_advisor_report_oom(self._h(), b)
        if status:
            self._fail(status)

    def fit(self) -> AdvisorFit:
        """The fitted model and its confidence. InvalidArgumentError before two distinct sizes."""
        s = _lib.AdvisorFit()
        s.size = _FIT_SIZE
        status = self._lib.ferry_advisor_model(self._h(), byref(s))
        if status:
            self._fail(status)
        return AdvisorFit(
            observations=s.observations,
            fixed_bytes=s.fixed_bytes,
            per_sample_bytes=s.per_sample_bytes,
            r_squared=s.r_squared,
            max_residual_bytes=s.max_residual_bytes,
            oom_ceiling=s.oom_ceiling,
            reserved=s.reserved,
        )

    def model(self) -> Tuple[float, float]:
        """``(fixed_bytes, per_sample_bytes)`` of the least-squares line."""
        f = self.fit()
        return f.fixed_bytes, f.per_sample_bytes

    def recommend(self, budget_bytes: int, headroom: float = 0.0) -> int:
        """The largest batch that fits ``budget_bytes`` with the fraction ``headroom`` kept free.

        When a reduce function is set, it runs (on this thread) with the local answer and its result is
        returned: every rank must call this for a collective reduction to complete. An exception in the
        reduce function is re-raised here.
        """
        budget = _as_int(budget_bytes, "budget_bytes")
        if not 0 <= budget < 2**64:
            raise _invalid(f"budget_bytes {budget} is not a byte count")
        try:
            h = float(headroom)
        except (TypeError, ValueError):
            raise TypeError(f"headroom must be a number, not {type(headroom).__name__}") from None
        out = c_int64()
        with self._reduce_lock:
            state = self._keep[1] if self._keep else None
            if state is not None:
                state.error = None
            status = self._lib.ferry_advisor_recommend(self._h(), budget, h, byref(out))
            error = state.error if state is not None else None
            if state is not None:
                state.error = None
        if error is not None:
            if status:
                raise error from _error(status)
            raise error
        if status:
            self._fail(status)
        return out.value

    def set_reduce(self, fn: Optional[Callable[[int], int]]) -> None:
        """Sets the reduction across ranks: ``fn(value) -> int`` returns the minimum of ``value`` over every
        rank (:func:`torch_min_reduce` builds one from ``torch.distributed``). ``None`` clears it."""
        if fn is not None and not callable(fn):
            raise TypeError("the reduce function must be callable as fn(value) -> int")
        h = self._h()
        with self._reduce_lock:
            if fn is None:
                status = self._lib.ferry_advisor_set_reduce(h, _lib.REDUCE_FN(), None)  # NULL clears it
                if status:
                    self._fail(status)
                self._keep.clear()
                return
            state = _ReduceState(fn)
            c_fn = _lib.REDUCE_FN(state)
            status = self._lib.ferry_advisor_set_reduce(h, c_fn, None)
            if status:
                self._fail(status)
            # The library holds c_fn now; the previous one is no longer reachable from C.
            self._keep[:] = [c_fn, state]

    @property
    def reduce(self) -> Optional[Callable[[int], int]]:
        """The reduce function set, or None."""
        keep = self._keep
        return keep[1].fn if keep else None


def torch_min_reduce(group: Any = None) -> Callable[[int], int]:
    """Builds a reduce function for :meth:`BatchSizeAdvisor.set_reduce` from ``torch.distributed``:
    ``all_reduce`` with ``ReduceOp.MIN`` over ``group`` (None: the default group), on a CUDA tensor when
    the group's backend is NCCL and on a CPU tensor otherwise. Without an initialized process group it
    returns the value unchanged (one process). Every rank must call ``recommend`` for it to complete."""
    import torch
    import torch.distributed as dist

    def reduce(value: int) -> int:
        if not (dist.is_available() and dist.is_initialized()):
            return value
        backend = str(dist.get_backend(group)).lower()
        if "nccl" in backend and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
        t = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=group)
        return int(t.item())

    return reduce
