"""RaggedTokenSource: variable-length token sequences from a flat token file and a .npy of offsets, read
back through an iterator on the CPU engine and compared with a reference built on fresh random data."""

from __future__ import annotations

import array
import struct

import pytest

import ferry

from loader_helpers import TIMEOUT_MS, fresh_rng, read_epoch, write_npy


@pytest.fixture
def engine():
    with ferry.Engine(ferry.CPU, sample_interval_ms=0) as e:
        yield e


def _ragged_files(tmp_path, rng, code, lengths, first=0, tail=0, descr="<i8"):
    """Writes the samples back to back (after ``first`` and before ``tail`` unused tokens); returns the
    paths, the tokens and the offsets."""
    offsets = [first]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    bits = 16 if code == "H" else 32
    tokens = array.array(code, [rng.randrange(1 << bits) for _ in range(offsets[-1] + tail)])
    tokens_path, offsets_path = tmp_path / "tokens.bin", tmp_path / "offsets.npy"
    tokens_path.write_bytes(tokens.tobytes())
    write_npy(str(offsets_path), descr, (len(offsets),), struct.pack("<%dq" % len(offsets), *offsets))
    return tokens_path, offsets_path, tokens, offsets


def _expected(tokens, offsets, i, max_len):
    seq = tokens[offsets[i]:offsets[i + 1]][:max_len]
    return seq.tobytes() + bytes((max_len - len(seq)) * tokens.itemsize)


@pytest.mark.parametrize("fmt, code", [("uint16", "H"), ("uint32", "I")])
@pytest.mark.parametrize("descr", ["<i8", "<u8"])
def test_ragged_token_source(engine, tmp_path, fmt, code, descr):
    rng, seed = fresh_rng()
    max_len = rng.randrange(1, 24)
    lengths = [rng.randrange(0, 2 * max_len + 1) for _ in range(rng.randrange(20, 60))]
    tp, op, tokens, offsets = _ragged_files(tmp_path, rng, code, lengths, rng.randrange(5), rng.randrange(5), descr)
    src = ferry.RaggedTokenSource(tp, op, max_len=max_len, format=fmt)
    assert len(src) == len(lengths)
    assert src.fields == {"tokens": (fmt, (max_len,), 0)}
    assert (src.tokens_path, src.offsets_path, src.max_len) == (str(tp), str(op), max_len)
    seen = []
    with ferry.Iterator(engine, src, 7, shuffle=True, seed=seed, timeout_ms=TIMEOUT_MS) as it:
        for indices, fields in read_epoch(it):
            seen += indices
            assert fields["tokens"] == b"".join(_expected(tokens, offsets, i, max_len) for i in indices)
    assert sorted(seen) == list(range(len(lengths)))
    src.close()
    src.close()  # idempotent


def test_ragged_token_source_field_name_and_numpy(tmp_path):
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng()
    lengths = rng.integers(0, 40, size=int(rng.integers(10, 40)))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = rng.integers(0, 50000, size=int(offsets[-1]) + 1, dtype=np.uint16)
    tokens.tofile(tmp_path / "tokens.bin")
    np.save(tmp_path / "offsets.npy", offsets)
    max_len = 32
    with ferry.RaggedTokenSource(tmp_path / "tokens.bin", tmp_path / "offsets.npy", max_len=max_len,
                                 field="input_ids") as src:
        assert src.fields == {"input_ids": ("uint16", (max_len,), 0)}
        with ferry.Loader(src, 8, device="cpu", output="numpy", copy=True) as loader:
            got = np.concatenate([b["input_ids"] for b in loader])
    want = np.zeros((len(lengths), max_len), dtype=np.uint16)
    for i, (a, b) in enumerate(zip(offsets[:-1], offsets[1:])):
        n = min(b - a, max_len)
        want[i, :n] = tokens[a:a + n]
    assert np.array_equal(got, want)


def test_ragged_token_source_errors(tmp_path):
    rng, _ = fresh_rng()
    tp, op, _, _ = _ragged_files(tmp_path, rng, "H", [3, 4, 5])
    bad = tmp_path / "bad.npy"
    write_npy(str(bad), "<i8", (3,), struct.pack("<3q", 0, 7, 3))
    with pytest.raises(ferry.FormatError, match="must not decrease") as e:
        ferry.RaggedTokenSource(tp, bad, max_len=4)
    assert str(bad) in str(e.value)
    write_npy(str(bad), "<i8", (2,), struct.pack("<2q", 0, 13))
    with pytest.raises(ferry.FormatError, match="beyond"):
        ferry.RaggedTokenSource(tp, bad, max_len=4)
    write_npy(str(bad), "<i4", (3,), struct.pack("<3i", 0, 1, 2))
    with pytest.raises(ferry.FormatError, match="int64 or uint64"):
        ferry.RaggedTokenSource(tp, bad, max_len=4)
    write_npy(str(bad), "<i8", (2, 2), struct.pack("<4q", 0, 1, 2, 3))
    with pytest.raises(ferry.FormatError, match="1-D"):
        ferry.RaggedTokenSource(tp, bad, max_len=4)
    write_npy(str(bad), "<i8", (1,), struct.pack("<q", 0))
    with pytest.raises(ferry.FormatError, match="at least 2"):
        ferry.RaggedTokenSource(tp, bad, max_len=4)
    odd = tmp_path / "odd.bin"
    odd.write_bytes(bytes(25))
    with pytest.raises(ferry.FormatError, match="whole number"):
        ferry.RaggedTokenSource(odd, op, max_len=4)
    with pytest.raises(ferry.FerryIOError):
        ferry.RaggedTokenSource(tmp_path / "missing.bin", op, max_len=4)
    with pytest.raises(ferry.InvalidArgumentError):
        ferry.RaggedTokenSource(tp, op, max_len=0)
    with pytest.raises(ferry.InvalidArgumentError):
        ferry.RaggedTokenSource(tp, op, max_len=4, format="llmc")
    with pytest.raises(ferry.InvalidArgumentError):
        ferry.RaggedTokenSource(tp, op, max_len=4, field="")
    with pytest.raises(TypeError):
        ferry.RaggedTokenSource(tp, op, max_len=4, field=None)
    with ferry.RaggedTokenSource(tp, op, max_len=4, format="uint16") as src:  # still usable after refusals
        assert len(src) == 3
