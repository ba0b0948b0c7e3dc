// Package cuda is the engine's only cgo: a thin shim over the CUDA driver API that loads libcuda.so.1
// with dlopen on first use, so the engine builds without CUDA headers or libraries and loads on hosts
// without a driver.
//
// Every function that needs a context takes it explicitly and makes it current only inside the one C call
// that uses it. Nothing relies on the OS thread's current context across two cgo calls, because goroutines
// move between threads.
//
// All functions are safe for concurrent use.
package cuda

/*
#cgo LDFLAGS: -ldl
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"unsafe"
)

// DefaultLibrary is the driver library loaded unless FERRY_CUDA_LIBRARY names another.
const DefaultLibrary = "libcuda.so.1"

// errNoDevice is CUDA_ERROR_NO_DEVICE: the driver is installed but sees no GPU.
const errNoDevice = 100

// ErrNotLoaded is wrapped by every error that comes from the driver library being unavailable.
var ErrNotLoaded = errors.New("CUDA driver not available")

// LoadError says why the driver could not be loaded or initialized.
type LoadError struct {
	Library string // the path passed to dlopen
	Code    int    // the CUresult of cuInit, or 0 when the library or a symbol was missing
	Reason  string // the loader's or the driver's message
}

func (e *LoadError) Error() string { return e.Reason }

// Unwrap makes errors.Is(err, ErrNotLoaded) true.
func (e *LoadError) Unwrap() error { return ErrNotLoaded }

// NoDevice reports whether the driver loaded but found no GPU.
func (e *LoadError) NoDevice() bool { return e.Code == errNoDevice }

// Error is a failed driver call. It carries the driver's error name and description.
type Error struct {
	Op   string // the driver function, e.g. "cuMemGetInfo_v2"
	Code int    // the CUresult
	Name string // e.g. "CUDA_ERROR_INVALID_CONTEXT"
	Desc string // e.g. "invalid device context"
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s failed: %s (%d): %s", e.Op, e.Name, e.Code, e.Desc)
}

var (
	loadOnce sync.Once
	loadErr  error
)

// Load loads and initializes the driver once per process. Later calls return the first result. The
// library path is FERRY_CUDA_LIBRARY when set, else libcuda.so.1.
func Load() error {
	loadOnce.Do(func() {
		path := os.Getenv("FERRY_CUDA_LIBRARY")
		if path == "" {
			path = DefaultLibrary
		}
		cpath := C.CString(path)
		defer C.free(unsafe.Pointer(cpath))
		var buf [512]C.char
		r := C.ferry_cu_load(cpath, &buf[0], C.size_t(len(buf)))
		if r != 0 {
			code := int(r)
			if code < 0 {
				code = 0
			}
			loadErr = &LoadError{Library: path, Code: code, Reason: C.GoString(&buf[0])}
		}
	})
	return loadErr
}

func check(op string, r C.CUresult) error {
	if r == 0 {
		return nil
	}
	return &Error{
		Op:   op,
		Code: int(r),
		Name: C.GoString(C.ferry_cu_error_name(r)),
		Desc: C.GoString(C.ferry_cu_error_string(r)),
	}
}

// DriverVersion returns the CUDA version the driver supports, e.g. 13000 for 13.0.
func DriverVersion() (int, error) {
	if err := Load(); err != nil {
		return 0, err
	}
	var v C.int
	if err := check("cuDriverGetVersion", C.ferry_cu_driver_version(&v)); err != nil {
		return 0, err
	}
	return int(v), nil
}

// DeviceCount returns the number of visible devices. It returns 0 and no error when the driver is loaded
// but reports no device; it returns the load error when the driver is missing.
func DeviceCount() (int, error) {
	if err := Load(); err != nil {
		var le *LoadError
		if errors.As(err, &le) && le.NoDevice() {
			return 0, nil
		}
		return 0, err
	}
	var n C.int
	if err := check("cuDeviceGetCount", C.ferry_cu_device_count(&n)); err != nil {
		return 0, err
	}
	return int(n), nil
}

// Device is a CUDA device handle (a CUdevice).
type Device struct{ h C.CUdevice }

// GetDevice returns the device with the given ordinal.
func GetDevice(ordinal int) (Device, error) {
	if err := Load(); err != nil {
		return Device{}, err
	}
	var d C.CUdevice
	if err := check("cuDeviceGet", C.ferry_cu_device_get(&d, C.int(ordinal))); err != nil {
		return Device{}, err
	}
	return Device{h: d}, nil
}

// Name returns the device's marketing name.
func (d Device) Name() (string, error) {
	var buf [256]C.char
	if err := check("cuDeviceGetName", C.ferry_cu_device_name(d.h, &buf[0], C.int(len(buf)))); err != nil {
		return "", err
	}
	return C.GoString(&buf[0]), nil
}

// UUID returns the device's 16-byte UUID.
func (d Device) UUID() ([16]byte, error) {
	var raw [16]C.uchar
	var out [16]byte
	if err := check("cuDeviceGetUuid_v2", C.ferry_cu_device_uuid(d.h, &raw[0])); err != nil {
		return out, err
	}
	for i := range raw {
		out[i] = byte(raw[i])
	}
	return out, nil
}

// PCIBusID returns the device's PCI address as the driver formats it, e.g. "0000:1B:00.0".
func (d Device) PCIBusID() (string, error) {
	var buf [32]C.char
	if err := check("cuDeviceGetPCIBusId", C.ferry_cu_device_pci_bus_id(d.h, &buf[0], C.int(len(buf)))); err != nil {
		return "", err
	}
	return C.GoString(&buf[0]), nil
}

// TotalMem returns the device's memory in bytes.
func (d Device) TotalMem() (uint64, error) {
	var n C.size_t
	if err := check("cuDeviceTotalMem_v2", C.ferry_cu_device_total_mem(d.h, &n)); err != nil {
		return 0, err
	}
	return uint64(n), nil
}

// Attribute is a CUdevice_attribute.
type Attribute int

// The attributes ferry reads.
const (
	AttrMultiprocessorCount    Attribute = C.FERRY_CU_ATTR_MULTIPROCESSOR_COUNT
	AttrGlobalMemoryBusWidth   Attribute = C.FERRY_CU_ATTR_GLOBAL_MEMORY_BUS_WIDTH
	AttrL2CacheSize            Attribute = C.FERRY_CU_ATTR_L2_CACHE_SIZE
	AttrAsyncEngineCount       Attribute = C.FERRY_CU_ATTR_ASYNC_ENGINE_COUNT
	AttrComputeCapabilityMajor Attribute = C.FERRY_CU_ATTR_COMPUTE_CAPABILITY_MAJOR
	AttrComputeCapabilityMinor Attribute = C.FERRY_CU_ATTR_COMPUTE_CAPABILITY_MINOR
	AttrUnifiedAddressing      Attribute = C.FERRY_CU_ATTR_UNIFIED_ADDRESSING
	// AttrHostPointerForRegisteredMem: the device can use a registered host pointer as is.
	AttrHostPointerForRegisteredMem Attribute = C.FERRY_CU_ATTR_CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM
)

// Attribute returns one integer attribute of the device.
func (d Device) Attribute(a Attribute) (int, error) {
	var v C.int
	if err := check("cuDeviceGetAttribute", C.ferry_cu_device_attribute(d.h, C.int(a), &v)); err != nil {
		return 0, fmt.Errorf("attribute %d: %w", int(a), err)
	}
	return int(v), nil
}

// Context is a CUDA context. ferry uses primary contexts only, so that it shares one context per device
// with PyTorch and every other runtime-API user in the process.
type Context struct {
	dev Device
	ctx C.CUcontext
}

// RetainPrimaryContext retains (and, if needed, creates) the device's primary context. Each successful
// call must be matched by one Release.
func (d Device) RetainPrimaryContext() (Context, error) {
	var c C.CUcontext
	if err := check("cuDevicePrimaryCtxRetain", C.ferry_cu_primary_ctx_retain(d.h, &c)); err != nil {
		return Context{}, err
	}
	return Context{dev: d, ctx: c}, nil
}

// Release drops this retain of the primary context.
func (c Context) Release() error {
	return check("cuDevicePrimaryCtxRelease_v2", C.ferry_cu_primary_ctx_release(c.dev.h))
}

// MemGetInfo returns the device's free and total memory as the driver sees it, in bytes.
func (c Context) MemGetInfo() (free, total uint64, err error) {
	var f, t C.size_t
	if err := check("cuMemGetInfo_v2", C.ferry_cu_mem_get_info(c.ctx, &f, &t)); err != nil {
		return 0, 0, err
	}
	return uint64(f), uint64(t), nil
}
