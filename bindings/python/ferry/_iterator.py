"""The prefetching iterator, its batches, and :class:`Loader`, the training-loop face of both.

Everything here wraps the C API (``ferry_iterator_*``, ``ferry_batch_*``): the sampling, the gathering on
worker threads, the page-locked ring and the host-to-device copies all happen in the library.
"""

from __future__ import annotations

import ctypes
import re
import weakref
from ctypes import byref, c_int32, c_int64, c_void_p
from typing import Any, Dict, Iterator as TypingIterator, List, Mapping, Optional, Tuple, Union

from . import _lib
from ._device import device_count
from ._dlpack import DLPackField, _field_from_batch
from ._engine import CPU, Engine
from ._handle import _Owner
from ._errors import (FerryIOError, InternalError, Status, _as_int, _as_int32, _as_uint32, _check, _closed, _error,
                      _invalid)
from ._sources import ArraySource, Source, _format_exception
from ._transforms import STAGING_NAMES, Transform, staging_code, transform_array

__all__ = ["Iterator", "Batch", "Loader", "OptimizedDataLoader", "PrefetchLoader"]


def _parse_device(device: Any) -> int:
    """None → the default GPU (LOCAL_RANK under torchrun, else 0) when one is visible, else the CPU;
    "cpu"/-1 → the CPU; "cuda[:N]"/N → GPU N."""
    if device is None:
        if device_count() == 0:
            return CPU
        opts = _lib.EngineOptions()
        _check(_lib.lib().ferry_engine_options_init(byref(opts)))  # LOCAL_RANK under torchrun, else 0
        return opts.device
    if isinstance(device, int) and not isinstance(device, bool):
        return CPU if device == CPU else _as_int32(device, "device")
    text = str(device).strip().lower()  # a string, or a torch.device
    if text == "cpu":
        return CPU
    m = re.fullmatch(r"(?:cuda|gpu)(?::(\d+))?", text)
    if m:
        index = getattr(device, "index", None)
        return int(m.group(1)) if m.group(1) else (index if isinstance(index, int) else 0)
    raise _invalid(f"device {device!r}: use None, 'cpu', -1, a GPU index, or 'cuda:N'")


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
        return _field_from_batch(self._lib, self._h(), index, self._names[index], self, self._stream)

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


def _destroy_iterator(lib: ctypes.CDLL, handle: c_void_p, engine: Engine, source: Source) -> int:
    """Destroys an iterator handle. Holding the engine and the source here keeps both alive (and their
    own finalizers pending) until the iterator is gone: they must outlive it."""
    del engine, source
    return lib.ferry_iterator_destroy(handle)


_SAMPLE_RE = re.compile(r"for sample (\d+)")


