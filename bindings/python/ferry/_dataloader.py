"""The training-loop face of the iterator: :class:`Loader`, which owns an engine and an iterator and yields
each batch as a dict of tensors, and the seed's façades :class:`OptimizedDataLoader` and
:class:`PrefetchLoader`.
"""

from __future__ import annotations

import functools
import re
import sys
from ctypes import byref
from typing import Any, Dict, Mapping, Optional, Tuple, Union
from typing import Iterator as TypingIterator

from . import _lib
from ._device import device_count
from ._dlpack import DLPackField, _capsules_to_torch, _Export
from ._engine import CPU, Engine
from ._errors import LimitError, _as_epoch, _as_int, _as_int32, _check, _closed, _invalid
from ._iterator import _DEFAULTS, Batch, Iterator, IteratorSettings
from ._sources import ArraySource, Source
from ._transforms import Transform

__all__ = ["Loader", "OptimizedDataLoader", "DatasetLoader", "PrefetchLoader"]


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


def _torch_stream_fn(torch: Any, device: int) -> Any:
    """The function that gives torch's current CUDA stream on ``device`` as an integer, called once a batch:
    torch's raw-stream getter where it has one (the one its compiled code calls; a ``torch.cuda.Stream``
    object and a device parse less per call), else ``current_stream(device).cuda_stream``."""
    current_stream = torch.cuda.current_stream
    dev = torch.device("cuda", device)
    public = lambda: current_stream(dev).cuda_stream  # noqa: E731
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if raw is None:
        return public
    try:
        if raw(device) != public():
            return public
    except Exception:
        return public
    return lambda: raw(device)


@functools.lru_cache(maxsize=None)
def _torch_capsule_path() -> Any:
    """:func:`_capsules_to_torch` for the torch of this process, probed once."""
    return _capsules_to_torch(_import("torch"))


def _setup_output(output: Optional[str], device: int, copy: bool) -> Tuple[str, Any, Any]:
    """The output of a loader on ``device``: its name (None or "auto" picks torch when importable, else numpy
    on the CPU, else the DLPack fields), the conversion of each :class:`~ferry.DLPackField` (a clone per
    field with ``copy``), and the function that gives torch's current stream on a GPU (else None)."""
    on_gpu = device != CPU
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
    stream_fn = None
    if output == "torch":
        from_dlpack = torch.from_dlpack
        convert = (lambda f: from_dlpack(f).clone()) if copy else from_dlpack
        if on_gpu:
            stream_fn = _torch_stream_fn(torch, device)
    elif output == "numpy":
        convert = _numpy_converter(np.from_dlpack, copy)
    else:
        if copy and on_gpu:
            raise _invalid("Loader(copy=True) on a GPU needs torch")
        convert = (lambda f: f.to_memoryview()) if copy else (lambda f: f)
    return output, convert, stream_fn


#: The keys of a state dict (Iterator.state, Loader.state_dict); "epoch" and "batch" are required.
_STATE_KEYS = ("epoch", "batch", "offset", "consumed", "world_size")


def _check_state(state: Any) -> Dict[str, Optional[int]]:
    """Checks a state dict for load_state_dict: a mapping with only the keys of :data:`_STATE_KEYS`,
    "epoch" and "batch" present, every value an int >= 0 (None, like a missing optional key, is absent).
    Returns each key's value, None where absent; an error names the key at fault."""
    if not isinstance(state, Mapping):
        raise _invalid(f"state must be the dict state_dict() returns, not {type(state).__name__}")
    unknown = [k for k in state if k not in _STATE_KEYS]
    if unknown:
        raise _invalid(f"state has unknown keys {unknown!r}; state_dict() gives {list(_STATE_KEYS)!r}")
    missing = [k for k in ("epoch", "batch") if state.get(k) is None]
    if missing:
        raise _invalid(f"state {dict(state)!r} lacks {' and '.join(repr(k) for k in missing)}; it must have "
                       "'epoch' and 'batch' (from state_dict())")
    out: Dict[str, Optional[int]] = {}
    for k in _STATE_KEYS:
        v = state.get(k)
        if v is not None and k == "epoch":
            v = _as_epoch(v, "state['epoch'], the epoch")
        elif v is not None:
            v = _as_int(v, f"state[{k!r}]")
            if v < 0:
                raise _invalid(f"state[{k!r}] is {v}; it must be >= 0")
        out[k] = v
    return out


