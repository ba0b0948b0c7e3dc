"""The prefetching iterator and its batches; :class:`~ferry.Loader` (``_dataloader``) is their training-loop
face.

Everything here wraps the C API (``ferry_iterator_*``, ``ferry_batch_*``): the sampling, the gathering on
worker threads, the page-locked ring and the host-to-device copies all happen in the library.
"""

from __future__ import annotations

import ctypes
import re
import weakref
from ctypes import byref, c_int32, c_int64, c_void_p
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from . import _lib
from ._dlpack import DLPackField, _field_from_batch
from ._engine import Engine
from ._errors import (
    FerryIOError,
    InternalError,
    LimitError,
    Status,
    _as_epoch,
    _as_int,
    _as_int32,
    _as_int64,
    _as_uint32,
    _check,
    _closed,
    _error,
    _invalid,
)
from ._handle import _in_callback, _Owner
from ._sources import Source, _format_exception
from ._transforms import STAGING_NAMES, Transform, staging_code, transform_array

__all__ = ["Iterator", "Batch"]


# --- batches ----------------------------------------------------------------------------------------


def _release_batch(lib: ctypes.CDLL, handle: c_void_p) -> int:
    return lib.ferry_batch_release(handle, None)


class Batch:
    """One batch from :meth:`Iterator.next`. It owns the ``ferry_batch`` handle until :meth:`release`.

    :meth:`field` hands a field out as a :class:`~ferry.DLPackField` (no copy); each field holds the
    batch's memory until it, or the tensor a consumer built from it, is freed. :meth:`release` drops the
    handle's own reference (the fields stay valid); garbage collection does it as a backstop. The slot is
    refilled once the handle and every field are gone.
    """

    def __init__(self, iterator: "Iterator", handle: c_void_p, stream: Optional[int]) -> None:
        self._lib = iterator._lib
        self._handle: Optional[c_void_p] = handle
        self._names = iterator.field_names
        self._stream = stream
        self._finalizer = weakref.finalize(self, _release_batch, self._lib, handle)
        info = _lib.BatchProperties()
        info.size = ctypes.sizeof(info)
        _check(self._lib.ferry_batch_info(handle, byref(info)))
        self.epoch: int = info.epoch
        """The epoch the batch belongs to."""
        self.index: int = info.index
        """The batch's number within its epoch."""
        self.num_samples: int = info.num_samples
        """Samples in the batch (the last one may be short)."""
        if info.num_fields != len(self._names):
            self.release()
            raise InternalError(Status.INTERNAL, f"the batch has {info.num_fields} fields; the iterator expected "
                                f"{len(self._names)} ({self._names})", "FERRY_ERR_INTERNAL")

    def _h(self) -> c_void_p:
        h = self._handle
        if h is None:
            raise _closed("Batch (released)")
        return h

    @property
    def field_names(self) -> List[str]:
        return list(self._names)

    def __len__(self) -> int:
        return self.num_samples

    def indices(self) -> List[int]:
        """The source's sample indices of the batch, in batch order."""
        buf = (c_int64 * max(self.num_samples, 1))()
        _check(self._lib.ferry_batch_indices(self._h(), buf, len(buf)))
        return list(buf[: self.num_samples])

    def field(self, key: Union[int, str]) -> DLPackField:
        """Field ``key`` (an index or a name) as a :class:`~ferry.DLPackField`, with no copy."""
        if isinstance(key, str):
            try:
                index = self._names.index(key)
            except ValueError:
                raise KeyError(f"the batch has no field {key!r} (it has {self._names})") from None
        else:
            index = _as_int32(key, "field index")
            if not 0 <= index < len(self._names):
                raise IndexError(f"field index {index}; the batch has {len(self._names)} fields")
        return _field_from_batch(self._lib, self._h(), index, self._names[index], self._stream)

    def fields(self) -> Dict[str, DLPackField]:
        """Every field, by name."""
        return {name: self.field(i) for i, name in enumerate(self._names)}

    def wait(self, stream: int) -> None:
        """Makes CUDA ``stream`` wait for the batch's copy too (``ferry_batch_wait``)."""
        _check(self._lib.ferry_batch_wait(self._h(), c_void_p(int(stream) or None)))

    def release(self, stream: Optional[int] = None) -> None:
        """Drops the handle's reference (``ferry_batch_release``). ``stream`` (None: the stream given to
        ``next``) is the stream whose work uses the batch. Idempotent; fields handed out stay valid."""
        h = self._handle
        self._handle = None
        if h is None or not self._finalizer.alive:
            return
        self._finalizer.detach()
        _check(self._lib.ferry_batch_release(h, c_void_p(int(stream)) if stream else None))

    @property
    def released(self) -> bool:
        return self._handle is None

    def __enter__(self) -> "Batch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = " released" if self._handle is None else ""
        return f"<ferry.Batch epoch={self.epoch} index={self.index} samples={self.num_samples}{state}>"


