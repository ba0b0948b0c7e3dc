"""Layout transforms of batch fields: :class:`Normalize`, :class:`ShiftTokens` and :class:`PadSequences`.

A transform describes a ``ferry_transform``; it is given to an iterator or loader per source field, e.g.
``Loader(src, 256, transforms={"image": ferry.Normalize(mean, std)})``. On a GPU the library runs it as a
kernel on the iterator's stream right after the batch's bytes cross PCIe; on the CPU engine it runs on the
host, with the same results within float rounding.

The classes only convert their arguments to the C struct: the library checks the values when the iterator
is created and raises :class:`~ferry.InvalidArgumentError` naming the problem.
"""

from __future__ import annotations

import numbers
from ctypes import byref
from typing import Any, List, Optional, Sequence, Tuple

from . import _lib
from ._errors import _as_int, _c_string, _check, _invalid
from ._sources import DTYPES, dtype_name

__all__ = ["Transform", "Normalize", "ShiftTokens", "PadSequences"]

_LAYOUTS = {"CHW": _lib.FERRY_LAYOUT_CHW, "NCHW": _lib.FERRY_LAYOUT_CHW, "HWC": _lib.FERRY_LAYOUT_HWC,
            "NHWC": _lib.FERRY_LAYOUT_HWC, "CHANNELS_LAST": _lib.FERRY_LAYOUT_HWC}
_LAYOUT_NAMES = {_lib.FERRY_LAYOUT_CHW: "CHW", _lib.FERRY_LAYOUT_HWC: "HWC"}


