"""Sources: arrays in memory, record files, CIFAR-10, .npy, token files and Python callbacks. Every
source is read back through an iterator on the CPU engine and compared with a reference built from the
batch's sample indices, on fresh random data."""

from __future__ import annotations

import array
import gc
import os
import struct
import subprocess
import sys
import threading

import pytest

import ferry
from ferry import _sources

from conftest import PACKAGE_ROOT
from loader_helpers import TIMEOUT_MS, fresh_rng, read_epoch, rows, write_npy


@pytest.fixture
def engine():
    with ferry.Engine(ferry.CPU, sample_interval_ms=0) as e:
        yield e


def _iterate(engine, source, batch_size, **kw):
    kw.setdefault("timeout_ms", TIMEOUT_MS)
    with ferry.Iterator(engine, source, batch_size, **kw) as it:
        return read_epoch(it)


def _check_against(batches, refs, row_bytes, n):
    """refs/row_bytes: per field; checks each batch and that the epoch covers 0..n-1 once."""
    seen = []
    for indices, fields in batches:
        seen += indices
        for name, data in refs.items():
            assert fields[name] == rows(data, row_bytes[name], indices), (name, indices)
    assert sorted(seen) == list(range(n))


# --- dtypes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("given, name", [
    ("uint8", "uint8"), ("float32", "float32"), ("bfloat16", "bfloat16"), ("<f4", "float32"), ("|u1", "uint8"),
    ("f2", "float16"), ("<i8", "int64"), ("b1", "bool"), ("=u2", "uint16"), ("half", "float16"), ("B", "uint8"),
    ("torch.int32", "int32"), ("FLOAT64", "float64"),
])
def test_dtype_names(given, name):
    assert _sources.dtype_name(given) == name


@pytest.mark.parametrize("bad", ["complex64", "<c8", ">f4", "object", "U8", ""])
def test_bad_dtype_is_invalid_argument(bad):
    with pytest.raises(ferry.InvalidArgumentError):
        _sources.dtype_name(bad)


def test_numpy_dtypes():
    np = pytest.importorskip("numpy")
    assert _sources.dtype_name(np.float32) == "float32"
    assert _sources.dtype_name(np.dtype("<u2")) == "uint16"
    assert _sources.dtype_name(np.dtype(bool)) == "bool"
    with pytest.raises(ferry.InvalidArgumentError):
        _sources.dtype_name(np.dtype(">i4"))


# --- ArraySource ----------------------------------------------------------------------------------------


def test_array_source_over_buffers(engine):
    rng, seed = fresh_rng()
    n = rng.randrange(40, 90)
    img = rng.randbytes(n * 2 * 3 * 4)  # float32 [n, 2, 3], random bit patterns
    lab = array.array("q", [rng.randrange(-2**62, 2**62) for _ in range(n)])
    raw = bytearray(rng.randbytes(n * 5))
    src = ferry.ArraySource({
        "img": memoryview(img).cast("f", [n, 2, 3]),
        "lab": lab,
        "raw": (raw, "uint8", (n, 5)),
    })
    assert len(src) == n
    assert src.fields == {
        "img": ferry.FieldSpec("float32", (2, 3), 0),
        "lab": ferry.FieldSpec("int64", (), 0),
        "raw": ferry.FieldSpec("uint8", (5,), 0),
    }
    assert src.sample_bytes == 24 + 8 + 5
    batches = _iterate(engine, src, rng.randrange(1, 17), shuffle=True, seed=seed)
    _check_against(batches, {"img": img, "lab": lab.tobytes(), "raw": bytes(raw)}, {"img": 24, "lab": 8, "raw": 5}, n)
    src.close()


def test_array_source_keeps_the_memory_alive_without_a_copy(engine):
    rng, _ = fresh_rng()
    n = 64
    data = bytearray(rng.randbytes(n * 16))
    expected = bytes(data)
    src = ferry.ArraySource({"x": (data, "uint32", (n, 4))})
    del data
    gc.collect()
    assert _iterate(engine, src, 64)[0][1]["x"] == expected
    # No copy: a change to the caller's memory shows in the next batch.
    src.arrays["x"][0][0] ^= 0xFF
    assert _iterate(engine, src, 64)[0][1]["x"][0] == expected[0] ^ 0xFF
    src.close()


