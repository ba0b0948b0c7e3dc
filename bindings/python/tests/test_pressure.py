"""The pressure policy through MemoryManager: thresholds, levels, callbacks (order, failures, removal,
exceptions), optimize_memory and the seed's batch-size formula. Levels need device memory, so they are
tested on the stand-in CUDA driver in a subprocess; the rest runs on the CPU engine."""

from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import subprocess
import sys
import threading

import pytest

import ferry
from ferry import _lib

from conftest import PACKAGE_ROOT, find_header

MiB = 1 << 20
GiB = 1 << 30


# --- the ctypes mirror ------------------------------------------------------------------------------------


def _header_struct_fields(name: str):
    path = find_header()
    if path is None:
        pytest.skip("ferry.h is not reachable from the package directory")
    body = re.search(r"typedef struct %s \{(.*?)\} %s;" % (name, name), path.read_text(), flags=re.S)
    assert body, name
    code = re.sub(r"/\*.*?\*/", "", body.group(1), flags=re.S)
    return [m.group(1) for m in re.finditer(r"(\w+)(?:\[\d+\])?\s*;", code)]


@pytest.mark.parametrize(
    "struct, cname, size",
    [
        (_lib.PressureOptions, "ferry_pressure_options", 40),
        (_lib.OptimizeResult, "ferry_optimize_result", 40),
    ],
)
def test_structs_match_header(struct, cname, size):
    assert ctypes.sizeof(struct) == size
    assert [n for n, _ in struct._fields_] == _header_struct_fields(cname)


def test_pressure_constants_match_header(header):
    for name in ("FERRY_PRESSURE_DEVICE_USED", "FERRY_PRESSURE_PROCESS_USED", "FERRY_PRESSURE_ENGINE_RESERVED",
                 "FERRY_PRESSURE_NONE", "FERRY_PRESSURE_WARN", "FERRY_PRESSURE_CRITICAL"):
        assert getattr(_lib, name) == header[name], name


def test_options_init_defaults():
    opts = _lib.PressureOptions()
    assert _lib.lib().ferry_pressure_options_init(ctypes.byref(opts)) == 0
    assert opts.size == 40
    assert opts.metric == _lib.FERRY_PRESSURE_DEVICE_USED
    assert (opts.warn_bytes, opts.critical_bytes, opts.warn_fraction, opts.critical_fraction) == (0, 0, 0.0, 0.0)


# --- thresholds on the CPU engine ----------------------------------------------------------------------------


def test_cpu_thresholds_in_bytes_reach_the_snapshot():
    with ferry.MemoryManager(threshold_mb=512, critical_mb=1024, device=ferry.CPU, metric="engine") as mm:
        snap = mm.snapshot()
        assert snap.warn_threshold_bytes == 512 * MiB
        assert snap.critical_threshold_bytes == 1024 * MiB
        assert mm.pressure() == ferry.Pressure.NONE  # the CPU engine holds no device memory
        assert mm.pressure(live=True) == ferry.Pressure.NONE
        mm.set_thresholds(256.5, None)
        snap = mm.snapshot()
        assert snap.warn_threshold_bytes == int(256.5 * MiB) and snap.critical_threshold_bytes == 0
        assert mm.threshold_mb == 256.5 and mm.critical_mb is None


def test_threshold_errors():
    with pytest.raises(ferry.InvalidArgumentError, match="threshold_mb"):
        ferry.MemoryManager(threshold_mb=-1, device=ferry.CPU)
    with pytest.raises(ferry.InvalidArgumentError, match="critical_mb"):
        ferry.MemoryManager(critical_mb=0, device=ferry.CPU)
    with pytest.raises(TypeError):
        ferry.MemoryManager(threshold_mb="lots", device=ferry.CPU)
    with pytest.raises(ferry.InvalidArgumentError, match="metric"):
        ferry.MemoryManager(threshold_mb=1, device=ferry.CPU, metric="vram")
    # critical below warn: the library refuses it, and says so
    with pytest.raises(ferry.InvalidArgumentError) as exc:
        ferry.MemoryManager(threshold_mb=200, critical_mb=100, device=ferry.CPU, metric="engine")
    assert exc.value.message
    with ferry.MemoryManager(device=ferry.CPU, metric="engine") as mm:
        with pytest.raises(ferry.InvalidArgumentError):  # fractions need a GPU engine
            mm.set_thresholds(warn_fraction=0.5)
        with pytest.raises(ferry.InvalidArgumentError):  # an unknown metric value reaches the library
            mm.set_thresholds(100, metric=77)
        # a refused call changes nothing
        assert mm.snapshot().warn_threshold_bytes == 0 and mm.metric == _lib.FERRY_PRESSURE_ENGINE_RESERVED


