"""``AutoBatch``: finds the batch size to train with from a few probe steps, with the library's
batch-size advisor, never by running into out-of-memory errors.

The probe plan (deterministic):

1. **Probes.** One full training step at each of ``probes`` (8 and 16 by default), each measured as
   ``torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); step_fn(b); torch.cuda.synchronize()``
   and ``torch.cuda.max_memory_allocated()``, from an empty cache (``torch.cuda.empty_cache()`` first). A probe
   that runs out of memory is reported to the advisor (``report_oom``) and the next sizes are halved below it
   until two distinct sizes have run.
2. **Refinement.** The advisor fits ``peak = fixed + per_sample × batch`` and recommends a size against the
   budget; one more step at about half of that size (rounded down to the multiple) lengthens the lever of
   the line. That size is predicted to fit with a factor of two to spare, so it is never a size the model
   predicts would not fit. Two close probes give a noisy slope when the fixed cost is large (cuDNN picks
   a different workspace per batch size), so a refinement is also at most 16 times the largest size that
   ran, and it is repeated (at most three in all) until the largest size that ran is a quarter of the
   prediction at least. On a typical curve that is one refinement.
3. **Recommendation.** The refitted advisor recommends the largest size whose predicted peak (the line
   raised by its largest positive residual) fits ``budget × (1 - headroom)``.
4. **Verification** (``verify=True``). One step at the recommended size: its measured peak joins the fit,
   and when it shows the curve bending upwards (a convex curve), the lower recommendation that follows is
   taken. A verification that runs out of memory is reported (the advisor's ceiling then keeps every later
   recommendation below it) and the next verification goes halfway down to the largest size that ran, at
   most three verifications in all; then the largest size that ran is used. The result is never above a
   size that ran.
5. **Ranks.** ``reduce`` (e.g. :func:`ferry.torch_min_reduce`) is applied once to the result, so that every
   rank trains with the minimum over ranks; each rank calls it exactly once, whatever its probes did.

The budget, when ``budget_bytes`` is not given, is what PyTorch's caching allocator can hand out::

    budget = total - non_torch - fragmentation

``total`` is the device's memory as ``torch.cuda.mem_get_info()`` reports it. ``non_torch`` is the memory
held outside PyTorch's allocator (other processes, the CUDA context, libraries' workspaces and lazily loaded
kernels): ``total - free - torch.cuda.memory_reserved()``, taken at the start and again after every probe,
the largest reading (the first step loads cuDNN and cuBLAS kernels). ``fragmentation`` is the caching
allocator's allowance: the largest gap between the reserved and allocated peaks
(``max_memory_reserved() - max_memory_allocated()``) seen in a probe, at least 128 MiB and at most 1.5 % of
the device. The cap is measured, not guessed: from an empty cache that gap is mostly block rounding that the
allocator reuses from step to step (7.4 GB of 85 GB for ResNet-50 at batch 864 on an H100), and charging all
of it cost 7-13 % of the batch. With the cap and the default 2 % headroom, AutoBatch chose 928 where the
exhaustive search's largest batch was 960 (96.7 %), and 200 training steps at 928 ran without running out of
memory (see docs/BENCHMARKS.md). The headroom keeps a fraction of the budget free for what one step does not
show (a longer sequence, an evaluation pass, fragmentation that grows over many steps); raise it for those.
"""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ._advisor import AdvisorFit, BatchSizeAdvisor
from ._errors import FerryError, InvalidArgumentError, OutOfMemoryError, Status, _as_int, _invalid

__all__ = ["AutoBatch", "Trial"]

_MIB = 1 << 20
#: The least fragmentation allowance, in bytes.
FRAGMENTATION_MIN_BYTES = 128 * _MIB
#: The most fragmentation allowance, as a fraction of the device's memory.
FRAGMENTATION_MAX_FRACTION = 0.015
#: Verification steps after the first one ran out of memory.
_MAX_VERIFY = 3
#: Refinement steps at most, and how much larger than the largest size that ran each may be.
_MAX_REFINE = 3
_LEVER_GROWTH = 16
#: Probes at doubled sizes when the memory of the first probes does not grow with the batch.
_MAX_GROW = 4