def test_array_source_rejects_bad_arrays():
    a = array.array("f", [0.0] * 12)
    with pytest.raises(ferry.InvalidArgumentError, match="samples"):
        ferry.ArraySource({"a": a, "b": array.array("f", [0.0] * 11)})
    with pytest.raises(ferry.InvalidArgumentError, match="contiguous"):
        ferry.ArraySource({"a": memoryview(a)[::2]})
    with pytest.raises(ferry.InvalidArgumentError, match="needs"):
        ferry.ArraySource({"a": (bytes(10), "float32", (3,))})
    with pytest.raises(TypeError):
        ferry.ArraySource({"a": object()})
    with pytest.raises(TypeError):
        ferry.ArraySource({})
    with pytest.raises(ferry.InvalidArgumentError):
        ferry.ArraySource({"a": array.array("f")})  # no samples


def test_array_source_numpy_zero_copy(engine):
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng()
    n = int(rng.integers(30, 80))
    x = rng.standard_normal((n, 3, 5)).astype(np.float32)
    y = rng.integers(0, 1 << 16, size=n).astype(np.uint16)
    b = rng.integers(0, 2, size=(n, 2)).astype(bool)
    src = ferry.ArraySource({"x": x, "y": y, "b": b})
    assert src.fields["x"] == ("float32", (3, 5), 0) and src.fields["b"].dtype == "bool"
    with ferry.Loader(src, 7, shuffle=True, seed=int(rng.integers(1 << 62)), device="cpu", output="numpy",
                      timeout_ms=TIMEOUT_MS) as loader:
        it = loader.iterator
        seen = []
        while (batch := it.next()) is not None:
            idx = batch.indices()
            seen += idx
            got = {k: np.from_dlpack(batch.field(k)) for k in ("x", "y", "b")}
            batch.release()
            assert np.array_equal(got["x"], x[idx]) and np.array_equal(got["y"], y[idx])
            assert np.array_equal(got["b"], b[idx])
            del got
        assert sorted(seen) == list(range(n))
    with pytest.raises(ferry.InvalidArgumentError, match="contiguous"):
        ferry.ArraySource({"x": x[:, :, ::2]})
    with pytest.raises(ferry.InvalidArgumentError, match="big-endian"):
        ferry.ArraySource({"x": x.astype(">f4")})
    with pytest.raises(ferry.InvalidArgumentError):
        ferry.ArraySource({"x": np.zeros(3, dtype=np.complex64)})
    src.close()


# --- records and CIFAR-10 -------------------------------------------------------------------------------


def test_record_source(engine, tmp_path):
    rng, seed = fresh_rng()
    n, header, rec = rng.randrange(20, 60), 16, 20
    head = rng.randbytes(header)
    body = rng.randbytes(n * rec)
    path = tmp_path / "records.bin"
    path.write_bytes(head + body)
    src = ferry.RecordSource(path, record_size=rec, header_size=header,
                             fields={"a": (0, "uint16", (2,)), "b": (4, "float32", ()), "c": (8, "<i8", 1)})
    assert len(src) == n
    assert src.fields == {"a": ("uint16", (2,), 0), "b": ("float32", (), 4), "c": ("int64", (1,), 8)}
    for indices, fields in _iterate(engine, src, 8, shuffle=True, seed=seed):
        assert fields["a"] == b"".join(body[i * rec:i * rec + 4] for i in indices)
        assert fields["b"] == b"".join(body[i * rec + 4:i * rec + 8] for i in indices)
        assert fields["c"] == b"".join(body[i * rec + 8:i * rec + 16] for i in indices)
    src.close()
    path.write_bytes(head + body + b"x")  # not a whole number of records
    with pytest.raises(ferry.FormatError):
        ferry.RecordSource(path, record_size=rec, header_size=header, fields={"a": (0, "uint8", ())})
    with pytest.raises(ferry.FerryError):
        ferry.RecordSource(tmp_path / "missing.bin", record_size=4, fields={"a": (0, "uint8", ())})