# --- callbacks ---------------------------------------------------------------------------------------------------


def test_callbacks_run_in_registration_order_with_the_level():
    with ferry.MemoryManager(device=ferry.CPU) as mm:
        calls = []
        ids = [
            mm.on_pressure(lambda level: calls.append(("first", level))),
            mm.on_pressure(lambda: calls.append(("second", None))),
            mm.on_pressure(lambda level=None: calls.append(("third", level))),
        ]
        assert len(set(ids)) == 3
        assert mm.optimize_memory(32) == 32
        assert calls == [("first", ferry.Pressure.NONE), ("second", None), ("third", ferry.Pressure.NONE)]
        assert type(calls[0][1]) is ferry.Pressure
        r = mm.last_optimize
        assert isinstance(r, ferry.OptimizeResult)
        assert (r.callbacks_called, r.callbacks_failed, r.errors) == (3, 0, ())
        assert r.level_before == r.level_after == ferry.Pressure.NONE
        assert r.recommended_batch_size == 0 and r.batch_size == 32 and r.source == "unchanged"
        assert len(mm.callbacks) == 3  # the callables, in call order


def test_failing_callbacks_are_counted_and_the_later_ones_still_run():
    with ferry.MemoryManager(device=ferry.CPU) as mm:
        calls = []

        def boom():
            calls.append("boom")
            raise RuntimeError("cache could not be emptied")

        def boom_level(level):
            calls.append("boom_level")
            raise ValueError(f"level {int(level)}")

        mm.on_pressure(boom)
        mm.on_pressure(lambda: calls.append("after"))
        mm.on_pressure(boom_level)
        mm.on_pressure(lambda level: calls.append("last"))
        assert mm.optimize_memory() is None
        r = mm.last_optimize
        assert calls == ["boom", "after", "boom_level", "last"]
        assert r.callbacks_called == 4 and r.callbacks_failed == 2
        assert [type(e) for e in r.errors] == [RuntimeError, ValueError]
        assert str(r.errors[0]) == "cache could not be emptied" and str(r.errors[1]) == "level 0"
        # the next call starts a fresh error list
        calls.clear()
        mm.optimize_memory()
        assert mm.last_optimize.callbacks_failed == 2 and len(mm.last_optimize.errors) == 2


def test_keyboard_interrupt_in_a_callback_is_reraised_after_every_callback():
    with ferry.MemoryManager(device=ferry.CPU) as mm:
        calls = []

        def interrupt():
            raise KeyboardInterrupt

        mm.on_pressure(interrupt)
        mm.on_pressure(lambda: calls.append("ran"))
        with pytest.raises(KeyboardInterrupt):
            mm.optimize_memory(8)
        assert calls == ["ran"]
        assert mm.last_optimize.callbacks_failed == 1
        assert mm.check_memory() == (0.0, 0.0)  # the manager stays usable


def test_remove_callback():
    with ferry.MemoryManager(device=ferry.CPU) as mm:
        calls = []
        a = mm.on_pressure(lambda: calls.append("a"))
        b = mm.on_pressure(lambda: calls.append("b"))
        c = mm.on_pressure(lambda: calls.append("c"))
        mm.remove_callback(b)
        mm.optimize_memory()
        assert calls == ["a", "c"] and mm.last_optimize.callbacks_called == 2
        with pytest.raises(ferry.InvalidArgumentError) as exc:
            mm.remove_callback(b)  # already removed
        assert str(b) in exc.value.message
        with pytest.raises(ferry.InvalidArgumentError):
            mm.remove_callback(123456789)
        with pytest.raises(ferry.InvalidArgumentError):
            mm.remove_callback(-1)
        mm.remove_callback(a)
        mm.remove_callback(c)
        calls.clear()
        mm.optimize_memory()
        assert calls == [] and mm.last_optimize.callbacks_called == 0
        # a callback registered after removals goes last
        mm.on_pressure(lambda: calls.append("d"))
        mm.optimize_memory()
        assert calls == ["d"]


