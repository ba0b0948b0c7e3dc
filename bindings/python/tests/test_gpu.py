"""GPU tests: they check ferry's figures against nvidia-smi and PyTorch. Without a GPU they skip, or fail
when FERRY_REQUIRE_GPU=1."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

import ferry

MiB = 1 << 20


def _nvidia_smi_gpus():
    if shutil.which("nvidia-smi") is None:
        pytest.fail("a GPU is visible to ferry but nvidia-smi is not on PATH")
    out = subprocess.run(
        [
            "nvidia-smi",
            "--query-gpu=index,name,uuid,pci.bus_id,memory.total",
            "--format=csv,noheader,nounits",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    rows = []
    for line in out.strip().splitlines():
        index, name, uuid, bus_id, total_mib = [field.strip() for field in line.split(",")]
        rows.append(
            {
                "index": int(index),
                "name": name,
                "uuid": uuid,
                "pci_bus_id": _normalise_bus_id(bus_id),
                "memory_total_mib": int(total_mib),
            }
        )
    return rows


def _normalise_bus_id(bus_id: str) -> str:
    """nvidia-smi prints "00000000:1B:00.0" (an 8-digit domain, upper case); ferry prints "0000:1b:00.0"."""
    domain, rest = bus_id.lower().split(":", 1)
    return f"{int(domain, 16):04x}:{rest}"


def test_devices_agree_with_nvidia_smi(require_gpu):
    smi = _nvidia_smi_gpus()
    devs = ferry.devices()
    assert len(devs) == require_gpu
    if os.environ.get("CUDA_VISIBLE_DEVICES") is None:
        assert len(devs) == len(smi)
    else:  # CUDA_VISIBLE_DEVICES hides and renumbers devices; nvidia-smi lists them all
        assert len(devs) <= len(smi)
    # CUDA's ordinal order need not be nvidia-smi's (CUDA_DEVICE_ORDER), so rows are matched by UUID.
    by_uuid = {row["uuid"]: row for row in smi}
    for d in devs:
        assert d.uuid.startswith("GPU-") and len(d.uuid) == 40
        row = by_uuid[d.uuid]
        assert d.name == row["name"]
        assert d.pci_bus_id == row["pci_bus_id"]
        # nvidia-smi's memory.total is NVML's figure; the driver's total may differ by reserved memory.
        assert abs(d.total_memory_bytes / MiB - row["memory_total_mib"]) <= 1024
        assert d.compute_capability[0] >= 3 and d.multiprocessor_count > 0
        assert d.l2_cache_bytes > 0 and d.memory_bus_width_bits > 0 and d.async_engine_count >= 1
        if d.pcie_generation_max is not None:
            assert 1 <= d.pcie_generation_max <= 6
            assert 1 <= d.pcie_generation_current <= d.pcie_generation_max
            assert d.pcie_width_max in (1, 2, 4, 8, 16, 32)
            assert 1 <= d.pcie_width_current <= d.pcie_width_max


def test_system_info_on_gpu(require_gpu):
    info = ferry.system_info()
    assert info.cuda_available and info.cuda_status == ""
    assert info.cuda_driver_version >= 11000
    assert info.device_count == require_gpu
    if info.nvml_available:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.split()[0]
        assert info.driver_version == smi


def test_engine_memory_check_on_gpu(require_gpu):
    with ferry.Engine(0) as engine:
        assert engine.device == 0
        snap = engine.memory_check()
        live = engine.memory_check_live()
    for s in (snap, live):
        assert s.device == 0 and s.device_valid and s.host_valid
        assert s.device_total_bytes > 0
        assert 0 <= s.device_free_bytes <= s.device_total_bytes
        assert s.device_used_bytes == s.device_total_bytes - s.device_free_bytes
    assert live.live and not snap.live
    assert live.device_total_bytes == snap.device_total_bytes
    assert abs(snap.device_total_bytes - ferry.device_info(0).total_memory_bytes) <= 1024 * MiB


def test_engine_memory_agrees_with_torch(require_gpu):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.fail("ferry sees a GPU but torch.cuda is not available")
    # Hold 1 GiB through torch so that both sides see used memory that is not just the context.
    block = torch.empty(1 << 30, dtype=torch.uint8, device="cuda:0")
    torch.cuda.synchronize(0)
    with ferry.Engine(0) as engine:
        free, total = torch.cuda.mem_get_info(0)
        snap = engine.memory_check_live()
    assert snap.device_total_bytes == total
    assert abs(snap.device_free_bytes - free) <= 256 * MiB
    assert snap.device_used_bytes >= block.numel()
    del block


def test_memory_manager_on_gpu(require_gpu):
    torch = None
    try:
        import torch  # noqa: F811
    except ImportError:
        pass
    block = None
    if torch is not None and torch.cuda.is_available():
        block = torch.empty(512 * MiB, dtype=torch.uint8, device="cuda:0")
        torch.cuda.synchronize(0)
    with ferry.MemoryManager() as mm:
        assert mm.device == 0
        mm.engine.sample_now()
        snap = mm.snapshot()
        allocated, cached = mm.check_memory()
        assert snap.device_valid
        if snap.process_valid:
            assert allocated > 0
            if block is not None:
                assert allocated >= block.numel() / MiB
        else:
            assert allocated == pytest.approx(snap.device_used_bytes / MiB, abs=256)
            assert allocated > 0
        assert cached == snap.engine_reserved_bytes / MiB
    del block
