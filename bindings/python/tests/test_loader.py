"""Loader and Iterator on the CPU engine: batches against a reference built from their indices, shuffle
determinism, epochs, exact resume, sharding, zero copy and its stall, the façades."""

from __future__ import annotations

import array
import gc
import os
import subprocess
import sys
import time

import pytest

import ferry
from ferry import _dataloader

from conftest import PACKAGE_ROOT
from loader_helpers import TIMEOUT_MS, fresh_rng, rows, write_npy


def _pos(state):
    """The exact-resume part of a state dict (it also carries the offset, the global position and the
    world size, checked in test_elastic.py)."""
    return {"epoch": state["epoch"], "batch": state["batch"]}

def _dataset(rng, n, payload=24):
    """A dict source whose samples carry their own index (field "idx") and random bytes ("data")."""
    data = bytearray(rng.randbytes(n * payload))
    idx = array.array("q", range(n))
    return {"data": (data, "uint8", (n, payload)), "idx": idx}, bytes(data)


def _epoch(loader):
    """One epoch through the Loader: [(indices, data bytes)], read from dlpack fields."""
    out = []
    for b in loader:
        out.append((array.array("q", b["idx"].to_bytes()).tolist(), b["data"].to_bytes()))
    return out


def _loader(arrays, bs, **kw):
    kw.setdefault("device", "cpu")
    kw.setdefault("output", "dlpack")
    kw.setdefault("timeout_ms", TIMEOUT_MS)
    return ferry.Loader(arrays, bs, **kw)


