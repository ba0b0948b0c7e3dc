"""Sources: where a loader's samples come from.

Each class owns one ``ferry_source`` handle. :meth:`Source.close` (or leaving a ``with`` block) destroys
it; garbage collection and interpreter exit do too, as a backstop. A source must outlive the loaders
built over it; a :class:`~ferry.Loader` keeps a reference to its source, so that holds by itself.

Element types ("dtypes") are accepted as ferry names (``"uint8"``, ``"float32"``, ``"bfloat16"``, …),
numpy dtypes and type objects (``numpy.float32``), numpy type strings (``"<f4"``, ``"|u1"``, ``"f4"``) and
torch dtypes (``torch.float16``).
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import threading
import traceback
from ctypes import byref, c_char_p, c_int32, c_int64, c_void_p
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from . import _lib
from ._errors import _as_int, _as_int64, _c_string, _check, _invalid
from ._handle import _InCallback, _Owner

__all__ = [
    "Source",
    "FieldSpec",
    "ArraySource",
    "RecordSource",
    "CIFAR10Source",
    "NpySource",
    "TokenSource",
    "RaggedTokenSource",
    "CallbackSource",
]

# --- element types ----------------------------------------------------------------------------------

#: ferry's dtype names → (ferry_dtype value, bytes per element).
DTYPES: Dict[str, Tuple[int, int]] = {
    "bool": (_lib.FERRY_DTYPE_BOOL, 1),
    "uint8": (_lib.FERRY_DTYPE_UINT8, 1),
    "int8": (_lib.FERRY_DTYPE_INT8, 1),
    "uint16": (_lib.FERRY_DTYPE_UINT16, 2),
    "int16": (_lib.FERRY_DTYPE_INT16, 2),
    "uint32": (_lib.FERRY_DTYPE_UINT32, 4),
    "int32": (_lib.FERRY_DTYPE_INT32, 4),
    "uint64": (_lib.FERRY_DTYPE_UINT64, 8),
    "int64": (_lib.FERRY_DTYPE_INT64, 8),
    "float16": (_lib.FERRY_DTYPE_FLOAT16, 2),
    "bfloat16": (_lib.FERRY_DTYPE_BFLOAT16, 2),
    "float32": (_lib.FERRY_DTYPE_FLOAT32, 4),
    "float64": (_lib.FERRY_DTYPE_FLOAT64, 8),
}
_NAME_BY_CODE = {code: name for name, (code, _) in DTYPES.items()}

# numpy's kind+size codes (the part of a type string after the byte-order character).
_NUMPY_CODES = {
    "b1": "bool", "u1": "uint8", "i1": "int8", "u2": "uint16", "i2": "int16", "u4": "uint32",
    "i4": "int32", "u8": "uint64", "i8": "int64", "f2": "float16", "f4": "float32", "f8": "float64",
}
# struct / buffer-protocol format characters (native sizes of x86-64 and aarch64 Linux).
_FORMAT_CODES = {
    "?": "bool", "B": "uint8", "b": "int8", "H": "uint16", "h": "int16", "I": "uint32", "i": "int32",
    "L": "uint64", "l": "int64", "Q": "uint64", "q": "int64", "e": "float16", "f": "float32", "d": "float64",
}
_ALIASES = {
    "half": "float16", "float": "float32", "double": "float64", "bf16": "bfloat16", "fp16": "float16",
    "fp32": "float32", "fp64": "float64", "long": "int64", "int": "int32", "short": "int16",
    "uint": "uint32", "byte": "uint8", "bool_": "bool",
}
# memoryview.cast formats per ferry dtype (half types are viewed as their raw 16-bit words).
_MEMORYVIEW_FORMATS = {
    "bool": "?", "uint8": "B", "int8": "b", "uint16": "H", "int16": "h", "uint32": "I", "int32": "i",
    "uint64": "Q", "int64": "q", "float16": "H", "bfloat16": "H", "float32": "f", "float64": "d",
}


def _type_string(s: str, what: str) -> str:
    """Maps a numpy type string or format character (with an optional byte-order character) to a name."""
    order = ""
    if s[:1] in ("<", ">", "|", "=", "@", "!"):
        order, s = s[0], s[1:]
    name = _NUMPY_CODES.get(s) or (_FORMAT_CODES.get(s) if len(s) == 1 else None)
    if name is None:
        raise _invalid(f"{what}: dtype {order + s!r} is not supported (use one of {', '.join(DTYPES)})")
    if order in (">", "!") and DTYPES[name][1] > 1 and sys.byteorder == "little":
        raise _invalid(f"{what}: dtype {order + s!r} is big-endian; convert the data to little-endian first")
    return name


def dtype_name(dtype: Any, what: str = "dtype") -> str:
    """Returns ferry's name for ``dtype`` (a ferry name, numpy dtype or type, type string, torch dtype)."""
    if isinstance(dtype, str):
        s = dtype
    elif hasattr(dtype, "str") and hasattr(dtype, "name") and hasattr(dtype, "itemsize"):  # numpy dtype
        s = dtype.name if dtype.str[1:2] == "V" else dtype.str  # "V": e.g. ml_dtypes' bfloat16
    elif (isinstance(dtype, type) and hasattr(dtype, "__module__")
          and dtype.__module__.startswith(("numpy", "ml_dtypes"))):
        s = dtype.__name__
    elif type(dtype).__module__ == "torch":  # torch.dtype: str() is "torch.float32"
        s = str(dtype)
    else:
        raise TypeError(f"{what}: cannot read {dtype!r} as an element type")
    key = s.strip().lower()
    if key.startswith("torch."):
        key = key[len("torch."):]
    elif key.startswith("numpy."):
        key = key[len("numpy."):]
    key = _ALIASES.get(key, key)
    if key in DTYPES:
        return key
    return _type_string(s.strip(), what)