def _name(value: Optional[str], what: str) -> Optional[bytes]:
    """A field name as the C string the struct holds; None stays NULL (the library's default name)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    return _c_string(value, what)


def _values(value: Any, what: str) -> Optional[Tuple[float, ...]]:
    """mean or std as a tuple of floats: None, a number, or a sequence of numbers."""
    if value is None:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return (float(value),)
    if hasattr(value, "tolist"):  # a numpy array or a torch tensor
        value = value.tolist()
        if not isinstance(value, list):
            return (float(value),)
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{what} must be a number or a sequence of numbers, not {value!r}")
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number or a sequence of numbers, not {value!r}") from None


class Transform:
    """The base of the transforms. Subclasses fill a ``ferry_transform``; the library does the work."""

    _kind = 0

    def _fill(self, t: _lib.Transform, keep: List[bytes]) -> None:
        raise NotImplementedError

    def _struct(self, field: str, keep: List[bytes]) -> _lib.Transform:
        """The ``ferry_transform`` of this transform on source field ``field``. The C strings it points to
        are appended to ``keep``, which must stay alive while the struct is in use."""
        if not isinstance(field, str):
            raise TypeError(f"a transform's field name must be a str, not {type(field).__name__}")
        name = _c_string(field, "a transform's field name")
        keep.append(name)
        t = _lib.Transform()
        _check(_lib.lib().ferry_transform_init(byref(t), self._kind, name))
        self._fill(t, keep)
        return t


    def _set_name(self, t: _lib.Transform, attr: str, value: Optional[bytes], keep: List[bytes]) -> None:
        if value is not None:
            keep.append(value)
            setattr(t, attr, value)


class Normalize(Transform):
    """u8 images ``[H, W, C]`` (C <= 4), or ``[C, H, W]`` with ``input_layout="CHW"`` (channel planes, as
    CIFAR's binary records hold them), to floating point: ``(x * scale - mean[c]) / std[c]``.

    ``mean`` and ``std``: None, one value for every channel, or one per channel, in units of ``x * scale``
    (torchvision's ImageNet mean is ``(0.485, 0.456, 0.406)``, std ``(0.229, 0.224, 0.225)``). ``scale``:
    None is 1/255. ``layout``: ``"CHW"`` (the batch is ``[B, C, H, W]``) or ``"HWC"``. ``dtype``:
    ``"float32"``, ``"float16"`` or ``"bfloat16"`` (also as numpy or torch dtypes). ``flip``: the probability
    of a horizontal flip, decided per sample as a pure function of the iterator's seed, the epoch and the
    sample index, so a resumed run flips the same samples. The field keeps its name.
    """

    _kind = _lib.FERRY_TRANSFORM_NORMALIZE

    def __init__(self, mean: Any = None, std: Any = None, layout: Any = "CHW", dtype: Any = "float32",
                 flip: float = 0.0, scale: Optional[float] = None, input_layout: Any = "HWC") -> None:
        self.mean = _values(mean, "mean")
        self.std = _values(std, "std")
        self._layout, self.layout = _layout_code(layout, "layout")
        self._input_layout, self.input_layout = _layout_code(input_layout, "input_layout")
        self.dtype = dtype_name(dtype, "Normalize dtype")
        self.flip = float(flip)
        self.scale = None if scale is None else float(scale)

    def _fill(self, t: _lib.Transform, keep: List[bytes]) -> None:
        mean, std = self.mean, self.std
        # One count covers both arrays: a missing one takes the neutral value, a single one is repeated.
        n = max(len(mean or ()), len(std or ()))
        if mean is not None and std is not None and len(mean) != len(std) and 1 not in (len(mean), len(std)):
            raise _invalid(f"Normalize: {len(mean)} mean values and {len(std)} std values")
        mean = _broadcast(mean, n, 0.0)
        std = _broadcast(std, n, 1.0)
        t.channels = n
        for c in range(min(n, len(t.mean))):
            t.mean[c] = mean[c]
            t.std[c] = std[c]
        t.layout = self._layout
        t.input_layout = self._input_layout
        t.dtype = DTYPES[self.dtype][0]
        t.flip = self.flip
        t.scale = 0.0 if self.scale is None else self.scale

    def __repr__(self) -> str:
        return (f"ferry.Normalize(mean={self.mean}, std={self.std}, layout={self.layout!r}, dtype={self.dtype!r}, "
                f"flip={self.flip}, scale={self.scale}, input_layout={self.input_layout!r})")


def _layout_code(layout: Any, what: str) -> Tuple[int, Any]:
    """A layout name (or the C enum value) as (code, display name); the library checks a numeric code."""
    if isinstance(layout, str):
        code = _LAYOUTS.get(layout.strip().upper())
        if code is None:
            raise _invalid(f"Normalize: unknown {what} {layout!r} (\"CHW\" or \"HWC\")")
        return code, _LAYOUT_NAMES[code]
    code = _as_int(layout, what)
    return code, _LAYOUT_NAMES.get(code, code)


def _broadcast(values: Optional[Sequence[float]], n: int, neutral: float) -> Sequence[float]:
    if not values:
        return [neutral] * n
    if len(values) == 1:
        return [values[0]] * n
    return values


class ShiftTokens(Transform):
    """A window of ``seq_len + 1`` tokens (uint16, uint32 or int32: ``TokenSource(window=True)``,
    :class:`~ferry.GPTSource`) to the language-model pair ``x`` (the first ``seq_len`` tokens) and ``y``
    (the same shifted by one), both int64 ``[B, seq_len]``. The window's field is replaced by ``x``, ``y``
    and the optional outputs, in that order.

    What megatron-core's ``GPTDataset`` returns beside them, made on the device: ``loss_mask`` names a
    float32 ``[B, seq_len]`` loss mask (1; 0 where the input token is ``eod`` when ``mask_eod``: Megatron's
    ``eod_mask_loss``), ``position_ids`` an int64 ``[B, seq_len]`` of positions (restarting after each
    ``eod`` input when ``reset_positions``: Megatron's ``reset_position_ids``). Each is made only when
    named."""

    _kind = _lib.FERRY_TRANSFORM_SHIFT_TOKENS

    def __init__(self, x: str = "x", y: str = "y", loss_mask: Optional[str] = None,
                 position_ids: Optional[str] = None, eod: Optional[int] = None, mask_eod: bool = False,
                 reset_positions: bool = False) -> None:
        self.x = x
        self.y = y
        self.loss_mask = loss_mask
        self.position_ids = position_ids
        self.mask_eod = bool(mask_eod)
        self.reset_positions = bool(reset_positions)
        if (self.mask_eod or self.reset_positions) and eod is None:
            raise _invalid("ShiftTokens: mask_eod and reset_positions need the eod token id")
        self.eod = None if eod is None else _as_int(eod, "eod")
        if self.eod is not None and not -(2**63) <= self.eod < 2**63:
            raise _invalid(f"eod {self.eod} does not fit int64")
        self._x = _name(x, "ShiftTokens x")
        self._y = _name(y, "ShiftTokens y")
        self._mask = _name(loss_mask, "ShiftTokens loss_mask")
        self._pos = _name(position_ids, "ShiftTokens position_ids")

    def _fill(self, t: _lib.Transform, keep: List[bytes]) -> None:
        self._set_name(t, "x_name", self._x, keep)
        self._set_name(t, "y_name", self._y, keep)
        self._set_name(t, "loss_mask_name", self._mask, keep)
        self._set_name(t, "position_ids_name", self._pos, keep)
        t.eod = 0 if self.eod is None else self.eod
        t.shift_flags = ((_lib.FERRY_SHIFT_F_MASK_EOD if self.mask_eod else 0)
                         | (_lib.FERRY_SHIFT_F_RESET_POSITIONS if self.reset_positions else 0))

    def __repr__(self) -> str:
        extra = ""
        if self.loss_mask is not None or self.position_ids is not None:
            extra = (f", loss_mask={self.loss_mask!r}, position_ids={self.position_ids!r}, eod={self.eod!r}, "
                     f"mask_eod={self.mask_eod}, reset_positions={self.reset_positions}")
        return f"ferry.ShiftTokens(x={self.x!r}, y={self.y!r}{extra})"


class PadSequences(Transform):
    """A variable-length token field (``RaggedTokenSource``) to int64 tokens ``[B, L]`` padded with
    ``pad_value``, a bool attention mask ``[B, L]`` (True for a token) named ``mask``, and int64 lengths
    ``[B]`` named ``lengths``. ``L`` is the batch's longest sequence, or the source's ``max_len`` with
    ``fixed=True``. The token field keeps its name."""

    _kind = _lib.FERRY_TRANSFORM_PAD_SEQUENCES

    def __init__(self, pad_value: int = 0, fixed: bool = False, mask: str = "attention_mask",
                 lengths: str = "lengths") -> None:
        self.pad_value = _as_int(pad_value, "pad_value")
        if not -(2**63) <= self.pad_value < 2**63:
            raise _invalid(f"pad_value {self.pad_value} does not fit int64")
        self.fixed = bool(fixed)
        self.mask = mask
        self.lengths = lengths
        self._mask = _name(mask, "PadSequences mask")
        self._lengths = _name(lengths, "PadSequences lengths")

    def _fill(self, t: _lib.Transform, keep: List[bytes]) -> None:
        t.pad_value = self.pad_value
        t.fixed_length = 1 if self.fixed else 0
        self._set_name(t, "mask_name", self._mask, keep)
        self._set_name(t, "lengths_name", self._lengths, keep)


    def __repr__(self) -> str:
        return (f"ferry.PadSequences(pad_value={self.pad_value}, fixed={self.fixed}, mask={self.mask!r}, "
                f"lengths={self.lengths!r})")


_STAGING = {"auto": _lib.FERRY_STAGING_AUTO, "gather": _lib.FERRY_STAGING_GATHER,
            "dma": _lib.FERRY_STAGING_DMA, "mapped": _lib.FERRY_STAGING_MAPPED}
STAGING_NAMES = {code: name for name, code in _STAGING.items()}


def staging_code(staging: Any) -> int:
    """``"auto"``, ``"gather"``, ``"dma"`` or ``"mapped"`` (or a ``ferry_staging`` value) as the C value."""
    if isinstance(staging, str):
        code = _STAGING.get(staging.strip().lower())
        if code is None:
            raise _invalid(f"unknown staging {staging!r} (auto, gather, dma or mapped)")
        return code
    return _as_int(staging, "staging")


def transform_array(transforms: Any) -> Tuple[Any, int, List[bytes]]:
    """Builds the ``ferry_transform[]`` of ``{field name: Transform}``; returns the array (None when
    empty), its length and the C strings it points to, which must stay alive while it is in use."""
    if not transforms:
        return None, 0, []
    if not hasattr(transforms, "items"):
        raise TypeError(f"transforms must be a dict {{field name: transform}}, not {type(transforms).__name__}")
    items = list(transforms.items())
    arr = (_lib.Transform * len(items))()
    keep: List[bytes] = []
    for i, (field, t) in enumerate(items):
        if not isinstance(t, Transform):
            raise TypeError(f"transforms[{field!r}] must be a ferry transform (Normalize, ShiftTokens, "
                            f"PadSequences), not {type(t).__name__}")
        arr[i] = t._struct(field, keep)
    return arr, len(items), keep


