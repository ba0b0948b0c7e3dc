package engine

import "golang.org/x/sys/unix"

// MonotonicNow returns CLOCK_MONOTONIC in nanoseconds: the clock of every timestamp ferry reports, the
// same clock C callers read with clock_gettime.
func MonotonicNow() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return uint64(ts.Nano())
}