def test_cifar10_source(engine, tmp_path):
    rng, seed = fresh_rng()
    n = rng.randrange(10, 40)
    labels = bytes(rng.randrange(10) for _ in range(n))
    images = rng.randbytes(n * 3072)
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(b"".join(labels[i:i + 1] + images[i * 3072:(i + 1) * 3072] for i in range(n)))
    with ferry.CIFAR10Source(path) as src:
        assert len(src) == n
        assert src.fields == {"label": ("uint8", (), 0), "image": ("uint8", (3, 32, 32), 1)}
        batches = _iterate(engine, src, 16, shuffle=True, seed=seed)
        _check_against(batches, {"label": labels, "image": images}, {"label": 1, "image": 3072}, n)
    assert src.closed
    src.close()  # idempotent
    with pytest.raises(ferry.ClosedError):
        len(src)


# --- .npy -----------------------------------------------------------------------------------------------


def test_npy_source_handwritten(engine, tmp_path):
    rng, seed = fresh_rng()
    n = rng.randrange(20, 50)
    x = rng.randbytes(n * 2 * 3 * 4)
    y = rng.randbytes(n * 8)
    write_npy(str(tmp_path / "x.npy"), "<f4", (n, 2, 3), x)
    write_npy(str(tmp_path / "y.npy"), "<i8", (n,), y)
    src = ferry.NpySource({"x": tmp_path / "x.npy", "y": str(tmp_path / "y.npy")})
    assert len(src) == n and src.fields == {"x": ("float32", (2, 3), 0), "y": ("int64", (), 0)}
    batches = _iterate(engine, src, 6, shuffle=True, seed=seed)
    _check_against(batches, {"x": x, "y": y}, {"x": 24, "y": 8}, n)
    src.close()
    write_npy(str(tmp_path / "z.npy"), "<i8", (n + 1,), rng.randbytes((n + 1) * 8))
    with pytest.raises(ferry.FormatError, match="samples"):
        ferry.NpySource({"x": tmp_path / "x.npy", "z": tmp_path / "z.npy"})


def test_npy_source_written_by_numpy(tmp_path):
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng()
    n = int(rng.integers(20, 60))
    x = rng.integers(0, 255, size=(n, 4, 4, 3), dtype=np.uint8)
    y = rng.standard_normal(n).astype(np.float64)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    src = ferry.NpySource({"x": tmp_path / "x.npy", "y": tmp_path / "y.npy"})
    with ferry.Loader(src, 9, shuffle=True, seed=5, device="cpu", output="numpy", copy=True) as loader:
        got_x, got_y = [], []
        for b in loader:
            got_x.append(b["x"])
            got_y.append(b["y"])
    gx, gy = np.concatenate(got_x), np.concatenate(got_y)
    order = np.argsort(gy)  # the y values are distinct: they give each row's index
    assert np.array_equal(gy[order], np.sort(y))
    assert np.array_equal(gx[order], x[np.argsort(y)])
    src.close()


# --- tokens ---------------------------------------------------------------------------------------------


def _token_reference(tokens, seq_len, indices, start_of):
    xs, ys = [], []
    for i in indices:
        o = start_of(i)
        xs.append(tokens[o:o + seq_len])
        ys.append(tokens[o + 1:o + seq_len + 1])
    return xs, ys


@pytest.mark.parametrize("fmt, code", [("uint16", "H"), ("uint32", "I")])
def test_token_source_flat(engine, tmp_path, fmt, code):
    rng, seed = fresh_rng()
    count, seq_len = rng.randrange(500, 2000), rng.randrange(3, 40)
    tokens = array.array(code, [rng.randrange(1 << (16 if code == "H" else 32)) for _ in range(count)])
    path = tmp_path / "tokens.bin"
    path.write_bytes(tokens.tobytes())
    src = ferry.TokenSource(path, seq_len=seq_len, format=fmt)
    n = (count - 1) // seq_len
    assert len(src) == n and src.seq_len == seq_len
    assert src.fields == {"x": (fmt, (seq_len,), 0), "y": (fmt, (seq_len,), 0)}
    seen = []
    for indices, fields in _iterate(engine, src, 5, shuffle=True, seed=seed):
        seen += indices
        xs, ys = _token_reference(tokens, seq_len, indices, lambda i: i * seq_len)
        assert fields["x"] == b"".join(a.tobytes() for a in xs)
        assert fields["y"] == b"".join(a.tobytes() for a in ys)
    assert sorted(seen) == list(range(n))
    src.close()


