"""DLPack hand-off of batch fields: ``torch.from_dlpack(field)``, ``numpy.from_dlpack(field)``, CuPy, JAX.

A :class:`DLPackField` owns one ``DLManagedTensorVersioned*`` from ``ferry_batch_field``: one reference on
its batch, so the batch's memory is not refilled while the field (or the tensor a consumer built from it)
is alive. ``__dlpack__`` moves that ownership into a PyCapsule, once:

* ``max_version >= (1, 0)``: the ferry tensor itself, in a capsule named ``dltensor_versioned``;
* ``max_version`` None or older (the pre-1.0 protocol): a ``DLManagedTensor`` built here, in a capsule
  named ``dltensor``, whose deleter calls the ferry tensor's. This path allocates a struct and crosses
  into Python once more when the consumer frees the tensor, so it is slower than the versioned one.

A capsule that no consumer took (its name unchanged) calls the deleter when it is garbage-collected; a
consumer renames it ``used_dltensor_versioned`` / ``used_dltensor`` and calls the deleter itself.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from ctypes import POINTER, c_char_p, c_int, c_void_p
from typing import Any, Dict, List, Optional, Tuple

from . import _lib
from ._errors import _check

__all__ = ["DLPackField"]

_VERSIONED_NAME = b"dltensor_versioned"
_LEGACY_NAME = b"dltensor"

# Function objects of our own, built from prototypes: the attributes of ctypes.pythonapi are shared by
# every module of the process, and another module may set other argtypes on them.
_capsule_new = ctypes.PYFUNCTYPE(ctypes.py_object, c_void_p, c_char_p, c_void_p)(("PyCapsule_New", ctypes.pythonapi))
_capsule_is_valid = ctypes.PYFUNCTYPE(c_int, c_void_p, c_char_p)(("PyCapsule_IsValid", ctypes.pythonapi))
_capsule_get_pointer = ctypes.PYFUNCTYPE(c_void_p, c_void_p, c_char_p)(("PyCapsule_GetPointer", ctypes.pythonapi))
_capsule_object_is = ctypes.PYFUNCTYPE(c_int, ctypes.py_object, c_char_p)(("PyCapsule_IsValid", ctypes.pythonapi))
_capsule_object_pointer = ctypes.PYFUNCTYPE(c_void_p, ctypes.py_object, c_char_p)(("PyCapsule_GetPointer",
                                                                                  ctypes.pythonapi))
_capsule_object_rename = ctypes.PYFUNCTYPE(c_int, ctypes.py_object, c_char_p)(("PyCapsule_SetName", ctypes.pythonapi))
# The name of a capsule whose tensor was taken back (the name is kept by pointer: module-level, it lives on).
_TAKEN_BACK_NAME = b"used_dltensor_versioned"

_VersionedPtr = POINTER(_lib.DLManagedTensorVersioned)
_LegacyPtr = POINTER(_lib.DLManagedTensor)


def _delete_versioned(addr: int) -> None:
    """Calls a ferry tensor's deleter (exactly once per tensor, by construction of the callers)."""
    if addr:
        t = ctypes.cast(addr, _VersionedPtr)
        t.contents.deleter(t)


# Legacy DLManagedTensor structs handed out and not yet deleted, by address: they live in Python memory,
# so something must hold them until their deleter runs.
_legacy_lock = threading.Lock()
_legacy_alive: Dict[int, _lib.DLManagedTensor] = {}


def _legacy_deleter_impl(self: Any) -> None:
    try:
        addr = ctypes.cast(self, c_void_p).value or 0
        with _legacy_lock:
            managed = _legacy_alive.pop(addr, None)
        if managed is not None:
            _delete_versioned(managed.manager_ctx or 0)
    except BaseException:  # pragma: no cover - never raise into the consumer's C code
        pass


_LEGACY_DELETER = _lib.DLPACK_LEGACY_DELETER(_legacy_deleter_impl)

_CAPSULE_DESTRUCTOR = ctypes.CFUNCTYPE(None, c_void_p)


def _capsule_destructor_impl(capsule: int) -> None:
    # Runs when a capsule is freed. A consumer that took the tensor renamed the capsule first; only an
    # untaken one still carries its original name, and then the tensor is deleted here.
    try:
        if _capsule_is_valid(capsule, _VERSIONED_NAME):
            _delete_versioned(_capsule_get_pointer(capsule, _VERSIONED_NAME) or 0)
        elif _capsule_is_valid(capsule, _LEGACY_NAME):
            ptr = _capsule_get_pointer(capsule, _LEGACY_NAME)
            if ptr:
                _legacy_deleter_impl(ctypes.cast(ptr, _LegacyPtr))
    except BaseException:  # pragma: no cover - a destructor must not raise
        pass