def test_sequential_batches_match_the_data():
    rng, _ = fresh_rng()
    n, bs, payload = rng.randrange(50, 200), rng.randrange(3, 20), 24
    arrays, data = _dataset(rng, n, payload)
    with _loader(arrays, bs) as loader:
        assert len(loader) == -(-n // bs)
        batches = _epoch(loader)
        assert len(batches) == len(loader)
        for k, (indices, got) in enumerate(batches):
            assert indices == list(range(k * bs, min(n, (k + 1) * bs)))
            assert got == rows(data, payload, indices)
        assert _pos(loader.state_dict()) == {"epoch": 1, "batch": 0}
        assert _epoch(loader) == batches  # the next epoch, same order without shuffle


def test_drop_last():
    rng, _ = fresh_rng()
    n, bs = 101, 10
    arrays, _ = _dataset(rng, n)
    with _loader(arrays, bs, drop_last=True, shuffle=True, seed=rng.randrange(1 << 60)) as loader:
        assert len(loader) == 10
        assert [len(i) for i, _ in _epoch(loader)] == [bs] * 10


def test_shuffle_is_deterministic_and_independent_of_workers_and_prefetch():
    rng, seed = fresh_rng()
    n, bs, payload = rng.randrange(100, 400), rng.randrange(5, 33), 16
    arrays, data = _dataset(rng, n, payload)
    runs = []
    for workers, prefetch in [(1, 2), (4, 3), (0, 0), (7, 8)]:
        with _loader(arrays, bs, shuffle=True, seed=seed, workers=workers, prefetch=prefetch) as loader:
            runs.append([_epoch(loader) for _ in range(3)])
    assert all(r == runs[0] for r in runs[1:])
    epochs = runs[0]
    for ep in epochs:
        indices = [i for b, _ in ep for i in b]
        assert sorted(indices) == list(range(n))  # a permutation
        for b, got in ep:
            assert got == rows(data, payload, b)
    orders = [[i for b, _ in ep for i in b] for ep in epochs]
    assert orders[0] != list(range(n)) and orders[0] != orders[1] != orders[2]
    with _loader(arrays, bs, shuffle=True, seed=seed + 1) as loader:
        assert [i for b, _ in _epoch(loader) for i in b] != orders[0]


def test_set_epoch_and_epoch_property():
    rng, seed = fresh_rng()
    arrays, _ = _dataset(rng, 90)
    with _loader(arrays, 8, shuffle=True, seed=seed) as a, _loader(arrays, 8, shuffle=True, seed=seed) as b:
        seq = [_epoch(a) for _ in range(4)]
        assert a.epoch == 4
        b.set_epoch(3)
        assert b.epoch == 3 and _pos(b.state_dict()) == {"epoch": 3, "batch": 0}
        assert _epoch(b) == seq[3]
        b.set_epoch(1)
        it = iter(b)
        next(it)  # mid-epoch, then set_epoch starts over
        b.set_epoch(1)
        assert _epoch(b) == seq[1]
        with pytest.raises(ferry.InvalidArgumentError):
            b.set_epoch(-1)


@pytest.mark.parametrize("epoch", [-1, 2**64, 2**64 + 5, -(2**64) + 5])
def test_an_epoch_out_of_range_is_refused_the_same_way_everywhere(epoch):
    # ctypes wraps an int that does not fit uint64_t: set_epoch(2**64 + 5) gave epoch 5 while
    # load_state_dict refused the same value. Every way in refuses it with the same message.
    rng, _ = fresh_rng()
    arrays, _ = _dataset(rng, 20)
    with _loader(arrays, 4) as loader:
        it = loader._iterator
        calls = {
            "Loader.set_epoch": lambda e: loader.set_epoch(e),
            "Iterator.set_epoch": lambda e: it.set_epoch(e),
            "load_state_dict": lambda e: loader.load_state_dict({"epoch": e, "batch": 0}),
            "load_state_dict elastic": lambda e: loader.load_state_dict(
                {"epoch": e, "batch": 0, "consumed": 0, "world_size": 1}),
            "restore": lambda e: it.restore(e),
            "restore_elastic": lambda e: it.restore_elastic(e, 0),
        }
        for name, call in calls.items():
            with pytest.raises(ferry.InvalidArgumentError, match=rf"epoch {epoch} does not fit uint64_t"):
                call(epoch)
            assert _pos(loader.state_dict()) == {"epoch": 0, "batch": 0}, name
        # The largest epoch is taken by each of them alike.
        for name, call in calls.items():
            call(2**64 - 1)
            assert loader.epoch == 2**64 - 1, name
            loader.set_epoch(0)


@pytest.mark.parametrize("what", ["batch_size", "record_size", "header_size", "field offset", "shape",
                                  "seq_len", "max_len", "length", "multiple"])
def test_ints_that_do_not_fit_their_c_type_are_refused_not_wrapped(tmp_path, what):
    # ctypes silently wraps an int that does not fit the C type: batch_size=2**64 + 5 gave batches of 5.
    big = 2**64 + 4
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(64))
    offsets = tmp_path / "offsets.npy"
    write_npy(offsets, "<i8", (3,), array.array("q", [0, 2, 4]).tobytes())
    records = {"x": (0, "uint8", (4,))}
    make = {
        "batch_size": lambda: _loader({"x": bytearray(40)}, big),
        "record_size": lambda: ferry.RecordSource(path, big, fields=records),
        "header_size": lambda: ferry.RecordSource(path, 4, header_size=big, fields=records),
        "field offset": lambda: ferry.RecordSource(path, 4, fields={"x": (big, "uint8", (4,))}),
        "shape": lambda: ferry.RecordSource(path, 4, fields={"x": (0, "uint8", (big,))}),
        "seq_len": lambda: ferry.TokenSource(path, big),
        "max_len": lambda: ferry.RaggedTokenSource(path, offsets, big),
        "length": lambda: ferry.CallbackSource(lambda i, out: None, length=big, fields={"v": ("int32", 1)}),
        "multiple": lambda: ferry.BatchSizeAdvisor(multiple=big),
    }
    with pytest.raises(ferry.InvalidArgumentError, match=f"{big} does not fit int64_t"):
        make[what]()


def test_state_dict_resume_is_bit_for_bit():
    rng, seed = fresh_rng()
    n, bs = rng.randrange(60, 150), rng.randrange(4, 16)
    arrays, _ = _dataset(rng, n)
    with _loader(arrays, bs, shuffle=True, seed=seed, workers=3) as ref:
        per_epoch = len(ref)
        full = [_epoch(ref) for _ in range(3)]
    flat = [(e, k, b) for e, ep in enumerate(full) for k, b in enumerate(ep)]
    for stop in sorted({0, rng.randrange(1, len(flat)), per_epoch, per_epoch - 1, len(flat) - 1}):
        with _loader(arrays, bs, shuffle=True, seed=seed, workers=1) as first:
            # Read `stop` batches, then save.
            got = []
            while len(got) < stop:
                got += [b for b in _epoch_prefix(first, stop - len(got))]
            state = first.state_dict()
        e, k = divmod(stop, per_epoch)
        if k == 0 and stop > 0:
            e, k = e - 1, per_epoch  # right after an epoch's last batch: its end comes next
        assert _pos(state) == {"epoch": e, "batch": k}, stop
        with _loader(arrays, bs, shuffle=True, seed=seed, workers=5) as second:
            second.load_state_dict(state)
            rest = []
            for _ in range(3 - e):
                rest += _epoch(second)
        assert got + rest == [b for _, _, b in flat], stop