def _loader_engine(device: int) -> Engine:
    """A loader's own engine; when the process has as many engines as the library allows, the error says
    that each loader owns one and how to share one instead."""
    try:
        return Engine(device, sample_interval_ms=0)
    except LimitError as err:
        err.message += (". Each ferry.Loader owns an engine unless it is given one: close the loaders you are "
                        "done with (loader.close(), or a with block), or share one engine per device among them: "
                        "engine = ferry.Engine(device); ferry.Loader(source, batch_size, engine=engine), closing the "
                        "engine after its loaders")
        err.strerror = err.message
        raise


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
    turn; a slot is refilled only when every tensor of its batch has been freed. Batches may be kept
    (``batches = list(loader)``): when the next batch needs the slot of a batch still held, the ring grows by
    a slot, within ``pinned_budget`` (a quarter of RAM by default); beyond it the fetch raises
    :class:`~ferry.LimitError` at once. Slots given back are reused, so a loop that keeps batches for a while
    grows the ring once. ``copy=True`` clones each field and gives its slot back at once (a copy per batch).
    With torch on a GPU, batches are ordered on ``torch.cuda.current_stream(device)`` at the time each batch is fetched.

    Resume: :meth:`state_dict` / :meth:`load_state_dict` give and take ``{"epoch", "batch"}``; the next
    loop continues from there, bit for bit. A loop left early (``break``) is continued by the next one
    from where it stopped; :meth:`set_epoch` starts an epoch from its beginning.

    ``engine``: a :class:`~ferry.Engine` to build the loader's iterator on, shared with other loaders (its
    device is the loader's; ``device`` may be left out). Without one each loader opens an engine of its own,
    and a process may have at most ``FERRY_MAX_ENGINES`` (256) engines alive: many loaders at once need a
    shared engine. The loaders of a shared engine share its pools and its memory figures.

    Ownership: the loader owns its iterator, its engine unless one was given (a given engine is the
    caller's to close, after its loaders), and a source it built from a dict; :meth:`close` (or leaving a
    ``with`` block) destroys them; garbage collection does as a backstop.
    """

    def __init__(self, source: Union[Source, Mapping[str, Any]], batch_size: int, shuffle: bool = _DEFAULTS.shuffle,
                 seed: int = _DEFAULTS.seed, drop_last: bool = _DEFAULTS.drop_last, workers: int = _DEFAULTS.workers,
                 prefetch: int = _DEFAULTS.prefetch, device: Any = None, rank: Optional[int] = _DEFAULTS.rank,
                 world_size: Optional[int] = _DEFAULTS.world_size, timeout_ms: int = _DEFAULTS.timeout_ms,
                 copy: bool = False, output: Optional[str] = None,
                 transforms: Optional[Mapping[str, Transform]] = _DEFAULTS.transforms, staging: Any = _DEFAULTS.staging,
                 pinned_budget: Optional[int] = _DEFAULTS.pinned_budget, engine: Optional[Engine] = None,
                 on_error: str = _DEFAULTS.on_error) -> None:
        settings = IteratorSettings.of(locals())
        self._iterator: Optional[Iterator] = None
        self._owned_source: Optional[Source] = None
        self._engine: Optional[Engine] = None  # owned: closed with the loader
        if isinstance(source, Mapping):
            source = self._owned_source = ArraySource(source)
        elif not isinstance(source, Source):
            raise TypeError(f"Loader takes a ferry source or a dict of arrays, not {type(source).__name__}")
        try:
            if engine is not None:
                if not isinstance(engine, Engine):
                    raise TypeError(f"engine must be a ferry.Engine, not {type(engine).__name__}")
                dev = engine.device
                if device is not None and _parse_device(device) != dev:
                    raise _invalid(f"device {device!r} differs from the engine's device {dev}")
                self.device = dev
            else:
                self.device = dev = _parse_device(device)
            self.copy = bool(copy)
            self.output, self._convert, self._stream_fn = _setup_output(output, dev,
                                                                        self.copy)
            if engine is None:
                engine = self._engine = _loader_engine(dev)
            self._iterator = Iterator(engine, source, batch_size, **settings.as_dict())
        except BaseException:
            self.close()
            raise
        self.source = source
        self.batch_size = self._iterator.batch_size
        # What PrefetchLoader reuses of this loader besides batch_size and copy.
        self._settings = dict(settings.as_dict(), output=self.output)

    # --- lifetime -----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Destroys the iterator, the engine, and a source the loader built. Idempotent. Tensors of the
        loader's batches still held stay valid: their memory is freed when the last of them is."""
        if self._iterator is not None:
            self._iterator._refuse_in_own_callback("Loader.close()")
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
        if self.output == "torch" and not self.copy:
            # One library call per batch hands every field out; each goes to torch without a Batch object,
            # as a capsule straight to torch where it takes one (_capsules_to_torch).
            names = it.field_names
            to_torch = _torch_capsule_path()
            dev = (_lib.kDLCUDA, self.device) if self.device != CPU else (_lib.kDLCPU, 0)
            while True:
                stream = stream_fn() if stream_fn is not None else None
                addrs = it._next_tensors(stream)
                if addrs is None:
                    return
                if to_torch is not None:
                    yield dict(zip(names, to_torch(addrs)))
                else:
                    yield self._take_tensors(names, addrs, stream, dev)
        while True:
            batch = it.next(stream_fn() if stream_fn is not None else None)
            if batch is None:
                return
            # Yielded straight from the call: a suspended generator (a loop left with break and kept)
            # then holds no reference to the batch's tensors.
            yield self._take(batch)

    def _take_tensors(self, names: Any, addrs: Any, stream: Optional[int], dev: Tuple[int, int]) -> Dict[str, Any]:
        """Converts the fields of :meth:`Iterator._next_tensors`. When a conversion fails, the tensors not yet
        converted are deleted at once (not with the exception's frames), so the batch goes back to the ring."""
        exports = [_Export(a, stream, dev) for a in addrs]
        convert = self._convert
        try:
            return {name: convert(e) for name, e in zip(names, exports)}
        except BaseException:
            for e in exports:
                e.__del__()
            exports.clear()
            raise

    def _take(self, batch: Batch) -> Dict[str, Any]:
        """Converts every field of the batch, then drops the handle's reference. When a conversion fails,
        nothing of the batch stays referenced (by the exception's traceback either): the fields taken are
        closed and the tensors made are dropped, so the failed batch's slot goes back to the ring."""
        convert = self._convert
        out: Dict[str, Any] = {}
        field: Optional[DLPackField] = None
        try:
            for i, name in enumerate(batch._names):
                field = batch.field(i)
                out[name] = convert(field)
                field = None
            return out
        except BaseException:
            if field is not None and not field.exported:
                field.close()
            field = None
            out.clear()
            raise
        finally:
            batch.release()

    def stats(self) -> Dict[str, float]:
        """``{"batches", "samples", "bytes", "stall_s"}`` delivered so far; see :meth:`Iterator.stats`."""
        return self._it().stats()

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
        s = _check_state(state)
        it = self._it()
        saved, current = s["world_size"] or 0, it.state()["world_size"]
        if saved and saved != current:
            if s["consumed"] is None:
                raise _invalid(f"state {dict(state)!r} was saved under world_size {saved} and this loader runs under "
                               f"{current}: resuming under another world size needs the state's 'consumed' (the "
                               "job's position, from state_dict()), which it lacks")
            it.restore_elastic(s["epoch"], s["consumed"])
        else:
            it.restore(s["epoch"], s["batch"], s["offset"] or 0, saved)

    def __repr__(self) -> str:
        if self._iterator is None:
            return f"<ferry.{type(self).__name__} closed>"
        dev = "cpu" if self.device == CPU else f"cuda:{self.device}"
        return (f"<ferry.{type(self).__name__} {len(self)} batches of {self.batch_size} on {dev}, "
                f"output={self.output}>")


