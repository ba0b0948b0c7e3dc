package monitor

import (
	"os"
	"strings"
	"sync"
	"sync/atomic"
	_ "unsafe" // for go:linkname

	"github.com/ferry-ml/ferry/engine"
)

// The metric log's clock. A logged value is stamped with ticks: the CPU's time-stamp counter where it
// is invariant (constant rate, running in every power state) and the kernel itself keeps time with it,
// else CLOCK_MONOTONIC nanoseconds. The counter costs a third of the clock read, which is most of what a
// log costs. Ticks become CLOCK_MONOTONIC nanoseconds when the logs are folded, by a linear map that a
// tickClock keeps calibrated against the clock.

var (
	tscOnce  sync.Once
	tscUsed  bool
	tscWhy   string
	procRoot = "/proc"
)

// UseTSC reports whether metric timestamps are taken from the time-stamp counter, and why. C callers
// of the metric log read the same decision (the C API publishes it), so both stamp alike.
func UseTSC() (bool, string) {
	tscOnce.Do(func() { tscUsed, tscWhy = tscTrusted() })
	return tscUsed, tscWhy
}

func tscTrusted() (bool, string) {
	if !tscAvailable {
		return false, "not an x86-64 CPU"
	}
	if v := os.Getenv("FERRY_METRIC_CLOCK"); v == "monotonic" {
		return false, "FERRY_METRIC_CLOCK=monotonic"
	}
	info, err := os.ReadFile(procRoot + "/cpuinfo")
	if err != nil {
		return false, "cannot read /proc/cpuinfo"
	}
	flags := ""
	for _, line := range strings.Split(string(info), "\n") {
		if strings.HasPrefix(line, "flags") {
			flags = " " + line[strings.IndexByte(line, ':')+1:] + " "
			break
		}
	}
	for _, f := range []string{"constant_tsc", "nonstop_tsc"} {
		if !strings.Contains(flags, " "+f+" ") {
			return false, "the CPU lacks " + f
		}
	}
	cs, err := os.ReadFile("/sys/devices/system/clocksource/clocksource0/current_clocksource")
	if err != nil || strings.TrimSpace(string(cs)) != "tsc" {
		return false, "the kernel does not keep time with the TSC"
	}
	return true, "invariant TSC, the kernel's clock source"
}

// ticks is the metric log's clock: the TSC when UseTSC, else CLOCK_MONOTONIC ns.
func ticks() uint64 {
	if tscUsed {
		return rdtsc()
	}
	return uint64(int64(engine.MonotonicNow()))
}

// tickClock maps ticks to CLOCK_MONOTONIC nanoseconds: ns = ns0 + (t - t0) * rate, with rate refit
// from the first point to a recent one. Without the TSC, ticks are nanoseconds and the map is the identity.
type tickClock struct {
	tsc    bool
	t0     uint64
	ns0    int64
	rate   atomic.Uint64 // float64 bits: ns per tick
	mu     sync.Mutex
	lastNs int64
}

func newTickClock() *tickClock {
	used, _ := UseTSC()
	c := &tickClock{tsc: used}
	if used {
		c.t0, c.ns0 = rdtsc(), int64(engine.MonotonicNow())
		c.lastNs = c.ns0
		c.rate.Store(f64bits(1)) // refined by calibrate
	}
	return c
}

// calibrate refits the rate; it needs 10 ms since the first point to be precise, and is cheap to call
// often (two clock reads).
func (c *tickClock) calibrate() {
	if !c.tsc {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ns := rdtsc(), int64(engine.MonotonicNow())
	if ns-c.ns0 < 10e6 || t <= c.t0 {
		if c.lastNs == c.ns0 { // no estimate yet: a first one from a short interval
			for ns-c.ns0 < 1e6 {
				t, ns = rdtsc(), int64(engine.MonotonicNow())
			}
		} else {
			return
		}
	}
	c.rate.Store(f64bits(float64(ns-c.ns0) / float64(t-c.t0)))
	c.lastNs = ns
}

// toNanos converts ticks to CLOCK_MONOTONIC nanoseconds.
func (c *tickClock) toNanos(t uint64) uint64 {
	if !c.tsc {
		return t
	}
	d := float64(int64(t-c.t0)) * f64frombits(c.rate.Load())
	return uint64(c.ns0 + int64(d))
}
