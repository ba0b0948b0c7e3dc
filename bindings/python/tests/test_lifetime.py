"""Memory handed out stays valid while anything points at it: tensors of a Loader's or an Iterator's
batches outlive the loader's close (its iterator and engine), and are freed when dropped. Each scenario
runs in a subprocess, so that a regression shows as a crash (a failed test), not a dead test runner."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import PACKAGE_ROOT


def _run(code: str, timeout: int = 120) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PACKAGE_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"exit {r.returncode} (-11 or 139: a segfault)\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_numpy_batch_read_after_loader_closed():
    pytest.importorskip("numpy")
    out = _run("""
        import gc
        import numpy as np
        import ferry
        x = np.arange(100, dtype=np.float32)
        with ferry.Loader({"x": x}, 10, device="cpu", output="numpy") as l:
            for b in l:
                break
        print(float(b["x"].sum()))
        # Many loaders closed with a batch kept, then read and dropped in another order.
        kept = []
        for i in range(20):
            with ferry.Loader({"x": x + i}, 10, device="cpu", output="numpy", prefetch=2) as l:
                it = iter(l)
                kept.append((i, next(it), next(it)))
        for i, a, c in reversed(kept):
            assert a["x"].tolist() == (x[:10] + i).tolist(), (i, a["x"])
            assert c["x"].tolist() == (x[10:20] + i).tolist(), (i, c["x"])
        del kept, a, c
        gc.collect()
        print("ok")
    """)
    assert out.split() == ["45.0", "ok"]


def test_torch_batch_read_after_loader_closed():
    pytest.importorskip("torch")
    out = _run("""
        import torch
        import ferry
        x = torch.arange(100, dtype=torch.float32)
        with ferry.Loader({"x": x.numpy()}, 10, device="cpu", output="torch") as l:
            for b in l:
                break
        print(float(b["x"].sum()))
    """)
    assert out.split() == ["45.0"]


def test_dlpack_fields_and_batches_outlive_iterator_and_engine():
    # The low-level objects: a DLPack field never exported, a batch never released, and a field exported
    # to numpy, all kept past the iterator's and the engine's close.
    pytest.importorskip("numpy")
    out = _run("""
        import numpy as np
        import ferry
        data = bytearray(range(200))
        engine = ferry.Engine(ferry.CPU, sample_interval_ms=0)
        src = ferry.ArraySource({"v": (data, "uint8", (50, 4))})
        it = ferry.Iterator(engine, src, 5, prefetch=3)
        b1 = it.next()
        f1 = b1.field("v")
        b2 = it.next()
        a2 = np.from_dlpack(b2.field("v"))
        b2.release()
        it.close()
        engine.close()
        assert f1.to_bytes() == bytes(data[:20]), f1.to_bytes()
        assert a2.tobytes() == bytes(data[20:40]), a2.tobytes()
        try:
            b1.indices()
        except ferry.FerryError as e:
            print(type(e).__name__)
        f1.close()
        del a2
        try:
            b1.release()
        except ferry.FerryError as e:
            print(type(e).__name__)
        src.close()
        print("ok")
    """)
    assert out.split()[-1] == "ok"


# --- batches still held: the ring grows, the refusal beyond the budget says so, and the loader's own ------
# --- error paths hold none ---------------------------------------------------------------------------------


def _flaky_source(fail_at):
    """A callback source whose sample ``fail_at`` fails once (a flaky read), then reads."""
    import ferry

    failed = []

    def fn(i, out):
        if i == fail_at and not failed:
            failed.append(i)
            raise ValueError(f"flaky read of sample {i}")
        out["v"][0] = i

    return ferry.CallbackSource(fn, length=40, fields={"v": ("int32", 1)}, numpy=False)


def _first_index(batch):
    import struct

    return struct.unpack_from("<i", batch["v"].to_bytes())[0]


@pytest.mark.parametrize("budget", [None, -1])
def test_retry_after_io_error_with_the_batch_before_it_held(budget):
    # The loop: a FerryIOError, retried, while the loop variable still holds the batch before it.
    # With prefetch=2 the next batch needs that batch's slot: the ring grows by a slot; with no budget to grow
    # by, the refusal comes at once and says where Python keeps such references.
    import ferry

    src = _flaky_source(fail_at=12)  # batch 3 of 4 samples
    with ferry.Loader(src, 4, device="cpu", output="dlpack", prefetch=2, workers=1, pinned_budget=budget) as loader:
        batch = None
        with pytest.raises(ferry.FerryIOError, match="flaky read"):
            for batch in loader:  # noqa: B007 - the loop variable is the point
                pass
        assert batch is not None and _first_index(batch) == 8, "the loop variable holds batch 2"
        if budget is None:
            rest = [_first_index(b) for b in loader]
        else:
            with pytest.raises(ferry.LimitError) as info:
                for _ in loader:
                    pass
            msg = str(info.value)
            for words in ("1 batch of the ring is still held by the caller", "every tensor taken from it is freed",
                          "`del batch`", "copy=True"):
                assert words in msg, msg
            del info
            del batch
            rest = [_first_index(b) for b in loader]
        assert rest == list(range(16, 40, 4)), "the loader goes on after the failed batch"
    src.close()


def test_failed_conversion_holds_no_batch():
    # A conversion that fails part-way through a batch (here the second field): the exception, kept by the
    # caller, must not keep the failed batch's slot, or the ring would stall on its next turn.
    import ferry

    data = bytearray(range(160))
    calls = []

    with ferry.Loader({"a": (data, "uint8", (40, 4)), "b": (bytearray(data), "uint8", (40, 4))}, 4, device="cpu",
                      output="dlpack", prefetch=2, workers=1, pinned_budget=-1) as loader:
        # No pinned budget: a slot the exception kept would make the ring refuse at once.
        convert = loader._convert

        def failing(field):
            calls.append(field.name)
            if len(calls) == 2:
                raise RuntimeError("conversion failed")
            return convert(field)

        loader._convert = failing
        with pytest.raises(RuntimeError) as info:
            for _ in loader:
                pass
        kept = info.value  # the traceback stays alive with it
        loader._convert = convert
        got = [b["a"].to_bytes()[0] for b in loader]
        assert got == [16 * k for k in range(1, 10)], got
        assert kept.__traceback__ is not None


def test_torch_capsule_path_frees_what_it_did_not_convert():
    # The loop's fast hand-off to torch (a capsule per field straight to torch._C._from_dlpack) on a torch
    # that fails part-way through a batch: the fields not converted are deleted at once, so the batch's slot
    # goes back to the ring although the exception is kept; and this torch takes the fast path at all.
    torch = pytest.importorskip("torch")
    import types

    import ferry
    from ferry import _dataloader, _dlpack

    assert _dataloader._torch_capsule_path() is not None, "this torch takes DLPack 1.0 capsules"
    real = torch._C._from_dlpack
    calls = []

    def from_dlpack(capsule):
        calls.append(1)  # not the capsule: an untaken one keeps its tensor until it is freed
        if len(calls) == 3:  # the probe, field "a", then field "b" fails
            raise RuntimeError("conversion failed")
        return real(capsule)

    to_torch = _dlpack._capsules_to_torch(types.SimpleNamespace(_C=types.SimpleNamespace(_from_dlpack=from_dlpack),
                                                                empty=torch.empty))
    assert to_torch is not None
    data = bytearray(range(160))
    with ferry.Loader({"a": (data, "uint8", (40, 4)), "b": (bytearray(data), "uint8", (40, 4))}, 4, device="cpu",
                      output="torch", prefetch=2, workers=1, pinned_budget=-1) as loader:
        # No pinned budget: a slot the failed conversion kept would make the ring refuse at once.
        addrs = loader.iterator._next_tensors(None)
        assert len(addrs) == 2
        with pytest.raises(RuntimeError) as info:
            to_torch(addrs)
        kept = info.value
        got = [int(b["a"][0, 0]) for b in loader]
        assert got == [16 * k for k in range(1, 10)], got
        assert kept.__traceback__ is not None
        # The fast path itself: the values of every field, as the source holds them.
        for k, b in enumerate(loader):
            assert b["b"].tolist() == [list(data[16 * k + 4 * r:16 * k + 4 * r + 4]) for r in range(4)]


# --- many loaders ------------------------------------------------------------------------------------


def test_many_loaders_share_an_engine_or_say_how():
    # Each Loader owns an engine by default, and a process may have FERRY_MAX_ENGINES (256) of them: the
    # 257th live loader fails with a message that says why and how to share one; with engine= 300 loaders
    # on one CPU engine work.
    out = _run("""
        import ferry
        data = {"v": (bytearray(range(40)), "uint8", (10, 4))}
        loaders = []
        try:
            for i in range(300):
                loaders.append(ferry.Loader(data, 5, device="cpu", output="dlpack", workers=1, prefetch=2))
        except ferry.LimitError as e:
            print(len(loaders))
            print(e.message)
        for l in loaders:
            l.close()
        with ferry.Engine(ferry.CPU, sample_interval_ms=0) as engine:
            shared = [ferry.Loader(data, 5, output="dlpack", workers=1, prefetch=2, engine=engine) for _ in range(300)]
            assert all(l.device == ferry.CPU for l in shared)
            firsts = [next(iter(l))["v"].to_bytes()[:4] for l in shared]
            assert firsts == [bytes(range(4))] * 300, firsts[:3]
            for l in shared:
                l.close()
            assert engine.memory_check() is not None, "closing its loaders leaves a given engine open"
        print("shared ok")
    """)
    lines = out.splitlines()
    assert lines[0] == "256", out
    for words in ("256 ferry_engines are alive", "Each ferry.Loader owns an engine", "engine=engine",
                  "close the loaders you are done with"):
        assert words in lines[1], lines[1]
    assert lines[-1] == "shared ok"


def test_loader_engine_argument():
    import ferry

    with ferry.Engine(ferry.CPU, sample_interval_ms=0) as engine:
        with pytest.raises(TypeError, match="ferry.Engine"):
            ferry.Loader({"v": bytearray(8)}, 2, engine="cpu")
        with pytest.raises(ferry.InvalidArgumentError, match="differs from the engine's device"):
            ferry.Loader({"v": bytearray(8)}, 2, device=0, engine=engine)
        with ferry.Loader({"v": bytearray(8)}, 2, device="cpu", output="dlpack", engine=engine) as loader:
            assert loader.iterator.engine is engine
        assert not engine.closed, "a given engine is the caller's"


def test_callback_error_chain_keeps_no_staging_views():
    # The exception of a failed sample function reaches the caller as the FerryIOError's __cause__; its
    # frames held the views of ferry's staging memory (out), which is reused and freed with the loader.
    # No exception of the chain may keep a traceback, also one the function's own handler chained.
    import ferry

    def fn(i, out):
        out["v"][0] = i
        if i == 6:
            try:
                raise KeyError("inner")
            except KeyError as inner:
                raise ValueError("outer") from inner

    src = ferry.CallbackSource(fn, length=20, fields={"v": ("int32", 1)}, numpy=False)
    with ferry.Loader(src, 4, device="cpu", output="dlpack", workers=1, prefetch=2, timeout_ms=5000) as loader:
        with pytest.raises(ferry.FerryIOError) as info:
            for _ in loader:
                pass
    cause = info.value.__cause__
    assert isinstance(cause, ValueError) and isinstance(cause.__cause__, KeyError)
    for e in (cause, cause.__cause__, cause.__context__):
        assert e.__traceback__ is None, f"{e!r} keeps frames that reference staging memory"
    src.close()
