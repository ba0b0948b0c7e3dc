"""The library version, the devices and the driver stack.

Every function here may be called from any thread. Each returns plain Python values that the caller owns;
nothing keeps a reference into library memory.
"""

from __future__ import annotations

import ctypes
from ctypes import byref, c_int32
from dataclasses import dataclass
from typing import List, Optional, Tuple

from . import _lib
from ._errors import _as_int32, _check

__all__ = ["version", "device_count", "devices", "device_info", "system_info", "DeviceInfo", "SystemInfo"]


def _str(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def version() -> Tuple[int, int, int]:
    """Returns the version of the loaded library as ``(major, minor, patch)``."""
    major, minor, patch = c_int32(), c_int32(), c_int32()
    _check(_lib.lib().ferry_version(byref(major), byref(minor), byref(patch)))
    return (major.value, minor.value, patch.value)


def device_count() -> int:
    """Returns the number of CUDA devices visible to this process (``CUDA_VISIBLE_DEVICES`` applies).

    Returns 0, without raising, when the driver library is absent or no device is present;
    :func:`system_info` says why. The first call loads the CUDA driver.
    """
    n = c_int32()
    _check(_lib.lib().ferry_device_count(byref(n)))
    return n.value


@dataclass(frozen=True)
class DeviceInfo:
    """Facts about one CUDA device, as :func:`devices` reports them. A plain value; the caller owns it."""

    index: int
    """The CUDA device ordinal."""
    name: str
    """E.g. ``"NVIDIA H100 80GB HBM3"``."""
    uuid: str
    """``"GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"``, as nvidia-smi prints it."""
    pci_bus_id: str
    """``"0000:1b:00.0"`` (domain:bus:device.function, lower case)."""
    compute_capability: Tuple[int, int]
    """``(major, minor)``, e.g. ``(9, 0)``."""
    multiprocessor_count: int
    total_memory_bytes: int
    """Device memory as the driver reports it."""
    pcie_generation_current: Optional[int]
    """The current PCIe generation; an idle link may run below the maximum. None when NVML gave no link."""
    pcie_generation_max: Optional[int]
    pcie_width_current: Optional[int]
    """The current PCIe link width in lanes; None when NVML gave no link figures."""
    pcie_width_max: Optional[int]
    l2_cache_bytes: int
    memory_bus_width_bits: int
    async_engine_count: int
    """Copy engines that can overlap copies with kernels."""

    @classmethod
    def _from_struct(cls, p: _lib.DeviceProperties) -> "DeviceInfo":
        pcie = bool(p.flags & _lib.FERRY_DEVICE_F_PCIE)
        return cls(
            index=p.index,
            name=_str(p.name),
            uuid=_str(p.uuid_string),
            pci_bus_id=_str(p.pci_bus_id),
            compute_capability=(p.compute_capability_major, p.compute_capability_minor),
            multiprocessor_count=p.multiprocessor_count,
            total_memory_bytes=p.total_memory_bytes,
            pcie_generation_current=p.pcie_generation_current if pcie else None,
            pcie_generation_max=p.pcie_generation_max if pcie else None,
            pcie_width_current=p.pcie_width_current if pcie else None,
            pcie_width_max=p.pcie_width_max if pcie else None,
            l2_cache_bytes=p.l2_cache_bytes,
            memory_bus_width_bits=p.memory_bus_width_bits,
            async_engine_count=p.async_engine_count,
        )


def device_info(index: int) -> DeviceInfo:
    """Returns the facts about the device with CUDA ordinal ``index``.

    Raises:
        NoDeviceError: the driver is absent or the index is out of range.
    """
    props = _lib.DeviceProperties()
    props.size = ctypes.sizeof(props)
    _check(_lib.lib().ferry_device_info(_as_int32(index, "index"), byref(props)))
    return DeviceInfo._from_struct(props)


def devices() -> List[DeviceInfo]:
    """Returns a :class:`DeviceInfo` for every visible device, in ordinal order; ``[]`` without a GPU."""
    return [device_info(i) for i in range(device_count())]


@dataclass(frozen=True)
class SystemInfo:
    """The driver stack as ferry sees it, from :func:`system_info`. A plain value; the caller owns it."""

    cuda_driver_version: int
    """``cuDriverGetVersion``, e.g. 13000 for CUDA 13.0; 0 when the driver is absent."""
    device_count: int
    driver_version: str
    """The kernel driver's version from NVML, e.g. ``"580.159.04"``; ``""`` when NVML is absent."""
    nvml_version: str
    """NVML's own version; ``""`` when absent."""
    cuda_status: str
    """``""`` when CUDA is usable, else why not (it names the missing library)."""
    nvml_status: str
    """``""`` when NVML is usable, else why not."""
    cuda_available: bool
    """libcuda.so.1 was loaded and initialized."""
    nvml_available: bool
    """libnvidia-ml.so.1 was loaded and initialized."""


def system_info() -> SystemInfo:
    """Returns the driver stack as ferry sees it; loads the CUDA driver and NVML if not loaded yet."""
    p = _lib.SystemProperties()
    p.size = ctypes.sizeof(p)
    _check(_lib.lib().ferry_system_info(byref(p)))
    return SystemInfo(
        cuda_driver_version=p.cuda_driver_version,
        device_count=p.device_count,
        driver_version=_str(p.driver_version),
        nvml_version=_str(p.nvml_version),
        cuda_status=_str(p.cuda_status),
        nvml_status=_str(p.nvml_status),
        cuda_available=bool(p.flags & _lib.FERRY_SYSTEM_F_CUDA),
        nvml_available=bool(p.flags & _lib.FERRY_SYSTEM_F_NVML),
    )

