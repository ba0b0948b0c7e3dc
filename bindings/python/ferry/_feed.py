"""ferry behind any input pipeline: :class:`Feed` stages batches the caller already has (``ferry_feed_*``), and
:class:`FeedLoader` — what :class:`~ferry.PrefetchLoader` returns for an iterable — prefetches from a torch
``DataLoader``, a generator or a list on a background thread and hands each batch out on the device, in the
structure it came in.

The work is the library's: the copy into its page-locked ring (with the GIL released, on several threads for
a large batch), the host-to-device copy on its own stream, the layout transforms and the DLPack hand-off.
This module walks the Python structure of a batch, keeps the prefetch queue and rebuilds the structure.
"""

from __future__ import annotations

import ctypes
import queue
import threading
import time
import weakref
from ctypes import byref, c_void_p
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from . import _lib
from ._dlpack import _Export, _field_from_batch, _VersionedPtr
from ._engine import CPU, Engine
from ._errors import _as_int, _as_int32, _as_uint32, _check, _closed, _invalid
from ._handle import _Owner
from ._sources import _NUMPY_CODES, DTYPES
from ._transforms import Transform, transform_array

__all__ = ["Feed", "FeedLoader"]

# --- the library's feed -----------------------------------------------------------------------------------


def _destroy_feed(lib: ctypes.CDLL, handle: c_void_p, engine: Engine) -> int:
    """Destroys a feed handle; holding the engine here keeps it alive (its finalizer pending) until then."""
    del engine
    return lib.ferry_feed_destroy(handle)


class Feed(_Owner):
    """Stages host batches onto an engine's device (``ferry_feed_*``): :meth:`push` copies named arrays into
    the library's page-locked staging and returns the batch's handle, whose device work is queued on the
    feed's own stream. ``transforms`` are by tensor name; ``slots`` the staging slots to start with (the
    feed adds more when the caller holds them all, within ``pinned_budget`` bytes: None or 0 a quarter of
    RAM; negative: never more than ``slots``). Push from one thread at a time."""

    def __init__(self, engine: Engine, transforms: Optional[Mapping[str, Transform]] = None, slots: int = 0,
                 workers: int = 0, pinned_budget: Optional[int] = None, timeout_ms: int = 0) -> None:
        self._handle: Optional[c_void_p] = None
        lib = _lib.lib()
        self._lib = lib
        opts = _lib.FeedOptions()
        _check(lib.ferry_feed_options_init(byref(opts)))
        opts.slots = _as_int32(slots, "slots")
        opts.workers = _as_int32(workers, "workers")
        opts.timeout_ms = _as_uint32(timeout_ms, "timeout_ms")
        opts.pinned_budget = 0 if pinned_budget is None else _as_int(pinned_budget, "pinned_budget")
        array, count, keep = transform_array(transforms)
        if array is not None:
            opts.transforms = ctypes.cast(array, ctypes.POINTER(_lib.Transform))
        opts.num_transforms = count
        handle = c_void_p()
        _check(lib.ferry_feed_create(engine._h(), byref(opts), byref(handle)))
        del keep
        self._own(handle, _destroy_feed, lib, handle, engine)
        self.engine = engine
        self._tensors = (_lib.HostTensor * 0)()
        self._names: Dict[str, bytes] = {}

    def push(self, tensors: List[Tuple[str, "_Host"]]) -> c_void_p:
        """Stages ``[(name, host array), ...]`` and returns the ``ferry_batch`` handle (the caller releases
        it). The library reads the arrays during the call only, with the GIL released."""
        n = len(tensors)
        arr = self._tensors
        if len(arr) < n:
            arr = self._tensors = (_lib.HostTensor * n)()
        for i, (name, h) in enumerate(tensors):
            t = arr[i]
            b = self._names.get(name)
            if b is None:
                b = self._names[name] = name.encode("utf-8")
                if b"\0" in b:
                    raise _invalid(f"tensor name {name!r} holds a NUL")
            t.name = b
            t.dtype = h.code
            t.ndim = len(h.shape)
            for d, s in enumerate(h.shape):
                t.shape[d] = s
            t.data = h.ptr
            t.bytes = h.nbytes
        out = c_void_p()
        _check(self._lib.ferry_feed_push(self._h(), arr, n, byref(out)))
        return out

    def add_stall(self, seconds: float) -> None:
        """Adds time a consumer waited for the feed's batches to its stats (and a monitor's data stall)."""
        if seconds > 0:
            _check(self._lib.ferry_feed_add_stall(self._h(), int(seconds * 1e9)))

    def stats(self) -> Dict[str, float]:
        """``{"batches", "samples", "bytes", "stall_s"}`` staged so far (``ferry_feed_stats``)."""
        st = _lib.PipelineStats()
        st.size = ctypes.sizeof(st)
        _check(self._lib.ferry_feed_stats(self._h(), byref(st)))
        return {"batches": st.batches, "samples": st.samples, "bytes": st.bytes, "stall_s": st.stall_ns / 1e9}


