"""MemoryManager, the seed-compatible façade."""

from __future__ import annotations

import threading

import pytest

import ferry


def test_default_device_follows_device_count():
    with ferry.MemoryManager() as mm:
        expected = 0 if ferry.device_count() > 0 else ferry.CPU
        assert mm.device == expected
        assert mm.engine.device == expected


def test_cpu_check_memory_returns_two_floats():
    with ferry.MemoryManager(threshold_mb=512, device=ferry.CPU) as mm:
        assert mm.threshold_mb == 512
        result = mm.check_memory()
        assert isinstance(result, tuple) and len(result) == 2
        allocated, cached = result
        assert type(allocated) is float and type(cached) is float
        assert allocated == 0.0  # no device memory on the CPU engine
        snap = mm.snapshot()
        assert cached == snap.engine_reserved_bytes / 2**20
        assert snap.host_valid and not snap.device_valid


def test_check_memory_fills_its_bound_buffer():
    with ferry.MemoryManager(device=ferry.CPU) as mm:
        assert mm._snap.sequence == 0  # nothing read yet
        mm.check_memory()
        snap = mm.snapshot()
        assert mm._snap.size == 160
        assert mm._snap.sequence >= 1 and mm._snap.device == ferry.CPU
        assert mm._snap.host_total_bytes == snap.host_total_bytes > 0


def test_closed_manager_raises_closed_error():
    mm = ferry.MemoryManager(device=ferry.CPU)
    mm.close()
    mm.close()  # idempotent
    assert mm.closed and mm.engine.closed
    with pytest.raises(ferry.ClosedError):
        mm.check_memory()
    with pytest.raises(ferry.ClosedError):
        mm.snapshot()


def test_check_memory_from_many_threads():
    with ferry.MemoryManager(device=ferry.CPU) as mm:
        errors = []
        results = []
        barrier = threading.Barrier(16)

        def work():
            try:
                barrier.wait()
                last = None
                for _ in range(5000):
                    last = mm.check_memory()
                    assert len(last) == 2 and type(last[0]) is float and type(last[1]) is float
                    assert last[0] >= 0.0 and last[1] >= 0.0
                results.append(last)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert results == [(0.0, 0.0)] * 16
