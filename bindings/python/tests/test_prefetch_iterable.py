"""PrefetchLoader over any iterable of CPU batches (a FeedLoader): nested structures, pass-through leaves,
changing shapes, transforms by key or position, the iterable's errors at their step, close and Ctrl-C mid
epoch, batches kept, the budget, len and set_epoch — on the CPU engine with numpy batches."""

from __future__ import annotations

import _thread
import collections
import gc
import threading
import time

import numpy as np
import pytest

import ferry

from loader_helpers import fresh_rng

Pair = collections.namedtuple("Pair", "left right")


def _rng():
    _, seed = fresh_rng()
    return np.random.default_rng(seed)


def _batch(rng, rows, h=4, w=5):
    return (
        rng.integers(0, 256, size=(rows, 3, h, w), dtype=np.uint8),
        {"label": rng.integers(-2**62, 2**62, size=rows, dtype=np.int64),
         "score": rng.standard_normal((rows, 2)).astype(np.float32),
         "half": rng.standard_normal((rows,)).astype(np.float16),
         "mask": rng.integers(0, 2, size=(rows, 7)).astype(bool),
         "names": [f"img{i}.jpg" for i in range(rows)],
         "pair": Pair(rng.integers(0, 9, size=(rows, 2), dtype=np.int32), "meta")},
        rows,
        None,
    )


def _same(got, want):
    """got equals want, structure, types of containers, pass-through leaves and array values alike."""
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want)
    elif isinstance(want, tuple) and hasattr(want, "_fields"):
        assert type(got) is type(want)
        for g, w in zip(got, want):
            _same(g, w)
    elif isinstance(want, (tuple, list)):
        assert type(got) is type(want) and len(got) == len(want)
        for g, w in zip(got, want):
            _same(g, w)
    elif isinstance(want, dict):
        assert list(got) == list(want)
        for k in want:
            _same(got[k], want[k])
    else:
        assert got is want or got == want, (got, want)


def test_nested_structures_pass_through_leaves_and_changing_shapes():
    rng = _rng()
    batches = [_batch(rng, int(rng.integers(1, 40)), int(rng.integers(1, 9)), int(rng.integers(1, 9)))
               for _ in range(12)]
    batches.append(_batch(rng, 3))  # a short last batch
    with ferry.PrefetchLoader(batches, device="cpu", output="numpy", prefetch=3) as loader:
        assert isinstance(loader, ferry.FeedLoader) and len(loader) == 13
        for _ in range(2):  # a list is iterated afresh by each loop
            got = list(loader)
            assert len(got) == 13
            for g, w in zip(got, batches):
                _same(g, w)
            del got
        st = loader.stats()
        assert st["batches"] == 26 and st["samples"] == 2 * sum(b[2] for b in batches)


def test_non_contiguous_and_byte_swapped_arrays():
    rng = _rng()
    x = rng.integers(0, 1000, size=(8, 6), dtype=np.int32)
    batches = [(x[:, ::2], x.T.copy().T, x.astype(">i4"))]
    with ferry.PrefetchLoader(batches, device="cpu", output="numpy") as loader:
        (a, b, c), = list(loader)
    assert np.array_equal(a, x[:, ::2]) and np.array_equal(b, x) and np.array_equal(c, x)
    assert c.dtype == np.int32


def test_transforms_by_position_and_key():
    rng = _rng()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    batches = []
    for _ in range(6):
        rows, h, w, t = (int(v) for v in rng.integers(1, 20, size=4))
        batches.append((rng.integers(0, 256, size=(rows, 3, h, w), dtype=np.uint8),
                        {"tokens": rng.integers(0, 2**16, size=(rows, t + 1), dtype=np.uint16)}))
    transforms = {0: ferry.Normalize(mean, std, input_layout="CHW"), "1.tokens": ferry.ShiftTokens()}
    with ferry.PrefetchLoader(batches, device="cpu", output="numpy", transforms=transforms) as loader:
        for (img, rest), (src, srest) in zip(loader, batches):
            want = (src.astype(np.float32) / 255 - np.array(mean, np.float32)[:, None, None]) / \
                np.array(std, np.float32)[:, None, None]
            assert img.dtype == np.float32 and img.shape == src.shape
            np.testing.assert_allclose(img, want, rtol=1e-5, atol=1e-5)
            assert list(rest["tokens"]) == ["x", "y"]
            assert np.array_equal(rest["tokens"]["x"], srest["tokens"][:, :-1].astype(np.int64))
            assert np.array_equal(rest["tokens"]["y"], srest["tokens"][:, 1:].astype(np.int64))


