package cuda

/*
#include <stdlib.h>
#include "nvjpeg_shim.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"unsafe"

	"github.com/ferry-ml/ferry/engine/internal/cenv"
)

// DefaultNVJPEGLibraries are the nvJPEG libraries tried, in order, unless FERRY_NVJPEG_LIBRARY names one
// (CUDA 13, 12 and 11; from Python also the nvidia-nvjpeg wheel's copy, which the binding names).
var DefaultNVJPEGLibraries = []string{"libnvjpeg.so.13", "libnvjpeg.so.12", "libnvjpeg.so.11"}

// ErrNVJPEGNotLoaded is wrapped by every error that comes from nvJPEG being unavailable.
var ErrNVJPEGNotLoaded = errors.New("nvJPEG not available")

type nvjpegLoadError struct{ msg string }

func (e *nvjpegLoadError) Error() string { return e.msg }
func (e *nvjpegLoadError) Unwrap() error { return ErrNVJPEGNotLoaded }

var (
	nvjpegOnce sync.Once
	nvjpegErr  error
	nvjpegLib  string
)

// LoadNVJPEG loads nvJPEG once per process and returns the library's name; later calls return the
// first result.
func LoadNVJPEG() (string, error) {
	nvjpegOnce.Do(func() {
		cenv.Sync() // FERRY_NVJPEG_LIBRARY, when a host program (the Python binding) set it after the load
		paths := DefaultNVJPEGLibraries
		if p := os.Getenv("FERRY_NVJPEG_LIBRARY"); p != "" {
			paths = []string{p}
		}
		var why []string
		for _, path := range paths {
			cpath := C.CString(path)
			var buf [512]C.char
			r := C.ferry_nvjpeg_load(cpath, &buf[0], C.size_t(len(buf)))
			C.free(unsafe.Pointer(cpath))
			if r == 0 {
				nvjpegLib = path
				return
			}
			why = append(why, C.GoString(&buf[0]))
		}
		nvjpegErr = &nvjpegLoadError{msg: strings.Join(why, "; ") + " (install CUDA's nvJPEG, e.g. the nvidia-nvjpeg wheel, or set FERRY_NVJPEG_LIBRARY)"}
	})
	return nvjpegLib, nvjpegErr
}

// nvjpegStatuses are nvjpegStatus_t's names.
var nvjpegStatuses = []string{"NVJPEG_STATUS_SUCCESS", "NVJPEG_STATUS_NOT_INITIALIZED", "NVJPEG_STATUS_INVALID_PARAMETER",
	"NVJPEG_STATUS_BAD_JPEG", "NVJPEG_STATUS_JPEG_NOT_SUPPORTED", "NVJPEG_STATUS_ALLOCATOR_FAILURE",
	"NVJPEG_STATUS_EXECUTION_FAILED", "NVJPEG_STATUS_ARCH_MISMATCH", "NVJPEG_STATUS_INTERNAL_ERROR",
	"NVJPEG_STATUS_IMPLEMENTATION_NOT_SUPPORTED", "NVJPEG_STATUS_INCOMPLETE_BITSTREAM"}

// NVJPEGError is a failed nvJPEG call.
type NVJPEGError struct {
	Op     string
	Status int
}

func (e *NVJPEGError) Error() string {
	name := fmt.Sprintf("status %d", e.Status)
	if e.Status >= 0 && e.Status < len(nvjpegStatuses) {
		name = nvjpegStatuses[e.Status]
	}
	return fmt.Sprintf("%s: %s", e.Op, name)
}

func nvjpegCheck(op string, st C.int) error {
	if st == 0 {
		return nil
	}
	return &NVJPEGError{Op: op, Status: int(st)}
}

// current runs f with c current on a locked OS thread: nvJPEG works in the calling thread's context.
func (c Context) current(f func() C.int) (C.int, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := c.Push(); err != nil {
		return 0, err
	}
	r := f()
	return r, c.Pop()
}

// NVJPEG is a decoder handle of one backend. It is safe for concurrent use; each concurrent decode needs
// its own NVJPEGState.
type NVJPEG struct {
	ctx      Context
	h        unsafe.Pointer
	Hardware bool // the hardware JPEG decoder (A100, H100 and later)
}

// NewNVJPEG creates a handle in ctx: the hardware backend when hardware is set (an error where the GPU has
// none), else the default one.
func NewNVJPEG(ctx Context, hardware bool) (*NVJPEG, error) {
	if _, err := LoadNVJPEG(); err != nil {
		return nil, err
	}
	backend := C.int(C.FERRY_NVJPEG_BACKEND_DEFAULT)
	if hardware {
		backend = C.FERRY_NVJPEG_BACKEND_HARDWARE
	}
	var h unsafe.Pointer
	st, err := ctx.current(func() C.int { return C.ferry_nvjpeg_create(backend, &h) })
	if err == nil {
		err = nvjpegCheck("nvjpegCreateEx", st)
	}
	if err != nil {
		return nil, err
	}
	return &NVJPEG{ctx: ctx, h: h, Hardware: hardware}, nil
}

// Close destroys the handle; its states must be closed first.
func (n *NVJPEG) Close() error {
	if n == nil || n.h == nil {
		return nil
	}
	h := n.h
	n.h = nil
	st, err := n.ctx.current(func() C.int { return C.ferry_nvjpeg_destroy(h) })
	if err != nil {
		return err
	}
	return nvjpegCheck("nvjpegDestroy", st)
}

// NVJPEGState is the scratch of one decode at a time (nvjpegJpegState_t).
type NVJPEGState struct {
	n *NVJPEG
	s unsafe.Pointer
}

// NewState creates a decode state of the handle.
func (n *NVJPEG) NewState() (*NVJPEGState, error) {
	var s unsafe.Pointer
	st, err := n.ctx.current(func() C.int { return C.ferry_nvjpeg_state_create(n.h, &s) })
	if err == nil {
		err = nvjpegCheck("nvjpegJpegStateCreate", st)
	}
	if err != nil {
		return nil, err
	}
	return &NVJPEGState{n: n, s: s}, nil
}

// Close destroys the state; no decode with it may be in flight on the device.
func (s *NVJPEGState) Close() error {
	if s == nil || s.s == nil {
		return nil
	}
	p := s.s
	s.s = nil
	st, err := s.n.ctx.current(func() C.int { return C.ferry_nvjpeg_state_destroy(p) })
	if err != nil {
		return err
	}
	return nvjpegCheck("nvjpegJpegStateDestroy", st)
}

// NVJPEGOutputYUV is the output format of planar Y, Cb and Cr, the chroma planes at their own size.
const NVJPEGOutputYUV = int(C.FERRY_NVJPEG_OUTPUT_YUV)

// DecodeBatched decodes the JPEGs data[i] (host memory, read during the call) in format (NVJPEGOutput*) to
// the device addresses planes[i][c], rows pitches[i][c] bytes apart, on stream: nvjpegDecodeBatched. The
// device writes are ordered on stream; the host does not wait for them.
func (s *NVJPEGState) DecodeBatched(data [][]byte, planes [][3]DevicePtr, pitches [][3]int, format int, stream Stream) error {
	n := len(data)
	if n == 0 {
		return nil
	}
	if len(planes) != n || len(pitches) != n {
		return errors.New("nvJPEG batch: data, destinations and pitches differ in length")
	}
	// The pointer arrays live in C memory; the images stay in Go memory, pinned for the call.
	ptrs := (*[1 << 30]*C.uchar)(C.malloc(C.size_t(n) * C.size_t(unsafe.Sizeof(uintptr(0)))))[:n:n]
	defer C.free(unsafe.Pointer(&ptrs[0]))
	lens := (*[1 << 30]C.size_t)(C.malloc(C.size_t(n) * C.size_t(unsafe.Sizeof(C.size_t(0)))))[:n:n]
	defer C.free(unsafe.Pointer(&lens[0]))
	dsts := (*[1 << 30]C.uint64_t)(C.malloc(C.size_t(3*n) * 8))[: 3*n : 3*n]
	defer C.free(unsafe.Pointer(&dsts[0]))
	steps := (*[1 << 30]C.size_t)(C.malloc(C.size_t(3*n) * C.size_t(unsafe.Sizeof(C.size_t(0)))))[: 3*n : 3*n]
	defer C.free(unsafe.Pointer(&steps[0]))
	var pin runtime.Pinner
	defer pin.Unpin()
	for i, d := range data {
		if len(d) == 0 {
			return fmt.Errorf("nvJPEG batch: image %d is empty", i)
		}
		pin.Pin(&d[0])
		ptrs[i] = (*C.uchar)(unsafe.Pointer(&d[0]))
		lens[i] = C.size_t(len(d))
		for c := range 3 {
			dsts[3*i+c] = C.uint64_t(planes[i][c])
			steps[3*i+c] = C.size_t(pitches[i][c])
		}
	}
	st, err := s.n.ctx.current(func() C.int {
		return C.ferry_nvjpeg_decode_batched(s.n.h, s.s, C.int(n), &ptrs[0], &lens[0], &dsts[0], &steps[0], C.int(format),
			C.uintptr_t(stream))
	})
	if err != nil {
		return err
	}
	return nvjpegCheck("nvjpegDecodeBatched", st)
}