def _torch_dataset(obj: Any) -> bool:
    """Whether obj is a torch Dataset (map-style or iterable); torch is not imported to find out."""
    data = sys.modules.get("torch.utils.data")
    return data is not None and isinstance(obj, data.Dataset)


class OptimizedDataLoader(Loader):
    """The seed's loader name, for what the seed gave it and for ferry's own inputs.

    Given a torch ``Dataset`` (map-style or iterable), it is a :class:`DatasetLoader`: the torch ``DataLoader``
    with the seed's settings (``num_workers``, ``prefetch_factor=2``, ``persistent_workers=True``; pinning is
    ferry's job), behind a :class:`~ferry.PrefetchLoader` that stages its batches onto the device;
    :meth:`DatasetLoader.create_loader` and :meth:`DatasetLoader.get_prefetch_loader` return the two.

    Given a dict of arrays or a ferry source, it is a :class:`Loader` with DataLoader's argument names:
    ``num_workers`` becomes ``workers`` (0: ferry picks), ``prefetch_factor`` becomes ``prefetch`` (at least
    2); ``pin_memory`` needs nothing (ferry always stages through page-locked memory on a GPU). Other
    keywords go to :class:`Loader`.
    """

    def __new__(cls, dataset_or_arrays: Any = None, *args: Any, **kw: Any) -> Any:
        if cls is OptimizedDataLoader and _torch_dataset(dataset_or_arrays):
            return DatasetLoader(dataset_or_arrays, *args, **kw)
        return super().__new__(cls)

    def __init__(self, dataset_or_arrays: Union[Source, Mapping[str, Any]], batch_size: int = 32,
                 shuffle: bool = _DEFAULTS.shuffle, num_workers: int = 0, pin_memory: bool = True,
                 prefetch_factor: int = 2, drop_last: bool = _DEFAULTS.drop_last, **kw: Any) -> None:
        del pin_memory
        prefetch = _as_int(prefetch_factor if prefetch_factor is not None else 2, "prefetch_factor")
        super().__init__(dataset_or_arrays, batch_size, shuffle=shuffle, drop_last=drop_last,
                         workers=num_workers, prefetch=max(2, prefetch), **kw)


