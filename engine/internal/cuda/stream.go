package cuda

/*
#include "shim.h"
*/
import "C"

import (
	"errors"
	"unsafe"
)

// ErrNotReady is returned by queries whose work has not completed (CUDA_ERROR_NOT_READY).
var ErrNotReady = errors.New("not ready")

// DevicePtr is a device address (a CUdeviceptr).
type DevicePtr uint64

// Stream is a CUDA stream handle. The zero Stream is the legacy default stream.
type Stream uintptr

// Event is a CUDA event handle.
type Event uintptr

func (s Stream) c() C.uintptr_t { return C.uintptr_t(s) }
func (e Event) c() C.uintptr_t  { return C.uintptr_t(e) }

// Push makes c current on the calling OS thread until Pop. Use it only on a thread locked with
// runtime.LockOSThread, for a loop of many calls on one context.
func (c Context) Push() error { return check("cuCtxPushCurrent_v2", C.ferry_cu_ctx_push(c.ctx)) }

// Pop undoes Push.
func (c Context) Pop() error { return check("cuCtxPopCurrent_v2", C.ferry_cu_ctx_pop()) }

// MemHostAlloc allocates page-locked host memory, portable across contexts.
func (c Context) MemHostAlloc(n int) (unsafe.Pointer, error) {
	var p unsafe.Pointer
	if err := check("cuMemHostAlloc", C.ferry_cu_mem_host_alloc(c.ctx, &p, C.size_t(n))); err != nil {
		return nil, err
	}
	return p, nil
}

// MemFreeHost frees memory from MemHostAlloc.
func (c Context) MemFreeHost(p unsafe.Pointer) error {
	return check("cuMemFreeHost", C.ferry_cu_mem_free_host(c.ctx, p))
}

// MemAlloc allocates device memory.
func (c Context) MemAlloc(n int) (DevicePtr, error) {
	var p C.CUdeviceptr
	if err := check("cuMemAlloc_v2", C.ferry_cu_mem_alloc(c.ctx, &p, C.size_t(n))); err != nil {
		return 0, err
	}
	return DevicePtr(p), nil
}

// MemFree frees device memory.
func (c Context) MemFree(p DevicePtr) error {
	return check("cuMemFree_v2", C.ferry_cu_mem_free(c.ctx, C.CUdeviceptr(p)))
}

// MemsetD8 sets n bytes of device memory to v (synchronously with respect to the host).
func (c Context) MemsetD8(p DevicePtr, v byte, n int) error {
	return check("cuMemsetD8_v2", C.ferry_cu_memset_d8(c.ctx, C.CUdeviceptr(p), C.uchar(v), C.size_t(n)))
}

// MemcpyDtoH copies device memory to host memory and waits for it. dst must not be Go memory that
// holds pointers.
func (c Context) MemcpyDtoH(dst []byte, src DevicePtr) error {
	if len(dst) == 0 {
		return nil
	}
	return check("cuMemcpyDtoH_v2",
		C.ferry_cu_memcpy_dtoh(c.ctx, unsafe.Pointer(&dst[0]), C.CUdeviceptr(src), C.size_t(len(dst))))
}

// MemcpyHtoDAsync copies n bytes from page-locked host memory src to dst, ordered on s.
func (c Context) MemcpyHtoDAsync(dst DevicePtr, src unsafe.Pointer, n int, s Stream) error {
	return check("cuMemcpyHtoDAsync_v2",
		C.ferry_cu_memcpy_htod_async(c.ctx, C.CUdeviceptr(dst), src, C.size_t(n), s.c()))
}

// StreamCreate creates a non-blocking stream (no implicit synchronization with the legacy stream).
func (c Context) StreamCreate() (Stream, error) {
	var s C.uintptr_t
	if err := check("cuStreamCreate", C.ferry_cu_stream_create(c.ctx, &s)); err != nil {
		return 0, err
	}
	return Stream(s), nil
}

// StreamDestroy destroys s; work already queued on it completes.
func (c Context) StreamDestroy(s Stream) error {
	return check("cuStreamDestroy_v2", C.ferry_cu_stream_destroy(c.ctx, s.c()))
}

// StreamQuery returns nil when all work on s has completed, ErrNotReady when some is pending.
func (c Context) StreamQuery(s Stream) error {
	r := C.ferry_cu_stream_query(c.ctx, s.c())
	if r == C.FERRY_CU_NOT_READY {
		return ErrNotReady
	}
	return check("cuStreamQuery", r)
}

// StreamWaitEvent makes future work on s wait for e, without blocking the host.
func (c Context) StreamWaitEvent(s Stream, e Event) error {
	return check("cuStreamWaitEvent", C.ferry_cu_stream_wait_event(c.ctx, s.c(), e.c()))
}

// EventCreate creates an event without timing.
func (c Context) EventCreate() (Event, error) {
	var e C.uintptr_t
	if err := check("cuEventCreate", C.ferry_cu_event_create(c.ctx, &e)); err != nil {
		return 0, err
	}
	return Event(e), nil
}

// EventDestroy destroys e.
func (c Context) EventDestroy(e Event) error {
	return check("cuEventDestroy_v2", C.ferry_cu_event_destroy(c.ctx, e.c()))
}

// EventRecord records e on s.
func (c Context) EventRecord(e Event, s Stream) error {
	return check("cuEventRecord", C.ferry_cu_event_record(c.ctx, e.c(), s.c()))
}

// EventQuery returns nil when e has completed (or was never recorded), ErrNotReady otherwise.
func (c Context) EventQuery(e Event) error {
	r := C.ferry_cu_event_query(c.ctx, e.c())
	if r == C.FERRY_CU_NOT_READY {
		return ErrNotReady
	}
	return check("cuEventQuery", r)
}