def test_a_transform_for_a_missing_key_names_the_keys():
    batches = [(np.zeros((2, 3), np.uint8), np.zeros(2, np.int64))]
    transforms = {"image": ferry.ShiftTokens()}
    with ferry.PrefetchLoader(batches, device="cpu", output="numpy", transforms=transforms) as loader:
        with pytest.raises(ferry.InvalidArgumentError, match=r"\['image'\].*\['0', '1'\]"):
            list(loader)


def test_the_iterables_error_comes_at_its_step_with_its_traceback():
    def gen():
        yield np.arange(4)
        yield np.arange(4) + 1
        raise KeyError("the third batch")

    with ferry.PrefetchLoader(gen(), device="cpu", output="numpy") as loader:
        got = []
        with pytest.raises(KeyError, match="the third batch") as info:
            for b in loader:
                got.append(b.tolist())
        assert got == [[0, 1, 2, 3], [1, 2, 3, 4]]
        frames = []
        tb = info.value.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame.f_code.co_name)
            tb = tb.tb_next
        assert "gen" in frames, frames


class _Flaky:
    """An iterator that fails at one step and goes on after it, as a DataLoader's does after a worker error."""

    def __init__(self, n, bad):
        self.n, self.bad = n, bad

    def __iter__(self):
        self.i = 0
        return self

    def __next__(self):
        i = self.i
        if i >= self.n:
            raise StopIteration
        self.i += 1
        if i == self.bad:
            raise ValueError(f"batch {i} failed in a worker")
        return np.full((2,), i, dtype=np.int64)

    def __len__(self):
        return self.n


def test_the_loop_goes_on_after_an_error_when_the_iterable_does():
    with ferry.PrefetchLoader(_Flaky(6, 2), device="cpu", output="numpy") as loader:
        it = iter(loader)
        got = [int(next(it)[0]), int(next(it)[0])]
        with pytest.raises(ValueError, match="batch 2 failed"):
            next(it)
        got += [int(b[0]) for b in it]
        assert got == [0, 1, 3, 4, 5]


def _endless(rng, started=None):
    i = 0
    while True:
        if started is not None:
            started.set()
        yield rng.integers(0, 100, size=(4, 16), dtype=np.int64), i
        i += 1


def test_close_mid_epoch_stops_the_pass_and_frees_the_ring():
    rng = _rng()
    loader = ferry.PrefetchLoader(_endless(rng), device="cpu", output="numpy", prefetch=2)
    it = iter(loader)
    first = next(it)
    run = loader._run
    start = time.monotonic()
    loader.close()
    loader.close()
    assert time.monotonic() - start < 5
    run.thread.join(5)
    assert not run.thread.is_alive(), "the producer stopped"
    assert first[0].shape == (4, 16)  # what was handed out stays valid
    with pytest.raises(StopIteration):
        next(it)
    with pytest.raises(ferry.ClosedError):
        iter(loader)
    with pytest.raises(ferry.ClosedError):
        loader.stats()


def test_a_new_loop_after_break_starts_a_new_pass():
    rng = _rng()
    batches = [rng.integers(0, 100, size=(3, 2), dtype=np.int64) for _ in range(10)]
    with ferry.PrefetchLoader(batches, device="cpu", output="numpy") as loader:
        for i, _ in enumerate(loader):
            if i == 3:
                break
        got = list(loader)
        assert len(got) == 10 and all(np.array_equal(g, w) for g, w in zip(got, batches))


def test_holding_every_batch_of_an_epoch_takes_seconds():
    rng = _rng()
    batches = [(rng.integers(0, 256, size=(64, 3, 32, 32), dtype=np.uint8), np.arange(64) + 64 * i) for i in range(32)]
    with ferry.PrefetchLoader(batches, device="cpu", output="numpy", prefetch=4) as loader:
        start = time.monotonic()
        kept = list(loader)
        assert time.monotonic() - start < 30
        assert len(kept) == 32
        for (img, idx), (src, sidx) in zip(kept, batches):
            assert np.array_equal(img, src) and np.array_equal(idx, sidx)
        assert loader.feed is not None


