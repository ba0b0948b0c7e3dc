"""Devices, the CPU engine and its memory snapshot, engine lifetime, bad options, threads."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
import weakref

import pytest

import ferry

from conftest import PACKAGE_ROOT


def _meminfo_kib(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            name, value = line.split(":", 1)
            if name == key:
                return int(value.split()[0])
    raise KeyError(key)


def test_device_count_matches_devices():
    n = ferry.device_count()
    assert isinstance(n, int) and n >= 0
    devs = ferry.devices()
    assert len(devs) == n
    assert [d.index for d in devs] == list(range(n))


def test_system_info_agrees_with_device_count():
    info = ferry.system_info()
    assert info.device_count == ferry.device_count()
    if info.cuda_available:
        assert info.cuda_status == ""
        assert info.cuda_driver_version > 0
    else:
        assert info.cuda_status != ""  # says why not
        assert info.cuda_driver_version == 0
        assert info.device_count == 0
    if info.nvml_available:
        assert info.nvml_status == "" and info.driver_version != ""
    else:
        assert info.nvml_status != ""


def test_cpu_engine_snapshot_is_sane():
    with ferry.Engine(ferry.CPU) as engine:
        assert engine.device == ferry.CPU
        before = time.monotonic_ns()
        snap = engine.memory_check()
        after = time.monotonic_ns()
    assert isinstance(snap, ferry.MemorySnapshot)
    assert snap.device == -1
    assert snap.host_valid and not snap.device_valid and not snap.process_valid and not snap.live
    assert snap.flags == ferry._lib.FERRY_MEMORY_F_HOST
    assert snap.level == ferry.Pressure.NONE
    assert snap.sequence >= 1
    assert snap.device_total_bytes == snap.device_free_bytes == snap.device_used_bytes == 0
    assert snap.process_device_bytes == 0
    assert snap.engine_allocated_bytes == 0 and snap.engine_reserved_bytes == 0
    assert 0 < snap.host_available_bytes <= snap.host_total_bytes
    mem_total = _meminfo_kib("MemTotal") * 1024
    assert abs(snap.host_total_bytes - mem_total) <= mem_total // 100
    # CLOCK_MONOTONIC, the clock of time.monotonic_ns() on Linux.
    assert snap.timestamp_ns <= after
    assert before - snap.timestamp_ns < 10 * 10**9  # taken at creation or by the sampler since
    assert snap.sample_timestamp_ns == snap.timestamp_ns
    assert 0 <= snap.age_ns < 10 * 10**9
    assert abs((snap.timestamp_ns + snap.age_ns) - (before + after) // 2) < 2 * 10**9


def test_live_check_sets_live_and_queries_now():
    with ferry.Engine(ferry.CPU) as engine:
        before = time.monotonic_ns()
        snap = engine.memory_check_live()
        after = time.monotonic_ns()
    assert snap.live and snap.host_valid
    assert snap.flags & ferry._lib.FERRY_MEMORY_F_LIVE
    assert before <= snap.timestamp_ns <= after
    assert 0 < snap.host_available_bytes <= snap.host_total_bytes


def test_sample_now_publishes_a_new_sample():
    with ferry.Engine(ferry.CPU, sample_interval_ms=0) as engine:
        first = engine.memory_check()
        again = engine.memory_check()
        assert again.sequence == first.sequence  # no background sampler
        engine.sample_now()
        second = engine.memory_check()
    assert second.sequence == first.sequence + 1
    assert second.timestamp_ns > first.timestamp_ns


def test_snapshot_is_a_frozen_value():
    with ferry.Engine(ferry.CPU) as engine:
        snap = engine.memory_check()
    with pytest.raises(AttributeError):
        snap.host_total_bytes = 1  # type: ignore[misc]
    assert snap == snap
    assert "host_total_bytes" in repr(snap)


def test_closed_engine_raises_closed_error():
    engine = ferry.Engine(ferry.CPU)
    engine.close()
    assert engine.closed
    for call in (engine.memory_check, engine.memory_check_live, engine.sample_now, lambda: engine.device):
        with pytest.raises(ferry.ClosedError) as info:
            call()
        assert info.value.status == ferry.Status.CLOSED
        assert "closed" in str(info.value)
    engine.close()  # idempotent


def test_context_manager_closes():
    with ferry.Engine(ferry.CPU) as engine:
        engine.memory_check()
    assert engine.closed
    with pytest.raises(ferry.ClosedError):
        engine.memory_check()


def test_destroy_invalidates_the_handle_in_the_library():
    engine = ferry.Engine(ferry.CPU)
    handle = engine._handle
    engine.close()
    # The library itself must reject the stale handle (the Python-side check is only a convenience).
    status = ferry._lib.lib().ferry_engine_sample_now(handle)
    assert status == ferry.Status.INVALID_HANDLE
    assert ferry._lib.lib().ferry_engine_destroy(handle) == ferry.Status.INVALID_HANDLE


def test_garbage_collection_destroys_the_engine():
    engine = ferry.Engine(ferry.CPU)
    handle = engine._handle
    ref = weakref.ref(engine)
    del engine
    gc.collect()
    assert ref() is None
    assert ferry._lib.lib().ferry_engine_sample_now(handle) == ferry.Status.INVALID_HANDLE


def test_many_engines_do_not_leak_handles():
    # More than FERRY_MAX_ENGINES create/close cycles: closing must free each slot.
    for _ in range(ferry._lib.FERRY_MAX_ENGINES + 44):
        ferry.Engine(ferry.CPU, sample_interval_ms=0).close()


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"device": -2}, "device"),
        ({"device": ferry.CPU, "sample_interval_ms": 60001}, "interval"),
    ],
)
def test_invalid_options_raise_invalid_argument(kwargs, fragment):
    with pytest.raises(ferry.InvalidArgumentError) as info:
        ferry.Engine(**kwargs)
    assert info.value.status == ferry.Status.INVALID_ARGUMENT
    assert fragment in info.value.message


@pytest.mark.parametrize(
    "kwargs",
    [{"device": 2**31}, {"device": -(2**31) - 1}, {"device": ferry.CPU, "sample_interval_ms": -1}],
)
def test_unrepresentable_options_raise_invalid_argument(kwargs):
    with pytest.raises(ferry.InvalidArgumentError) as info:
        ferry.Engine(**kwargs)
    assert "does not fit" in info.value.message


def test_non_int_options_raise_type_error():
    with pytest.raises(TypeError):
        ferry.Engine(device="0")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ferry.Engine(device=ferry.CPU, sample_interval_ms=1.5)  # type: ignore[arg-type]


def test_raw_options_rejected_by_the_library():
    import ctypes

    lib = ferry._lib.lib()
    opts = ferry._lib.EngineOptions()
    assert lib.ferry_engine_options_init(ctypes.byref(opts)) == 0
    assert (opts.size, opts.device, opts.sample_interval_ms, opts.flags) == (16, 0, 100, 0)
    for field, value in (("flags", 1), ("size", 0), ("size", 4)):
        bad = ferry._lib.EngineOptions(size=16, device=ferry.CPU, sample_interval_ms=100, flags=0)
        setattr(bad, field, value)
        handle = ferry._lib.ferry_engine()
        status = lib.ferry_engine_create(ctypes.byref(bad), ctypes.byref(handle))
        with pytest.raises(ferry.InvalidArgumentError) as info:
            ferry._errors._check(status)
        assert info.value.message, field


def test_device_out_of_range_is_no_device():
    n = ferry.device_count()
    with pytest.raises(ferry.NoDeviceError) as info:
        ferry.Engine(device=n)
    assert info.value.message
    with pytest.raises(ferry.NoDeviceError):
        ferry.device_info(n)


def test_no_driver_message_names_libcuda():
    # A process that cannot load the driver, even on a GPU host.
    code = (
        "import ferry\n"
        "assert ferry.device_count() == 0\n"
        "assert ferry.devices() == []\n"
        "info = ferry.system_info()\n"
        "assert not info.cuda_available and 'libcuda.so.1' in info.cuda_status, info\n"
        "try:\n"
        "    ferry.Engine(0)\n"
        "except ferry.NoDeviceError as e:\n"
        "    print(e.status, e.status_name)\n"
        "    print(e.message)\n"
        "else:\n"
        "    raise SystemExit('Engine(0) succeeded without a driver')\n"
        "m = ferry.MemoryManager()\n"
        "assert m.device == ferry.CPU\n"
        "print(m.check_memory())\n"
    )
    env = dict(os.environ)
    env["FERRY_CUDA_LIBRARY"] = "/nonexistent/libcuda.so.1"
    env["PYTHONPATH"] = str(PACKAGE_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "3 FERRY_ERR_NO_DEVICE"
    assert "libcuda.so.1" in lines[1]
    assert lines[2] == "(0.0, 0.0)"


def test_engine_is_usable_from_many_threads():
    errors = []
    with ferry.Engine(ferry.CPU) as engine:

        def work():
            try:
                for _ in range(300):
                    s = engine.memory_check()
                    assert s.host_valid and s.host_total_bytes > 0
                    assert engine.memory_check_live().live
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_close_racing_with_calls_gives_closed_error_only():
    engine = ferry.Engine(ferry.CPU)
    seen = []
    stop = threading.Event()

    def work():
        while not stop.is_set():
            try:
                engine.memory_check()
            except ferry.ClosedError:
                seen.append("closed")
                return
            except BaseException as exc:
                seen.append(exc)
                return

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    engine.close()
    time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    assert seen == ["closed"] * 4
