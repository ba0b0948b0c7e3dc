"""Layout transforms (Normalize, ShiftTokens, PadSequences) and staging through the Python binding, on the
CPU engine: every batch is checked against a numpy reference built from the source's bytes on fresh random
data. Tests that need torch skip without it."""

from __future__ import annotations

import pytest

import ferry

from loader_helpers import TIMEOUT_MS, fresh_rng, write_npy

np = pytest.importorskip("numpy")

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@pytest.fixture
def engine():
    with ferry.Engine(ferry.CPU, sample_interval_ms=0) as e:
        yield e


def _images(n, h=5, w=7, c=3):
    _, seed = fresh_rng()
    g = np.random.default_rng(seed)
    return g.integers(0, 256, size=(n, h, w, c), dtype=np.uint8), seed


def _reference(img, mean, std, layout, flip):
    """The normalized sample in float64: ((x / 255) - mean) / std, flipped left-right, in the layout."""
    x = img[:, ::-1, :] if flip else img
    out = (x.astype(np.float64) / 255 - np.asarray(mean)) / np.asarray(std)
    return out.transpose(2, 0, 1) if layout == "CHW" else out


def _epoch(it, names=None):
    """Reads an epoch: {sample index: {field: numpy array}} (copies), and the batches' field shapes."""
    out, shapes = {}, []
    while True:
        b = it.next()
        if b is None:
            return out, shapes
        with b:
            fields = {name: np.from_dlpack(b.field(name)).copy() for name in (names or it.field_names)}
            shapes.append({k: v.shape for k, v in fields.items()})
            for r, i in enumerate(b.indices()):
                out[i] = {k: v[r] for k, v in fields.items()}


# --- Normalize ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["CHW", "HWC"])
def test_normalize_float32_flip(engine, layout):
    imgs, seed = _images(200)
    src = ferry.ArraySource({"image": imgs, "label": np.arange(200, dtype=np.int64)})
    t = ferry.Normalize(mean=MEAN, std=STD, layout=layout, flip=0.5)

    def flips(epoch):
        with ferry.Iterator(engine, src, 16, shuffle=True, seed=seed, timeout_ms=TIMEOUT_MS,
                            transforms={"image": t}) as it:
            assert it.field_names == ["image", "label"]
            it.set_epoch(epoch)
            got, shapes = _epoch(it)
        assert sorted(got) == list(range(200))
        per = (3, 5, 7) if layout == "CHW" else (5, 7, 3)
        assert all(s["image"][1:] == per for s in shapes)
        out = []
        for i in range(200):
            image = got[i]["image"]
            assert image.dtype == np.float32 and got[i]["label"] == i
            plain = _reference(imgs[i], MEAN, STD, layout, False)
            flipped = _reference(imgs[i], MEAN, STD, layout, True)
            is_plain = np.abs(image - plain).max() <= 1e-6
            is_flipped = np.abs(image - flipped).max() <= 1e-6
            assert is_plain or is_flipped, f"sample {i} (seed {seed}) is neither the image nor its mirror"
            out.append(bool(is_flipped))
        return out

    first = flips(0)
    assert 0 < sum(first) < 200, "with flip=0.5, some samples flip and some do not"
    assert flips(0) == first, "the same (seed, epoch) flips the same samples"
    assert flips(1) != first, "another epoch flips others"


@pytest.mark.parametrize("layout", ["CHW", "HWC"])
def test_normalize_planar_input(engine, layout):
    """input_layout="CHW": u8 [C, H, W] samples (CIFAR's records) read as channel planes."""
    imgs, seed = _images(64, 32, 32, 3)
    planar = np.ascontiguousarray(imgs.transpose(0, 3, 1, 2))  # [N, C, H, W]
    src = ferry.ArraySource({"image": planar})
    t = ferry.Normalize(mean=MEAN, std=STD, layout=layout, input_layout="CHW", flip=1.0)
    assert t.input_layout == "CHW" and "input_layout='CHW'" in repr(t)
    with ferry.Iterator(engine, src, 16, shuffle=True, seed=seed, timeout_ms=TIMEOUT_MS,
                        transforms={"image": t}) as it:
        got, shapes = _epoch(it)
    assert sorted(got) == list(range(64))
    assert all(s["image"][1:] == ((3, 32, 32) if layout == "CHW" else (32, 32, 3)) for s in shapes)
    for i, s in got.items():
        want = _reference(imgs[i], MEAN, STD, layout, True)
        assert np.abs(s["image"] - want).max() <= 1e-6, f"sample {i} (seed {seed})"
    # Read as HWC (the default), [3, 32, 32] has 32 channels: the error names the layout to set.
    with pytest.raises(ferry.InvalidArgumentError, match="input layout to CHW"):
        ferry.Iterator(engine, src, 16, transforms={"image": ferry.Normalize(MEAN, STD)})
    with pytest.raises(ferry.InvalidArgumentError, match="input_layout"):
        ferry.Normalize(MEAN, STD, input_layout="NWHC")