def dtype_size(name: str) -> int:
    """Bytes per element of a ferry dtype name."""
    return DTYPES[name][1]


def _shape(shape: Any, what: str) -> Tuple[int, ...]:
    if shape is None:
        return ()
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(_as_int64(d, what + " shape entry") for d in shape)
    except TypeError:
        raise TypeError(f"{what}: shape must be an int or a sequence of ints, not {shape!r}") from None
    if len(dims) > _lib.FERRY_MAX_DIMS:
        raise _invalid(f"{what}: shape {dims} has {len(dims)} dimensions; at most {_lib.FERRY_MAX_DIMS}")
    if any(d <= 0 for d in dims):
        raise _invalid(f"{what}: shape {dims} must have positive entries")
    return dims


def _field_array(specs: Sequence[Tuple[str, str, Tuple[int, ...], int]]) -> Tuple[Any, List[bytes]]:
    """Builds a ``ferry_field[]`` from (name, dtype name, per-sample shape, offset); returns it and the
    encoded names, which must stay alive for the duration of the call."""
    arr = (_lib.FieldStruct * len(specs))()
    names = []
    for i, (name, dtype, shape, offset) in enumerate(specs):
        b = _c_string(name, "field name")
        names.append(b)
        f = arr[i]
        f.name = b
        f.dtype = DTYPES[dtype][0]
        f.ndim = len(shape)
        for d, n in enumerate(shape):
            f.shape[d] = n
        f.offset = offset
    return arr, names


# --- the base class ---------------------------------------------------------------------------------


class FieldSpec(NamedTuple):
    """One field of a source's samples."""

    dtype: str
    """ferry's dtype name, e.g. ``"uint8"``."""
    shape: Tuple[int, ...]
    """The per-sample shape; a batch holds the field as ``[batch, *shape]``."""
    offset: int = 0
    """The byte offset inside a record (record sources); 0 otherwise."""


def _destroy_source(lib: ctypes.CDLL, handle: c_void_p, keep: object) -> int:
    """Destroys a source handle. ``keep`` is what the source's memory depends on (arrays, a callback):
    holding it here keeps it alive until the handle is gone."""
    del keep
    return lib.ferry_source_destroy(handle)