def test_callbacks_stay_alive_without_caller_references():
    with ferry.MemoryManager(device=ferry.CPU) as mm:
        hits = []

        def register():
            box = {"n": 0}

            def cb(level):
                box["n"] += 1
                hits.append(box["n"])

            mm.on_pressure(cb)

        register()
        gc.collect()
        for _ in range(3):
            mm.optimize_memory()
        assert hits == [1, 2, 3]


def test_level_is_passed_only_where_the_callable_wants_it():
    class Model:
        def __init__(self):
            self.calls = []

        def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
            self.calls.append(gradient_checkpointing_kwargs)

    class Counter:
        def __init__(self):
            self.levels = []

        def __call__(self, level):
            self.levels.append(level)

    model, counter = Model(), Counter()
    got = []
    with ferry.MemoryManager(device=ferry.CPU) as mm:
        mm.on_pressure(model.gradient_checkpointing_enable)  # all optional: called bare
        mm.on_pressure(counter)  # a required parameter: gets the level
        mm.on_pressure(lambda *args: got.append(args))  # *args: called bare
        mm.on_pressure(lambda *args: got.append(args), pass_level=True)
        mm.on_pressure(gc.collect)  # a builtin with an optional parameter: called bare
        mm.optimize_memory()
        assert model.calls == [None]
        assert counter.levels == [ferry.Pressure.NONE]
        assert got == [(), (ferry.Pressure.NONE,)]
        assert mm.last_optimize.callbacks_failed == 0
        with pytest.raises(TypeError):
            mm.on_pressure(lambda a, b: None)
        with pytest.raises(TypeError):
            mm.on_pressure(lambda *, key: None)
        with pytest.raises(TypeError):
            mm.on_pressure("torch.cuda.empty_cache")


def test_callbacks_run_on_the_calling_thread():
    with ferry.MemoryManager(device=ferry.CPU) as mm:
        seen = []
        mm.on_pressure(lambda: seen.append(threading.get_ident()))
        mm.optimize_memory()
        t = threading.Thread(target=mm.optimize_memory)
        t.start()
        t.join()
        assert seen == [threading.get_ident(), t.ident]


def test_optimize_from_many_threads_counts_every_call():
    with ferry.MemoryManager(device=ferry.CPU) as mm:
        lock = threading.Lock()
        count = [0]

        def cb():
            with lock:
                count[0] += 1

        mm.on_pressure(cb)
        errors = []

        def work():
            try:
                for _ in range(50):
                    assert mm.optimize_memory(16) == 16
                    assert mm.last_optimize.callbacks_called == 1
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and count[0] == 400


def test_closed_manager():
    mm = ferry.MemoryManager(device=ferry.CPU)
    mm.on_pressure(lambda: None)
    mm.close()
    with pytest.raises(ferry.ClosedError):
        mm.optimize_memory()
    with pytest.raises(ferry.ClosedError):
        mm.on_pressure(lambda: None)
    with pytest.raises(ferry.ClosedError):
        mm.pressure()
    with pytest.raises(ferry.ClosedError):
        mm.set_thresholds(1)
    assert mm.callbacks == []


# --- the batch size ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "current, mem, target, expected",
    [
        (64, 10240.0, 5120.0, 32),
        (64, 10 * GiB, 5 * GiB, 32),
        (100, 3.0, 1.0, 33),
        (7, 1000.0, 1.0, 1),  # never below one
        (16, 50.0, 100.0, 32),
        (3, 2, 3, 4),
    ],
)
def test_calculate_optimal_batch_size_keeps_the_seed_formula(current, mem, target, expected):
    with ferry.MemoryManager(device=ferry.CPU) as mm:
        assert mm.calculate_optimal_batch_size(current, mem, target) == expected
        assert mm.calculate_optimal_batch_size(current_batch_size=current, current_memory=mem,
                                               target_memory=target) == expected
    assert ferry.MemoryManager.calculate_optimal_batch_size(current, mem, target) == expected


def test_calculate_optimal_batch_size_validates():
    calc = ferry.MemoryManager.calculate_optimal_batch_size
    for args in [(0, 10, 5), (-8, 10, 5), (8, 0, 5), (8, -1, 5), (8, 10, 0), (8, 10, -5), (8, float("nan"), 5),
                 (8, float("inf"), 5)]:
        with pytest.raises(ferry.InvalidArgumentError):
            calc(*args)
    with pytest.raises(TypeError):
        calc(8.5, 10, 5)
    with pytest.raises(TypeError):
        calc(8, "10", 5)
    with pytest.raises(TypeError):
        calc(8, 10)  # the batch size in use is always explicit: three arguments


