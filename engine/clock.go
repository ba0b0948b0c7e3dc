package engine

import (
	_ "unsafe" // for go:linkname
)

// nanotime is the Go runtime's monotonic clock. On Linux it is clock_gettime(CLOCK_MONOTONIC) through the
// vDSO: exactly the clock C callers read, without a system call.
//
//go:linkname nanotime runtime.nanotime
func nanotime() int64

// MonotonicNow returns CLOCK_MONOTONIC in nanoseconds: the clock of every timestamp ferry reports, the
// same clock C callers read with clock_gettime.
func MonotonicNow() uint64 {
	return uint64(nanotime())
}
