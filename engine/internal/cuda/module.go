package cuda

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"unsafe"
)

// Module is a loaded CUDA module (a CUmodule).
type Module uintptr

// Function is a kernel of a loaded module (a CUfunction).
type Function uintptr

// ModuleLoadData loads a cubin, PTX or fatbin image into c. The image is copied to C memory for the call.
func (c Context) ModuleLoadData(image []byte) (Module, error) {
	if len(image) == 0 {
		return 0, check("cuModuleLoadData", 1) // CUDA_ERROR_INVALID_VALUE
	}
	p := C.CBytes(image)
	defer C.free(p)
	var m C.uintptr_t
	if err := check("cuModuleLoadData", C.ferry_cu_module_load_data(c.ctx, &m, p)); err != nil {
		return 0, err
	}
	return Module(m), nil
}

// ModuleUnload unloads m.
func (c Context) ModuleUnload(m Module) error {
	return check("cuModuleUnload", C.ferry_cu_module_unload(c.ctx, C.uintptr_t(m)))
}

// ModuleGetFunction looks up the kernel named name (an extern "C" name) in m.
func (c Context) ModuleGetFunction(m Module, name string) (Function, error) {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	var f C.uintptr_t
	if err := check("cuModuleGetFunction("+name+")", C.ferry_cu_module_get_function(c.ctx, &f, C.uintptr_t(m), cs)); err != nil {
		return 0, err
	}
	return Function(f), nil
}

// Launch runs f on s over a grid of gridX × gridY blocks of blockX threads, with one by-value parameter:
// the struct whose bytes are params (no Go pointers inside; the driver copies it at launch).
func (c Context) Launch(f Function, gridX, gridY, blockX uint32, s Stream, params []byte) error {
	return check("cuLaunchKernel", C.ferry_cu_launch(c.ctx, C.uintptr_t(f), C.uint(gridX), C.uint(gridY), C.uint(blockX),
		s.c(), unsafe.Pointer(&params[0])))
}

// Host memory registration flags (cuMemHostRegister).
const (
	HostRegisterPortable  = C.FERRY_CU_MEMHOSTREGISTER_PORTABLE
	HostRegisterDeviceMap = C.FERRY_CU_MEMHOSTREGISTER_DEVICEMAP
	HostRegisterReadOnly  = C.FERRY_CU_MEMHOSTREGISTER_READ_ONLY
)

// MemHostRegister page-locks the host memory [p, p+n) and maps it for the device. p is an address of
// memory that is not Go-managed or is kept alive by the caller until MemHostUnregister.
func (c Context) MemHostRegister(p uintptr, n int, flags int) error {
	return check("cuMemHostRegister_v2", C.ferry_cu_mem_host_register(c.ctx, C.uintptr_t(p), C.size_t(n), C.uint(flags)))
}

// MemHostUnregister undoes MemHostRegister; p is the address that was registered.
func (c Context) MemHostUnregister(p uintptr) error {
	return check("cuMemHostUnregister", C.ferry_cu_mem_host_unregister(c.ctx, C.uintptr_t(p)))
}

// MemHostDevicePointer is the device address of registered or page-locked host memory at p.
func (c Context) MemHostDevicePointer(p uintptr) (DevicePtr, error) {
	var d C.CUdeviceptr
	if err := check("cuMemHostGetDevicePointer_v2", C.ferry_cu_mem_host_get_device_pointer(c.ctx, &d, C.uintptr_t(p))); err != nil {
		return 0, err
	}
	return DevicePtr(d), nil
}

// MemcpyHtoDGather issues one asynchronous copy per sample on s: len(offsets) copies of n bytes each,
// from src+offsets[i] (registered host memory) to dst+i*n. It is one cgo call for the whole batch.
func (c Context) MemcpyHtoDGather(dst DevicePtr, src uintptr, offsets []uint64, n int, s Stream) error {
	if len(offsets) == 0 {
		return nil
	}
	return check("cuMemcpyHtoDAsync_v2", C.ferry_cu_memcpy_htod_gather(c.ctx, C.CUdeviceptr(dst), C.uintptr_t(src),
		(*C.uint64_t)(unsafe.Pointer(&offsets[0])), C.int(len(offsets)), C.size_t(n), s.c()))
}