def test_normalize_float16(engine):
    imgs, seed = _images(48, 6, 4, 3)
    src = ferry.ArraySource({"image": imgs})
    t = ferry.Normalize(MEAN, STD, dtype="float16")
    with ferry.Iterator(engine, src, 8, seed=seed, timeout_ms=TIMEOUT_MS, transforms={"image": t}) as it:
        got, _ = _epoch(it)
    for i, s in got.items():
        want = _reference(imgs[i], MEAN, STD, "CHW", False).astype(np.float16)
        image = s["image"]
        assert image.dtype == np.float16
        ulp = np.spacing(np.abs(want)).astype(np.float32)
        assert (np.abs(image.astype(np.float32) - want.astype(np.float32)) <= ulp).all(), f"sample {i}"


def _bfloat16_words(x):
    """float32 values rounded to bfloat16 (nearest, ties to even), as uint16 words."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def test_normalize_bfloat16_dlpack_and_numpy(engine):
    imgs, seed = _images(24, 4, 4, 1)
    src = ferry.ArraySource({"image": imgs})
    t = ferry.Normalize(0.5, 0.25, dtype="bfloat16", layout="HWC", scale=1 / 255)
    with ferry.Loader(src, 8, device="cpu", output="dlpack", transforms={"image": t}, timeout_ms=TIMEOUT_MS) as ld:
        for batch in ld:
            f = batch["image"]
            assert f.dtype == "bfloat16" and f.shape == (8, 4, 4, 1)
            words = np.asarray(f.to_memoryview()).astype(np.int64)
            f.close()
            break
    want = _bfloat16_words((imgs[:8].astype(np.float32) / 255 - 0.5) / 0.25).astype(np.int64)
    assert np.abs(words - want).max() <= 1
    with ferry.Loader(src, 2, device="cpu", output="numpy", transforms={"image": t}, prefetch=2,
                      timeout_ms=TIMEOUT_MS) as ld:
        for _ in range(len(ld)):  # each failed batch gives its slot back: no stall past the ring's depth
            with pytest.raises(TypeError, match="bfloat16.*numpy"):
                next(iter(ld))


# --- ShiftTokens ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, dtype", [("uint16", np.uint16), ("uint32", np.uint32)])
def test_shift_tokens(engine, tmp_path, fmt, dtype):
    _, seed = fresh_rng()
    g = np.random.default_rng(seed)
    seq_len = int(g.integers(3, 20))
    tokens = g.integers(0, np.iinfo(dtype).max, size=seq_len * 40 + int(g.integers(1, 9)), dtype=dtype)
    path = tmp_path / "tokens.bin"
    tokens.tofile(path)
    with ferry.TokenSource(path, seq_len, format=fmt, window=True) as src:
        for names in [{}, {"x": "inputs", "y": "targets"}]:
            t = ferry.ShiftTokens(**names)
            x, y = names.get("x", "x"), names.get("y", "y")
            with ferry.Iterator(engine, src, 7, shuffle=True, seed=seed, timeout_ms=TIMEOUT_MS,
                                transforms={"tokens": t}) as it:
                assert it.field_names == [x, y]
                got, _ = _epoch(it)
            assert sorted(got) == list(range(len(src)))
            for i, s in got.items():
                window = tokens[i * seq_len:(i + 1) * seq_len + 1].astype(np.int64)
                assert s[x].dtype == np.int64 and s[y].dtype == np.int64
                assert np.array_equal(s[x], window[:-1]) and np.array_equal(s[y], window[1:]), i


# --- PadSequences ---------------------------------------------------------------------------------------


def _ragged(tmp_path, code_dtype, max_len, n):
    _, seed = fresh_rng()
    g = np.random.default_rng(seed)
    lengths = g.integers(0, 2 * max_len, size=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = g.integers(1, np.iinfo(code_dtype).max, size=int(offsets[-1]) + 1, dtype=code_dtype)
    tokens.tofile(tmp_path / "tokens.bin")
    write_npy(str(tmp_path / "offsets.npy"), "<i8", (len(offsets),), offsets.tobytes())
    return tokens, offsets, seed


@pytest.mark.parametrize("fmt, dtype", [("uint16", np.uint16), ("uint32", np.uint32)])
@pytest.mark.parametrize("fixed", [False, True])
def test_pad_sequences(engine, tmp_path, fmt, dtype, fixed):
    max_len, n = 12, 60
    tokens, offsets, seed = _ragged(tmp_path, dtype, max_len, n)
    src = ferry.RaggedTokenSource(tmp_path / "tokens.bin", tmp_path / "offsets.npy", max_len=max_len, format=fmt,
                                  field="input_ids")
    t = ferry.PadSequences(pad_value=-100, fixed=fixed, mask="mask", lengths="lens")
    with ferry.Iterator(engine, src, 8, shuffle=True, seed=seed, timeout_ms=TIMEOUT_MS,
                        transforms={"input_ids": t}) as it:
        assert it.field_names == ["input_ids", "mask", "lens"]
        seen = []
        while True:
            b = it.next()
            if b is None:
                break
            with b:
                idx = b.indices()
                seen += idx
                ids, mask, lens = (np.from_dlpack(b.field(k)).copy() for k in it.field_names)
            want_lens = [min(int(offsets[i + 1] - offsets[i]), max_len) for i in idx]
            width = max_len if fixed else max(want_lens)
            assert ids.dtype == np.int64 and mask.dtype == np.bool_ and lens.dtype == np.int64
            assert ids.shape == (len(idx), width) and mask.shape == (len(idx), width) and lens.shape == (len(idx),)
            assert lens.tolist() == want_lens
            for r, i in enumerate(idx):
                k = want_lens[r]
                row = np.full(width, -100, dtype=np.int64)
                row[:k] = tokens[offsets[i]:offsets[i] + k]
                assert np.array_equal(ids[r], row), i
                assert mask[r].tolist() == [True] * k + [False] * (width - k), i
    assert sorted(seen) == list(range(n))
    src.close()


def test_pad_sequences_loader_numpy(tmp_path):
    max_len, n = 9, 30
    tokens, offsets, _ = _ragged(tmp_path, np.uint16, max_len, n)
    with ferry.RaggedTokenSource(tmp_path / "tokens.bin", tmp_path / "offsets.npy", max_len=max_len) as src:
        with ferry.Loader(src, 30, device="cpu", output="numpy", copy=True, transforms={"tokens": ferry.PadSequences()},
                          timeout_ms=TIMEOUT_MS) as ld:
            (batch,) = list(ld)
    assert set(batch) == {"tokens", "attention_mask", "lengths"}
    lens = np.minimum(np.diff(offsets), max_len)
    assert batch["attention_mask"].dtype == np.bool_
    assert np.array_equal(batch["lengths"], lens)
    assert np.array_equal(batch["attention_mask"].sum(axis=1), lens)
    assert batch["tokens"].shape == (n, lens.max())


# --- loaders and staging --------------------------------------------------------------------------------


def test_loaders_take_transforms_and_staging():
    imgs, _ = _images(20, 3, 3, 3)
    arrays = {"image": imgs}
    kw = dict(transforms={"image": ferry.Normalize(MEAN, STD, layout="HWC")}, staging="gather",
              pinned_budget=-1, timeout_ms=TIMEOUT_MS)
    with ferry.OptimizedDataLoader(arrays, batch_size=5, device="cpu", output="numpy", **kw) as a:
        assert a.iterator.staging[0] == "gather"
        with ferry.PrefetchLoader(a, device="cpu") as b:  # takes a's settings, transforms among them
            for ld in (a, b):
                got = np.concatenate([x["image"].copy() for x in ld])
                assert got.dtype == np.float32 and got.shape == (20, 3, 3, 3)
                assert np.abs(got - _reference(imgs, MEAN, STD, "HWC", False)).max() <= 1e-6


@pytest.mark.parametrize("staging", ["auto", "gather", "dma", "mapped", ferry._lib.FERRY_STAGING_MAPPED])
def test_staging_is_gather_on_the_cpu(engine, staging):
    src = ferry.ArraySource({"v": np.arange(10, dtype=np.int32)})
    with ferry.Iterator(engine, src, 5, staging=staging, pinned_budget=1 << 20) as it:
        name, why = it.staging
        assert name == "gather" and why
    with pytest.raises(ferry.ClosedError):
        _ = it.staging


# --- bad input ------------------------------------------------------------------------------------------


def _bad_cases():
    imgs, _ = _images(8, 2, 2, 3)
    src = ferry.ArraySource({"image": imgs, "ids": np.zeros((8, 5), dtype=np.uint16)})
    return src, [
        ({"ids": ferry.Normalize()}, {}, "uint8"),
        ({"nope": ferry.Normalize()}, {}, "nope"),
        ({"image": ferry.Normalize(mean=[0.1] * 7)}, {}, "channels"),
        ({"image": ferry.Normalize(mean=[0.1, 0.2])}, {}, "mean"),
        ({"image": ferry.Normalize(std=[1.0, 0.0, 1.0])}, {}, "std[1]"),
        ({"image": ferry.Normalize(flip=2)}, {}, "flip"),
        ({"image": ferry.Normalize(layout=5)}, {}, "layout"),
        ({"image": ferry.Normalize(dtype="int32")}, {}, "float32"),
        ({"image": ferry.ShiftTokens()}, {}, "ShiftTokens"),
        ({"ids": ferry.ShiftTokens(x="t", y="t")}, {}, "x and y"),
        ({"ids": ferry.ShiftTokens(x="image")}, {}, "image"),
        ({"ids": ferry.PadSequences()}, {}, "PadSequences"),
        ({}, {"staging": 9}, "staging"),
        ({}, {"staging": "fastest"}, "fastest"),
    ]


def test_bad_input_raises_and_leaves_the_library_usable(engine):
    src, cases = _bad_cases()
    for transforms, kw, word in cases:
        with pytest.raises(ferry.InvalidArgumentError) as info:
            ferry.Iterator(engine, src, 4, transforms=transforms, **kw)
        assert word.lower() in str(info.value).lower(), (transforms, kw, str(info.value))
    with pytest.raises(TypeError, match="transform"):
        ferry.Iterator(engine, src, 4, transforms={"image": "normalize"})
    with pytest.raises(TypeError):
        ferry.Normalize(mean="abc")
    with pytest.raises(ferry.InvalidArgumentError, match="CWH"):
        ferry.Normalize(layout="CWH")
    with ferry.Iterator(engine, src, 4, transforms={"image": ferry.Normalize(MEAN, STD), "ids": ferry.ShiftTokens()},
                        timeout_ms=TIMEOUT_MS) as it:
        assert it.field_names == ["image", "x", "y"]
        got, _ = _epoch(it)
    assert len(got) == 8


def test_transform_repr():
    assert "Normalize" in repr(ferry.Normalize(MEAN, STD))
    assert "ShiftTokens" in repr(ferry.ShiftTokens())
    assert "PadSequences" in repr(ferry.PadSequences(pad_value=3))
    assert all(name in ferry.__all__ for name in ("Normalize", "ShiftTokens", "PadSequences", "Transform"))


# --- torch ----------------------------------------------------------------------------------------------


def test_torch_bfloat16_and_bool(tmp_path):
    torch = pytest.importorskip("torch")
    imgs, _ = _images(16, 4, 4, 3)
    with ferry.Loader({"image": imgs}, 16, device="cpu", output="torch", copy=True, timeout_ms=TIMEOUT_MS,
                      transforms={"image": ferry.Normalize(MEAN, STD, dtype="bfloat16")}) as ld:
        (batch,) = list(ld)
    want = np.stack([_reference(im, MEAN, STD, "CHW", False) for im in imgs]).astype(np.float32)
    got = batch["image"]
    assert got.dtype == torch.bfloat16 and got.shape == (16, 3, 4, 4)
    bf16_ulp = np.abs(want) * 2.0**-7  # bfloat16 keeps 8 significant bits
    assert (np.abs(got.float().numpy() - want) <= bf16_ulp + 1e-30).all()
    tokens, offsets, _ = _ragged(tmp_path, np.uint16, 6, 10)
    with ferry.RaggedTokenSource(tmp_path / "tokens.bin", tmp_path / "offsets.npy", max_len=6) as src:
        with ferry.Loader(src, 10, device="cpu", output="torch", copy=True, transforms={"tokens": ferry.PadSequences()},
                          timeout_ms=TIMEOUT_MS) as ld:
            (batch,) = list(ld)
    assert batch["attention_mask"].dtype == torch.bool
    assert batch["attention_mask"].sum(dim=1).tolist() == np.minimum(np.diff(offsets), 6).tolist()