@pytest.mark.parametrize("magic, version, code", [(20240520, 1, "H"), (20240801, 7, "I")])
def test_token_source_llmc(engine, tmp_path, magic, version, code):
    rng, _ = fresh_rng()
    count, seq_len = rng.randrange(300, 900), 16
    tokens = array.array(code, [rng.randrange(50000) for _ in range(count)])
    header = struct.pack("<3i", magic, version, count) + bytes(253 * 4)
    path = tmp_path / "shard.bin"
    path.write_bytes(header + tokens.tobytes())
    src = ferry.TokenSource(path, seq_len=seq_len, format="llmc")
    assert src.fields["x"].dtype == ("uint16" if code == "H" else "uint32")
    for indices, fields in _iterate(engine, src, 7):
        xs, ys = _token_reference(tokens, seq_len, indices, lambda i: i * seq_len)
        assert fields["x"] == b"".join(a.tobytes() for a in xs)
        assert fields["y"] == b"".join(a.tobytes() for a in ys)
    src.close()
    path.write_bytes(struct.pack("<3i", 12345, 1, count) + bytes(253 * 4) + tokens.tobytes())
    with pytest.raises(ferry.FormatError, match="magic"):
        ferry.TokenSource(path, seq_len=seq_len, format="llmc")
    path.write_bytes(header + tokens.tobytes()[:-2])  # the count disagrees with the file
    with pytest.raises(ferry.FormatError):
        ferry.TokenSource(path, seq_len=seq_len, format="llmc")