def _epoch_prefix(loader, count):
    out = []
    for b in loader:
        out.append((array.array("q", b["idx"].to_bytes()).tolist(), b["data"].to_bytes()))
        if len(out) == count:
            break
    return out


def test_resume_at_the_end_of_an_epoch():
    rng, seed = fresh_rng()
    arrays, _ = _dataset(rng, 40)
    with _loader(arrays, 8, shuffle=True, seed=seed) as a:
        it = iter(a)
        for _ in range(len(a)):
            next(it)  # the last batch of epoch 0; END_OF_EPOCH comes next
        state = a.state_dict()
        assert _pos(state) == {"epoch": 0, "batch": len(a)}
        rest = list(it)
        assert rest == []
        epoch1 = _epoch(a)
    with _loader(arrays, 8, shuffle=True, seed=seed) as b:
        b.load_state_dict(state)
        assert _epoch(b) == []  # the rest of epoch 0 is empty
        assert _epoch(b) == epoch1
        with pytest.raises(ferry.InvalidArgumentError):
            b.load_state_dict({"epoch": 0, "batch": len(b) + 1})
        with pytest.raises(ferry.InvalidArgumentError):
            b.load_state_dict({"epoch": 0})


def test_break_continues_the_epoch():
    rng, seed = fresh_rng()
    arrays, _ = _dataset(rng, 64)
    with _loader(arrays, 8, shuffle=True, seed=seed) as a, _loader(arrays, 8, shuffle=True, seed=seed) as b:
        whole = _epoch(a)
        head = _epoch_prefix(b, 3)
        assert head + _epoch(b) == whole


@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_are_disjoint_and_cover(drop_last):
    rng, seed = fresh_rng()
    world = rng.randrange(2, 5)
    n = rng.randrange(50, 120)
    arrays, data = _dataset(rng, n, 8)
    per_rank = []
    for rank in range(world):
        with _loader(arrays, 6, shuffle=True, seed=seed, rank=rank, world_size=world, drop_last=drop_last) as loader:
            ep = _epoch(loader)
            assert len(ep) == len(loader)
            for b, got in ep:
                assert got == rows(data, 8, b)
            per_rank.append([i for b, _ in ep for i in b])
    counts = [len(r) for r in per_rank]
    assert len(set(counts)) == 1 or drop_last  # the same samples per rank (DistributedSampler pads)
    everything = [i for r in per_rank for i in r]
    if drop_last:
        # Cut to a multiple of the world size, and each rank drops its short last batch: disjoint.
        assert len(set(everything)) == len(everything)
        spr = n // world
        assert all(c == spr - spr % 6 for c in counts)
    else:
        assert set(everything) == set(range(n))  # covering
        assert len(everything) == -(-n // world) * world  # padded by wrapping: at most world-1 repeats
        assert len(everything) - len(set(everything)) == (-n) % world


def test_ranks_from_the_environment(monkeypatch):
    rng, seed = fresh_rng()
    arrays, _ = _dataset(rng, 40)
    with _loader(arrays, 5, shuffle=True, seed=seed, rank=1, world_size=2) as explicit:
        want = _epoch(explicit)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with _loader(arrays, 5, shuffle=True, seed=seed) as from_env:
        assert len(from_env) == 4
        assert _epoch(from_env) == want
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ferry.InvalidArgumentError, match="RANK"):
        _loader(arrays, 5)