class DatasetLoader:
    """A torch ``Dataset`` through ferry: the seed's ``OptimizedDataLoader(dataset, batch_size,
    num_workers=4)``. :meth:`create_loader` builds the torch ``DataLoader`` (once) with ``num_workers``
    worker processes, ``prefetch_factor`` and ``persistent_workers`` (when there are workers), without
    ``pin_memory`` (ferry copies each batch into its own page-locked ring); :meth:`get_prefetch_loader`
    returns the :class:`~ferry.PrefetchLoader` over it, on ``device`` with ``transforms``. Iterating this
    object iterates that prefetch loader. ``dataloader_kwargs`` (``collate_fn``, ``sampler``,
    ``worker_init_fn``, ...) go to the DataLoader."""

    def __init__(self, dataset: Any, batch_size: int = 32, shuffle: bool = False, num_workers: int = 4,
                 pin_memory: bool = True, prefetch_factor: Optional[int] = 2, drop_last: bool = False,
                 persistent_workers: bool = True, device: Any = None,
                 transforms: Optional[Mapping[Any, Transform]] = None, prefetch: int = 2,
                 pinned_budget: Optional[int] = None, output: Optional[str] = None,
                 **dataloader_kwargs: Any) -> None:
        del pin_memory  # ferry's ring is page-locked; a pinned copy in the DataLoader would be a second one
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = device
        self._dl_kwargs: Dict[str, Any] = dict(dataloader_kwargs, batch_size=batch_size, drop_last=drop_last,
                                               num_workers=num_workers)
        if "sampler" not in dataloader_kwargs and "batch_sampler" not in dataloader_kwargs:
            self._dl_kwargs["shuffle"] = shuffle
        if num_workers > 0:
            self._dl_kwargs["prefetch_factor"] = prefetch_factor
            self._dl_kwargs["persistent_workers"] = persistent_workers
        self._prefetch_kwargs: Dict[str, Any] = dict(transforms=transforms, prefetch=prefetch,
                                                     pinned_budget=pinned_budget, output=output)
        self._loader: Any = None
        self._prefetcher: Any = None

    def create_loader(self) -> Any:
        """The torch ``DataLoader`` over the dataset (built at the first call)."""
        if self._loader is None:
            from torch.utils.data import DataLoader

            self._loader = DataLoader(self.dataset, **self._dl_kwargs)
        return self._loader

    def get_prefetch_loader(self, device: Any = None) -> Any:
        """The :class:`~ferry.PrefetchLoader` over :meth:`create_loader`, on ``device`` (None: the one given
        at construction), built at the first call."""
        if self._prefetcher is None:
            from ._feed import FeedLoader

            self._prefetcher = FeedLoader(self.create_loader(), device=device if device is not None else self.device,
                                          **self._prefetch_kwargs)
        return self._prefetcher

    def __iter__(self) -> Any:
        return iter(self.get_prefetch_loader())

    def __len__(self) -> int:
        return len(self.create_loader())

    def set_epoch(self, epoch: int) -> None:
        """Forwards to the DataLoader's sampler (a DistributedSampler)."""
        self.get_prefetch_loader().set_epoch(epoch)

    def close(self) -> None:
        """Closes the prefetch loader; the DataLoader's workers end with it. Idempotent."""
        p, self._prefetcher = self._prefetcher, None
        if p is not None:
            p.close()

    def __enter__(self) -> "DatasetLoader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PrefetchLoader(Loader):
    """Batches on ``device`` (the seed's façade), for any input.

    Given any iterable of CPU batches — a torch ``DataLoader`` with worker processes, a generator, a list — it
    is a :class:`~ferry.FeedLoader`: ferry stages each batch (a tensor or array, or a nested tuple, list or
    dict of them) onto the device on a background thread, ``prefetch`` batches ahead, with ``transforms`` by
    key or position, and hands it out in the same structure.

    Given a ferry source, a dict of arrays, or another :class:`Loader` (whose source and settings are reused;
    the other loader keeps its own position and stays open), it is a :class:`Loader` that reads the source
    itself. Keywords go to :class:`Loader`.
    """

    def __new__(cls, loader_or_source: Any = None, *args: Any, **kw: Any) -> Any:
        if (cls is PrefetchLoader and not isinstance(loader_or_source, (Loader, Source, Mapping))
                and hasattr(loader_or_source, "__iter__")):
            from ._feed import FeedLoader

            return FeedLoader(loader_or_source, *args, **kw)
        return super().__new__(cls)

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