# --- the leaves of a batch -------------------------------------------------------------------------------


class _Host:
    """A host array a batch holds, as the library reads it: address, bytes, dtype code and shape. ``keep`` is
    what keeps the memory alive (a contiguous copy, when the caller's array was not contiguous)."""

    __slots__ = ("ptr", "nbytes", "code", "shape", "keep")

    def __init__(self, ptr: int, nbytes: int, code: int, shape: Tuple[int, ...], keep: Any) -> None:
        self.ptr, self.nbytes, self.code, self.shape, self.keep = ptr, nbytes, code, shape, keep


_TORCH_DTYPES = {
    "torch.bool": "bool", "torch.uint8": "uint8", "torch.int8": "int8", "torch.uint16": "uint16",
    "torch.int16": "int16", "torch.uint32": "uint32", "torch.int32": "int32", "torch.uint64": "uint64",
    "torch.int64": "int64", "torch.float16": "float16", "torch.bfloat16": "bfloat16", "torch.float32": "float32",
    "torch.float64": "float64",
}


def _host_leaf(obj: Any) -> Optional[_Host]:
    """The host array of a batch leaf: a CPU torch tensor or a numpy array with a batch dimension; None for
    anything else (passed through untouched: a string, a number, a tensor already on a GPU)."""
    mod = type(obj).__module__
    if mod.startswith("torch") and hasattr(obj, "data_ptr") and hasattr(obj, "is_cuda"):
        if obj.device.type != "cpu" or obj.dim() == 0:
            return None
        name = _TORCH_DTYPES.get(str(obj.dtype))
        if name is None:
            return None
        if not obj.is_contiguous():
            obj = obj.contiguous()
        return _Host(obj.data_ptr(), obj.numel() * obj.element_size(), DTYPES[name][0], tuple(obj.shape), obj)
    if mod == "numpy" and hasattr(obj, "__array_interface__") and hasattr(obj, "ctypes"):
        if obj.ndim == 0:
            return None
        name = _NUMPY_CODES.get(obj.dtype.str[1:])
        if name is None:
            return None
        if obj.dtype.byteorder == ">" or not obj.flags.c_contiguous:
            import numpy as np

            obj = np.ascontiguousarray(obj, dtype=obj.dtype.newbyteorder("="))
        return _Host(obj.ctypes.data, obj.nbytes, DTYPES[name][0], tuple(obj.shape), obj)
    return None