def test_ranks_from_the_environment_at_process_start():
    # As torchrun sets them: in the environment before the library is loaded.
    code = (
        "import ferry\n"
        "l = ferry.Loader({'a': bytearray(40)}, 5, device='cpu', output='dlpack')\n"
        "print(len(l))\n"
    )
    env = dict(os.environ, RANK="1", WORLD_SIZE="4")
    env["PYTHONPATH"] = str(PACKAGE_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2"]  # 40 samples / 4 ranks = 10 per rank: 2 batches of 5


def test_holding_batches_grows_the_ring():
    rng, _ = fresh_rng()
    arrays, data = _dataset(rng, 100, 8)
    with _loader(arrays, 5, prefetch=2) as loader:  # the default 5-minute timeout: a wait would hang
        start = time.monotonic()
        kept = list(loader)  # every batch of the epoch held at once, from a ring of two
        assert time.monotonic() - start < 30
        assert len(kept) == 20
        for b in kept:  # none was refilled while held
            idx = array.array("q", b["idx"].to_bytes()).tolist()
            assert b["data"].to_bytes() == rows(data, 8, idx)
        assert sorted(i for b in kept for i in array.array("q", b["idx"].to_bytes())) == list(range(100))
        del kept, b
        assert len(list(loader)) == 20  # the next epoch, on the slots given back


def test_holding_beyond_the_budget_fails_at_once_and_dropping_unblocks():
    rng, _ = fresh_rng()
    arrays, data = _dataset(rng, 100, 8)
    with _loader(arrays, 5, prefetch=2, pinned_budget=-1) as loader:
        it = iter(loader)
        held = [next(it), next(it)]  # the whole ring, which may not grow
        start = time.monotonic()
        with pytest.raises(ferry.LimitError, match="2 batches of the ring are still held by the caller") as info:
            next(it)
        assert time.monotonic() - start < 30
        assert "`del batch`" in str(info.value)  # where Python references hide
        del info
        it = iter(loader)  # the failed generator is finished; the loader itself is fine
        del held
        gc.collect()
        got = [array.array("q", b["idx"].to_bytes()).tolist() for b in it]
        assert got[0] == [10, 11, 12, 13, 14] and len(got) == 18  # batches 2..19: the refused next was retried


def test_no_slot_leaks_when_tensors_are_dropped():
    rng, _ = fresh_rng()
    arrays, data = _dataset(rng, 64, 4)
    # No pinned budget: a slot that did not come back would make the ring refuse at once.
    with _loader(arrays, 4, prefetch=2, pinned_budget=-1) as loader:
        count = 0
        for _ in range(2):
            for b in loader:  # each batch is dropped when the next replaces it
                count += 1
                assert b["data"].to_bytes() == rows(data, 4, array.array("q", b["idx"].to_bytes()).tolist())
        assert count == 32


def test_copy_true_releases_at_once():
    rng, _ = fresh_rng()
    arrays, data = _dataset(rng, 60, 8)
    with _loader(arrays, 4, prefetch=2, copy=True) as loader:
        kept = list(loader)  # 15 batches held: no stall with copies
        assert len(kept) == 15
        for k, b in enumerate(kept):
            assert isinstance(b["data"], memoryview) and b["data"].shape == (4, 8)
            assert b["data"].tobytes() == rows(data, 8, list(range(4 * k, 4 * k + 4)))
            assert b["idx"].tolist() == list(range(4 * k, 4 * k + 4))


def test_numpy_output_and_copy():
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng()
    x = rng.standard_normal((77, 3)).astype(np.float32)
    i = np.arange(77, dtype=np.int32)
    with ferry.Loader({"x": x, "i": i}, 8, shuffle=True, seed=1, device="cpu", prefetch=2, copy=True,
                      timeout_ms=TIMEOUT_MS) as loader:
        assert loader.output in ("numpy", "torch")
        if loader.output != "numpy":
            pytest.skip("torch is importable: the loader hands out torch tensors")
        kept = list(loader)
        assert sum(len(b["i"]) for b in kept) == 77
        for b in kept:
            assert isinstance(b["x"], np.ndarray) and np.array_equal(b["x"], x[b["i"]])
    with ferry.Loader({"x": x, "i": i}, 8, device="cpu", output="numpy", prefetch=2, timeout_ms=TIMEOUT_MS) as loader:
        for k, b in enumerate(loader):
            assert np.array_equal(b["x"], x[8 * k:8 * k + 8]) and b["x"].flags.c_contiguous


def test_torch_output_on_cpu():
    torch = pytest.importorskip("torch")
    rng, seed = fresh_rng()
    arrays, data = _dataset(rng, 50, 8)
    with ferry.Loader(arrays, 8, shuffle=True, seed=seed, device="cpu", timeout_ms=TIMEOUT_MS) as loader:
        assert loader.output == "torch"
        for b in loader:
            assert isinstance(b["data"], torch.Tensor) and b["data"].device.type == "cpu"
            assert bytes(b["data"].numpy().tobytes()) == rows(data, 8, b["idx"].tolist())


def test_facades():
    rng, seed = fresh_rng()
    arrays, data = _dataset(rng, 70, 8)
    with _loader(arrays, 16, shuffle=True, seed=seed) as plain:
        want = _epoch(plain)
    with ferry.OptimizedDataLoader(arrays, batch_size=16, shuffle=True, num_workers=3, pin_memory=True,
                                   prefetch_factor=1, device="cpu", seed=seed, output="dlpack") as odl:
        assert isinstance(odl, ferry.Loader) and len(odl) == 5
        assert _epoch(odl) == want
        with ferry.PrefetchLoader(odl, device="cpu") as pl:  # the settings are reused
            assert pl.batch_size == 16 and pl.output == "dlpack"
            assert _epoch(pl) == want
    src = ferry.ArraySource(arrays)
    with ferry.PrefetchLoader(src, device=ferry.CPU, batch_size=16, shuffle=True, seed=seed, output="dlpack") as pl:
        assert _epoch(pl) == want
    with pytest.raises(TypeError):
        ferry.PrefetchLoader(src, device="cpu")
    src.close()


def test_device_parsing():
    assert _dataloader._parse_device("cpu") == ferry.CPU
    assert _dataloader._parse_device(-1) == ferry.CPU
    assert _dataloader._parse_device(2) == 2
    assert _dataloader._parse_device("cuda") == 0
    assert _dataloader._parse_device("cuda:3") == 3
    assert _dataloader._parse_device(None) == (0 if ferry.device_count() > 0 else ferry.CPU)
    with pytest.raises(ferry.InvalidArgumentError):
        _dataloader._parse_device("tpu:0")


def test_default_device_and_missing_gpu():
    arrays = {"a": bytearray(16)}
    with ferry.Loader(arrays, 4, output="dlpack") as loader:
        assert loader.device == (0 if ferry.device_count() > 0 else ferry.CPU)
    n = ferry.device_count()
    with pytest.raises(ferry.NoDeviceError):
        ferry.Loader(arrays, 4, device=n + 3)


def test_bad_arguments():
    arrays = {"a": bytearray(16)}
    for kw in (dict(batch_size=0), dict(batch_size=4, prefetch=1), dict(batch_size=4, prefetch=65),
               dict(batch_size=4, output="jax"), dict(batch_size=4, rank=2, world_size=2)):
        with pytest.raises(ferry.InvalidArgumentError):
            ferry.Loader(arrays, device="cpu", **kw)
    with pytest.raises(TypeError):
        ferry.Loader([1, 2, 3], 2)


def test_close_is_idempotent_and_owns_what_it_built():
    rng, _ = fresh_rng()
    arrays, _ = _dataset(rng, 30)
    loader = _loader(arrays, 4)
    owned = loader.source
    assert isinstance(owned, ferry.ArraySource) and not owned.closed
    next(iter(loader))
    loader.close()
    loader.close()
    assert loader.closed and owned.closed
    with pytest.raises(ferry.ClosedError):
        len(loader)
    with pytest.raises(ferry.ClosedError):
        list(loader)
    # A source passed in is the caller's: it stays open.
    src = ferry.ArraySource(arrays)
    with _loader(src, 4) as other:
        assert len(other) == 8
    assert not src.closed
    src.close()


def test_garbage_collection_destroys_the_iterator():
    rng, _ = fresh_rng()
    arrays, _ = _dataset(rng, 30)
    loader = _loader(arrays, 4)
    fin = loader._iterator._finalizer
    next(iter(loader))
    del loader
    gc.collect()
    assert not fin.alive


def test_interpreter_exit_with_live_loaders_and_callbacks():
    # Finalizers at exit destroy iterators before their sources and engines, also while a Python
    # callback source is in use and a batch is still held.
    code = (
        "import ferry\n"
        "def fn(i, out):\n"
        "    out['v'][0] = i\n"
        "src = ferry.CallbackSource(fn, length=1000, fields={'v': ('int32', 1)}, numpy=False)\n"
        "loader = ferry.Loader(src, 10, device='cpu', output='dlpack', workers=4)\n"
        "it = iter(loader)\n"
        "held = next(it)\n"
        "print(len(loader), bytes(held['v'].to_bytes()[:8]).hex())\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PACKAGE_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["100", "0000000001000000"]
    assert r.stderr == ""


def test_mmap_array_truncated_during_the_epoch_raises_io_error(tmp_path):
    # A numpy array over a file mapping (np.load(mmap_mode="r")) whose file shrinks mid-epoch: reading the
    # vanished pages raises SIGBUS, which must become FerryIOError, as with the file sources, not kill the
    # process. In a subprocess, so that a crash fails this test and nothing else.
    pytest.importorskip("numpy")
    path = tmp_path / "x.npy"
    code = (
        "import os, numpy as np, ferry\n"
        f"path = {str(path)!r}\n"
        "np.save(path, np.arange(256 * 1024, dtype=np.uint8).reshape(64, 4096))\n"
        "mm = np.load(path, mmap_mode='r')\n"
        "loader = ferry.Loader({'x': mm}, 1, device='cpu', output='numpy', prefetch=2, workers=1)\n"
        "it = iter(loader)\n"
        "assert next(it)['x'].shape == (1, 4096)\n"
        "os.truncate(path, 4096)\n"
        "try:\n"
        "    for _ in it:\n"
        "        pass\n"
        "except ferry.FerryIOError as e:\n"
        "    print('FerryIOError', e)\n"
        "else:\n"
        "    print('no error')\n"
        "loader.close()\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PACKAGE_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("FerryIOError"), r.stdout
    assert "truncated" in r.stdout


def test_a_batch_size_beyond_the_data_set_gives_one_batch_of_it():
    # The ring was sized by batch_size: 20 samples of 1 MiB with batch_size=16_777_216 asked for 16 TiB
    # and raised OutOfMemoryError; torch gives one batch of 20. With ranks, one batch of the rank's share.
    rng, _ = fresh_rng()
    n, size = 20, 1 << 20
    data = bytearray(rng.randbytes(n * size))
    arrays = {"data": (data, "uint8", (n, size)), "idx": array.array("q", range(n))}
    with _loader(arrays, 16_777_216, shuffle=True, prefetch=2) as loader:
        assert len(loader) == 1
        for _ in range(2):
            (got,) = _epoch(loader)
            assert sorted(got[0]) == list(range(n))
            assert got[1] == rows(bytes(data), size, got[0])
    with _loader(arrays, 16_777_216, rank=1, world_size=3) as loader:
        assert [len(idx) for idx, _ in _epoch(loader)] == [7]


def test_iterator_low_level():
    rng, seed = fresh_rng()
    arrays, data = _dataset(rng, 21, 8)
    src = ferry.ArraySource(arrays)
    with ferry.Engine(ferry.CPU, sample_interval_ms=0) as engine:
        with ferry.Iterator(engine, src, 4, shuffle=True, seed=seed, timeout_ms=TIMEOUT_MS) as it:
            assert len(it) == 6 and it.field_names == ["data", "idx"]
            b = it.next()
            assert (b.epoch, b.index, b.num_samples, len(b)) == (0, 0, 4, 4)
            idx = b.indices()
            f = b.field(0)
            assert f.name == "data" and f.shape == (4, 8) and f.dtype == "uint8" and f.device == (1, 0)
            assert b.fields()["idx"].to_bytes() == array.array("q", idx).tobytes()
            with pytest.raises(KeyError):
                b.field("nope")
            with pytest.raises(IndexError):
                b.field(2)
            b.release()
            b.release()  # idempotent
            assert f.to_bytes() == rows(data, 8, idx)  # fields outlive the handle
            with pytest.raises(ferry.ClosedError):
                b.indices()
            f.close()
            assert _pos(it.state()) == {"epoch": 0, "batch": 1}
            for _ in range(5):
                it.next().release()
            assert _pos(it.state()) == {"epoch": 0, "batch": 6}
            assert it.next() is None  # END_OF_EPOCH: not an error
            assert _pos(it.state()) == {"epoch": 1, "batch": 0}
            it.restore(0, 5)
            last = it.next()
            assert last.index == 5 and last.num_samples == 1
            last.release()
    src.close()


def test_stats_count_what_the_loader_delivered():
    rng, _ = fresh_rng()
    arrays, _ = _dataset(rng, 50, 4)
    with _loader(arrays, 8) as loader:
        assert loader.stats()["batches"] == 0
        assert sum(1 for _ in loader) == 7
        st = loader.stats()
        assert st["batches"] == 7 and st["samples"] == 50 and st["bytes"] > 0 and st["stall_s"] >= 0
    with pytest.raises(ferry.ClosedError):
        loader.stats()
