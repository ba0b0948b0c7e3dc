# Copyright the ferry authors. Licensed under the Apache License, Version 2.0.
"""Megatron corpora: the indexed dataset (``prefix.idx`` + ``prefix.bin``) as documents, as GPT windows in
ferry's or megatron-core's order, and weighted blends. Every check, index build and order lives in the
library; these classes set options and hold handles."""

from __future__ import annotations

import ctypes
import os
from ctypes import byref, c_char_p, c_double, c_int64, c_void_p
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from . import _lib
from ._errors import _as_int, _as_int64, _c_string, _check, _invalid
from ._sources import Source

__all__ = ["MegatronSource", "GPTSource", "BlendSource", "megatron_blend_sizes", "megatron_blend"]

_SPLITS = {"train": _lib.FERRY_SPLIT_TRAIN, "valid": _lib.FERRY_SPLIT_VALID, "validation": _lib.FERRY_SPLIT_VALID,
           "test": _lib.FERRY_SPLIT_TEST}
_GPT_ORDERS = {"ferry": _lib.FERRY_GPT_ORDER_FERRY, "megatron": _lib.FERRY_GPT_ORDER_MEGATRON}
_BLEND_ORDERS = {"ferry": _lib.FERRY_BLEND_ORDER_FERRY, "megatron": _lib.FERRY_BLEND_ORDER_MEGATRON}

Prefixes = Union[str, "os.PathLike[str]", Sequence[Union[str, "os.PathLike[str]"]]]


def _prefixes(prefixes: Prefixes) -> Tuple[List[str], Any]:
    """The prefixes as strings and as a C array (which the caller keeps alive for the call)."""
    if isinstance(prefixes, (str, bytes, os.PathLike)):
        prefixes = [prefixes]
    paths = [os.fspath(p) for p in prefixes]
    if not paths or not all(isinstance(p, str) for p in paths):
        raise TypeError("prefixes must be a path or a non-empty list of paths (each without .idx/.bin)")
    encoded = [_c_string(p, "prefix") for p in paths]
    return paths, (c_char_p * len(encoded))(*encoded)


def _choice(value: Any, table: Dict[str, int], what: str) -> int:
    code = table.get(str(value).lower()) if isinstance(value, str) else None
    if code is None:
        raise _invalid(f"{what} {value!r} is not one of {sorted(set(table))}")
    return code


class MegatronSource(Source):
    """A Megatron indexed dataset as it is stored (``prefix.idx`` + ``prefix.bin``, as Megatron-LM's
    ``preprocess_data.py`` and NeMo write them), one sample per sequence: one field of ``[max_len]`` of the
    index's token type, variable length (lay batches out with :class:`~ferry.PadSequences`). Several
    prefixes make one corpus. Every field of every index is checked at open: a malformed file raises
    :class:`~ferry.FormatError` naming the file and the field."""

    def __init__(self, prefixes: Prefixes, max_len: int, field: str = "tokens") -> None:
        super().__init__()
        paths, arr = _prefixes(prefixes)
        lib = _lib.lib()
        opts = _lib.MegatronOptions()
        _check(lib.ferry_megatron_options_init(byref(opts)))
        opts.max_len = _as_int64(max_len, "max_len")
        name = _c_string(field, "field name")
        opts.field_name = name
        handle = c_void_p()
        _check(lib.ferry_source_megatron(arr, len(paths), byref(opts), byref(handle)))
        self.prefixes = paths
        self.max_len = opts.max_len
        self._adopt(lib, handle)


class GPTSource(Source):
    """GPT samples over a Megatron corpus: windows of ``seq_len + 1`` tokens packed across document
    boundaries as megatron-core's ``GPTDataset`` packs them, one field (``field``) of the corpus's token
    type. :class:`~ferry.ShiftTokens` turns it into int64 ``x``/``y`` on the device and, with ``eod``,
    Megatron's ``loss_mask`` and ``position_ids``.

    ``order="ferry"`` numbers the windows in corpus order and needs no index (it opens in the time the
    index files take to check); shuffle it with the loader (``shuffle=True``), which gives exact and
    elastic resume. ``order="megatron"`` reproduces megatron-core's ``GPTDataset`` sample for sample, for
    ``seed``, ``split`` (e.g. ``"969,30,1"``), ``which`` (``"train"``, ``"valid"``, ``"test"``) and
    ``num_samples`` (train_iters × global batch; ``None``: one epoch). Its indices are built in the
    library and cached in ``cache_dir`` (default: a ``cache`` directory beside the first prefix), keyed by
    every file and parameter, so a second start maps them; ``cache=False`` builds every time. Read it with
    ``shuffle=False``: its numbering is the order.
    """

    def __init__(self, prefixes: Prefixes, seq_len: int, order: str = "ferry", seed: int = 0,
                 split: Optional[str] = None, which: str = "train", num_samples: Optional[int] = None,
                 cache_dir: Any = None, cache: bool = True, field: str = "tokens") -> None:
        super().__init__()
        paths, arr = _prefixes(prefixes)
        lib = _lib.lib()
        opts = _lib.GPTOptions()
        _check(lib.ferry_gpt_options_init(byref(opts)))
        opts.order = _choice(order, _GPT_ORDERS, "order")
        opts.seq_len = _as_int64(seq_len, "seq_len")
        seed = _as_int(seed, "seed")
        if not 0 <= seed < 2**32:
            raise _invalid(f"seed {seed} is outside 0 .. 2**32-1 (Megatron seeds numpy's RandomState with it)")
        opts.seed = seed
        opts.which = _choice(which, _SPLITS, "which")
        opts.num_samples = 0 if num_samples is None else _as_int64(num_samples, "num_samples")
        if num_samples is not None and opts.num_samples <= 0:
            raise _invalid(f"num_samples {num_samples} must be positive (or None for one epoch)")
        opts.flags = 0 if cache else _lib.FERRY_GPT_F_NO_CACHE
        keep = [_c_string(field, "field name")]
        opts.field_name = keep[0]
        if split is not None:
            keep.append(_c_string(split, "split"))
            opts.split = keep[-1]
        if cache_dir is not None:
            keep.append(_c_string(os.fspath(cache_dir), "cache_dir"))
            opts.cache_dir = keep[-1]
        handle = c_void_p()
        _check(lib.ferry_source_gpt(arr, len(paths), byref(opts), byref(handle)))
        self.prefixes = paths
        self.seq_len = opts.seq_len
        self.order = str(order).lower()
        self._adopt(lib, handle)

    @property
    def index_info(self) -> Dict[str, Any]:
        """How the Megatron-order index was obtained: ``cached`` (mapped from the cache), ``seconds`` (to
        build or map it), ``epochs`` (passes over the split), ``path`` (the cache file) and
        ``cache_error`` (why the cache could not be used, if so). Zeros in ferry's order."""
        info = _lib.GPTIndexInfo()
        info.size = ctypes.sizeof(info)
        _check(self._lib.ferry_source_gpt_index_info(self._h(), byref(info)))
        return {"cached": bool(info.cached), "seconds": info.seconds, "epochs": info.epochs,
                "path": info.path.decode("utf-8", "replace"),
                "cache_error": info.cache_error.decode("utf-8", "replace")}


