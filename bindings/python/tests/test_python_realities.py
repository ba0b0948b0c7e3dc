"""Python's realities around the loader: a CallbackSource written Dataset style, re-entering a loader from
its own callback, a loader collected on one of its own worker threads, Ctrl-C during a blocked ``next()``,
and ``os.fork()`` after a loader exists.

Everything that could hang runs in a child process under a hard time limit, so that a regression fails
the test instead of hanging the run.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import ferry

from loader_helpers import TIMEOUT_MS, fresh_rng, read_epoch

PACKAGE_ROOT = Path(ferry.__file__).resolve().parents[1]


def run_child(code: str, timeout: float = 60, **kw):
    """Runs code in a fresh interpreter with this package importable; a child that outlives timeout is
    killed and fails the test (it hung)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT), env.get("PYTHONPATH", "")])
    env["PYTHONFAULTHANDLER"] = "1"
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                              text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the child hung (killed after {timeout} s); its output:\n{exc.stdout}\n{exc.stderr}")


def values(batches, name="x"):
    """[(indices, [int64 values of the field, first element of each sample])] of read_epoch's batches."""
    out = []
    for indices, fields in batches:
        data = fields[name]
        per = len(data) // len(indices)
        out.append((indices, [struct.unpack_from("<q", data, k * per)[0] for k in range(len(indices))]))
    return out


# --- a CallbackSource written Dataset style ---------------------------------------------------------------


@pytest.mark.parametrize("style", ["return_dict", "return_value", "return_tuple", "rebind"])
@pytest.mark.parametrize("use_numpy", [True, False])
def test_callback_source_dataset_style_values_are_copied_in(style, use_numpy):
    """A function that returns its sample, or binds out[name] = value, gets its values into the batch
    (before: zeros, or stale samples of earlier use of the ring)."""
    np = pytest.importorskip("numpy") if use_numpy else None
    rng, seed = fresh_rng()
    n, bs = 16, 4
    salt = rng.randrange(1 << 20)
    two = style in ("return_tuple", "return_dict")

    def sample(i):
        x = struct.pack("<2q", i + salt, -i)
        return np.frombuffer(x, dtype=np.int64).copy() if np is not None else memoryview(bytearray(x)).cast("q")

    def label(i):
        return np.int32(i * 7) if np is not None else memoryview(bytearray(struct.pack("<i", i * 7))).cast("i", [])

    def fn(i, out):
        if style == "return_dict":
            return {"x": sample(i), "y": label(i)}
        if style == "return_tuple":
            return sample(i), label(i)
        if style == "return_value":
            return sample(i)
        out["x"] = sample(i)
        return None

    fields = {"x": ("int64", 2)}
    if two:
        fields["y"] = ("int32", ())
    src = ferry.CallbackSource(fn, length=n, fields=fields, numpy=use_numpy)
    with ferry.Engine(ferry.CPU, sample_interval_ms=0) as eng, \
            ferry.Iterator(eng, src, bs, shuffle=True, seed=seed, workers=2, timeout_ms=TIMEOUT_MS) as it:
        for _ in range(2):  # the second epoch reuses the ring: stale samples would show there
            batches = read_epoch(it)
            assert sorted(i for ind, _ in batches for i in ind) == list(range(n))
            for indices, fields_ in batches:
                assert fields_["x"] == b"".join(struct.pack("<2q", i + salt, -i) for i in indices), (seed, style)
                if two:
                    assert fields_["y"] == b"".join(struct.pack("<i", i * 7) for i in indices)
    src.close()


@pytest.mark.parametrize("use_numpy", [True, False])
@pytest.mark.parametrize("bad, match", [
    (lambda i, out: {"x": b"\0" * 8, "y": 1}, r"field 'x': fn gave (shape|8 bytes)"),
    (lambda i, out: {"nope": 1}, r"fn returned a dict with keys \['nope'\]"),
    (lambda i, out: "a string", r"fn returned a str"),
    (lambda i, out: out.pop("x"), r"fn (changed the keys of out|returned a)"),
])
def test_callback_source_refuses_what_it_cannot_use(use_numpy, bad, match):
    """A returned value of the wrong size, or of a kind that cannot be a sample, fails the batch with the
    reason, instead of a batch of zeros."""
    if use_numpy:
        pytest.importorskip("numpy")
    src = ferry.CallbackSource(bad, length=4, fields={"x": ("int64", 2), "y": ("uint8", ())}, numpy=use_numpy)
    with ferry.Loader(src, 4, device="cpu", output="dlpack", workers=1, timeout_ms=TIMEOUT_MS) as loader:
        with pytest.raises(ferry.FerryIOError, match=match) as info:
            loader.iterator.next()
        assert isinstance(info.value.__cause__, (TypeError, ValueError))
    src.close()