@dataclass(frozen=True)
class Trial:
    """One step that :meth:`AutoBatch.find` ran."""

    batch_size: int
    phase: str
    """``"probe"``, ``"refine"`` or ``"verify"``."""
    peak_bytes: Optional[int]
    """The measured peak; None when the step ran out of memory."""
    oom: bool
    seconds: float


def _is_oom(exc: BaseException) -> bool:
    """Whether an exception is an out-of-memory error: ``torch.cuda.OutOfMemoryError``, any
    ``MemoryError`` (ferry's :class:`~ferry.OutOfMemoryError` among them), or a ``RuntimeError`` whose
    message says the device or a library (cuDNN, cuBLAS) ran out of memory."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch is not None else None
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    if isinstance(exc, RuntimeError):
        msg = str(exc)
        return "out of memory" in msg.lower() or "ALLOC_FAILED" in msg
    return False


def _out_of_memory(message: str) -> OutOfMemoryError:
    return OutOfMemoryError(Status.OUT_OF_MEMORY, message, "FERRY_ERR_OUT_OF_MEMORY")


class AutoBatch:
    """Finds the largest batch size to train with, from two or three probe steps and a verification.

    ``step_fn(batch_size)`` runs one full training step (forward, backward and the optimizer) at that batch
    size; it should start by dropping the previous step's gradients (``optimizer.zero_grad()``, which sets
    them to None), as training loops do. :meth:`find` returns the size; the module docstring describes the
    plan and the budget policy.

    Args:
        step_fn: one training step at a given batch size.
        device: the CUDA device whose memory is measured (a torch device index).
        multiple: sizes are rounded down to a multiple of this.
        probes: the first sizes probed (two distinct sizes at least).
        headroom: the fraction of the budget kept free, in [0, 1).
        max_batch: an upper bound for the result (and every probe); None for none.
        budget_bytes: the bytes a step's peak may reach; None derives it from the device (see above).
            An explicit budget is used as given (no fragmentation allowance unless ``fragmentation_bytes``).
        measure: ``measure(batch_size) -> peak_bytes``, called after ``step_fn(batch_size)``, replaces the
            torch measurement: for tests, or a framework other than PyTorch. Needs ``budget_bytes``.
        fragmentation_bytes: overrides the fragmentation allowance.
        verify: run the verification step (on by default).
        reduce: ``reduce(value) -> int``, the minimum over ranks (see :func:`ferry.torch_min_reduce`).
        advisor: a :class:`~ferry.BatchSizeAdvisor` to fill (its observations join the fit); by default a
            new one, closed when the AutoBatch is.

    After :meth:`find`: :attr:`batch_size`, :attr:`trials`, :attr:`observations`, :attr:`elapsed_s`,
    :attr:`fit`, :attr:`budget_bytes`, :attr:`non_torch_bytes`, :attr:`fragmentation_bytes`,
    :attr:`probe_oom` and :meth:`report`.
    """

    def __init__(self, step_fn: Callable[[int], Any], device: int = 0, multiple: int = 8,
                 probes: Sequence[int] = (8, 16), headroom: float = 0.02, max_batch: Optional[int] = None,
                 budget_bytes: Optional[int] = None, *, measure: Optional[Callable[[int], int]] = None,
                 fragmentation_bytes: Optional[int] = None, verify: bool = True,
                 reduce: Optional[Callable[[int], int]] = None,
                 advisor: Optional[BatchSizeAdvisor] = None) -> None:
        if not callable(step_fn):
            raise TypeError("step_fn must be callable as step_fn(batch_size)")
        if measure is not None and not callable(measure):
            raise TypeError("measure must be callable as measure(batch_size) -> peak_bytes")
        if reduce is not None and not callable(reduce):
            raise TypeError("reduce must be callable as reduce(value) -> int")
        self.step_fn = step_fn
        self.device = _as_int(device, "device")
        self.multiple = _as_int(multiple, "multiple")
        if self.multiple < 1:
            raise _invalid(f"multiple must be >= 1, got {self.multiple}")
        sizes = sorted({_as_int(p, "probe size") for p in probes})
        if len(sizes) < 2:
            raise _invalid(f"probes must hold two distinct sizes at least, got {list(probes)!r}")
        if sizes[0] <= 0:
            raise _invalid(f"probe sizes must be > 0, got {sizes[0]}")
        self.probes: Tuple[int, ...] = tuple(sizes)
        self.headroom = float(headroom)
        if not 0.0 <= self.headroom < 1.0:
            raise _invalid(f"headroom must be in [0, 1), got {headroom!r}")
        self.max_batch = None if max_batch is None else _as_int(max_batch, "max_batch")
        if self.max_batch is not None and self.max_batch <= 0:
            raise _invalid(f"max_batch must be > 0, got {self.max_batch}")
        self._given_budget = None if budget_bytes is None else _as_int(budget_bytes, "budget_bytes")
        if self._given_budget is not None and self._given_budget <= 0:
            raise _invalid(f"budget_bytes must be > 0, got {self._given_budget}")
        if measure is None and self._given_budget is None:
            pass  # the budget comes from torch at find()
        if measure is not None and self._given_budget is None:
            raise _invalid("AutoBatch(measure=...) needs budget_bytes: without torch there is no device to ask")
        self.measure = measure
        self._frag_override = (None if fragmentation_bytes is None
                               else _as_int(fragmentation_bytes, "fragmentation_bytes"))
        if self._frag_override is not None and self._frag_override < 0:
            raise _invalid(f"fragmentation_bytes must be >= 0, got {self._frag_override}")
        self.verify = bool(verify)
        self.reduce = reduce
        self._own_advisor = advisor is None
        self.advisor = advisor if advisor is not None else BatchSizeAdvisor(self.multiple)
        self._reset()

    def _reset(self) -> None:
        self.batch_size: Optional[int] = None
        self.trials: List[Trial] = []
        self.observations: List[Tuple[int, int]] = []
        self.elapsed_s = 0.0
        self.fit: Optional[AdvisorFit] = None
        self.budget_bytes: Optional[int] = self._given_budget
        self.total_bytes: Optional[int] = None
        self.non_torch_bytes = 0
        self.fragmentation_bytes = 0
        self._gap = 0
        self._ran: List[int] = []  # sizes that ran, in order
        self._ooms: List[int] = []
        self.notes: List[str] = []

    # --- measurement ------------------------------------------------------------------------------------------

    def _torch(self) -> Any:
        try:
            import torch
        except ImportError:
            raise ImportError("AutoBatch measures with torch.cuda; "
                              "without torch pass measure= and budget_bytes=") from None
        if not torch.cuda.is_available():
            raise _invalid("torch.cuda is not available: pass measure= and budget_bytes= to run without a GPU")
        return torch

    def _non_torch(self, torch: Any) -> None:
        free, total = torch.cuda.mem_get_info(self.device)
        self.total_bytes = int(total)
        other = int(total) - int(free) - int(torch.cuda.memory_reserved(self.device))
        self.non_torch_bytes = max(self.non_torch_bytes, other)

    def _trial(self, b: int, phase: str) -> Optional[int]:
        """Runs one step at b; returns its peak, or None when it ran out of memory (reported to the advisor)."""
        torch = None if self.measure is not None else self._torch()
        t0 = time.perf_counter()
        oom = False
        peak: Optional[int] = None
        try:
            if torch is not None:
                # From an empty cache, so that the reserved peak shows this size's fragmentation, not
                # blocks cached by an earlier step.
                torch.cuda.empty_cache()
                torch.cuda.synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
                self.step_fn(b)
                torch.cuda.synchronize(self.device)
                peak = int(torch.cuda.max_memory_allocated(self.device))
                self._gap = max(self._gap, int(torch.cuda.max_memory_reserved(self.device)) - peak)
            else:
                self.step_fn(b)
                peak = _as_int(self.measure(b), "measure(batch_size)")  # type: ignore[misc]
        except BaseException as exc:  # noqa: BLE001 - only out-of-memory errors are handled
            if not _is_oom(exc):
                raise
            oom = True
            # Leaving the except block drops the exception and its traceback: the frames that held the
            # failed step's tensors.
        if oom:
            if torch is not None:
                gc.collect()
                torch.cuda.synchronize(self.device)
                torch.cuda.empty_cache()
            self.advisor.report_oom(b)
            self._ooms.append(b)
        else:
            if torch is not None:
                self._non_torch(torch)
            if peak is None or peak <= 0:
                raise _invalid(f"the measured peak at batch size {b} is {peak}; it must be > 0")
            self.advisor.observe(b, peak)
            self.observations.append((b, peak))
            self._ran.append(b)
        self.trials.append(Trial(b, phase, peak if not oom else None, oom, time.perf_counter() - t0))
        return None if oom else peak

    def _budget(self) -> int:
        if self._given_budget is not None:
            self.fragmentation_bytes = self._frag_override or 0
            return max(1, self._given_budget - self.fragmentation_bytes)
        assert self.total_bytes is not None
        if self._frag_override is not None:
            self.fragmentation_bytes = self._frag_override
        else:
            cap = int(FRAGMENTATION_MAX_FRACTION * self.total_bytes)
            self.fragmentation_bytes = max(FRAGMENTATION_MIN_BYTES, min(self._gap, cap))
        return max(1, self.total_bytes - self.non_torch_bytes - self.fragmentation_bytes)

    def _recommend(self) -> int:
        """The advisor's recommendation against the current budget (local: no reduction), capped at
        max_batch."""
        self.budget_bytes = self._budget()
        r = self.advisor.recommend(self.budget_bytes, self.headroom)
        if self.max_batch is not None:
            r = min(r, self.max_batch)
        return r

    def _ceiling(self) -> Optional[int]:
        return min(self._ooms) if self._ooms else None

    def _below_ceiling(self, b: int) -> bool:
        c = self._ceiling()
        return c is None or b < c

    # --- the search --------------------------------------------------------------------------------------------

    def find(self) -> int:
        """Runs the probes and returns the batch size to train with (also kept in :attr:`batch_size`).

        Raises:
            OutOfMemoryError: (ferry's) not even a batch of one ran.
            InvalidArgumentError: a measured peak that is not > 0, or a model the advisor refuses (memory
                that does not grow with the batch even after larger probes).
        """
        self._reset()
        t0 = time.perf_counter()
        torch = None
        if self.measure is None:
            torch = self._torch()
            self._non_torch(torch)
        try:
            self.batch_size = self._search()
        finally:
            if torch is not None:
                torch.cuda.empty_cache()
            self.elapsed_s = time.perf_counter() - t0
            try:
                self.fit = self.advisor.fit()
            except FerryError:
                self.fit = None
        return self.batch_size

    def _search(self) -> int:
        # 1. the probes, smallest first; past an OOM, larger probes are skipped
        for b in self.probes:
            if self.max_batch is not None and b > self.max_batch:
                continue
            if not self._below_ceiling(b):
                break
            self._trial(b, "probe")
        self._back_off()
        ran = sorted(set(self._ran))
        if len(ran) < 2:
            if ran:
                self.notes.append(f"only batch size {ran[0]} ran: it is the answer")
                return self._reduced(ran[0])
            raise _out_of_memory("not even a batch of one ran without running out of memory")

        # 2. the model needs memory that grows with the batch: double the largest size until it does
        r0 = self._first_recommendation()
        if r0 is None:
            return self._reduced(self._largest_safe())

        # 3. refine at about half of the predicted maximum, at most 16x the largest size that ran, until
        #    the largest size that ran is a quarter of the prediction at least
        r = r0
        for _ in range(_MAX_REFINE):
            top = max(self._ran)
            if top * 4 >= r:
                break
            nxt = min(r // 2, top * _LEVER_GROWTH) // self.multiple * self.multiple
            if nxt <= top or not self._below_ceiling(nxt):
                break
            peak = self._trial(nxt, "refine")
            try:
                r = self._recommend()
            except InvalidArgumentError as exc:
                self.notes.append(f"no recommendation after the refinement ({exc.message}); "
                                  "the largest safe size is used")
                return self._reduced(self._largest_safe())
            if peak is None:
                break

        # 4. verify
        if self.verify:
            r = self._verified(r)
        return self._reduced(r)

    def _back_off(self) -> None:
        """After an OOM among the probes: halve below the smallest OOM until two distinct sizes ran."""
        while len(set(self._ran)) < 2:
            c = self._ceiling()
            nxt = (c if c is not None else min(self.probes)) // 2
            while nxt >= 1 and (nxt in self._ran or (self.max_batch is not None and nxt > self.max_batch)):
                nxt //= 2
            if nxt < 1:
                return
            self._trial(nxt, "probe")

    def _first_recommendation(self) -> Optional[int]:
        for _ in range(_MAX_GROW + 1):
            try:
                return self._recommend()
            except InvalidArgumentError as exc:
                fit = self.advisor.fit()
                if fit.per_sample_bytes > 0:
                    # a budget below the fixed cost: the probes themselves are at the limit
                    self.notes.append(f"no recommendation ({exc.message}); the largest safe size is used")
                    return None
                # memory that does not grow with the batch (noise over a short lever): a larger size
                nxt = max(self._ran) * 2
                if self.max_batch is not None:
                    nxt = min(nxt, self.max_batch)
                if nxt in self._ran or not self._below_ceiling(nxt):
                    raise
                self._trial(nxt, "probe")
        return self._recommend()

    def _largest_safe(self) -> int:
        """The largest size that ran with a peak inside the budget (the smallest that ran when none did)."""
        budget = self._budget() * (1.0 - self.headroom)
        inside = [b for b, p in self.observations if p <= budget]
        return max(inside) if inside else min(self._ran)

    def _verified(self, r: int) -> int:
        for _ in range(_MAX_VERIFY):
            if r in self._ran:
                return r
            peak = self._trial(r, "verify")
            if peak is not None:
                try:
                    again = self._recommend()
                except InvalidArgumentError:
                    return r
                # never above the size that ran; lower when the new point shows the curve bending upwards
                return min(r, again)
            # Out of memory: the advisor's ceiling keeps recommendations below r, one multiple at a time;
            # the next verification goes halfway down to the largest size that ran.
            lo = max(self._ran)
            mid = lo + (r - lo) // 2
            mid = max(lo, mid // self.multiple * self.multiple)
            try:
                r = min(self._recommend(), mid)
            except InvalidArgumentError:
                break
        self.notes.append("verification kept running out of memory; the largest size that ran is used")
        return max(b for b in self._ran if self._below_ceiling(b))

    def _reduced(self, b: int) -> int:
        if self.reduce is None:
            return b
        out = _as_int(self.reduce(b), "reduce(value)")
        if out <= 0:
            raise _invalid(f"the reduction across ranks returned {out}")
        return out

    # --- results ---------------------------------------------------------------------------------------------

    @property
    def probe_oom(self) -> bool:
        """True when any step of :meth:`find` ran out of memory."""
        return any(t.oom for t in self.trials)

    def report(self) -> Dict[str, Any]:
        """What :meth:`find` did, as plain data (JSON-ready)."""
        return {
            "batch_size": self.batch_size,
            "trials": len(self.trials),
            "elapsed_s": self.elapsed_s,
            "probe_oom": self.probe_oom,
            "budget_bytes": self.budget_bytes,
            "total_bytes": self.total_bytes,
            "non_torch_bytes": self.non_torch_bytes,
            "fragmentation_bytes": self.fragmentation_bytes,
            "headroom": self.headroom,
            "multiple": self.multiple,
            "observations": [list(o) for o in self.observations],
            "steps": [asdict(t) for t in self.trials],
            "fit": asdict(self.fit) if self.fit is not None else None,
            "notes": list(self.notes),
        }

    # --- lifetime --------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the advisor when the AutoBatch made it. Idempotent."""
        if self._own_advisor:
            self.advisor.close()

    def __enter__(self) -> "AutoBatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ferry.AutoBatch batch_size={self.batch_size} trials={len(self.trials)}>"