def _weights(weights: Sequence[Any]) -> Any:
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise TypeError(f"weights must be numbers, not {weights!r}") from None
    if not values:
        raise _invalid("a blend needs at least one source")
    return (c_double * len(values))(*values)


def megatron_blend_sizes(weights: Sequence[float], size: int) -> Tuple[List[int], int]:
    """What Megatron's builder does with a blend of ``size`` samples: the number of samples to build each
    source with (``num_samples`` of each :class:`GPTSource`), and the blend's own size."""
    w = _weights(weights)
    per = (c_int64 * len(w))()
    total = c_int64()
    _check(_lib.lib().ferry_megatron_blend_sizes(w, len(w), _as_int64(size, "size"), per, byref(total)))
    return list(per), total.value


class BlendSource(Source):
    """Sources mixed by weight: ``BlendSource([(0.3, a), (0.7, b)], size=N)``; the sources must have the
    same fields (one tokenizer, one token type).

    ``order="ferry"``: position ``p`` of epoch ``e`` is a pure function of ``(seed, e, p)``: every block of
    128 positions holds each source's exact share, and each source is read in its own seeded order, so
    any 10,000 consecutive samples hold the weights to within 1 % and resume needs no state.
    ``order="megatron"`` reproduces megatron-core's ``BlendedDataset`` (build the sources with
    :func:`megatron_blend_sizes`, or use :func:`megatron_blend`). Read a blend with ``shuffle=False``. The
    blend keeps its sources alive; close it before them.
    """

    def __init__(self, parts: Sequence[Tuple[float, Source]], size: int, order: str = "ferry", seed: int = 0) -> None:
        super().__init__()
        try:
            pairs = [(w, s) for w, s in parts]
        except (TypeError, ValueError):
            raise TypeError("parts must be a list of (weight, source) pairs") from None
        for _, s in pairs:
            if not isinstance(s, Source):
                raise TypeError(f"a blend's sources must be ferry sources, not {type(s).__name__}")
        w = _weights([p[0] for p in pairs])
        handles = (c_void_p * len(pairs))(*[s._h() for _, s in pairs])
        lib = _lib.lib()
        opts = _lib.BlendOptions()
        _check(lib.ferry_blend_options_init(byref(opts)))
        opts.order = _choice(order, _BLEND_ORDERS, "order")
        opts.num_samples = _as_int64(size, "size")
        opts.seed = _as_int(seed, "seed") & (2**64 - 1)
        handle = c_void_p()
        _check(lib.ferry_source_blend(handles, w, len(pairs), byref(opts), byref(handle)))
        self.sources = [s for _, s in pairs]
        self.weights = [float(x) for x in w]
        self.order = str(order).lower()
        self._adopt(lib, handle, tuple(self.sources))


def megatron_blend(parts: Sequence[Tuple[float, Prefixes]], size: int, seq_len: int, seed: int = 0,
                   split: Optional[str] = None, which: str = "train", cache_dir: Any = None,
                   cache: bool = True) -> BlendSource:
    """megatron-core's blend of several corpora, sample for sample: ``parts`` is ``[(weight, prefix),
    ...]`` (Megatron's ``--data-path 30 a 70 b``), ``size`` the number of samples asked for. Each corpus
    becomes a Megatron-order :class:`GPTSource` with the number of samples Megatron's builder gives it;
    the returned blend owns them and closes them with itself."""
    weights = [w for w, _ in parts]
    per, blend_size = megatron_blend_sizes(weights, size)
    sources: List[GPTSource] = []
    try:
        for (_, prefix), n in zip(parts, per):
            sources.append(GPTSource(prefix, seq_len, order="megatron", seed=seed, split=split, which=which,
                                     num_samples=n, cache_dir=cache_dir, cache=cache))
        blend = BlendSource(list(zip(weights, sources)), blend_size, order="megatron")
    except BaseException:
        for s in sources:
            s.close()
        raise
    blend._owned_sources = sources
    return blend
