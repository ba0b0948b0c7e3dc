# Copyright the ferry authors. Licensed under the Apache License, Version 2.0.
"""Images as they are stored: a folder per class (torchvision's ImageFolder) and WebDataset tar shards,
decoded, cropped and normalized by the library (RandomResizedCrop, CenterCrop)."""

from __future__ import annotations

import os
from ctypes import byref, c_char_p, c_void_p, create_string_buffer
from typing import Any, List, Optional, Sequence, Tuple, Union

from . import _lib
from ._errors import _as_int, _as_int64, _c_string, _check, _invalid
from ._sources import Source
from ._transforms import Normalize, Transform

__all__ = ["ImageFolderSource", "WebDatasetSource", "RandomResizedCrop", "CenterCrop", "DecodeImage"]


def _image_options(max_bytes: Optional[int], flags: int) -> _lib.ImageSourceOptions:
    opts = _lib.ImageSourceOptions()
    _check(_lib.lib().ferry_image_source_options_init(byref(opts)))
    opts.max_bytes = 0 if max_bytes is None else _as_int64(max_bytes, "max_bytes")
    opts.flags = flags
    return opts


class _NamedSource(Source):
    def sample_name(self, index: int) -> str:
        """Sample ``index``'s file (image folders) or ``shard.tar:key.ext`` (WebDataset)."""
        buf = create_string_buffer(4096)
        _check(self._lib.ferry_source_sample_name(self._h(), _as_int64(index, "index"), buf, len(buf)))
        return buf.value.decode("utf-8", "replace")


class ImageFolderSource(_NamedSource):
    """A folder per class, read as torchvision's ``ImageFolder`` reads it: the class folders, sorted, are the
    labels; each class's files are found by a sorted walk (following links) and kept when they end in one
    of torchvision's image extensions; sample ``i`` is torchvision's sample ``i`` for the same root. Fields:
    ``image``, the file's encoded bytes (up to ``max_bytes``, default 8 MiB: decode and crop them with
    :class:`RandomResizedCrop` or :class:`CenterCrop`), and ``label`` (int64). ``allow_empty`` accepts class
    folders without an image."""

    def __init__(self, root: Any, max_bytes: Optional[int] = None, allow_empty: bool = False) -> None:
        super().__init__()
        lib = _lib.lib()
        opts = _image_options(max_bytes, _lib.FERRY_IMAGES_F_ALLOW_EMPTY if allow_empty else 0)
        handle = c_void_p()
        _check(lib.ferry_source_image_folder(_c_string(os.fspath(root), "root"), byref(opts), byref(handle)))
        self.root = os.fspath(root)
        self._adopt(lib, handle)


class WebDatasetSource(_NamedSource):
    """WebDataset tar shards with random access: ``WebDatasetSource("train-{0000..0147}.tar")``. Members are
    grouped into samples by key as the webdataset package groups them; each shard's member index is built
    from its tar headers once and cached (``cache_dir``, default a ``cache`` folder beside the first shard),
    so samples are numbered and the loader's seeded shuffle, exact and elastic resume and rank sharding apply
    as to any source. Fields: ``image`` (the first present of the ``image`` extensions, ``;``-separated) and
    ``label`` (the integer in the ``label`` member; ``label=None`` for none)."""

    def __init__(self, shards: Union[str, Sequence[Any]], image: str = "jpg;jpeg;png;webp",
                 label: Optional[str] = "cls", max_bytes: Optional[int] = None, cache_dir: Any = None,
                 cache: bool = True) -> None:
        super().__init__()
        if isinstance(shards, (str, bytes, os.PathLike)):
            shards = [shards]
        paths = [os.fspath(s) for s in shards]
        if not paths:
            raise TypeError("WebDatasetSource needs one or more shard paths or patterns")
        encoded = [_c_string(p, "shard") for p in paths]
        lib = _lib.lib()
        opts = _image_options(max_bytes, 0 if cache else _lib.FERRY_IMAGES_F_NO_CACHE)
        keep = [_c_string(image, "image"), _c_string("-" if label is None else label, "label")]
        opts.image_keys, opts.label_key = keep[0], keep[1]
        if cache_dir is not None:
            keep.append(_c_string(os.fspath(cache_dir), "cache_dir"))
            opts.cache_dir = keep[-1]
        handle = c_void_p()
        arr = (c_char_p * len(encoded))(*encoded)
        _check(lib.ferry_source_webdataset(arr, len(encoded), byref(opts), byref(handle)))
        self.shards = paths
        self._adopt(lib, handle)


def _pair(value: Any, what: str) -> Tuple[float, float]:
    try:
        a, b = value
        return float(a), float(b)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a pair of numbers, not {value!r}") from None


