package main

// #include "exports.h"
import "C"

import (
	"github.com/ferry-ml/ferry/engine"
)

//export ferry_device_count
func ferry_device_count(count *C.int32_t) C.ferry_status {
	return call("ferry_device_count", func() error {
		if count == nil {
			return errNull("count")
		}
		n, err := engine.DeviceCount()
		if err != nil {
			return err
		}
		*count = C.int32_t(n)
		return nil
	})
}

//export ferry_device_info
func ferry_device_info(index C.int32_t, info *C.ferry_device_properties) C.ferry_status {
	return call("ferry_device_info", func() error {
		if info == nil {
			return errNull("info")
		}
		if err := checkSize("ferry_device_properties", info.size, C.FERRY_CAPI_V1_DEVICE_PROPERTIES); err != nil {
			return err
		}
		d, err := engine.Device(int(index))
		if err != nil {
			return err
		}
		out := C.ferry_device_properties{size: info.size, index: C.int32_t(d.Index)}
		setString(out.name[:], d.Name)
		for i, b := range d.UUID {
			out.uuid[i] = C.uint8_t(b)
		}
		setString(out.uuid_string[:], d.UUIDString)
		setString(out.pci_bus_id[:], d.PCIBusID)
		out.compute_capability_major = C.int32_t(d.ComputeCapability[0])
		out.compute_capability_minor = C.int32_t(d.ComputeCapability[1])
		out.multiprocessor_count = C.int32_t(d.Multiprocessors)
		if d.PCIe != nil {
			out.flags |= C.FERRY_DEVICE_F_PCIE
			out.pcie_generation_current = C.int32_t(d.PCIe.GenerationCurrent)
			out.pcie_generation_max = C.int32_t(d.PCIe.GenerationMax)
			out.pcie_width_current = C.int32_t(d.PCIe.WidthCurrent)
			out.pcie_width_max = C.int32_t(d.PCIe.WidthMax)
		}
		out.total_memory_bytes = C.uint64_t(d.TotalMemory)
		out.l2_cache_bytes = C.int32_t(d.L2CacheBytes)
		out.memory_bus_width_bits = C.int32_t(d.MemoryBusWidth)
		out.async_engine_count = C.int32_t(d.AsyncEngines)
		*info = out
		return nil
	})
}

//export ferry_system_info
func ferry_system_info(info *C.ferry_system_properties) C.ferry_status {
	return call("ferry_system_info", func() error {
		if info == nil {
			return errNull("info")
		}
		if err := checkSize("ferry_system_properties", info.size, C.FERRY_CAPI_V1_SYSTEM_PROPERTIES); err != nil {
			return err
		}
		s, err := engine.System()
		if err != nil {
			return err
		}
		out := C.ferry_system_properties{size: info.size}
		if s.CUDAAvailable() {
			out.flags |= C.FERRY_SYSTEM_F_CUDA
		}
		if s.NVMLAvailable() {
			out.flags |= C.FERRY_SYSTEM_F_NVML
		}
		out.cuda_driver_version = C.int32_t(s.CUDADriverVersion)
		out.device_count = C.int32_t(s.DeviceCount)
		setString(out.driver_version[:], s.DriverVersion)
		setString(out.nvml_version[:], s.NVMLVersion)
		setString(out.cuda_status[:], s.CUDAError)
		setString(out.nvml_status[:], s.NVMLError)
		*info = out
		return nil
	})
}