class Source(_Owner):
    """A source of samples: the common part of every source class.

    ``len(source)`` is the number of samples; :attr:`fields` maps each field name to its
    :class:`FieldSpec`. Thread-safety: the methods may be called from any thread.
    """

    def __init__(self) -> None:  # subclasses call _adopt
        self._handle: Optional[c_void_p] = None

    def _adopt(self, lib: ctypes.CDLL, handle: c_void_p, keep: object = None) -> None:
        self._lib = lib
        self._own(handle, _destroy_source, lib, handle, keep)
        n = c_int64()
        _check(lib.ferry_source_len(handle, byref(n)))
        self._len = n.value
        count = c_int32()
        _check(lib.ferry_source_num_fields(handle, byref(count)))
        fields: Dict[str, FieldSpec] = {}
        for i in range(count.value):
            f = _lib.FieldStruct()
            _check(lib.ferry_source_field(handle, i, byref(f)))
            name = f.name.decode("utf-8")
            fields[name] = FieldSpec(_NAME_BY_CODE.get(f.dtype, str(f.dtype)), tuple(f.shape[: f.ndim]), f.offset)
        self._fields = fields

    def close(self) -> None:
        """Destroys the source. Idempotent. Close the loaders built over it first."""
        super().close()

    def __len__(self) -> int:
        self._h()
        return self._len

    @property
    def fields(self) -> Dict[str, FieldSpec]:
        """Field name → :class:`FieldSpec`, in the source's order (a copy)."""
        return dict(self._fields)

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample, all fields together."""
        return sum(dtype_size(f.dtype) * math.prod(f.shape) for f in self._fields.values())

    def _python_error(self, index: int) -> Optional[BaseException]:
        """The Python exception that failed sample ``index``, if this source runs Python code."""
        return None

    def __repr__(self) -> str:
        if self._handle is None:
            return f"<ferry.{type(self).__name__} closed>"
        fields = ", ".join(f"{n}: {f.dtype}{list(f.shape)}" for n, f in self._fields.items())
        return f"<ferry.{type(self).__name__} {self._len} samples {{{fields}}}>"


# --- sources over memory ----------------------------------------------------------------------------


class _PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", c_void_p),
        ("obj", c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", c_char_p),
        ("shape", c_void_p),
        ("strides", c_void_p),
        ("suboffsets", c_void_p),
        ("internal", c_void_p),
    ]


# Own function objects (ctypes.pythonapi's attributes are shared by every module of the process).
_get_buffer = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)(
    ("PyObject_GetBuffer", ctypes.pythonapi))
_release_buffer = ctypes.PYFUNCTYPE(None, ctypes.POINTER(_PyBuffer))(("PyBuffer_Release", ctypes.pythonapi))


def _buffer_address(mv: memoryview) -> int:
    """The address of a contiguous memoryview's first byte. The memoryview keeps the exporter's memory
    in place while it lives (a bytearray cannot be resized while exported)."""
    view = _PyBuffer()
    _get_buffer(mv, byref(view), 0)  # PyBUF_SIMPLE: contiguous bytes
    try:
        return view.buf or 0
    finally:
        _release_buffer(byref(view))


def _c_strides(shape: Sequence[int], itemsize: int) -> Tuple[int, ...]:
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def _array_view(obj: Any, name: str) -> Tuple[int, str, Tuple[int, ...], object]:
    """Returns (address, dtype name, full shape, owner to keep alive) for an array-like, without a copy."""
    what = f"field {name!r}"
    if isinstance(obj, tuple):
        if len(obj) != 3:
            raise TypeError(f"{what}: a tuple must be (buffer, dtype, shape)")
        buf, dtype, shape = obj
        dt = dtype_name(dtype, what)
        shape = _shape(shape, what)
        mv = memoryview(buf)
        if not mv.c_contiguous:
            raise _invalid(f"{what}: the buffer is not C-contiguous")
        want = math.prod(shape) * dtype_size(dt)
        if mv.nbytes != want:
            raise _invalid(f"{what}: the buffer holds {mv.nbytes} bytes; shape {shape} of {dt} needs {want}")
        return _buffer_address(mv), dt, shape, (buf, mv)
    ai = getattr(obj, "__array_interface__", None)
    if ai is not None:
        typestr = ai["typestr"]
        dt_obj = getattr(obj, "dtype", None)
        if typestr[1:2] == "V" and getattr(dt_obj, "name", None) in DTYPES:  # e.g. ml_dtypes.bfloat16
            dt = dt_obj.name
        else:
            dt = _type_string(typestr, what)
        shape = tuple(int(n) for n in ai["shape"])
        itemsize = int(typestr[2:]) if typestr[2:].isdigit() else dtype_size(dt)
        if itemsize != dtype_size(dt):
            raise _invalid(f"{what}: element size {itemsize} does not match {dt}")
        strides = ai.get("strides")
        if strides is not None and tuple(strides) != _c_strides(shape, itemsize) and math.prod(shape) > 1:
            raise _invalid(f"{what}: the array is not C-contiguous (strides {tuple(strides)}); "
                           "pass numpy.ascontiguousarray(a)")
        if ai.get("mask") is not None:
            raise _invalid(f"{what}: masked arrays are not supported")
        data = ai["data"]
        if isinstance(data, tuple):
            addr = data[0] or 0
        else:  # an object exporting the buffer protocol
            mv = memoryview(data)
            addr = _buffer_address(mv)
            obj = (obj, mv)
        return addr + int(ai.get("offset", 0) or 0), dt, shape, obj
    if type(obj).__module__ == "torch" and hasattr(obj, "data_ptr"):
        if obj.device.type != "cpu":
            raise _invalid(f"{what}: an ArraySource reads host memory; the tensor is on {obj.device}")
        if not obj.is_contiguous():
            raise _invalid(f"{what}: the tensor is not contiguous; pass t.contiguous()")
        return obj.data_ptr(), dtype_name(obj.dtype, what), tuple(obj.shape), obj
    try:
        mv = memoryview(obj)
    except TypeError:
        raise TypeError(
            f"{what}: {type(obj).__name__} is neither an array (__array_interface__) nor a buffer; "
            "pass a numpy array, a (buffer, dtype, shape) tuple, or a memoryview cast to its shape"
        ) from None
    if not mv.c_contiguous:
        raise _invalid(f"{what}: the buffer is not C-contiguous")
    dt = _type_string(mv.format, what)
    if mv.itemsize != dtype_size(dt):
        raise _invalid(f"{what}: format {mv.format!r} has {mv.itemsize}-byte elements, not {dtype_size(dt)}")
    return _buffer_address(mv), dt, tuple(mv.shape), (obj, mv)


class ArraySource(Source):
    """Samples from arrays in memory: ``ArraySource({"image": images, "label": labels})``.

    Each value is C-contiguous and its first dimension is the sample; every value has the same number
    of samples. Accepted: numpy arrays (anything with ``__array_interface__``), CPU torch tensors,
    objects with the buffer protocol (``memoryview(b).cast("f", [n, 3])``, ``array.array``) and
    ``(buffer, dtype, shape)`` tuples for raw bytes (``shape`` includes the sample dimension).

    Nothing is copied: the source keeps a reference to every array, and the arrays must not be modified
    while a loader reads them.
    """

    def __init__(self, arrays: Mapping[str, Any]) -> None:
        super().__init__()
        if not isinstance(arrays, Mapping) or not arrays:
            raise TypeError("ArraySource takes a non-empty dict {field name: array}")
        specs, ptrs, keep, n = [], [], [], None
        for name, obj in arrays.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"field names must be non-empty strings, not {name!r}")
            addr, dt, shape, owner = _array_view(obj, name)
            if len(shape) == 0:
                raise _invalid(f"field {name!r}: a 0-dimensional array has no sample dimension")
            if n is None:
                n = shape[0]
            elif shape[0] != n:
                raise _invalid(f"field {name!r} has {shape[0]} samples; the fields before it have {n}")
            if n == 0:
                raise _invalid(f"field {name!r} has no samples")
            if not addr:
                raise _invalid(f"field {name!r}: the array has no data pointer")
            specs.append((name, dt, _shape(shape[1:], f"field {name!r}"), 0))
            ptrs.append(addr)
            keep.append(owner)
        lib = _lib.lib()
        fields, names = _field_array(specs)
        data = (c_void_p * len(ptrs))(*ptrs)
        handle = c_void_p()
        _check(lib.ferry_source_memory(n, fields, len(specs), data, byref(handle)))
        self.arrays = dict(arrays)
        self._adopt(lib, handle, tuple(keep))


# --- sources over files -----------------------------------------------------------------------------


def _path(path: Any) -> bytes:
    return _c_string(os.fspath(path), "path")


class RecordSource(Source):
    """A memory-mapped file of fixed-size records after an optional header.

    ``fields`` maps each name to ``(offset, dtype, shape)``: the field's byte offset inside the record,
    its element type and per-sample shape (``()`` for a scalar). A file whose size past the header is
    not a whole number of records raises :class:`~ferry.FormatError`.
    """

    def __init__(self, path: Any, record_size: int, header_size: int = 0,
                 fields: Optional[Mapping[str, Tuple[int, Any, Any]]] = None) -> None:
        super().__init__()
        if not fields:
            raise TypeError("RecordSource needs fields={name: (offset, dtype, shape)}")
        specs = []
        for name, spec in fields.items():
            what = f"field {name!r}"
            try:
                offset, dtype, shape = spec
            except (TypeError, ValueError):
                raise TypeError(f"{what}: expected (offset, dtype, shape), got {spec!r}") from None
            specs.append((name, dtype_name(dtype, what), _shape(shape, what), _as_int64(offset, what + " offset")))
        lib = _lib.lib()
        arr, names = _field_array(specs)
        handle = c_void_p()
        _check(lib.ferry_source_records(_path(path), _as_int64(record_size, "record_size"),
                                        _as_int64(header_size, "header_size"), arr, len(specs), byref(handle)))
        self.path = os.fspath(path)
        self._adopt(lib, handle)


class CIFAR10Source(Source):
    """The CIFAR-10 binary format as is (``data_batch_N.bin``): fields ``label`` (uint8) and ``image``
    (uint8 ``[3, 32, 32]``, channels first)."""

    def __init__(self, path: Any) -> None:
        super().__init__()
        lib = _lib.lib()
        handle = c_void_p()
        _check(lib.ferry_source_cifar10(_path(path), byref(handle)))
        self.path = os.fspath(path)
        self._adopt(lib, handle)


class NpySource(Source):
    """One ``.npy`` file per field, memory-mapped: ``NpySource({"x": "x.npy", "y": "y.npy"})``. The
    arrays must be C-ordered, little-endian (or byte-sized), with the same first dimension."""

    def __init__(self, paths: Mapping[str, Any]) -> None:
        super().__init__()
        if not isinstance(paths, Mapping) or not paths:
            raise TypeError("NpySource takes a non-empty dict {field name: path}")
        names = [_c_string(str(n), "field name") for n in paths]
        files = [_path(p) for p in paths.values()]
        lib = _lib.lib()
        handle = c_void_p()
        _check(lib.ferry_source_npy((c_char_p * len(names))(*names), (c_char_p * len(files))(*files),
                                    len(names), byref(handle)))
        self.paths = {n: os.fspath(p) for n, p in paths.items()}
        self._adopt(lib, handle)


_TOKEN_FORMATS = {
    "uint16": _lib.FERRY_TOKENS_UINT16,
    "uint32": _lib.FERRY_TOKENS_UINT32,
    "llmc": _lib.FERRY_TOKENS_LLMC,
    "llm.c": _lib.FERRY_TOKENS_LLMC,
}


def _token_format(format: Any, allowed: Sequence[str]) -> int:
    """The ferry_token_format of a format name (or its alias), which must be one of ``allowed``."""
    fmt = _TOKEN_FORMATS.get(str(format).lower())
    if fmt is None or fmt not in [_TOKEN_FORMATS[a] for a in allowed]:
        raise _invalid(f"token format {format!r} is not one of {list(allowed)}")
    return fmt


class TokenSource(Source):
    """A token file served as language-model windows: fields ``x`` and ``y`` (``x`` shifted by one
    token), each ``[seq_len]`` of the file's token type.

    ``format``: ``"uint16"`` (nanoGPT's ``.bin``), ``"uint32"``, or ``"llmc"`` (an llm.c shard with its
    256 × int32 header; the header gives the token type). Sample ``i`` starts at token ``i * seq_len``,
    or, with ``random=True``, at a pseudo-random offset that is a pure function of ``(seed, i)``, as
    nanoGPT's ``get_batch`` draws them.

    With ``window=True`` each sample is one field, ``tokens``, of ``seq_len + 1`` tokens (``x`` followed
    by the last token of ``y``): the same samples and windows, with each token crossing to the GPU once.
    """

    def __init__(self, path: Any, seq_len: int, format: str = "uint16", random: bool = False,
                 seed: int = 0, window: bool = False) -> None:
        super().__init__()
        fmt = _token_format(format, ["llmc", "uint16", "uint32"])
        lib = _lib.lib()
        opts = _lib.TokenOptions()
        _check(lib.ferry_token_options_init(byref(opts)))
        opts.format = fmt
        opts.seq_len = _as_int64(seq_len, "seq_len")
        opts.seed = _as_int(seed, "seed") & (2**64 - 1)
        opts.flags = (_lib.FERRY_TOKENS_F_RANDOM if random else 0) | (_lib.FERRY_TOKENS_F_WINDOW if window else 0)
        handle = c_void_p()
        _check(lib.ferry_source_tokens(_path(path), byref(opts), byref(handle)))
        self.path = os.fspath(path)
        self.seq_len = opts.seq_len
        self.window = bool(window)
        self._adopt(lib, handle)


class RaggedTokenSource(Source):
    """Variable-length token sequences: ``RaggedTokenSource(tokens_path, offsets_path, max_len=512)``.

    ``tokens_path`` is a flat file of little-endian tokens (``format``: ``"uint16"`` or ``"uint32"``);
    ``offsets_path`` is a ``.npy`` array of N + 1 int64 or uint64 token offsets, non-decreasing, the first
    at least 0 and the last at most the token count, so that sample ``i`` is
    ``tokens[offsets[i]:offsets[i + 1]]``. The source has N samples and one field, named ``field``, of
    ``[max_len]`` tokens: a sample's tokens, cut at ``max_len``, then zeros. A malformed file raises
    :class:`~ferry.FormatError` naming the file and the problem.
    """

    def __init__(self, tokens_path: Any, offsets_path: Any, max_len: int, format: str = "uint16",
                 field: str = "tokens") -> None:
        super().__init__()
        fmt = _token_format(format, ["uint16", "uint32"])
        if not isinstance(field, str):
            raise TypeError(f"field must be a string, not {field!r}")
        lib = _lib.lib()
        opts = _lib.RaggedOptions()
        _check(lib.ferry_ragged_options_init(byref(opts)))
        opts.format = fmt
        opts.max_len = _as_int64(max_len, "max_len")
        name = _c_string(field, "field name")
        opts.field_name = name
        handle = c_void_p()
        _check(lib.ferry_source_ragged_tokens(_path(tokens_path), _path(offsets_path), byref(opts),
                                                     byref(handle)))
        self.tokens_path = os.fspath(tokens_path)
        self.offsets_path = os.fspath(offsets_path)
        self.max_len = opts.max_len
        self._adopt(lib, handle)


# --- samples from Python code -----------------------------------------------------------------------


def _numpy() -> Any:
    """numpy if it is importable, else None. numpy is optional, and imported only when first needed."""
    try:
        import numpy
    except ImportError:
        return None
    return numpy


class _CallbackState:
    """What the C callback needs. Kept apart from the CallbackSource object so that the callback (held
    until the handle is destroyed) does not keep the source object itself alive."""

    _MAX_ERRORS = 256

    def __init__(self, fn: Callable[[int, Dict[str, Any]], Any], specs, np: Any) -> None:
        self.fn = fn
        self.lock = threading.Lock()
        self.errors: Dict[int, BaseException] = {}
        self.running = _InCallback(self)
        self.makers = []
        for name, dt, shape, _ in specs:
            nbytes = dtype_size(dt) * math.prod(shape)
            if np is not None:
                np_dt = np.dtype("uint16" if dt == "bfloat16" else dt)
                self.makers.append((name, _numpy_maker(np.frombuffer, np_dt, shape, nbytes)))
            else:
                self.makers.append((name, _memoryview_maker(_MEMORYVIEW_FORMATS[dt], shape, nbytes)))

    def record(self, index: int, exc: BaseException) -> None:
        # The frames hold views of ferry's staging memory, which is reused and freed with the iterator:
        # no traceback of the exception or of those chained to it (a handler's own error) may keep them.
        chain, seen = [exc], set()
        while chain:
            e = chain.pop()
            if e is None or id(e) in seen:
                continue
            seen.add(id(e))
            e.__traceback__ = None
            chain += [e.__cause__, e.__context__]
        with self.lock:
            if len(self.errors) >= self._MAX_ERRORS:
                self.errors.pop(next(iter(self.errors)))
            self.errors[index] = exc

    def __call__(self, user: Any, index: int, dst: Any, dst_bytes: Any, num_fields: int) -> int:
        # Runs on ferry's worker threads; ctypes takes the GIL. Nothing may propagate into C.
        try:
            with self.running:
                views = [(name, make(dst[k])) for k, (name, make) in enumerate(self.makers)]
                out = dict(views)
                result = self.fn(index, out)
                self.collect(views, out, result)
            return 0
        except BaseException as exc:  # noqa: BLE001 - every exception becomes a failed sample
            try:
                self.record(index, exc)
            except BaseException:  # pragma: no cover - the record itself must not raise into C
                pass
            return 1


    def collect(self, views: List[Tuple[str, Any]], out: Dict[str, Any], result: Any) -> None:
        """Makes what fn gave count: a value it returned (Dataset style: a dict by field name, a tuple in
        field order, or, for a one-field source, the value itself) or bound to a key of ``out`` instead of
        writing into the view is copied into the staging memory; a value that cannot be is refused."""
        names = [name for name, _ in views]
        given: Dict[str, Any] = {}
        if result is not None and result is not out:
            if isinstance(result, Mapping):
                unknown = [k for k in result if k not in out]
                missing = [n for n in names if n not in result]
                if unknown or missing:
                    raise TypeError(f"fn returned a dict with keys {list(result)}; the source's fields are {names}")
                given = dict(result)
            elif len(names) > 1 and isinstance(result, (tuple, list)) and len(result) == len(names):
                given = dict(zip(names, result))
            elif len(names) == 1:
                given = {names[0]: result}
            else:
                raise TypeError(f"fn returned a {type(result).__name__}; return None after writing into out, or a "
                                f"dict {{field: value}} (or a tuple in field order) of the fields {names}")
        if set(out) != set(names):
            raise TypeError(f"fn changed the keys of out to {list(out)}; the source's fields are {names}")
        for name, view in views:
            value = out[name]
            if value is not view:  # rebound (out[name] = value) instead of written into (out[name][...] = value)
                if name in given and given[name] is not value:
                    raise TypeError(f"field {name!r}: fn both rebound out[{name!r}] and returned a value for it")
                given[name] = value
        for name, view in views:
            if name in given and given[name] is not view:
                _copy_into(view, given[name], name)


def _copy_into(view: Any, value: Any, name: str) -> None:
    """Copies value into a staging view (a numpy array or a memoryview), checking its size."""
    if isinstance(view, memoryview):
        if view.ndim == 0 and isinstance(value, (int, float, bool)):
            view[()] = value
            return
        try:
            src = memoryview(value).cast("B")
        except TypeError:
            raise TypeError(f"field {name!r}: fn gave a {type(value).__name__}, which is not a buffer; write into "
                            f"out[{name!r}] instead") from None
        dst = view.cast("B")
        if src.nbytes != dst.nbytes:
            raise ValueError(f"field {name!r}: fn gave {src.nbytes} bytes; the field holds {dst.nbytes}")
        dst[:] = src
        return
    np = _numpy()
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf" or (arr.shape != view.shape and arr.size != 1):
        raise ValueError(f"field {name!r}: fn gave shape {arr.shape} of {arr.dtype}; the field is {view.shape} "
                         f"of {view.dtype}")
    view[...] = arr


def _numpy_maker(frombuffer: Any, np_dt: Any, shape: Tuple[int, ...], nbytes: int) -> Callable[[int], Any]:
    buf_type = ctypes.c_uint8 * nbytes

    def make(addr: int) -> Any:
        return frombuffer(buf_type.from_address(addr), dtype=np_dt).reshape(shape)

    return make


def _memoryview_maker(fmt: str, shape: Tuple[int, ...], nbytes: int) -> Callable[[int], Any]:
    buf_type = ctypes.c_uint8 * nbytes
    dims = list(shape)

    def make(addr: int) -> Any:
        return memoryview(buf_type.from_address(addr)).cast("B").cast(fmt, dims)

    return make


class CallbackSource(Source):
    """Samples that a Python function fills: ``CallbackSource(fn, length=N, fields={name: (dtype, shape)})``.

    ``fn(index, out)`` fills sample ``index``: ``out`` maps each field name to a writable view of ferry's
    staging memory for that sample — a numpy array of the field's dtype and shape when numpy is
    importable (``numpy=False`` forces memoryviews), else a memoryview cast to the shape. bfloat16
    fields are viewed as their raw uint16 words (numpy has no bfloat16), and so are float16 fields in a
    memoryview (which has no float16 format). Write the sample into the views (``out["x"][...]
    = value``); keep no reference to them after returning, the memory is reused. Written Dataset style,
    ``fn`` may instead return the sample (a dict by field name, a tuple in field order, or the value of a
    one-field source) or bind ``out[name] = value``: the values are copied in (one copy more), and one of
    another size raises.

    ``fn`` runs on ferry's worker threads, several at once (each takes the GIL), so it must be
    thread-safe. An exception inside it fails the sample's batch: the loader raises
    :class:`~ferry.FerryIOError` naming the sample, with the exception as its ``__cause__``, and keeps
    going with the next batch.
    """

    def __init__(self, fn: Callable[[int, Dict[str, Any]], Any], length: int,
                 fields: Mapping[str, Tuple[Any, Any]], numpy: Optional[bool] = None) -> None:
        super().__init__()
        if not callable(fn):
            raise TypeError("fn must be callable as fn(index, out)")
        if not fields:
            raise TypeError("CallbackSource needs fields={name: (dtype, shape)}")
        specs = []
        for name, spec in fields.items():
            what = f"field {name!r}"
            try:
                dtype, shape = spec
            except (TypeError, ValueError):
                raise TypeError(f"{what}: expected (dtype, shape), got {spec!r}") from None
            specs.append((name, dtype_name(dtype, what), _shape(shape, what), 0))
        np = _numpy() if numpy is None or numpy else None
        if numpy and np is None:
            raise ImportError("CallbackSource(numpy=True) needs numpy")
        state = _CallbackState(fn, specs, np)
        c_fn = _lib.SAMPLE_FN(state)
        lib = _lib.lib()
        arr, names = _field_array(specs)
        handle = c_void_p()
        _check(lib.ferry_source_callback(_as_int64(length, "length"), arr, len(specs), c_fn, None, byref(handle)))
        self._state = state
        self.fn = fn
        # The C callback must outlive the handle: the finalizer holds it until the handle is destroyed.
        self._adopt(lib, handle, (c_fn, state))

    def _python_error(self, index: int) -> Optional[BaseException]:
        with self._state.lock:
            return self._state.errors.pop(index, None)


def _format_exception(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()