# Module-level so that it outlives every capsule that points to it.
_CAPSULE_DESTRUCTOR_FN = _CAPSULE_DESTRUCTOR(_capsule_destructor_impl)
_CAPSULE_DESTRUCTOR_ADDR = ctypes.cast(_CAPSULE_DESTRUCTOR_FN, c_void_p).value

_DEVICE_NAMES = {_lib.kDLCPU: "cpu", _lib.kDLCUDA: "cuda", _lib.kDLCUDAHost: "cuda_host"}
_DTYPE_NAMES = {
    (_lib.kDLBool, 8): "bool",
    (_lib.kDLUInt, 8): "uint8",
    (_lib.kDLInt, 8): "int8",
    (_lib.kDLUInt, 16): "uint16",
    (_lib.kDLInt, 16): "int16",
    (_lib.kDLUInt, 32): "uint32",
    (_lib.kDLInt, 32): "int32",
    (_lib.kDLUInt, 64): "uint64",
    (_lib.kDLInt, 64): "int64",
    (_lib.kDLFloat, 16): "float16",
    (_lib.kDLBfloat, 16): "bfloat16",
    (_lib.kDLFloat, 32): "float32",
    (_lib.kDLFloat, 64): "float64",
}
_MEMORYVIEW_FORMATS = {
    "bool": "?", "uint8": "B", "int8": "b", "uint16": "H", "int16": "h", "uint32": "I", "int32": "i",
    "uint64": "Q", "int64": "q", "float16": "H", "bfloat16": "H", "float32": "f", "float64": "d",
}


def _stream_value(stream: Optional[int]) -> int:
    """A CUDA stream as a number, with the legacy default stream's two spellings (NULL and DLPack's 1,
    CU_STREAM_LEGACY) made one."""
    s = int(stream or 0)
    return 0 if s == 1 else s