# --- Ctrl-C during a blocked next() ------------------------------------------------------------------------


def start_child(code: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT), env.get("PYTHONPATH", "")])
    env["PYTHONFAULTHANDLER"] = "1"
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_ctrl_c_interrupts_a_blocked_next_and_the_loader_stays_usable():
    """SIGINT while next() waits for a slow source raises KeyboardInterrupt at once (before: only when the
    library call returned, up to timeout_ms later); the batch stays the next one and the loader closes."""
    child = start_child("""
        import threading, ferry
        go = threading.Event()
        def fn(i, out):
            go.wait(60)  # a slow source: nothing comes until the parent's SIGINT was handled
            out["x"][()] = i
        src = ferry.CallbackSource(fn, length=8, fields={"x": ("int64", ())}, numpy=False)
        loader = ferry.Loader(src, 4, device="cpu", output="dlpack", workers=2)  # the default 5-minute timeout
        it = loader.iterator
        print("waiting", flush=True)
        try:
            it.next()
            print("no interrupt", flush=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        go.set()
        b = it.next()
        print("batch", b.indices(), flush=True)
        b.release()
        loader.close()
        src.close()
        print("closed", flush=True)
    """)
    try:
        assert child.stdout.readline().strip() == "waiting"
        time.sleep(0.5)  # the child is inside next() by now (it would be just as well before it)
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        line = child.stdout.readline().strip()
        elapsed = time.monotonic() - sent
        assert line == "interrupted", (line, child.stderr.read() if line == "" else "")
        assert elapsed < 5, f"KeyboardInterrupt came {elapsed:.1f} s after SIGINT"  # slices are 100 ms
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert out.split("\n")[:2] == ["batch [0, 1, 2, 3]", "closed"], (out, err)
    assert child.returncode == 0, err


def test_next_wait_slices_keep_the_timeout():
    """Waiting in slices does not stretch the iterator's timeout, and the batch waited for stays next."""
    gate = threading.Event()

    def fn(i, out):
        if i >= 8:
            gate.wait(60)  # a slow read, until the test lets it finish
        out["v"][0] = i

    src = ferry.CallbackSource(fn, length=16, fields={"v": ("int32", 1)}, numpy=False)
    with ferry.Loader(src, 4, device="cpu", output="dlpack", prefetch=2, workers=1, timeout_ms=400) as loader:
        it = loader.iterator
        it.next().release()
        it.next().release()
        start = time.monotonic()
        with pytest.raises(ferry.FerryTimeoutError, match=r"batch 2 of epoch 0 was not ready within 400ms"):
            it.next()
        assert 0.4 <= time.monotonic() - start < 30
        gate.set()
        b = it.next()
        assert b.indices() == [8, 9, 10, 11]
        b.release()
    src.close()


# --- re-entering a loader from its own callback ----------------------------------------------------------


