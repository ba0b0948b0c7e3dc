package cuda

/*
#include <stdlib.h>
#include "nvml_shim.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"unsafe"
)

// DefaultNVMLLibrary is the NVML library loaded unless FERRY_NVML_LIBRARY names another.
const DefaultNVMLLibrary = "libnvidia-ml.so.1"

// ErrNVMLNotLoaded is wrapped by every error that comes from NVML being unavailable.
var ErrNVMLNotLoaded = errors.New("NVML not available")

// NVMLError is a failed NVML call, with NVML's error string.
type NVMLError struct {
	Op   string // e.g. "nvmlDeviceGetMemoryInfo_v2"
	Code int    // the nvmlReturn_t
	Desc string // nvmlErrorString
}

func (e *NVMLError) Error() string { return fmt.Sprintf("%s failed: %s (%d)", e.Op, e.Desc, e.Code) }

// NotSupported reports whether the device does not support the query.
func (e *NVMLError) NotSupported() bool { return e.Code == C.FERRY_NVML_ERROR_NOT_SUPPORTED }

type nvmlLoadError struct{ msg string }

func (e *nvmlLoadError) Error() string { return e.msg }
func (e *nvmlLoadError) Unwrap() error { return ErrNVMLNotLoaded }

var (
	nvmlOnce sync.Once
	nvmlErr  error
)

// LoadNVML loads and initializes NVML once per process; later calls return the first result. The library
// path is FERRY_NVML_LIBRARY when set, else libnvidia-ml.so.1.
func LoadNVML() error {
	nvmlOnce.Do(func() {
		path := os.Getenv("FERRY_NVML_LIBRARY")
		if path == "" {
			path = DefaultNVMLLibrary
		}
		cpath := C.CString(path)
		defer C.free(unsafe.Pointer(cpath))
		var buf [512]C.char
		if r := C.ferry_nvml_load(cpath, &buf[0], C.size_t(len(buf))); r != 0 {
			nvmlErr = &nvmlLoadError{msg: C.GoString(&buf[0])}
		}
	})
	return nvmlErr
}

func nvmlCheck(op string, r C.nvmlReturn_t) error {
	if r == C.FERRY_NVML_SUCCESS {
		return nil
	}
	return &NVMLError{Op: op, Code: int(r), Desc: C.GoString(C.ferry_nvml_error_string(r))}
}

func nvmlString(op string, f func(*C.char, C.uint) C.nvmlReturn_t) (string, error) {
	if err := LoadNVML(); err != nil {
		return "", err
	}
	var buf [96]C.char
	if err := nvmlCheck(op, f(&buf[0], C.uint(len(buf)))); err != nil {
		return "", err
	}
	return C.GoString(&buf[0]), nil
}

// NVMLDriverVersion returns the kernel driver's version, e.g. "580.159.04".
func NVMLDriverVersion() (string, error) {
	return nvmlString("nvmlSystemGetDriverVersion", func(b *C.char, n C.uint) C.nvmlReturn_t {
		return C.ferry_nvml_driver_version(b, n)
	})
}

// NVMLVersion returns NVML's own version.
func NVMLVersion() (string, error) {
	return nvmlString("nvmlSystemGetNVMLVersion", func(b *C.char, n C.uint) C.nvmlReturn_t {
		return C.ferry_nvml_version(b, n)
	})
}

// NVMLDevice is a device's NVML handle.
type NVMLDevice struct{ h C.nvmlDevice_t }

// NVMLDeviceByUUID finds a device by its UUID ("GPU-…"). NVML numbers devices without regard to
// CUDA_VISIBLE_DEVICES, so the UUID is the safe key.
func NVMLDeviceByUUID(uuid string) (NVMLDevice, error) {
	if err := LoadNVML(); err != nil {
		return NVMLDevice{}, err
	}
	cuuid := C.CString(uuid)
	defer C.free(unsafe.Pointer(cuuid))
	var d C.nvmlDevice_t
	if err := nvmlCheck("nvmlDeviceGetHandleByUUID", C.ferry_nvml_device_by_uuid(cuuid, &d)); err != nil {
		return NVMLDevice{}, err
	}
	return NVMLDevice{h: d}, nil
}

// NVMLMemory is NVML's view of device memory (nvmlMemory_v2_t), in bytes.
type NVMLMemory struct {
	Total, Reserved, Free, Used uint64
}

// MemoryInfo returns the device's memory (the _v2 query, which separates memory reserved by the driver).
func (d NVMLDevice) MemoryInfo() (NVMLMemory, error) {
	var m C.ferry_nvml_memory_v2
	if err := nvmlCheck("nvmlDeviceGetMemoryInfo_v2", C.ferry_nvml_memory_info(d.h, &m)); err != nil {
		return NVMLMemory{}, err
	}
	return NVMLMemory{Total: uint64(m.total), Reserved: uint64(m.reserved), Free: uint64(m.free), Used: uint64(m.used)}, nil
}

// NVMLProcess is one compute process on a device.
type NVMLProcess struct {
	PID           int
	UsedGPUMemory uint64 // math.MaxUint64 when NVML cannot attribute memory (NVML_VALUE_NOT_AVAILABLE)
}

// ComputeProcesses lists the compute processes on the device.
func (d NVMLDevice) ComputeProcesses() ([]NVMLProcess, error) {
	n := C.uint(16)
	for {
		infos := make([]C.ferry_nvml_process, n)
		count := n
		r := C.ferry_nvml_compute_processes(d.h, &count, &infos[0])
		if r == C.FERRY_NVML_ERROR_INSUFFICIENT_SIZE && count > n {
			n = count + 8 // processes may start between the two calls
			continue
		}
		if err := nvmlCheck("nvmlDeviceGetComputeRunningProcesses", r); err != nil {
			return nil, err
		}
		out := make([]NVMLProcess, count)
		for i := range out {
			out[i] = NVMLProcess{PID: int(infos[i].pid), UsedGPUMemory: uint64(infos[i].used_gpu_memory)}
		}
		return out, nil
	}
}

// PCIeLink returns the current and max PCIe generation and width.
func (d NVMLDevice) PCIeLink() (genCur, genMax, widthCur, widthMax int, err error) {
	var v [4]C.uint
	if err := nvmlCheck("nvmlDeviceGetPcieLink", C.ferry_nvml_pcie_link(d.h, &v[0])); err != nil {
		return 0, 0, 0, 0, err
	}
	return int(v[0]), int(v[1]), int(v[2]), int(v[3]), nil
}

// NVMLReading is one NVML query's result: the value, or absent (OK false) when the device or the loaded
// NVML does not support the query.
type NVMLReading[T any] struct {
	Value T
	OK    bool
}

func reading[T any](op string, v T, r C.nvmlReturn_t) (NVMLReading[T], error) {
	if r == C.FERRY_NVML_ERROR_NOT_SUPPORTED {
		return NVMLReading[T]{}, nil
	}
	if err := nvmlCheck(op, r); err != nil {
		return NVMLReading[T]{}, err
	}
	return NVMLReading[T]{Value: v, OK: true}, nil
}

// Utilization returns the GPU and memory utilization in percent.
func (d NVMLDevice) Utilization() (gpu, memory NVMLReading[uint32], err error) {
	var g, m C.uint
	r := C.ferry_nvml_utilization(d.h, &g, &m)
	if gpu, err = reading("nvmlDeviceGetUtilizationRates", uint32(g), r); err != nil {
		return
	}
	memory, err = reading("nvmlDeviceGetUtilizationRates", uint32(m), r)
	return
}

// Temperature returns the GPU die temperature in °C.
func (d NVMLDevice) Temperature() (NVMLReading[uint32], error) {
	var v C.uint
	r := C.ferry_nvml_temperature(d.h, &v)
	return reading("nvmlDeviceGetTemperature", uint32(v), r)
}

// Power returns the board power draw in milliwatts.
func (d NVMLDevice) Power() (NVMLReading[uint32], error) {
	var v C.uint
	r := C.ferry_nvml_power(d.h, &v)
	return reading("nvmlDeviceGetPowerUsage", uint32(v), r)
}

// Clock returns the SM (sm true) or memory clock in MHz.
func (d NVMLDevice) Clock(sm bool) (NVMLReading[uint32], error) {
	kind := C.int(2)
	if sm {
		kind = 1
	}
	var v C.uint
	r := C.ferry_nvml_clock(d.h, kind, &v)
	return reading("nvmlDeviceGetClockInfo", uint32(v), r)
}

// ThrottleReasons returns the clocks-event (throttle) reason bits.
func (d NVMLDevice) ThrottleReasons() (NVMLReading[uint64], error) {
	var v C.ulonglong
	r := C.ferry_nvml_throttle_reasons(d.h, &v)
	return reading("nvmlDeviceGetCurrentClocksEventReasons", uint64(v), r)
}

// ECCErrors returns the volatile count of corrected or uncorrected memory errors.
func (d NVMLDevice) ECCErrors(uncorrected bool) (NVMLReading[uint64], error) {
	kind := C.int(0)
	if uncorrected {
		kind = 1
	}
	var v C.ulonglong
	r := C.ferry_nvml_ecc_errors(d.h, kind, &v)
	return reading("nvmlDeviceGetTotalEccErrors", uint64(v), r)
}

// PCIeThroughput returns the PCIe receive and transmit rates in bytes per second, measured by NVML over
// a 20 ms window: the call blocks that long.
func (d NVMLDevice) PCIeThroughput() (rx, tx NVMLReading[float64], err error) {
	var r, t C.uint
	if rx, err = reading("nvmlDeviceGetPcieThroughput", float64(0), C.ferry_nvml_pcie_throughput(d.h, 1, &r)); err != nil {
		return
	}
	rx.Value = float64(r) * 1024
	if tx, err = reading("nvmlDeviceGetPcieThroughput", float64(0), C.ferry_nvml_pcie_throughput(d.h, 0, &t)); err != nil {
		return
	}
	tx.Value = float64(t) * 1024
	return
}
