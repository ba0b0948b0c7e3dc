package engine

import "sync/atomic"

// Accounting counts the memory an engine owns: device bytes its pools hand out (allocated) and hold
// (reserved), the peak, allocation counts and failures, and page-locked host bytes. Pools report every
// change here; the engine republishes its snapshot on each change, so the memory check's engine figures
// are always exact. All methods are safe for concurrent use and never block.
type Accounting struct {
	allocated  atomic.Uint64
	reserved   atomic.Uint64
	peak       atomic.Uint64
	allocCount atomic.Uint64
	failures   atomic.Uint64
	pinned     atomic.Uint64
	onChange   func()
}

// AccountingFigures is a copy of the counters at one moment.
type AccountingFigures struct {
	Allocated, Reserved, Peak, AllocCount, Failures, Pinned uint64
}

// Figures returns the counters.
func (a *Accounting) Figures() AccountingFigures {
	return AccountingFigures{
		Allocated:  a.allocated.Load(),
		Reserved:   a.reserved.Load(),
		Peak:       a.peak.Load(),
		AllocCount: a.allocCount.Load(),
		Failures:   a.failures.Load(),
		Pinned:     a.pinned.Load(),
	}
}

func (a *Accounting) changed() {
	if a.onChange != nil {
		a.onChange()
	}
}

// Reserve records n bytes of device memory taken from the driver by a pool.
func (a *Accounting) Reserve(n uint64) { a.reserved.Add(n); a.changed() }

// Unreserve records n bytes returned to the driver (a trim).
func (a *Accounting) Unreserve(n uint64) { subtract(&a.reserved, n); a.changed() }

// Allocate records n bytes handed out by a pool, and raises the peak.
func (a *Accounting) Allocate(n uint64) {
	v := a.allocated.Add(n)
	a.allocCount.Add(1)
	for {
		p := a.peak.Load()
		if v <= p || a.peak.CompareAndSwap(p, v) {
			break
		}
	}
	a.changed()
}

// Free records n bytes given back to a pool.
func (a *Accounting) Free(n uint64) { subtract(&a.allocated, n); a.changed() }

// Failure records an allocation that could not be served.
func (a *Accounting) Failure() { a.failures.Add(1); a.changed() }

// Pin records n bytes of page-locked host memory taken.
func (a *Accounting) Pin(n uint64) { a.pinned.Add(n); a.changed() }

// Unpin records n bytes of page-locked host memory released.
func (a *Accounting) Unpin(n uint64) { subtract(&a.pinned, n); a.changed() }

// subtract lowers c by n, clamping at zero: an unbalanced release is a bug in the caller, but it must not
// wrap the counter around to 2^64.
func subtract(c *atomic.Uint64, n uint64) {
	for {
		v := c.Load()
		next := uint64(0)
		if v > n {
			next = v - n
		}
		if c.CompareAndSwap(v, next) {
			return
		}
	}
}