class _Leaf:
    """A place in a batch's structure where a staged array goes back; ``index`` is its tensor's number."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


def _flatten(obj: Any, path: str, leaves: List[Tuple[str, _Host]]) -> Any:
    """The structure of ``obj`` with each host array replaced by a :class:`_Leaf` (appended to ``leaves``
    with its path: keys and positions joined by dots, e.g. ``"0"``, ``"image"``, ``"1.label"``)."""
    h = _host_leaf(obj)
    if h is not None:
        leaves.append((path or "0", h))
        return _Leaf(len(leaves) - 1)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
        return type(obj)(*(_flatten(v, _join(path, k), leaves) for k, v in zip(obj._fields, obj)))
    if type(obj) in (tuple, list):
        return type(obj)(_flatten(v, _join(path, str(i)), leaves) for i, v in enumerate(obj))
    if isinstance(obj, dict):
        return {k: _flatten(v, _join(path, str(k)), leaves) for k, v in obj.items()}
    return obj


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _rebuild(skeleton: Any, values: List[Any]) -> Any:
    if isinstance(skeleton, _Leaf):
        return values[skeleton.index]
    if isinstance(skeleton, tuple) and hasattr(skeleton, "_fields"):
        return type(skeleton)(*(_rebuild(v, values) for v in skeleton))
    if type(skeleton) in (tuple, list):
        return type(skeleton)(_rebuild(v, values) for v in skeleton)
    if isinstance(skeleton, dict):
        return {k: _rebuild(v, values) for k, v in skeleton.items()}
    return skeleton


# --- the loader ---------------------------------------------------------------------------------------------

_WAIT_SLICE_S = 0.1
_END = ("end",)


class _Run:
    """One pass over the iterable: a daemon thread takes batches from its iterator, stages each through the
    feed and queues it (at most ``prefetch`` ahead); an exception from the iterable is queued in its place.
    The thread holds its loader weakly: a loader dropped without close() is collected, and its pass ends."""

    def __init__(self, loader: "FeedLoader", iterator: Any, prefetch: int) -> None:
        self._loader = weakref.ref(loader)
        self._lib = loader._lib
        self.iterator = iterator
        self.queue: "queue.Queue[Tuple[Any, ...]]" = queue.Queue(maxsize=prefetch)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, name="ferry-prefetch", daemon=True)
        self.thread.start()

    def _produce(self) -> None:
        it = self.iterator
        while not self.stop.is_set():
            try:
                batch = next(it)
            except StopIteration:
                self._put(_END)
                return
            except BaseException as exc:  # the iterable's error, raised at its step by the consumer
                if not self._put(("error", exc)):
                    return
                continue
            loader = self._loader()
            if loader is None:
                return
            try:
                item = loader._stage(batch)
            except BaseException as exc:
                item = ("error", exc)
            del batch, loader
            if not self._put(item):
                self._release(item)
                return

    def _put(self, item: Tuple[Any, ...]) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=_WAIT_SLICE_S)
                return True
            except queue.Full:
                continue
        return False

    def _release(self, item: Tuple[Any, ...]) -> None:
        """Gives a staged batch that no one will take back (a handle of a destroyed feed is refused, harmlessly)."""
        if item[0] == "batch" and item[2] is not None:
            self._lib.ferry_batch_release(item[2], None)

    def end(self) -> None:
        """Stops the pass: the thread ends after the batch it is taking, and queued batches are released."""
        self.stop.set()
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            self._release(item)


class _FeedIterator:
    """The iterator of one pass: ``next`` waits (interruptibly) for the next staged batch, re-raises the
    iterable's exception at its step and goes on after it, as a DataLoader's iterator does."""

    def __init__(self, loader: "FeedLoader", run: _Run) -> None:
        self._loader = loader
        self._run: Optional[_Run] = run

    def __iter__(self) -> "_FeedIterator":
        return self

    def __next__(self) -> Any:
        run = self._run
        if run is None or run is not self._loader._run:
            raise StopIteration
        start = time.perf_counter()
        try:
            while True:
                try:
                    item = run.queue.get(timeout=_WAIT_SLICE_S)
                    break
                except queue.Empty:
                    continue
        except KeyboardInterrupt:
            self._loader._end_run()
            raise
        self._loader._add_stall(time.perf_counter() - start)
        kind = item[0]
        if kind == "end":
            self._loader._end_run()
            self._run = None
            raise StopIteration
        if kind == "error":
            exc = item[1]
            del item
            raise exc
        return self._loader._deliver(item)


class FeedLoader:
    """Batches from any iterable of CPU batches, staged onto ``device`` by ferry: what
    :class:`~ferry.PrefetchLoader` returns when given a torch ``DataLoader``, a generator or a list.

    A batch is a tensor or numpy array (its first dimension the batch), or a tuple, list, namedtuple or dict
    of them, nested; other leaves (file names, ints, tensors already on a GPU) pass through untouched, in
    place. Each ``for`` loop starts a pass over the iterable (``iter(iterable)``, as a DataLoader's epoch)
    on a background thread that stays ``prefetch`` batches ahead: each batch's arrays are copied into ferry's
    page-locked ring (the GIL released, several threads for a large batch), copied to the device on ferry's
    stream and laid out by ``transforms`` — by key or position: ``{0: ferry.Normalize(mean, std,
    input_layout="CHW")}`` for ``(image, label)`` tuples of uint8 ``[B, 3, H, W]`` images, ``{"image":
    ...}`` for dicts; a dotted path (``"0.image"``) reaches deeper. A transform with several outputs
    (``ShiftTokens``) puts a dict of them in its leaf's place. Tensors come out as ``output`` (``"torch"``,
    ``"numpy"`` on the CPU, or ``"dlpack"``), ordered on ``torch.cuda.current_stream(device)`` of the step
    that takes them, in the batch's own structure.

    Batches of changing size and shape are fine (the ring's slots grow to the largest seen); batches may be
    kept (the ring adds slots within ``pinned_budget``). An exception from the iterable — a DataLoader
    worker's, with its traceback — is raised at its step, and the loop may go on after it as the
    iterable's iterator does. Ctrl-C, a ``break`` followed by a new loop, and :meth:`close` stop the pass.
    ``len()`` is the iterable's; :meth:`set_epoch` is forwarded to the iterable or its sampler;
    :meth:`stats` and ``Monitor.attach`` report samples/s and the data stall.
    """

    def __init__(self, iterable: Iterable[Any], device: Any = None,
                 transforms: Optional[Mapping[Any, Transform]] = None, prefetch: int = 2, workers: int = 0,
                 pinned_budget: Optional[int] = None, output: Optional[str] = None,
                 engine: Optional[Engine] = None) -> None:
        from ._dataloader import _loader_engine, _parse_device, _setup_output, _torch_capsule_path

        self._feed: Optional[Feed] = None
        self._engine: Optional[Engine] = None
        self._run: Optional[_Run] = None
        if not hasattr(iterable, "__iter__"):
            raise TypeError(f"PrefetchLoader takes an iterable of batches, not {type(iterable).__name__}")
        prefetch = _as_int(prefetch, "prefetch")
        if not 1 <= prefetch <= 64:
            raise _invalid(f"prefetch {prefetch} must be 1..64")
        self.iterable = iterable
        self.prefetch = prefetch
        self.transforms: Dict[str, Transform] = {str(k): t for k, t in (transforms or {}).items()}
        try:
            if engine is not None:
                if not isinstance(engine, Engine):
                    raise TypeError(f"engine must be a ferry.Engine, not {type(engine).__name__}")
                if device is not None and _parse_device(device) != engine.device:
                    raise _invalid(f"device {device!r} differs from the engine's device {engine.device}")
                dev = engine.device
            else:
                dev = _parse_device(device)
            self.device = dev
            self.output, self._convert, self._stream_fn = _setup_output(output, dev, copy=False)
            # Each batch is waited for on torch's current stream: its fields may go to torch as capsules.
            self._to_torch = _torch_capsule_path() if self.output == "torch" else None
            if engine is None:
                engine = self._engine = _loader_engine(dev)
            # The queue's batches, the one being staged and the two a loop holds across a step: no growth in a
            # loop that lets its batches go.
            self._feed = Feed(engine, self.transforms, slots=prefetch + 3, workers=workers,
                              pinned_budget=pinned_budget)
        except BaseException:
            self.close()
            raise
        self._lib = self._feed._lib
        # Per list of leaf names: each leaf's output names (one, or a transform's several).
        self._outputs: Dict[Tuple[str, ...], List[List[str]]] = {}
        self._matched: Optional[bool] = None

    # --- the producer's side --------------------------------------------------------------------------------

    def _stage(self, batch: Any) -> Tuple[Any, ...]:
        leaves: List[Tuple[str, _Host]] = []
        skeleton = _flatten(batch, "", leaves)
        if not leaves:
            return ("batch", skeleton, None, leaves)
        if self._matched is None and self.transforms:
            names = {name for name, _ in leaves}
            missing = sorted(set(self.transforms) - names)
            if missing:
                raise _invalid(f"transforms are given for {missing}, which the batch does not have; its arrays are "
                               f"{sorted(names)} (keys and positions, joined by dots for nested ones)")
            self._matched = True
        feed = self._feed
        if feed is None:
            raise _closed("PrefetchLoader")
        handle = feed.push(leaves)
        # The arrays were copied during push: nothing of them is kept.
        return ("batch", skeleton, handle, tuple(name for name, _ in leaves))

    # --- the consumer's side --------------------------------------------------------------------------------

    def _deliver(self, item: Tuple[Any, ...]) -> Any:
        _, skeleton, handle, leaves = item
        if handle is None:
            return _rebuild(skeleton, [])
        lib = self._lib
        stream = self._stream_fn() if self._stream_fn is not None else None
        consumer = c_void_p(stream) if stream else None
        lean = self.output == "torch"
        dev = (_lib.kDLCUDA, self.device) if self.device != CPU else (_lib.kDLCPU, 0)
        ptr = _VersionedPtr()
        convert = self._convert
        to_torch = self._to_torch

        def field(k: int, name: str) -> Any:
            if not lean:
                return convert(_field_from_batch(lib, handle, k, name, stream))
            _check(lib.ferry_batch_field(handle, k, byref(ptr)))
            addr = ctypes.cast(ptr, c_void_p).value or 0
            if to_torch is not None:
                return to_torch([addr])[0]
            return convert(_Export(addr, stream, dev))

        try:
            _check(lib.ferry_batch_wait(handle, consumer))
            values: List[Any] = []
            k = 0
            for outs in self._output_names(handle, leaves):
                if len(outs) == 1:
                    values.append(field(k, outs[0]))
                    k += 1
                    continue
                got = {}
                for out in outs:
                    got[out] = field(k, out)
                    k += 1
                values.append(got)
            return _rebuild(skeleton, values)
        finally:
            lib.ferry_batch_release(handle, consumer)

    def _output_names(self, handle: c_void_p, leaves: Tuple[str, ...]) -> List[List[str]]:
        """Each leaf's output field names, in order, as the library made them (asked once per structure)."""
        outs = self._outputs.get(leaves)
        if outs is None:
            lib = self._lib
            info = _lib.BatchProperties()
            info.size = ctypes.sizeof(info)
            _check(lib.ferry_batch_info(handle, byref(info)))
            outs = [[] for _ in leaves]
            buf = ctypes.create_string_buffer(1024)
            origin = ctypes.c_int32()
            for i in range(info.num_fields):
                _check(lib.ferry_batch_field_origin(handle, i, byref(origin)))
                _check(lib.ferry_batch_field_name(handle, i, buf, len(buf)))
                outs[origin.value].append(buf.value.decode("utf-8"))
            if len(self._outputs) < 256:
                self._outputs[leaves] = outs
        return outs

    def _add_stall(self, seconds: float) -> None:
        feed = self._feed
        if feed is not None:
            feed.add_stall(seconds)

    def _end_run(self) -> None:
        run, self._run = self._run, None
        if run is not None:
            run.end()

    # --- the loop's face ------------------------------------------------------------------------------------

    def __iter__(self) -> _FeedIterator:
        if self._feed is None:
            raise _closed("PrefetchLoader")
        self._end_run()
        self._run = _Run(self, iter(self.iterable), self.prefetch)
        return _FeedIterator(self, self._run)

    def __len__(self) -> int:
        """The iterable's length (a DataLoader's batches per epoch)."""
        return len(self.iterable)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        """Forwards ``set_epoch`` to the iterable, or to its sampler (a DistributedSampler) or batch sampler's."""
        it = self.iterable
        for obj in (it, getattr(it, "sampler", None), getattr(getattr(it, "batch_sampler", None), "sampler", None)):
            fn = getattr(obj, "set_epoch", None)
            if callable(fn):
                fn(epoch)
                return

    def stats(self) -> Dict[str, float]:
        """``{"batches", "samples", "bytes", "stall_s"}`` so far: what ferry staged, and the time the loop
        waited for batches."""
        feed = self._feed
        if feed is None:
            raise _closed("PrefetchLoader")
        return feed.stats()

    @property
    def feed(self) -> Feed:
        """The underlying :class:`Feed`."""
        feed = self._feed
        if feed is None:
            raise _closed("PrefetchLoader")
        return feed

    def close(self) -> None:
        """Stops the pass in progress and frees the ring (and the engine the loader opened). Idempotent.
        Tensors handed out stay valid."""
        self._end_run()
        feed, self._feed = self._feed, None
        eng, self._engine = self._engine, None
        try:
            if feed is not None:
                feed.close()
        finally:
            if eng is not None:
                eng.close()

    @property
    def closed(self) -> bool:
        return self._feed is None

    def __enter__(self) -> "FeedLoader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        run = getattr(self, "_run", None)
        if run is not None:
            run.stop.set()

    def __repr__(self) -> str:
        if self._feed is None:
            return "<ferry.PrefetchLoader closed>"
        dev = "cpu" if self.device == CPU else f"cuda:{self.device}"
        return f"<ferry.PrefetchLoader over {type(self.iterable).__name__} on {dev}, output={self.output}>"