def test_beyond_the_pinned_budget_the_step_raises_a_limit_error():
    rng = _rng()
    batches = [rng.integers(0, 256, size=(1024, 1024), dtype=np.uint8) for _ in range(8)]  # 1 MiB each
    # Five slots' worth: a loop that lets its batches go needs four (the queued batch, the one being staged, the
    # loop's batch and the one before it, still referenced while the next is fetched).
    with ferry.PrefetchLoader(batches, device="cpu", output="numpy", pinned_budget=5 << 20, prefetch=1) as loader:
        kept = []
        with pytest.raises(ferry.LimitError, match="pinned budget of 5242880 bytes"):
            for b in loader:
                kept.append(b)
        assert 1 <= len(kept) <= 5
        assert all(np.array_equal(g, w) for g, w in zip(kept, batches))
        del kept, b
        gc.collect()
        assert sum(1 for _ in loader) == 8, "batches let go make room again"


def test_len_and_set_epoch_forward_to_the_iterable_or_its_sampler():
    class Sampler:
        epoch = None

        def set_epoch(self, e):
            self.epoch = e

    class Pipeline:
        def __init__(self):
            self.sampler = Sampler()

        def __iter__(self):
            return iter([np.zeros((2, 2))] * 3)

        def __len__(self):
            return 3

    p = Pipeline()
    with ferry.PrefetchLoader(p, device="cpu", output="numpy") as loader:
        assert len(loader) == 3
        loader.set_epoch(7)
        assert p.sampler.epoch == 7
    with ferry.PrefetchLoader((x for x in []), device="cpu") as loader:
        with pytest.raises(TypeError):
            len(loader)


def test_ctrl_c_interrupts_a_wait_for_a_slow_iterable():
    def slow():
        yield np.arange(3)
        time.sleep(30)
        yield np.arange(3)

    with ferry.PrefetchLoader(slow(), device="cpu", output="numpy") as loader:
        it = iter(loader)
        assert next(it).tolist() == [0, 1, 2]
        timer = threading.Timer(0.3, _thread.interrupt_main)
        timer.start()
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            next(it)
        assert time.monotonic() - start < 5
        timer.cancel()
        with pytest.raises(StopIteration):
            next(it)  # the interrupted pass has ended
    assert loader.closed


def test_the_monitor_reports_the_feed():
    rng = _rng()
    batches = [rng.integers(0, 9, size=(5, 3), dtype=np.int64) for _ in range(40)]
    with ferry.PrefetchLoader(batches, device="cpu", output="numpy") as loader, \
            ferry.PerformanceMonitor(gpu_interval=None, pcie_interval=None, system_interval=0.02) as mon:
        mon.attach("feed", loader)
        mon.start_monitoring()
        deadline = time.monotonic() + 10
        pipes = {}
        while time.monotonic() < deadline:
            assert sum(len(b) for b in loader) == 200
            pipes = mon.get_performance_report()["pipeline_metrics"]
            if "samples_per_second" in pipes.get("feed", {}):
                break
            time.sleep(0.02)
        assert {"batches_per_second", "samples_per_second", "data_stall_percent"} <= set(pipes["feed"])
        mon.stop_monitoring()
        assert loader.stats()["samples"] >= 200


def test_dlpack_output_and_refusals():
    with ferry.PrefetchLoader([np.arange(6).reshape(2, 3)], device="cpu", output="dlpack") as loader:
        (f,) = list(loader)
        assert isinstance(f, ferry.DLPackField) and f.shape == (2, 3) and f.name == "0"
        assert np.array_equal(np.from_dlpack(f), np.arange(6).reshape(2, 3))
    with pytest.raises(TypeError, match="iterable"):
        ferry.FeedLoader(42, device="cpu")
    with pytest.raises(ferry.InvalidArgumentError, match="prefetch"):
        ferry.PrefetchLoader([], device="cpu", prefetch=0)
    with pytest.raises(ferry.UnsupportedError, match="flip"):
        ferry.PrefetchLoader([], device="cpu", transforms={0: ferry.Normalize(flip=0.5)})


def test_a_loader_dropped_without_close_ends_its_pass():
    rng = _rng()
    loader = ferry.PrefetchLoader(_endless(rng), device="cpu", output="numpy", prefetch=2)
    it = iter(loader)
    next(it)
    run = loader._run
    del it, loader
    gc.collect()
    run.thread.join(5)
    assert not run.thread.is_alive(), "the producer of a collected loader stopped"