# --- the iterator -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IteratorSettings:
    """The iterator's keyword arguments with their defaults, defined once: :class:`Iterator` and
    :class:`~ferry.Loader` take these names, their defaults are read from here (``_DEFAULTS``), and
    :meth:`options` checks the values and converts them to ``ferry_iterator_options``."""

    shuffle: bool = False
    seed: int = 0
    drop_last: bool = False
    workers: int = 0
    prefetch: int = 0
    rank: Optional[int] = None
    world_size: Optional[int] = None
    timeout_ms: int = 0
    transforms: Optional[Mapping[str, Transform]] = None
    staging: Any = "auto"
    pinned_budget: Optional[int] = None
    on_error: str = "raise"

    @classmethod
    def of(cls, arguments: Mapping[str, Any]) -> "IteratorSettings":
        """The settings among a call's arguments: ``locals()`` taken first thing in a function whose
        parameters include every setting."""
        return cls(**{f.name: arguments[f.name] for f in fields(cls)})

    def as_dict(self) -> Dict[str, Any]:
        """{name: value}, with the values as given (``dataclasses.asdict`` would deep-copy the transforms)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def options(self, lib: ctypes.CDLL, batch_size: int) -> Tuple[_lib.IteratorOptions, Any]:
        """The ``ferry_iterator_options`` of these settings and ``batch_size``, and what they point to (the
        transform array and its C strings), which must stay alive until ``ferry_iterator_create`` returns.
        Raises the argument errors of :class:`Iterator`."""
        opts = _lib.IteratorOptions()
        _check(lib.ferry_iterator_options_init(byref(opts)))
        opts.flags = (_lib.FERRY_ITERATOR_F_SHUFFLE if self.shuffle else 0) | (
            _lib.FERRY_ITERATOR_F_DROP_LAST if self.drop_last else 0)
        opts.batch_size = _as_int64(batch_size, "batch_size")
        opts.seed = _as_int(self.seed, "seed") & (2**64 - 1)
        opts.workers = _as_int32(self.workers, "workers")
        opts.prefetch = _as_int32(self.prefetch, "prefetch")
        if self.world_size is None:
            # 0: the library reads RANK and WORLD_SIZE from the live environment (torchrun), else one rank.
            if self.rank is not None:
                raise _invalid("rank was given without world_size")
            opts.world_size, opts.rank = 0, 0
        else:
            opts.world_size = _as_int32(self.world_size, "world_size")
            opts.rank = _as_int32(self.rank if self.rank is not None else 0, "rank")
        opts.timeout_ms = _as_uint32(self.timeout_ms, "timeout_ms")
        array, count, names = transform_array(self.transforms)
        if array is not None:
            opts.transforms = ctypes.cast(array, ctypes.POINTER(_lib.Transform))
        opts.num_transforms = count
        opts.staging = _as_int32(staging_code(self.staging), "staging")
        opts.pinned_budget = 0 if self.pinned_budget is None else _as_int64(self.pinned_budget, "pinned_budget")
        codes = {"raise": _lib.FERRY_ON_ERROR_RAISE, "skip": _lib.FERRY_ON_ERROR_SKIP}
        if self.on_error not in codes:
            raise _invalid(f"on_error {self.on_error!r} is not 'raise' or 'skip'")
        opts.on_error = codes[self.on_error]
        return opts, (array, names)


_DEFAULTS = IteratorSettings()


def _destroy_iterator(lib: ctypes.CDLL, handle: c_void_p, engine: Engine, source: Source) -> int:
    """Destroys an iterator handle. Holding the engine and the source here keeps both alive (and their
    own finalizers pending) until the iterator is gone: they must outlive it."""
    del engine, source
    return lib.ferry_iterator_destroy(handle)


# The longest one call into the library waits in Iterator.next before Python checks for signals.
_WAIT_SLICE_MS = 100

_SAMPLE_RE = re.compile(r"for sample (\d+)")

# The library's refusal when the caller holds every batch of the ring and it may not grow further says this;
# Python adds where such references hide.
_HELD_MARK = "still held by the caller"
_HELD_HINT = (". In Python a batch is held while anything references it or a tensor taken from it: the loop "
              "variable of an earlier or interrupted loop (`del batch`), a list of batches, an exception's traceback "
              "(`del err`); drop those references, or pass copy=True to keep copies of the data instead")


class Iterator(_Owner):
    """A prefetching iterator over a source on an engine's device (``ferry_iterator_*``).

    :meth:`next` returns a :class:`Batch`, or None once at the end of each epoch (the call after it
    starts the next epoch). The order is a pure function of ``(seed, epoch, position)``; it does not
    depend on ``workers``. Sharding (``rank``, ``world_size``) follows torch's DistributedSampler.

    ``transforms`` maps source field names to layout transforms (:class:`~ferry.Normalize`,
    :class:`~ferry.ShiftTokens`, :class:`~ferry.PadSequences`); the batch's fields are then the transforms'
    outputs (:attr:`field_names`). ``staging`` is how samples cross to the device: ``"auto"`` (the fastest
    that applies), ``"gather"``, ``"dma"`` or ``"mapped"``; :attr:`staging` tells what was picked and why.
    ``pinned_budget`` bounds, in bytes, what the iterator page-locks beyond its ring: the source memory it
    registers with the driver for ``"dma"`` and ``"mapped"``, and, separately, the slots the ring grows by when
    the caller keeps batches (None or 0: a quarter of RAM each; negative: none).

    ``on_error``: what a sample that fails to read or lay out (a corrupt image, a vanished file) does:
    ``"raise"`` fails its batch with an error naming it; ``"skip"`` puts the next readable sample in its
    place (the batch's indices say which) and counts it (:meth:`stats`, the monitor).

    Batches may be kept: when the caller holds the batch whose ring slot the next one needs, the ring grows by
    a slot instead of waiting; beyond ``pinned_budget``, :meth:`next` raises :class:`~ferry.LimitError` at
    once, naming the budget and the batches held.

    Ownership: the iterator owns its handle; :meth:`close` destroys it. Batches still held can then no
    longer be used (their calls raise), but the fields and tensors handed out stay valid: the memory of each
    batch is freed when the last of them is. It keeps its engine and source alive.
    Call :meth:`next`, :meth:`restore` and :meth:`set_epoch` from one thread at a time.
    """

    def __init__(self, engine: Engine, source: Source, batch_size: int, shuffle: bool = _DEFAULTS.shuffle,
                 seed: int = _DEFAULTS.seed, drop_last: bool = _DEFAULTS.drop_last, workers: int = _DEFAULTS.workers,
                 prefetch: int = _DEFAULTS.prefetch, rank: Optional[int] = _DEFAULTS.rank,
                 world_size: Optional[int] = _DEFAULTS.world_size, timeout_ms: int = _DEFAULTS.timeout_ms,
                 transforms: Optional[Mapping[str, Transform]] = _DEFAULTS.transforms, staging: Any = _DEFAULTS.staging,
                 pinned_budget: Optional[int] = _DEFAULTS.pinned_budget, on_error: str = _DEFAULTS.on_error) -> None:
        settings = IteratorSettings.of(locals())
        self._handle: Optional[c_void_p] = None
        if not isinstance(source, Source):
            raise TypeError(f"source must be a ferry source, not {type(source).__name__}")
        lib = _lib.lib()
        self._lib = lib
        # The options point to the transform array and its C strings (keep); the library copies them.
        opts, keep = settings.options(lib, batch_size)
        handle = c_void_p()
        _check(lib.ferry_iterator_create(engine._h(), source._h(), byref(opts), byref(handle)))
        del keep
        self._own(handle, _destroy_iterator, lib, handle, engine, source)
        self.engine = engine
        self.source = source
        self.transforms: Dict[str, Transform] = dict(settings.transforms) if settings.transforms else {}
        """The transforms given, by source field."""
        nf = c_int32()
        _check(lib.ferry_iterator_num_fields(handle, byref(nf)))
        names_out: List[str] = []
        for i in range(nf.value):
            fs = _lib.FieldStruct()
            _check(lib.ferry_iterator_field(handle, i, byref(fs)))
            names_out.append(fs.name.decode("utf-8"))
        self.field_names: List[str] = names_out
        """The batch's field names, in order: the source's fields, or their transforms' outputs
        (``ferry_iterator_field``)."""
        self.batch_size = opts.batch_size
        n = c_int64()
        _check(lib.ferry_iterator_len(handle, byref(n)))
        self._len = n.value
        self._tensor_buf = (c_void_p * max(len(names_out), 1))()
        self._tensor_info = _lib.BatchProperties()
        self._tensor_info.size = ctypes.sizeof(self._tensor_info)

    def close(self) -> None:
        """Stops prefetching and frees the ring. Idempotent. Raises InvalidArgumentError when called from
        inside the iterator's own CallbackSource function, which runs on a worker that the close would
        wait for."""
        self._refuse_in_own_callback("close()")
        super().close()

    def _refuse_in_own_callback(self, what: str) -> None:
        state = getattr(getattr(self, "source", None), "_state", None)
        if self._handle is not None and state is not None and _in_callback(state):
            raise _invalid(f"{what} was called from inside the sample function of the loader's own "
                           "CallbackSource, on the worker it would wait for; call it from the thread that "
                           "iterates (the function must only fill its sample)")

    @property
    def staging(self) -> Tuple[str, str]:
        """``(strategy, reason)``: how samples cross to the device (``"gather"``, ``"dma"`` or
        ``"mapped"``) and why it was picked, e.g. why it fell back to ``"gather"``
        (``ferry_iterator_staging``)."""
        code = c_int32()
        why = ctypes.create_string_buffer(1024)
        _check(self._lib.ferry_iterator_staging(self._h(), byref(code), why, len(why)))
        return STAGING_NAMES.get(code.value, str(code.value)), why.value.decode("utf-8", "replace")

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        self._h()
        return self._len

    def next(self, stream: Optional[int] = None) -> Optional[Batch]:
        """The next batch, or None at the end of an epoch.

        ``stream`` is the CUDA stream (an int, e.g. ``torch.cuda.current_stream().cuda_stream``) that will
        use the batch; ferry makes it wait for the batch's copy, so the host never waits. Ignored on the
        CPU. A sample the source cannot read raises (:class:`~ferry.FerryIOError` for a failed callback,
        with the Python exception as ``__cause__``); the iterator stays usable. Holding more batches than
        ``pinned_budget`` lets the ring grow by raises :class:`~ferry.LimitError` at once, and the batch
        stays the next one.
        """
        out = c_void_p()
        h, consumer, lib = self._h(), c_void_p(int(stream)) if stream else None, self._lib
        # The library waits in slices, so that Python runs its signal handlers in between: Ctrl-C raises
        # KeyboardInterrupt here within a slice, and the batch stays the next one. The slices continue
        # one wait: timeout_ms bounds it as a whole.
        while True:
            status = lib.ferry_iterator_next_wait(h, consumer, _WAIT_SLICE_MS, byref(out))
            if status or out.value:
                break
        if status == _lib.FERRY_END_OF_EPOCH:
            return None
        if status:
            self._raise(status)
        return Batch(self, out, int(stream) if stream else None)

    def _next_tensors(self, stream: Optional[int]) -> Optional[List[int]]:
        """The next batch's fields as ferry DLPack tensor addresses, in one library call per batch
        (``ferry_iterator_next_tensors``): the caller owns the tensors, which hold the batch. None at the end
        of an epoch. Errors as :meth:`next`."""
        lib, h = self._lib, self._h()
        consumer = c_void_p(int(stream)) if stream else None
        buf, info = self._tensor_buf, self._tensor_info
        ref = byref(info)
        while True:
            status = lib.ferry_iterator_next_tensors(h, consumer, _WAIT_SLICE_MS, buf, len(buf), ref)
            if status or info.num_fields:
                break
        if status == _lib.FERRY_END_OF_EPOCH:
            return None
        if status:
            self._raise(status)
        return buf[:info.num_fields]

    def _raise(self, status: int) -> None:
        """Raises the error of a failed next, with what Python adds: the sample function's exception, and
        where held batches hide."""
        err = _error(status)
        if isinstance(err, FerryIOError):
            self._explain(err)
        elif isinstance(err, LimitError) and _HELD_MARK in err.message:
            err.message += _HELD_HINT
            err.strerror = err.message
        raise err

    def _explain(self, err: FerryIOError) -> None:
        m = _SAMPLE_RE.search(err.message)
        cause = self.source._python_error(int(m.group(1))) if m else None
        if cause is not None:
            err.message = f"{err.message}; the Python sample function raised {_format_exception(cause)}"
            err.strerror = err.message
            err.__cause__ = cause

    def stats(self) -> Dict[str, float]:
        """``{"batches", "samples", "bytes", "stall_s", "skipped"}`` delivered so far (``ferry_iterator_stats``):
        the stall is the time :meth:`next` waited for data; ``skipped`` counts the samples that failed and
        were replaced (``on_error="skip"``)."""
        st = _lib.PipelineStats()
        st.size = ctypes.sizeof(st)
        _check(self._lib.ferry_iterator_stats(self._h(), byref(st)))
        return {"batches": st.batches, "samples": st.samples, "bytes": st.bytes, "stall_s": st.stall_ns / 1e9,
                "skipped": st.skipped}

    def state(self) -> Dict[str, int]:
        """The position of the next batch: ``{"epoch": e, "batch": b, "offset": o, "consumed": c,
        "world_size": w}``. ``b`` may equal ``len(self)`` (the epoch's end comes next); ``offset`` is
        non-zero only in an epoch resumed elastically; ``consumed`` is the job's global position (the
        samples of the epoch all ranks have consumed), the same on every rank."""
        pos = _lib.IteratorPosition()
        pos.size = ctypes.sizeof(pos)
        _check(self._lib.ferry_iterator_state(self._h(), byref(pos)))
        return {"epoch": pos.epoch, "batch": pos.batch, "offset": pos.offset, "consumed": pos.consumed,
                "world_size": pos.world_size}

    def restore(self, epoch: int, batch: int = 0, offset: int = 0, world_size: int = 0) -> None:
        """Moves to a position from :meth:`state`, in O(1); what follows is bit for bit what would have.
        A position taken under another world size is refused: use :meth:`restore_elastic`."""
        pos = _lib.IteratorPosition()
        pos.size = ctypes.sizeof(pos)
        pos.epoch = _as_epoch(epoch)
        pos.batch = _as_int64(batch, "batch")
        pos.offset = _as_int64(offset, "offset")
        pos.world_size = _as_int64(world_size, "world_size")
        _check(self._lib.ferry_iterator_restore(self._h(), byref(pos)))

    def restore_elastic(self, epoch: int, consumed: int) -> None:
        """Continues a job from its global position (``state()["epoch"]`` and ``["consumed"]``, from any
        rank) under this iterator's world size, which may differ from the one it was saved under: every
        remaining sample of the epoch comes once across the ranks (``ferry_iterator_restore_elastic``)."""
        e, c = _as_epoch(epoch), _as_int64(consumed, "consumed")
        _check(self._lib.ferry_iterator_restore_elastic(self._h(), e, c))

    def set_epoch(self, epoch: int) -> None:
        """Starts epoch ``epoch`` from its first batch (like DistributedSampler.set_epoch)."""
        _check(self._lib.ferry_iterator_set_epoch(self._h(), _as_epoch(epoch)))

    def __repr__(self) -> str:
        if self._handle is None:
            return "<ferry.Iterator closed>"
        return f"<ferry.Iterator {self._len} batches of {self.batch_size} over {self.source!r}>"