class DLPackField:
    """One field of one batch, ready for any DLPack consumer, with no copy.

    Attributes: ``name``, ``shape`` (``[batch, *per-sample shape]``), ``dtype`` (ferry's name),
    ``device`` (``(device_type, device_id)``, as ``__dlpack_device__``), ``data_ptr`` and ``nbytes``.

    The field can be exported once (``__dlpack__``); after that the consumer's tensor owns the memory
    reference. A field never exported gives its reference back when it is closed or garbage-collected.
    """

    __slots__ = ("name", "shape", "dtype", "device", "data_ptr", "nbytes", "_addr", "_finalizer", "_stream",
                 "__weakref__")

    def __init__(self, addr: int, name: str, stream: Optional[int] = None) -> None:
        """Takes ownership of the ferry tensor at ``addr``; ``stream`` is the stream its batch was ordered
        on (the one given to ``ferry_iterator_next``)."""
        self._addr = addr
        self._finalizer = weakref.finalize(self, _delete_versioned, addr)
        t = ctypes.cast(addr, _VersionedPtr).contents.dl_tensor
        self.name = name
        self.shape: Tuple[int, ...] = tuple(t.shape[i] for i in range(t.ndim))
        self.dtype = _DTYPE_NAMES.get((t.dtype.code, t.dtype.bits), f"dl({t.dtype.code},{t.dtype.bits})")
        self.device: Tuple[int, int] = (t.device.device_type, t.device.device_id)
        self.data_ptr: int = (t.data or 0) + t.byte_offset
        n = t.dtype.bits // 8 * t.dtype.lanes
        for d in self.shape:
            n *= d
        self.nbytes = n
        self._stream = stream

    # --- the DLPack protocol ----------------------------------------------------------------------------

    def __dlpack_device__(self) -> Tuple[int, int]:
        return self.device

    def __dlpack__(self, stream: Optional[int] = None, max_version: Optional[Tuple[int, int]] = None,
                   dl_device: Optional[Tuple[int, int]] = None, copy: Optional[bool] = None) -> Any:
        """Hands the tensor to a consumer as a PyCapsule (once).

        ``stream``: the consumer's CUDA stream (DLPack's convention: None or 1 is the legacy default
        stream, 2 the per-thread default stream, -1 asks for no synchronization). When it differs from
        the stream the batch was fetched for, that stream is made to wait for the batch's copy
        (``ferry_tensor_wait``: the field keeps its batch, so this works after the batch was released and
        after the loader moved on or closed). Ignored for CPU tensors.

        ``max_version``: the highest DLPack version the consumer understands; below (1, 0), or None,
        gives the legacy ``dltensor`` capsule (slower: see the module's notes).

        Raises:
            BufferError: already exported or closed; ``dl_device`` is another device; ``copy=True``
                (ferry hands out its memory, it does not copy); the stream cannot be ordered.
        """
        if self._addr == 0:
            raise BufferError(f"batch field {self.name!r} was already exported (or closed); "
                              "a DLPack field can be consumed once")
        if dl_device is not None and tuple(dl_device) != self.device:
            raise BufferError(f"batch field {self.name!r} is on device {self.device}, not {tuple(dl_device)}; "
                              "ferry does not copy between devices")
        if copy:
            raise BufferError(f"batch field {self.name!r}: copy=True is not supported; ferry hands out its "
                              "batch memory without a copy (copy the consumer's tensor instead)")
        capsule = _hand_over(self._addr, self.device, self._stream, stream, max_version, f"batch field {self.name!r}")
        # The capsule owns the tensor now.
        self._addr = 0
        self._finalizer.detach()
        return capsule

    # --- without a consumer -------------------------------------------------------------------------------

    @property
    def exported(self) -> bool:
        """True once ``__dlpack__`` handed the tensor out, or the field was closed."""
        return self._addr == 0

    def to_bytes(self) -> bytes:
        """A copy of the field's bytes (CPU tensors only): for programs with neither numpy nor torch."""
        if self._addr == 0:
            raise BufferError(f"batch field {self.name!r} was already exported (or closed)")
        if self.device[0] != _lib.kDLCPU:
            raise BufferError(f"batch field {self.name!r} is on {_DEVICE_NAMES.get(self.device[0], self.device)}; "
                              "to_bytes reads host memory")
        return ctypes.string_at(self.data_ptr, self.nbytes)

    def to_memoryview(self) -> memoryview:
        """A copy of the field as a memoryview of its shape (CPU tensors only; float16 and bfloat16 are
        viewed as uint16 words)."""
        fmt = _MEMORYVIEW_FORMATS[self.dtype]
        return memoryview(bytearray(self.to_bytes())).cast(fmt, list(self.shape))

    def close(self) -> None:
        """Gives the tensor's reference back unless it was exported. Idempotent."""
        self._addr = 0
        if self._finalizer.alive:
            self._finalizer()

    def __enter__(self) -> "DLPackField":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        dev = _DEVICE_NAMES.get(self.device[0], str(self.device[0]))
        state = " exported" if self._addr == 0 else ""
        return f"<ferry.DLPackField {self.name!r} {self.dtype}{list(self.shape)} on {dev}:{self.device[1]}{state}>"


def _capsules_to_torch(torch: Any) -> Optional[Any]:
    """The fast hand-off of a loader's fields to torch, or None where this torch cannot take it: a function
    of the ferry tensor addresses of one batch (``ferry_iterator_next_tensors``) that returns their torch
    tensors. Each tensor goes to ``torch._C._from_dlpack`` as a DLPack 1.0 capsule, without the protocol's
    ``__dlpack__`` round trip, whose stream lookup costs more than the rest of the hand-off. That is right
    only where the batch was fetched for torch's current stream (the loop does that in the same step), so
    that torch's work on it is ordered after the copy already. Probed once: this torch must take a
    ``dltensor_versioned`` capsule."""
    from_capsule = getattr(torch._C, "_from_dlpack", None)
    if from_capsule is None:
        return None
    try:
        probe = torch.empty(0).__dlpack__(max_version=(1, 0))
        if not _capsule_object_is(probe, _VERSIONED_NAME):
            return None
        from_capsule(probe)
    except Exception:  # an older torch: the protocol's path
        return None

    def to_torch(addrs: List[int]) -> List[Any]:
        # Every address is in a capsule before the first conversion: an error then leaves nothing that
        # owns a tensor but a capsule, whose destructor deletes it.
        caps: List[Any] = []
        try:
            for a in addrs:
                caps.append(_capsule_new(a, _VERSIONED_NAME, _CAPSULE_DESTRUCTOR_ADDR))
        except BaseException:
            for a in addrs[len(caps):]:
                _delete_versioned(a)
            caps.clear()
            raise
        try:
            return [from_capsule(c) for c in caps]
        except BaseException:
            # The fields not taken are deleted now, not when the exception's frames (which may hold their
            # capsules) go: each capsule is renamed as consumed first, so that it deletes nothing later.
            for c in caps:
                if _capsule_object_is(c, _VERSIONED_NAME):
                    addr = _capsule_object_pointer(c, _VERSIONED_NAME) or 0
                    if _capsule_object_rename(c, _TAKEN_BACK_NAME) == 0:
                        _delete_versioned(addr)
            raise
        finally:
            caps.clear()

    return to_torch