def test_callback_that_reenters_its_loader_gets_a_clear_error_at_once():
    """A sample function that closes its loader, or asks for its position, gets InvalidArgumentError at
    once (before: close() deadlocked, and state_dict() made next() time out with no hint)."""
    result = run_child("""
        import ferry, threading
        seen = {}
        lock = threading.Lock()
        created = threading.Event()  # prefetching starts inside Loader(): wait until `loader` is bound
        def fn(i, out):
            out["x"][()] = i
            if i != 5 or seen:
                return  # sample 5 of the first epoch only: the next epoch's, prefetched, may run during the close
            assert created.wait(30)
            for name, call in [("close", lambda: loader.close()), ("state_dict", lambda: loader.state_dict()),
                               ("set_epoch", lambda: loader.set_epoch(3)), ("next", lambda: loader.iterator.next())]:
                try:
                    call()
                    seen[name] = "no error"
                except ferry.InvalidArgumentError as e:
                    seen[name] = str(e)
        src = ferry.CallbackSource(fn, length=16, fields={"x": ("int64", ())}, numpy=False)
        loader = ferry.Loader(src, 4, device="cpu", output="numpy", workers=2, timeout_ms=20000)
        created.set()
        got = [int(v) for b in loader for v in b["x"]]
        assert got == list(range(16)), got
        assert not loader.closed
        print(loader.state_dict()["epoch"])
        loader.close()
        src.close()
        for name in ("close", "state_dict", "set_epoch", "next"):
            print(name, seen[name])
    """, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "1"
    for line in lines[1:]:
        assert "called from inside" in line and "own" in line and "callback" in line.lower(), line
    assert [line.split()[0] for line in lines[1:]] == ["close", "state_dict", "set_epoch", "next"]


# --- a loader collected on one of its own workers ---------------------------------------------------------


def test_loader_collected_on_its_own_worker_thread_is_destroyed_without_a_hang():
    """The cyclic garbage collector finalizing a loader (dropped without close(), in a reference cycle) on
    one of the loader's own workers, inside the sample function: the destroy is deferred instead of
    joining the worker it runs on (before: it never returned, and interpreter exit blocked for ever). The
    iterator is really destroyed, and the source goes on serving new loaders."""
    result = run_child("""
        import gc, threading, ferry
        from ferry import _handle, _lib
        gc.disable()  # the only collection is the one in the sample function
        ready, collected = threading.Event(), threading.Event()
        def fn(i, out):
            out["x"][()] = i
            if i == 6 and not collected.is_set() and ready.wait(30):
                gc.collect()  # finalizes the unreachable loader, on this worker of its own
                collected.set()
        src = ferry.CallbackSource(fn, length=32, fields={"x": ("int64", ())}, numpy=False)
        def make():
            loader = ferry.Loader(src, 4, device="cpu", output="numpy", workers=2, prefetch=2, timeout_ms=20000)
            cycle = {"loader": loader}
            cycle["self"] = cycle  # reachable only through a cycle once make() returns
            return loader.iterator._handle.value, loader.iterator._finalizer
        handle, finalizer = make()
        ready.set()
        assert collected.wait(30), "the sample function's collection did not return"
        t = _handle._deferred_thread
        if t is not None:
            t.join(30)
        assert not finalizer.alive
        assert _lib.lib().ferry_iterator_len(handle, None) == 2  # FERRY_ERR_INVALID_HANDLE: it is gone
        with ferry.Loader(src, 8, device="cpu", output="numpy", timeout_ms=20000) as again:
            assert [int(v) for b in again for v in b["x"]] == list(range(32))
        print("ok", flush=True)
    """, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# --- os.fork() after a loader exists -------------------------------------------------------------------------


FORK_MODES = ["iterate", "new_loader", "close_monitor", "close_loader", "free_tensor", "atexit"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork")
@pytest.mark.parametrize("mode", FORK_MODES)
def test_fork_after_a_loader_exists_gives_a_clear_error_and_exit_does_not_hang(mode):
    """A child forked after ferry loaded (torch DataLoader workers are, by default) gets UnsupportedError
    naming fork and the spawn start method from any call, and closing objects, freeing a batch's tensor and
    exiting through atexit do nothing, instead of hanging for ever in the runtime that did not survive."""
    result = run_child(f"""
        import gc, os, sys, time, warnings
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() in a process with threads
        import numpy as np
        import ferry
        mode = {mode!r}
        src = ferry.ArraySource({{"x": np.arange(64, dtype=np.int64)}})
        loader = ferry.Loader(src, 8, device="cpu", output="numpy", timeout_ms=20000)
        it = iter(loader)
        held = next(it)["x"]  # a tensor over the loader's ring, held across the fork
        mon = ferry.PerformanceMonitor()
        mon.log_metric("loss", 1.0)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                if mode == "iterate":
                    next(it)
                    code = 3
                elif mode == "new_loader":
                    ferry.Loader({{"x": np.zeros(8)}}, 4, device="cpu")
                    code = 3
                elif mode == "close_monitor":
                    mon.close()
                elif mode == "close_loader":
                    loader.close()
                    src.close()
                elif mode == "free_tensor":
                    del held
                    gc.collect()
            except ferry.UnsupportedError as e:
                ok = "after fork" in str(e) and "spawn" in str(e)
                print("refused" if ok else "wrong message: " + str(e), flush=True)
            if mode == "atexit":
                sys.exit(0)  # finalizers of the loader, the monitor and the tensor run at exit
            os._exit(code)
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                print("child hung", flush=True)
                sys.exit(1)
            time.sleep(0.05)
        print("child exit", os.waitstatus_to_exitcode(status), flush=True)
        # The parent is untouched: its loader goes on, and its objects close.
        assert next(it)["x"].tolist() == list(range(8, 16))
        del held
        loader.close()
        src.close()
        mon.close()
        print("parent ok", flush=True)
    """, timeout=90)
    assert result.returncode == 0, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    want = (["refused"] if mode in ("iterate", "new_loader") else []) + ["child exit 0", "parent ok"]
    assert lines == want, (result.stdout, result.stderr)
