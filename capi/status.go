package main

// #include "exports.h"
import "C"

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/ferry-ml/ferry/engine"
)

// statusOf maps an engine error to its status code.
func statusOf(err error) C.ferry_status {
	var cudaErr *engine.CUDAError
	switch {
	case err == nil:
		return C.FERRY_OK
	case errors.Is(err, errEndOfEpoch):
		return C.FERRY_END_OF_EPOCH
	case errors.Is(err, errInvalidHandle):
		return C.FERRY_ERR_INVALID_HANDLE
	case errors.Is(err, engine.ErrInvalidArgument):
		return C.FERRY_ERR_INVALID_ARGUMENT
	case errors.Is(err, engine.ErrNoDevice):
		return C.FERRY_ERR_NO_DEVICE
	case errors.Is(err, engine.ErrOutOfMemory):
		return C.FERRY_ERR_OUT_OF_MEMORY
	case errors.Is(err, engine.ErrClosed):
		return C.FERRY_ERR_CLOSED
	case errors.Is(err, engine.ErrNVML):
		return C.FERRY_ERR_NVML
	case errors.Is(err, engine.ErrUnsupported):
		return C.FERRY_ERR_UNSUPPORTED
	case errors.Is(err, engine.ErrIO):
		return C.FERRY_ERR_IO
	case errors.Is(err, engine.ErrFormat):
		return C.FERRY_ERR_FORMAT
	case errors.Is(err, engine.ErrTimeout):
		return C.FERRY_ERR_TIMEOUT
	case errors.Is(err, engine.ErrLimit):
		return C.FERRY_ERR_LIMIT
	case errors.As(err, &cudaErr):
		return C.FERRY_ERR_CUDA
	}
	return C.FERRY_ERR_INTERNAL
}

// setError records msg as the calling thread's last error. An export runs on its caller's OS thread for
// the whole call, so the C thread-local is the caller's.
func setError(msg string) {
	C.ferry_capi_set_error((*C.char)(unsafe.Pointer(unsafe.StringData(msg))), C.size_t(len(msg)))
}

// call runs one export: it recovers any panic, maps the error to a status and records the message. Every
// Go export goes through it, so no panic crosses the C boundary.
func call(fn string, f func() error) (status C.ferry_status) {
	defer func() {
		if r := recover(); r != nil {
			setError(fmt.Sprintf("%s: internal error (please report): %v", fn, r))
			status = C.FERRY_ERR_INTERNAL
		}
	}()
	err := f()
	if err == nil {
		return C.FERRY_OK
	}
	setError(fn + ": " + err.Error())
	return statusOf(err)
}

// errNull is the error for a NULL pointer argument.
func errNull(name string) error {
	return fmt.Errorf("%w: %s is NULL", engine.ErrInvalidArgument, name)
}

// checkSize validates the size field of a size-prefixed struct.
func checkSize(name string, size C.uint32_t, v1 uint32) error {
	if uint32(size) < v1 {
		return fmt.Errorf("%w: %s.size is %d, smaller than the %d bytes of the first version; set it to sizeof(%s)",
			engine.ErrInvalidArgument, name, uint32(size), v1, name)
	}
	return nil
}

// setString copies s into a fixed C char array, truncating, always NUL-terminated.
func setString(dst []C.char, s string) {
	n := min(len(s), len(dst)-1)
	for i := 0; i < n; i++ {
		dst[i] = C.char(s[i])
	}
	dst[n] = 0
}