class Iterator(_Owner):
    """A prefetching iterator over a source on an engine's device (``ferry_iterator_*``).

    :meth:`next` returns a :class:`Batch`, or None once at the end of each epoch (the call after it
    starts the next epoch). The order is a pure function of ``(seed, epoch, position)``; it does not
    depend on ``workers``. Sharding (``rank``, ``world_size``) follows torch's DistributedSampler.

    ``transforms`` maps source field names to layout transforms (:class:`~ferry.Normalize`,
    :class:`~ferry.ShiftTokens`, :class:`~ferry.PadSequences`); the batch's fields are then the transforms'
    outputs (:attr:`field_names`). ``staging`` is how samples cross to the device: ``"auto"`` (the fastest
    that applies), ``"gather"``, ``"dma"`` or ``"mapped"``; :attr:`staging` tells what was picked and why.
    ``pinned_budget`` is the most source memory, in bytes, the iterator may register with the driver for
    ``"dma"`` and ``"mapped"`` (None or 0: a quarter of RAM; negative: none).

    Ownership: the iterator owns its handle; :meth:`close` destroys it (release every batch first; the
    tensors of batches still held then point to freed memory). It keeps its engine and source alive.
    Call :meth:`next`, :meth:`restore` and :meth:`set_epoch` from one thread at a time.
    """

    def __init__(self, engine: Engine, source: Source, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, workers: int = 0, prefetch: int = 0, rank: Optional[int] = None,
                 world_size: Optional[int] = None, timeout_ms: int = 0,
                 transforms: Optional[Mapping[str, Transform]] = None, staging: Any = "auto",
                 pinned_budget: Optional[int] = None) -> None:
        self._handle: Optional[c_void_p] = None
        if not isinstance(source, Source):
            raise TypeError(f"source must be a ferry source, not {type(source).__name__}")
        lib = _lib.lib()
        self._lib = lib
        opts = _lib.IteratorOptions()
        _check(lib.ferry_iterator_options_init(byref(opts)))
        opts.flags = (_lib.FERRY_ITERATOR_F_SHUFFLE if shuffle else 0) | (
            _lib.FERRY_ITERATOR_F_DROP_LAST if drop_last else 0)
        opts.batch_size = _as_int(batch_size, "batch_size")
        opts.seed = _as_int(seed, "seed") & (2**64 - 1)
        opts.workers = _as_int32(workers, "workers")
        opts.prefetch = _as_int32(prefetch, "prefetch")
        if world_size is None:
            # 0: the library reads RANK and WORLD_SIZE from the live environment (torchrun), else one rank.
            if rank is not None:
                raise _invalid("rank was given without world_size")
            opts.world_size, opts.rank = 0, 0
        else:
            opts.world_size = _as_int32(world_size, "world_size")
            opts.rank = _as_int32(rank if rank is not None else 0, "rank")
        opts.timeout_ms = _as_uint32(timeout_ms, "timeout_ms")
        # The array and the C strings it points to stay alive in these locals until the call returns; the
        # library copies them.
        array, count, names = transform_array(transforms)
        if array is not None:
            opts.transforms = ctypes.cast(array, ctypes.POINTER(_lib.Transform))
        opts.num_transforms = count
        opts.staging = _as_int32(staging_code(staging), "staging")
        budget = 0 if pinned_budget is None else _as_int(pinned_budget, "pinned_budget")
        if not -(2**63) <= budget < 2**63:
            raise _invalid(f"pinned_budget {budget} does not fit int64_t")
        opts.pinned_budget = budget
        handle = c_void_p()
        _check(lib.ferry_iterator_create(engine._h(), source._h(), byref(opts), byref(handle)))
        del array, names
        self._own(handle, _destroy_iterator, lib, handle, engine, source)
        self.engine = engine
        self.source = source
        self.transforms: Dict[str, Transform] = dict(transforms) if transforms else {}
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

    def close(self) -> None:
        """Stops prefetching and frees the ring. Idempotent."""
        super().close()

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
        with the Python exception as ``__cause__``); the iterator stays usable.
        """
        out = c_void_p()
        status = self._lib.ferry_iterator_next(self._h(), c_void_p(int(stream)) if stream else None, byref(out))
        if status == _lib.FERRY_END_OF_EPOCH:
            return None
        if status:
            err = _error(status)
            if isinstance(err, FerryIOError):
                self._explain(err)
            raise err
        return Batch(self, out, int(stream) if stream else None)

    def _explain(self, err: FerryIOError) -> None:
        m = _SAMPLE_RE.search(err.message)
        cause = self.source._python_error(int(m.group(1))) if m else None
        if cause is not None:
            err.message = f"{err.message}; the Python sample function raised {_format_exception(cause)}"
            err.strerror = err.message
            err.__cause__ = cause

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
        pos.epoch = _as_int(epoch, "epoch")
        pos.batch = _as_int(batch, "batch")
        pos.offset = _as_int(offset, "offset")
        pos.world_size = _as_int(world_size, "world_size")
        if pos.epoch != epoch or pos.batch != batch or pos.offset != offset:
            raise _invalid(f"position ({epoch}, {batch}, {offset}) is out of range")
        _check(self._lib.ferry_iterator_restore(self._h(), byref(pos)))

    def restore_elastic(self, epoch: int, consumed: int) -> None:
        """Continues a job from its global position (``state()["epoch"]`` and ``["consumed"]``, from any
        rank) under this iterator's world size, which may differ from the one it was saved under: every
        remaining sample of the epoch comes once across the ranks (``ferry_iterator_restore_elastic``)."""
        e, c = _as_int(epoch, "epoch"), _as_int(consumed, "consumed")
        if e != epoch or c != consumed or e < 0:
            raise _invalid(f"elastic position ({epoch}, {consumed}) is out of range")
        _check(self._lib.ferry_iterator_restore_elastic(self._h(), e, c))

    def set_epoch(self, epoch: int) -> None:
        """Starts epoch ``epoch`` from its first batch (like DistributedSampler.set_epoch)."""
        e = _as_int(epoch, "epoch")
        if e < 0:
            raise _invalid(f"epoch {e} is negative")
        _check(self._lib.ferry_iterator_set_epoch(self._h(), e))

    def __repr__(self) -> str:
        if self._handle is None:
            return "<ferry.Iterator closed>"
        return f"<ferry.Iterator {self._len} batches of {self.batch_size} over {self.source!r}>"


# --- the loader -------------------------------------------------------------------------------------


def _import(name: str) -> Any:
    try:
        return __import__(name)
    except Exception:  # ImportError, or a broken install: either way it is not usable
        return None


_OUTPUTS = ("torch", "numpy", "dlpack")


def _numpy_converter(from_dlpack: Any, copy: bool) -> Any:
    """The numpy output of :class:`Loader`: ``numpy.from_dlpack`` of each field, with a clear error for
    bfloat16, which numpy does not have."""

    def convert(f: DLPackField) -> Any:
        if f.dtype == "bfloat16":
            raise TypeError(f"batch field {f.name!r} is bfloat16, which numpy does not have: use output='torch' "
                            "or output='dlpack' (DLPackField.to_memoryview() gives its raw uint16 words), or "
                            "a float16 or float32 transform")
        a = from_dlpack(f)
        return a.copy() if copy else a

    return convert


class Loader:
    """Batches for a training loop: ``for batch in Loader(source, 256, shuffle=True): ...``.

    Each iteration of ``for batch in loader`` yields the batches up to the end of the current epoch;
    each batch is a dict {field name: tensor}. Tensors are torch tensors (``torch.from_dlpack``) when
    torch is importable, else numpy arrays (``numpy.from_dlpack``, on the CPU), else the
    :class:`~ferry.DLPackField` objects themselves; ``output="torch"|"numpy"|"dlpack"`` picks one
    (numpy has no bfloat16: such a field needs torch or ``"dlpack"``).

    ``source``: a ferry source, or a dict of arrays (wrapped in an :class:`~ferry.ArraySource`, no copy).
    ``device``: None picks GPU 0 when one is visible, else the CPU; ``"cpu"`` or -1 the CPU; an int or
    ``"cuda:N"`` that GPU. ``workers`` (0: min(cores, 16)) gather threads, ``prefetch`` (2..64; 0: 4)
    batches in flight. ``rank``/``world_size`` shard like torch's DistributedSampler (None reads
    RANK/WORLD_SIZE when set). ``timeout_ms`` bounds one wait (0: 5 minutes).

    ``transforms`` lays fields out on the device right after the copy (on the host on the CPU), e.g.
    ``transforms={"image": ferry.Normalize(mean, std, dtype="float16")}``; the batch's keys are then the
    transforms' outputs. ``staging`` (``"auto"``, ``"gather"``, ``"dma"``, ``"mapped"``) and
    ``pinned_budget`` are those of :class:`Iterator`.

    Zero copy: the tensors are views of ferry's ring of ``prefetch`` batches, whose slots are reused in
    turn; a slot is refilled only when every tensor of its batch has been freed. So a batch must be let
    go within ``prefetch`` batches: holding the tensors of ``prefetch`` batches (or keeping one batch
    while ``prefetch`` more are fetched) stalls the loader, and the fetch then fails with
    :class:`~ferry.FerryTimeoutError` after ``timeout_ms``. To keep tensors longer, pass ``copy=True``:
    each field is cloned and its slot given back at once (a copy per batch). With torch on a GPU, batches are
    ordered on ``torch.cuda.current_stream(device)`` at the time each batch is fetched.

    Resume: :meth:`state_dict` / :meth:`load_state_dict` give and take ``{"epoch", "batch"}``; the next
    loop continues from there, bit for bit. A loop left early (``break``) is continued by the next one
    from where it stopped; :meth:`set_epoch` starts an epoch from its beginning.

    Ownership: the loader owns its engine and iterator (and a source it built from a dict);
    :meth:`close` (or leaving a ``with`` block) destroys them; garbage collection does as a backstop.
    """

    def __init__(self, source: Union[Source, Mapping[str, Any]], batch_size: int, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False, workers: int = 0, prefetch: int = 0,
                 device: Any = None, rank: Optional[int] = None, world_size: Optional[int] = None,
                 timeout_ms: int = 0, copy: bool = False, output: Optional[str] = None,
                 transforms: Optional[Mapping[str, Transform]] = None, staging: Any = "auto",
                 pinned_budget: Optional[int] = None) -> None:
        self._iterator: Optional[Iterator] = None
        self._owned_source: Optional[Source] = None
        self._engine: Optional[Engine] = None
        if isinstance(source, Mapping):
            source = self._owned_source = ArraySource(source)
        elif not isinstance(source, Source):
            raise TypeError(f"Loader takes a ferry source or a dict of arrays, not {type(source).__name__}")
        try:
            self.device = dev = _parse_device(device)
            self.copy = bool(copy)
            self._setup_output(output)
            self._engine = Engine(dev, sample_interval_ms=0)
            self._iterator = Iterator(self._engine, source, batch_size, shuffle=shuffle, seed=seed,
                                      drop_last=drop_last, workers=workers, prefetch=prefetch, rank=rank,
                                      world_size=world_size, timeout_ms=timeout_ms, transforms=transforms,
                                      staging=staging, pinned_budget=pinned_budget)
        except BaseException:
            self.close()
            raise
        self.source = source
        self.batch_size = self._iterator.batch_size
        self._settings = dict(shuffle=shuffle, seed=seed, drop_last=drop_last, workers=workers, prefetch=prefetch,
                              rank=rank, world_size=world_size, timeout_ms=timeout_ms, output=self.output,
                              transforms=transforms, staging=staging, pinned_budget=pinned_budget)

    def _setup_output(self, output: Optional[str]) -> None:
        on_gpu = self.device != CPU
        torch = np = None
        if output is None or output == "auto":
            torch = _import("torch")
            if torch is not None:
                output = "torch"
            else:
                np = None if on_gpu else _import("numpy")
                output = "numpy" if np is not None else "dlpack"
        elif output == "torch":
            torch = _import("torch")
            if torch is None:
                raise ImportError("Loader(output='torch') needs torch")
        elif output == "numpy":
            if on_gpu:
                raise _invalid("Loader(output='numpy') works on the CPU only (numpy arrays live in host memory)")
            np = _import("numpy")
            if np is None:
                raise ImportError("Loader(output='numpy') needs numpy")
        elif output != "dlpack":
            raise _invalid(f"output {output!r} is not one of {_OUTPUTS}")
        self.output = output
        self._stream_fn = None
        copy = self.copy
        if output == "torch":
            from_dlpack = torch.from_dlpack
            self._convert = (lambda f: from_dlpack(f).clone()) if copy else from_dlpack
            if on_gpu:
                current_stream = torch.cuda.current_stream
                dev = torch.device("cuda", self.device)
                self._stream_fn = lambda: current_stream(dev).cuda_stream
        elif output == "numpy":
            self._convert = _numpy_converter(np.from_dlpack, copy)
        else:
            if copy and on_gpu:
                raise _invalid("Loader(copy=True) on a GPU needs torch")
            self._convert = (lambda f: f.to_memoryview()) if copy else (lambda f: f)

    # --- lifetime -----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Destroys the iterator, the engine, and a source the loader built. Idempotent. Tensors of the
        loader's batches still held afterwards point to freed memory: free them first."""
        it, self._iterator = self._iterator, None
        eng, self._engine = self._engine, None
        src, self._owned_source = self._owned_source, None
        try:
            if it is not None:
                it.close()
        finally:
            try:
                if eng is not None:
                    eng.close()
            finally:
                if src is not None:
                    src.close()

    @property
    def closed(self) -> bool:
        return self._iterator is None

    def __enter__(self) -> "Loader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _it(self) -> Iterator:
        it = self._iterator
        if it is None:
            raise _closed(type(self).__name__)
        return it

    @property
    def iterator(self) -> Iterator:
        """The underlying :class:`~ferry.Iterator` (batches with their indices, explicit release)."""
        return self._it()

    @property
    def staging(self) -> Tuple[str, str]:
        """``(strategy, reason)``: how samples cross to the device; see :attr:`Iterator.staging`."""
        return self._it().staging

    # --- iteration ----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Batches per epoch (on this rank)."""
        return len(self._it())

    def __iter__(self) -> TypingIterator[Dict[str, Any]]:
        it = self._it()
        stream_fn = self._stream_fn
        while True:
            batch = it.next(stream_fn() if stream_fn is not None else None)
            if batch is None:
                return
            # Yielded straight from the call: a suspended generator (a loop left with break and kept)
            # then holds no reference to the batch's tensors.
            yield self._take(batch)

    def _take(self, batch: Batch) -> Dict[str, Any]:
        """Converts every field of the batch, then drops the handle's reference."""
        convert = self._convert
        try:
            return {name: convert(batch.field(i)) for i, name in enumerate(batch._names)}
        finally:
            batch.release()

    def set_epoch(self, epoch: int) -> None:
        """Starts epoch ``epoch`` from its first batch; the next loop yields it."""
        self._it().set_epoch(epoch)

    @property
    def epoch(self) -> int:
        """The epoch of the next batch."""
        return self._it().state()["epoch"]

    def state_dict(self) -> Dict[str, int]:
        """The position of the next batch (see :meth:`Iterator.state`): every rank of a job returns the
        same dict, and any one of them resumes every rank."""
        return self._it().state()

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resumes from :meth:`state_dict`. Under the world size it was saved under, the batches that follow
        are bit for bit those that would have come; under another (a job restarted with more or fewer
        ranks), the rest of the epoch is sharded among the new ranks, every remaining sample once
        (:meth:`Iterator.restore_elastic`). A dict with only "epoch" and "batch" (an older state) resumes
        exactly."""
        try:
            epoch, batch = state["epoch"], state["batch"]
        except (KeyError, TypeError):
            raise _invalid(f"state {state!r} must be a dict with 'epoch' and 'batch'") from None
        it = self._it()
        saved = state.get("world_size", 0) or 0
        if saved and saved != it.state()["world_size"]:
            it.restore_elastic(epoch, state["consumed"])
        else:
            it.restore(epoch, batch, state.get("offset", 0) or 0, saved)

    def __repr__(self) -> str:
        if self._iterator is None:
            return f"<ferry.{type(self).__name__} closed>"
        dev = "cpu" if self.device == CPU else f"cuda:{self.device}"
        return (f"<ferry.{type(self).__name__} {len(self)} batches of {self.batch_size} on {dev}, "
                f"output={self.output}>")


class OptimizedDataLoader(Loader):
    """A :class:`Loader` with torch DataLoader's argument names (the seed's façade).

    ``dataset_or_arrays`` is a dict of arrays or a ferry source. ``num_workers`` becomes ``workers`` (0:
    ferry picks), ``prefetch_factor`` becomes ``prefetch`` (at least 2). ``pin_memory`` is accepted and
    needs nothing: ferry always stages through page-locked memory on a GPU. Other keywords go to
    :class:`Loader`.
    """

    def __init__(self, dataset_or_arrays: Union[Source, Mapping[str, Any]], batch_size: int = 32,
                 shuffle: bool = False, num_workers: int = 0, pin_memory: bool = True, prefetch_factor: int = 2,
                 drop_last: bool = False, **kw: Any) -> None:
        del pin_memory
        prefetch = _as_int(prefetch_factor if prefetch_factor is not None else 2, "prefetch_factor")
        super().__init__(dataset_or_arrays, batch_size, shuffle=shuffle, drop_last=drop_last,
                         workers=num_workers, prefetch=max(2, prefetch), **kw)


class PrefetchLoader(Loader):
    """A :class:`Loader` that delivers to ``device`` (the seed's façade).

    ``loader_or_source`` is a ferry source, a dict of arrays, or another :class:`Loader`, whose source and
    settings are reused (the other loader keeps its own position and stays open). Keywords go to
    :class:`Loader`.
    """

    def __init__(self, loader_or_source: Union[Loader, Source, Mapping[str, Any]], device: Any = None,
                 **kw: Any) -> None:
        if isinstance(loader_or_source, Loader):
            other = loader_or_source
            it = other._it()
            kw.setdefault("batch_size", other.batch_size)
            kw.setdefault("copy", other.copy)
            for key, value in other._settings.items():
                kw.setdefault(key, value)
            source: Union[Source, Mapping[str, Any]] = it.source
            self._parent = other  # keeps a source the other loader owns alive
        else:
            source = loader_or_source
        if "batch_size" not in kw:
            raise TypeError("PrefetchLoader needs batch_size when given a source")
        batch_size = kw.pop("batch_size")
        super().__init__(source, batch_size, device=device, **kw)
