package engine

import (
	"errors"

	"github.com/ferry-ml/ferry/engine/internal/cuda"
)

// Sentinel errors. Errors returned by the engine wrap one of these (test with errors.Is), with a message
// that names the problem.
var (
	// ErrInvalidArgument: an argument is out of range or malformed.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrNoDevice: the CUDA driver is missing, no GPU is present, or the device index is out of range.
	ErrNoDevice = errors.New("no CUDA device")
	// ErrNVML: an NVML call failed.
	ErrNVML = errors.New("NVML error")
	// ErrClosed: the engine (or another object) was closed.
	ErrClosed = errors.New("closed")
	// ErrOutOfMemory: host or device memory could not be allocated.
	ErrOutOfMemory = errors.New("out of memory")
	// ErrUnsupported: the operation is not supported here.
	ErrUnsupported = errors.New("unsupported")
	// ErrIO: a file or operating-system call failed.
	ErrIO = errors.New("I/O error")
	// ErrFormat: data is malformed.
	ErrFormat = errors.New("malformed data")
	// ErrTimeout: a bounded wait ran out.
	ErrTimeout = errors.New("timed out")
	// ErrLimit: a fixed limit was reached.
	ErrLimit = errors.New("limit reached")
)

// CUDAError is a failed CUDA driver call; it carries the driver's error name and description.
type CUDAError = cuda.Error