def test_token_source_random_windows(engine, tmp_path):
    rng, seed = fresh_rng()
    count, seq_len = 4000, 12
    tokens = array.array("H", [rng.randrange(1 << 16) for _ in range(count)])
    raw = tokens.tobytes()
    path = tmp_path / "tokens.bin"
    path.write_bytes(raw)

    def windows(s):
        with ferry.TokenSource(path, seq_len=seq_len, random=True, seed=s) as src:
            return {i: (f["x"][k * 2 * seq_len:(k + 1) * 2 * seq_len], f["y"][k * 2 * seq_len:(k + 1) * 2 * seq_len])
                    for idx, f in _iterate(engine, src, 32) for k, i in enumerate(idx)}

    a, b, c = windows(seed), windows(seed), windows(seed ^ 1)
    assert a == b  # a pure function of (seed, index)
    assert sum(a[i] != c[i] for i in a) > len(a) // 2  # another seed, other windows
    starts = set()
    for x, y in a.values():
        pos = raw.find(x)
        while pos % 2:  # token aligned
            pos = raw.find(x, pos + 1)
        assert pos >= 0 and raw[pos + 2:pos + 2 + 2 * seq_len] == y
        starts.add(pos // 2)
    assert len(starts) > len(a) // 2  # not the sequential starts
    assert any(s % seq_len for s in starts)


@pytest.mark.parametrize("fmt, code", [("uint16", "H"), ("uint32", "I")])
@pytest.mark.parametrize("random", [False, True])
def test_token_source_window(engine, tmp_path, fmt, code, random):
    rng, seed = fresh_rng()
    count, seq_len = rng.randrange(300, 900), rng.randrange(2, 20)
    tokens = array.array(code, [rng.randrange(1 << (16 if code == "H" else 32)) for _ in range(count)])
    path = tmp_path / "tokens.bin"
    path.write_bytes(tokens.tobytes())
    src = ferry.TokenSource(path, seq_len=seq_len, format=fmt, random=random, seed=seed, window=True)
    pair = ferry.TokenSource(path, seq_len=seq_len, format=fmt, random=random, seed=seed)
    assert src.window and not pair.window
    assert len(src) == len(pair) == (count - 1) // seq_len
    assert src.fields == {"tokens": (fmt, (seq_len + 1,), 0)}
    size = tokens.itemsize
    windows = {i: f["tokens"][k * size * (seq_len + 1):(k + 1) * size * (seq_len + 1)]
               for idx, f in _iterate(engine, src, 9) for k, i in enumerate(idx)}
    row = size * seq_len
    for idx, f in _iterate(engine, pair, 9):
        for k, i in enumerate(idx):
            x, y = f["x"][k * row:(k + 1) * row], f["y"][k * row:(k + 1) * row]
            assert windows[i] == x + y[-size:], i  # x, then the last target
            if not random:
                assert windows[i] == tokens[i * seq_len:(i + 1) * seq_len + 1].tobytes()
    assert sorted(windows) == list(range(len(src)))
    src.close()
    pair.close()


def test_token_source_bad_arguments(tmp_path):
    path = tmp_path / "t.bin"
    path.write_bytes(bytes(101))  # an odd number of bytes: not whole uint16 tokens
    with pytest.raises(ferry.FormatError):
        ferry.TokenSource(path, seq_len=4)
    path.write_bytes(bytes(100))
    with pytest.raises(ferry.InvalidArgumentError):
        ferry.TokenSource(path, seq_len=4, format="int7")
    with pytest.raises(ferry.InvalidArgumentError):
        ferry.TokenSource(path, seq_len=0)
    with pytest.raises(ferry.FormatError):
        ferry.TokenSource(path, seq_len=50)  # 50 tokens: too few for a window of 50 + 1


# --- CallbackSource -------------------------------------------------------------------------------------


def _fill_reference(key, i, nbytes):
    # Deterministic pseudo-random bytes per (key, sample).
    import hashlib

    out = b""
    c = 0
    while len(out) < nbytes:
        out += hashlib.sha256(b"%d:%d:%d" % (key, i, c)).digest()
        c += 1
    return out[:nbytes]



@pytest.mark.parametrize("what", [
    "npy field", "npy path", "records path", "records field", "cifar10 path", "tokens path",
    "ragged tokens path", "ragged offsets path", "ragged field", "array field", "callback field",
    "transform field", "ShiftTokens x", "PadSequences mask", "report path", "jsonl path", "pipeline name",
])
def test_a_nul_in_a_string_for_c_is_refused(tmp_path, what):
    # A C string ends at its first NUL: {"a\0b": p} became field "a" and "x.npy\0junk" opened x.npy.
    # Every string the binding hands to the library is refused when it holds one.
    write_npy(tmp_path / "x.npy", "<i4", (4,), struct.pack("<4i", 1, 2, 3, 4))
    write_npy(tmp_path / "offsets.npy", "<i8", (3,), struct.pack("<3q", 0, 2, 4))
    (tmp_path / "data.bin").write_bytes(bytes(64))
    npy, data, offsets = str(tmp_path / "x.npy"), str(tmp_path / "data.bin"), str(tmp_path / "offsets.npy")
    rec = {"x": (0, "uint8", (4,))}

    def loader(**kw):
        arrays = {"x": bytearray(40), "tokens": (bytearray(80), "uint8", (40, 2))}
        return ferry.Loader(arrays, 4, device="cpu", output="dlpack", **kw)

    def monitor(fn):
        with ferry.PerformanceMonitor(gpu_interval=None, system_interval=None) as mon:
            fn(mon)

    make = {
        "npy field": lambda: ferry.NpySource({"a\0b": npy}),
        "npy path": lambda: ferry.NpySource({"x": npy + "\0junk"}),
        "records path": lambda: ferry.RecordSource(data + "\0junk", 4, fields=rec),
        "records field": lambda: ferry.RecordSource(data, 4, fields={"a\0b": (0, "uint8", (4,))}),
        "cifar10 path": lambda: ferry.CIFAR10Source(data + "\0junk"),
        "tokens path": lambda: ferry.TokenSource(data + "\0junk", 4),
        "ragged tokens path": lambda: ferry.RaggedTokenSource(data + "\0junk", offsets, 4),
        "ragged offsets path": lambda: ferry.RaggedTokenSource(data, offsets + "\0junk", 4),
        "ragged field": lambda: ferry.RaggedTokenSource(data, offsets, 4, field="a\0b"),
        "array field": lambda: ferry.ArraySource({"a\0b": bytearray(8)}),
        "callback field": lambda: ferry.CallbackSource(lambda i, out: None, length=4, fields={"a\0b": ("int32", 1)}),
        "transform field": lambda: loader(transforms={"x\0junk": ferry.Normalize(dtype="float32")}),
        "ShiftTokens x": lambda: loader(transforms={"tokens": ferry.ShiftTokens(x="a\0b")}),
        "PadSequences mask": lambda: loader(transforms={"tokens": ferry.PadSequences(mask="m\0junk")}),
        "report path": lambda: monitor(lambda mon: mon.write_report(str(tmp_path / "r.json\0junk"))),
        "jsonl path": lambda: monitor(lambda mon: mon.stream_jsonl(str(tmp_path / "m.jsonl\0junk"))),
        "pipeline name": lambda: monitor(lambda mon: mon.attach("train\0junk", loader())),
    }
    with pytest.raises(ferry.InvalidArgumentError, match="contains a NUL character"):
        make[what]()


def test_file_sources_refuse_a_named_pipe_at_once(tmp_path):
    # Opening a FIFO for reading blocks until a writer comes; every file source must refuse it at once
    # (InvalidArgumentError, "not a regular file") instead. In a subprocess with a time limit, so that a
    # hang fails this test and does not hang the run; so does a monitor's JSONL stream to a pipe no one reads.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    offsets = tmp_path / "offsets.npy"
    write_npy(offsets, "<i8", (3,), struct.pack("<3q", 0, 2, 4))
    tokens = tmp_path / "tokens.bin"
    tokens.write_bytes(bytes(16))
    code = (
        "import ferry\n"
        f"fifo, offsets, tokens = {str(fifo)!r}, {str(offsets)!r}, {str(tokens)!r}\n"
        "tries = [\n"
        "    lambda: ferry.NpySource({'x': fifo}),\n"
        "    lambda: ferry.RecordSource(fifo, 4, fields={'x': (0, 'uint8', (4,))}),\n"
        "    lambda: ferry.CIFAR10Source(fifo),\n"
        "    lambda: ferry.TokenSource(fifo, 4),\n"
        "    lambda: ferry.RaggedTokenSource(fifo, offsets, 4),\n"
        "    lambda: ferry.RaggedTokenSource(tokens, fifo, 4),\n"
        "]\n"
        "for fn in tries:\n"
        "    try:\n"
        "        fn()\n"
        "    except ferry.InvalidArgumentError as e:\n"
        "        print('refused', 'not a regular file' in str(e), flush=True)\n"
        "with ferry.PerformanceMonitor(gpu_interval=None, system_interval=None) as mon:\n"
        "    try:\n"
        "        mon.stream_jsonl(fifo)\n"
        "    except ferry.FerryIOError as e:\n"
        "        print('refused', 'no process has open for reading' in str(e), flush=True)\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PACKAGE_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"opening a named pipe hung; output so far: {e.stdout!r}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:-1] == ["refused True"] * 7, r.stdout


@pytest.mark.parametrize("use_numpy", [False, True])
def test_callback_source(engine, use_numpy):
    if use_numpy:
        pytest.importorskip("numpy")
    rng, seed = fresh_rng()
    key = rng.randrange(1 << 30)
    n = rng.randrange(50, 120)
    calls = []
    threads = set()
    lock = threading.Lock()

    def fn(index, out):
        with lock:
            calls.append(index)
            threads.add(threading.get_ident())
        a = out["a"]
        if use_numpy:
            assert a.shape == (3, 4) and a.dtype.name == "uint8" and a.flags.writeable
            a.reshape(-1)[:] = memoryview(_fill_reference(key, index, 12))
            out["b"][...] = index * 3 - 7
            assert out["h"].dtype.name == "float16" and out["h"].shape == (2,)
            out["h"].view("uint16")[:] = [index, index + 1]
        else:
            assert isinstance(a, memoryview) and a.shape == (3, 4) and a.format == "B" and not a.readonly
            a.cast("B", [12])[:] = _fill_reference(key, index, 12)
            out["b"][()] = index * 3 - 7
            assert out["h"].format == "H" and out["h"].shape == (2,)
            out["h"][0], out["h"][1] = index, index + 1

    src = ferry.CallbackSource(fn, length=n, fields={"a": ("uint8", (3, 4)), "b": ("int32", ()), "h": ("float16", 2)},
                               numpy=use_numpy)
    assert len(src) == n and src.fields["a"] == ("uint8", (3, 4), 0)
    batches = _iterate(engine, src, 8, shuffle=True, seed=seed, workers=4)
    seen = []
    for indices, fields in batches:
        seen += indices
        assert fields["a"] == b"".join(_fill_reference(key, i, 12) for i in indices)
        assert fields["b"] == b"".join(struct.pack("<i", i * 3 - 7) for i in indices)
        assert fields["h"] == b"".join(struct.pack("<2H", i, i + 1) for i in indices)
    assert sorted(seen) == list(range(n))
    # Every sample was filled (the prefetcher may already have begun the next epoch).
    assert set(range(n)) <= set(calls)
    src.close()


def test_callback_exception_fails_the_batch_and_the_loader_goes_on():
    rng, _ = fresh_rng()
    n, bs = 40, 8
    bad = rng.randrange(n)

    class Boom(RuntimeError):
        pass

    def fn(index, out):
        if index == bad:
            raise Boom(f"cannot decode sample {index}")
        out["v"][()] = index

    src = ferry.CallbackSource(fn, length=n, fields={"v": ("int64", ())}, numpy=False)
    with ferry.Loader(src, bs, device="cpu", output="dlpack", timeout_ms=TIMEOUT_MS) as loader:
        it = loader.iterator
        got, failed = [], []
        while True:
            try:
                b = it.next()
            except ferry.FerryIOError as e:
                failed.append(e)
                continue
            if b is None:
                break
            with b:
                f = b.field("v")
                got.append((b.index, b.indices(), array.array("q", f.to_bytes()).tolist()))
                f.close()
        assert len(failed) == 1
        err = failed[0]
        assert err.status == ferry.Status.IO and isinstance(err, OSError)
        assert f"sample {bad}" in str(err) and "Boom" in str(err) and f"cannot decode sample {bad}" in str(err)
        assert isinstance(err.__cause__, Boom)
        assert [g[0] for g in got] == [k for k in range(n // bs) if k != bad // bs]
        for _, indices, values in got:
            assert values == indices
        # The next epoch is whole once the callback stops failing (set_epoch drops what was prefetched).
        bad = -1
        loader.set_epoch(1)
        assert [len(b["v"].to_bytes()) // 8 for b in loader] == [bs] * (n // bs)
    src.close()


def test_callback_with_a_non_callable_or_bad_fields():
    with pytest.raises(TypeError):
        ferry.CallbackSource(42, length=3, fields={"a": ("uint8", ())})
    with pytest.raises(TypeError):
        ferry.CallbackSource(lambda i, o: None, length=3, fields={"a": "uint8"})
    with pytest.raises(ferry.InvalidArgumentError):
        ferry.CallbackSource(lambda i, o: None, length=0, fields={"a": ("uint8", ())})
    with pytest.raises(ferry.InvalidArgumentError):
        ferry.CallbackSource(lambda i, o: None, length=3, fields={"a": ("uint8", (0,))})


def test_source_finalizer_destroys_the_handle():
    src = ferry.ArraySource({"a": bytearray(8)})
    finalizer = src._finalizer
    assert finalizer.alive
    del src
    gc.collect()
    assert not finalizer.alive