class _Export:
    """One field of a batch on its way to a consumer's ``from_dlpack`` in a loader's loop: the lean
    counterpart of :class:`DLPackField` (no shape read, no finalizer object), for the per-batch path. It owns
    the ferry tensor at ``addr`` until ``__dlpack__`` hands it over; dropped unexported, it deletes it."""

    __slots__ = ("addr", "stream", "device")

    def __init__(self, addr: int, stream: Optional[int], device: Tuple[int, int]) -> None:
        self.addr = addr
        self.stream = stream
        self.device = device

    def __dlpack_device__(self) -> Tuple[int, int]:
        return self.device

    def __dlpack__(self, stream: Optional[int] = None, max_version: Optional[Tuple[int, int]] = None,
                   dl_device: Optional[Tuple[int, int]] = None, copy: Optional[bool] = None) -> Any:
        addr = self.addr
        if addr == 0:
            raise BufferError("the batch field was already exported")
        if (dl_device is not None and tuple(dl_device) != self.device) or copy:
            raise BufferError("ferry hands out its batch memory on its own device, without a copy")
        capsule = _hand_over(addr, self.device, self.stream, stream, max_version, "batch field")
        self.addr = 0
        return capsule

    def __del__(self) -> None:
        addr = self.addr
        if addr:
            self.addr = 0
            _delete_versioned(addr)


def _hand_over(addr: int, device: Tuple[int, int], fetched: Optional[int], stream: Optional[int],
               max_version: Optional[Tuple[int, int]], what: str) -> Any:
    """The capsule of the ferry tensor at ``addr`` for a consumer on ``stream``: on a GPU, a stream other than
    the one the batch was fetched for is first made to wait for the batch's copy (``ferry_tensor_wait``: the
    tensor keeps its batch); a consumer below DLPack 1.0 gets the legacy ``dltensor`` capsule."""
    if device[0] == _lib.kDLCUDA and stream != -1:
        consumer = _stream_value(stream)
        if consumer != _stream_value(fetched):
            try:
                _check(_lib.lib().ferry_tensor_wait(addr, consumer or None))
            except Exception as exc:
                raise BufferError(f"{what}: cannot make stream {stream} wait for the batch's copy: {exc}") from exc
    if max_version is None or tuple(max_version)[0] < 1:
        return _legacy_capsule(addr)
    return _capsule_new(addr, _VERSIONED_NAME, _CAPSULE_DESTRUCTOR_ADDR)


def _legacy_capsule(addr: int) -> Any:
    """Wraps the ferry tensor at ``addr`` in a pre-1.0 ``DLManagedTensor`` capsule named ``dltensor``."""
    src = ctypes.cast(addr, _VersionedPtr).contents
    managed = _lib.DLManagedTensor()
    managed.dl_tensor = src.dl_tensor  # a copy; shape points into the ferry tensor, alive with it
    managed.manager_ctx = addr
    managed.deleter = _LEGACY_DELETER
    maddr = ctypes.addressof(managed)
    with _legacy_lock:
        _legacy_alive[maddr] = managed
    try:
        return _capsule_new(maddr, _LEGACY_NAME, _CAPSULE_DESTRUCTOR_ADDR)
    except BaseException:
        with _legacy_lock:
            _legacy_alive.pop(maddr, None)
        raise


def _field_from_batch(lib: ctypes.CDLL, handle: c_void_p, index: int, name: str,
                      stream: Optional[int]) -> DLPackField:
    out = _VersionedPtr()
    _check(lib.ferry_batch_field(handle, index, ctypes.byref(out)))
    return DLPackField(ctypes.cast(out, c_void_p).value or 0, name, stream)