def test_optimize_memory_validates_the_batch_size():
    with ferry.MemoryManager(device=ferry.CPU) as mm:
        for bad in (0, -1):
            with pytest.raises(ferry.InvalidArgumentError):
                mm.optimize_memory(bad)
        with pytest.raises(TypeError):
            mm.optimize_memory(8.0)
        assert mm.optimize_memory(None) is None


def test_attach_advisor_on_cpu():
    with ferry.MemoryManager(device=ferry.CPU) as mm, ferry.BatchSizeAdvisor() as adv:
        assert mm.advisor is None
        mm.attach(adv)
        assert mm.advisor is adv
        mm.advisor = None
        assert mm.advisor is None
        with pytest.raises(TypeError):
            mm.attach(object())
        closed = ferry.BatchSizeAdvisor()
        closed.close()
        with pytest.raises(ferry.ClosedError):
            mm.attach(closed)


# --- levels and the seed's flow on the stand-in GPU ----------------------------------------------------------------




# Runs in a subprocess: a process can use one driver path, read at its first GPU call.
_FAKE_GPU_SCRIPT = r"""
import json, threading
import ferry
GiB, MiB = 1 << 30, 1 << 20
res = {}
P = ferry.Pressure

# levels on device used (10 GiB of 80)
def level(**kw):
    with ferry.MemoryManager(**kw) as mm:
        return [int(mm.pressure()), int(mm.pressure(live=True))]
res["none_unset"] = level()
res["warn"] = level(threshold_mb=5 * 1024, critical_mb=20 * 1024)
res["critical"] = level(threshold_mb=5 * 1024, critical_mb=8 * 1024)
res["critical_only"] = level(critical_mb=10 * 1024)  # at or above: critical
res["none_below"] = level(threshold_mb=20 * 1024, critical_mb=40 * 1024)
res["engine_metric"] = level(threshold_mb=1, metric="engine")  # the pools hold nothing yet
with ferry.MemoryManager() as mm:
    mm.set_thresholds(warn_fraction=0.1, critical_fraction=0.5)
    s = mm.snapshot()
    res["fraction"] = [int(mm.pressure()), s.warn_threshold_bytes, s.critical_threshold_bytes]
    mm.set_thresholds(warn_fraction=0.1, critical_fraction=0.125)
    res["fraction_critical"] = int(mm.pressure())
    try:
        mm.set_thresholds(warn_fraction=1.5)
        res["bad_fraction"] = "accepted"
    except ferry.InvalidArgumentError:
        res["bad_fraction"] = "refused"

# the seed's flow: check_memory -> above threshold -> optimize_memory calls empty_cache, returns the new size
class FakeCuda:
    def __init__(self):
        self.calls = 0
    def empty_cache(self):
        self.calls += 1
cuda = FakeCuda()
order = []
with ferry.MemoryManager(threshold_mb=5 * 1024) as mm:
    mm.on_pressure(cuda.empty_cache)
    mm.on_pressure(lambda level: order.append(int(level)))
    allocated_mb, cached_mb = mm.check_memory()
    res["check"] = [allocated_mb, cached_mb, mm.threshold_mb]
    batch = 64
    if allocated_mb > mm.threshold_mb:
        batch = mm.optimize_memory(current_batch_size=batch)
    r = mm.last_optimize
    res["flow"] = [batch, cuda.calls, list(order), r.source, int(r.level_before), int(r.level_after),
                   r.callbacks_called, r.current_bytes]
    # without a batch size, nothing to compute
    res["flow_no_batch"] = [mm.optimize_memory(), cuda.calls]

    # with an advisor: its recommendation, never above the current size under pressure
    adv = ferry.BatchSizeAdvisor(multiple=8)
    adv.observe(8, 2 * GiB + 8 * 100 * MiB)
    adv.observe(16, 2 * GiB + 16 * 100 * MiB)
    mm.attach(adv)
    b1 = mm.optimize_memory(current_batch_size=64)
    r1 = mm.last_optimize
    b2 = mm.optimize_memory(current_batch_size=4096)
    r2 = mm.last_optimize
    mm.set_thresholds(None, None)  # no pressure: the whole device is the budget
    b3 = mm.optimize_memory(current_batch_size=64)
    r3 = mm.last_optimize
    mm.set_thresholds(20 * 1024, 40 * 1024)  # no pressure, a critical threshold: the budget is below it
    b4 = mm.optimize_memory(current_batch_size=64)
    res["advisor"] = [b1, r1.source, r1.recommended_batch_size, b2, r2.source, b3, r3.source, int(r3.level_after),
                      b4, int(mm.last_optimize.level_after)]
    mm.attach(None)
    mm.set_thresholds(5 * 1024)
    res["detached"] = [mm.optimize_memory(current_batch_size=64), mm.last_optimize.source]
    adv.close()
print(json.dumps(res))
"""