class _Crop(Transform):
    def __init__(self, size: Any, mean: Any, std: Any, layout: Any, dtype: Any, max_pixels: Optional[int],
                 antialias: bool) -> None:
        if isinstance(size, (tuple, list)):
            if len(size) != 2 or size[0] != size[1]:
                raise _invalid(f"{type(self).__name__}: size {size!r}: only square crops (one side) are made")
            size = size[0]
        self.size = _as_int(size, "size")
        self._norm = Normalize(mean, std, layout=layout, dtype=dtype)
        self.max_pixels = max_pixels
        self.antialias = bool(antialias)

    def _fill(self, t: _lib.Transform, keep: List[bytes]) -> None:
        self._norm._fill(t, keep)
        t.crop_size = self.size
        t.crop_flags = _lib.FERRY_CROP_F_ANTIALIAS if self.antialias else 0
        t.max_pixels = 0 if self.max_pixels is None else _as_int64(self.max_pixels, "max_pixels")


class RandomResizedCrop(_Crop):
    """torchvision's ``RandomResizedCrop(size, scale, ratio)`` then a horizontal flip with probability
    ``flip`` and ``Normalize(mean, std)``, in one step, on an encoded image (JPEG, PNG, WebP, BMP, TIFF or
    PPM/PGM/PBM bytes, decoded to RGB as Pillow decodes them: :class:`ImageFolderSource`,
    :class:`WebDatasetSource`) or a decoded uint8 ``[H, W, 3]`` image. The box follows torchvision's rule
    (10 draws, then the central crop), each draw a pure function of the loader's seed, the epoch and the
    sample's index; the resize is bilinear. Output ``[3, size, size]`` (``layout="HWC"``: ``[size, size, 3]``)
    of ``dtype``. ``antialias`` (the default, as Pillow and torchvision resize) widens the filter by the
    downscale factor when the box is larger than the output. Images over ``max_pixels`` (64 Mpx) are refused
    by name. On a GPU the batch is cropped by one kernel from images decoded in device memory (JPEGs by
    nvJPEG where it loads, the others by the loader's threads)."""

    _kind = _lib.FERRY_TRANSFORM_RANDOM_RESIZED_CROP

    def __init__(self, size: Any, scale: Any = (0.08, 1.0), ratio: Any = (3 / 4, 4 / 3), flip: float = 0.0,
                 mean: Any = None, std: Any = None, layout: Any = "CHW", dtype: Any = "float32",
                 max_pixels: Optional[int] = None, antialias: bool = True) -> None:
        super().__init__(size, mean, std, layout, dtype, max_pixels, antialias)
        self.scale = _pair(scale, "scale")
        self.ratio = _pair(ratio, "ratio")
        self.flip = float(flip)

    def _fill(self, t: _lib.Transform, keep: List[bytes]) -> None:
        super()._fill(t, keep)
        t.scale_min, t.scale_max = self.scale
        t.ratio_min, t.ratio_max = self.ratio
        t.flip = self.flip

    def __repr__(self) -> str:
        return (f"ferry.RandomResizedCrop({self.size}, scale={self.scale}, ratio={self.ratio}, flip={self.flip}, "
                f"mean={self._norm.mean}, std={self._norm.std}, layout={self._norm.layout!r}, "
                f"dtype={self._norm.dtype!r})")


class CenterCrop(_Crop):
    """torchvision's evaluation transform, ``Resize(resize)`` (the shorter side; default ``size * 256 / 224``)
    then ``CenterCrop(size)`` and ``Normalize(mean, std)``, fused into one bilinear resample of the central
    box; inputs and outputs as :class:`RandomResizedCrop`."""

    _kind = _lib.FERRY_TRANSFORM_CENTER_CROP

    def __init__(self, size: Any, resize: Optional[int] = None, mean: Any = None, std: Any = None,
                 layout: Any = "CHW", dtype: Any = "float32", max_pixels: Optional[int] = None,
                 antialias: bool = True) -> None:
        super().__init__(size, mean, std, layout, dtype, max_pixels, antialias)
        self.resize = None if resize is None else _as_int(resize, "resize")

    def _fill(self, t: _lib.Transform, keep: List[bytes]) -> None:
        super()._fill(t, keep)
        t.resize_to = 0 if self.resize is None else self.resize

    def __repr__(self) -> str:
        return (f"ferry.CenterCrop({self.size}, resize={self.resize}, mean={self._norm.mean}, std={self._norm.std}, "
                f"layout={self._norm.layout!r}, dtype={self._norm.dtype!r})")


class DecodeImage(Transform):
    """An encoded image (as :class:`RandomResizedCrop` reads) to its pixels, uint8 ``[height, width, 3]`` RGB,
    for data sets whose images all have one size (pre-resized sets, CIFAR or MNIST as PNG files). An image
    of another size fails its batch naming the file (or is skipped with ``on_error="skip"``). On a GPU,
    JPEGs are decoded by nvJPEG straight into the batch, the other formats by the loader's threads."""

    _kind = _lib.FERRY_TRANSFORM_DECODE_IMAGE

    def __init__(self, height: int, width: int, max_pixels: Optional[int] = None) -> None:
        self.height = _as_int(height, "height")
        self.width = _as_int(width, "width")
        self.max_pixels = max_pixels

    def _fill(self, t: _lib.Transform, keep: List[bytes]) -> None:
        t.height, t.width = self.height, self.width
        t.max_pixels = 0 if self.max_pixels is None else _as_int64(self.max_pixels, "max_pixels")

    def __repr__(self) -> str:
        return f"ferry.DecodeImage({self.height}, {self.width})"