def test_levels_and_the_seed_flow_on_the_stand_in_gpu(fake_driver):
    env = dict(os.environ)
    env["FERRY_CUDA_LIBRARY"] = fake_driver
    env["PYTHONPATH"] = str(PACKAGE_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    r = subprocess.run([sys.executable, "-c", _FAKE_GPU_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    NONE, WARN, CRITICAL = 0, 1, 2
    assert res["none_unset"] == [NONE, NONE]
    assert res["warn"] == [WARN, WARN]
    assert res["critical"] == [CRITICAL, CRITICAL]
    assert res["critical_only"] == [CRITICAL, CRITICAL]
    assert res["none_below"] == [NONE, NONE]
    assert res["engine_metric"] == [NONE, NONE]
    assert res["fraction"] == [WARN, 8 * GiB, 40 * GiB]
    assert res["fraction_critical"] == CRITICAL
    assert res["bad_fraction"] == "refused"
    # the seed's flow
    allocated_mb, cached_mb, threshold_mb = res["check"]
    assert allocated_mb == 10 * 1024.0 and threshold_mb == 5 * 1024
    batch, empty_cache_calls, order, source, before, after, called, current = res["flow"]
    assert empty_cache_calls == 1 and order == [WARN] and called == 2
    assert (before, after) == (WARN, WARN)
    assert source == "formula" and current == 10 * GiB
    assert batch == 32 == max(1, int(64 * (5 * 1024) / (10 * 1024)))
    assert res["flow_no_batch"] == [None, 2]
    b1, s1, rec1, b2, s2, b3, s3, level3, b4, level4 = res["advisor"]
    # no critical threshold: the budget is the whole device, (80 GiB - 2 GiB) / 100 MiB = 798.7 -> 792; under
    # pressure (WARN) never above the size in use
    whole = (80 * GiB - 2 * GiB) // (100 * MiB) // 8 * 8
    assert whole == 792
    assert (s1, b1, rec1) == ("advisor", 64, 64)
    assert (s2, b2) == ("advisor", whole)
    assert (s3, b3, level3) == ("advisor", whole, NONE)
    # below a critical threshold of 40 GiB: (40 GiB - 2 GiB) / 100 MiB = 389.1 -> 384, above the size in use
    assert (b4, level4) == (384, NONE)
    assert res["detached"] == [32, "formula"]


# --- the seed's flow on a real GPU, with torch.cuda.empty_cache ------------------------------------------------------


def test_seed_flow_with_torch_empty_cache(require_gpu):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.fail("ferry sees a GPU but torch.cuda does not")
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda:0")  # 1 GiB through the caching allocator
    x.fill_(1)
    torch.cuda.synchronize()
    del x  # freed to torch's cache: still reserved on the device
    assert torch.cuda.memory_reserved(0) >= GiB
    with ferry.MemoryManager(device=0) as mm:
        mm.engine.sample_now()
        threshold_mb = mm.check_memory()[0] / 2  # well below what is used now: the flow must trigger
        mm.set_thresholds(threshold_mb)
        mm.on_pressure(torch.cuda.empty_cache)
        allocated_mb, cached_mb = mm.check_memory()
        assert allocated_mb > mm.threshold_mb
        assert mm.pressure() >= ferry.Pressure.WARN
        batch = mm.optimize_memory(current_batch_size=64)
        r = mm.last_optimize
        assert r.callbacks_called == 1 and r.callbacks_failed == 0, r.errors
        assert torch.cuda.memory_reserved(0) < GiB  # torch.cuda.empty_cache ran
        assert r.source == "formula" and 1 <= batch < 64
        warn = mm.snapshot().warn_threshold_bytes
        assert warn == int(threshold_mb * MiB)
        assert batch == max(1, int(64 * warn / r.current_bytes))
