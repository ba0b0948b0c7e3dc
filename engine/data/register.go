package data

import (
	"cmp"
	"slices"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/cuda"
)

// registration is a range of host memory registered with the driver (page-locked and mapped).
// Iterators over the same source share it; the last to close unregisters it.
type registration struct {
	base uintptr // the first byte registered
	size int
	dev  cuda.DevicePtr // the device address of base
	refs int
}

// deviceAddr is the device address of host address p inside the registration.
func (r *registration) deviceAddr(p uintptr) uint64 { return uint64(r.dev) + uint64(p-r.base) }

// registrations is an engine's registered host memory, kept on the engine (engine.Attach), so that
// iterators of one engine over the same memory share a registration.
type registrations struct {
	ctx  cuda.Context
	mu   sync.Mutex
	list []*registration
}

type registrationsKey struct{}

// registrationsOf returns the engine's registrations (an ErrClosed error once the engine is closing).
func registrationsOf(e *engine.Engine) (*registrations, error) {
	v, err := e.Attach(registrationsKey{}, func() (any, error) { return &registrations{ctx: e.Context()}, nil })
	if err != nil {
		return nil, err
	}
	return v.(*registrations), nil
}

// pageRange is the page-aligned range [base, end) that holds mem.
func pageRange(mem []byte) (base, end uintptr) {
	page := uintptr(unix.Getpagesize())
	start := uintptr(unsafe.Pointer(&mem[0]))
	return start &^ (page - 1), (start + uintptr(len(mem)) + page - 1) &^ (page - 1)
}

// register registers the memory of every region for the device and returns, per region, the
// registration that covers it. The driver pins whole pages, but a registration covers exactly the bytes
// registered: memory next to the source in its first and last page (another allocation of the caller's)
// stays ordinary pageable memory, a valid destination for the caller's own copies. (Rounding the range
// out to whole pages breaks those: a copy into a buffer that straddles a registration's end fails with
// CUDA_ERROR_INVALID_VALUE.) Regions that share a page (fields of one record file, small caller buffers
// side by side) are registered as one range, since the driver refuses to register a page twice. A range
// is registered writable when it can be, and read-only otherwise (a file mapped read-only).
func (rs *registrations) register(regions [][]byte) ([]*registration, error) {
	type span struct{ start, end, pageStart, pageEnd uintptr }
	spans := make([]span, len(regions))
	for i, m := range regions {
		start := uintptr(unsafe.Pointer(&m[0]))
		spans[i] = span{start: start, end: start + uintptr(len(m))}
		spans[i].pageStart, spans[i].pageEnd = pageRange(m)
	}
	merged := append([]span(nil), spans...)
	slices.SortFunc(merged, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	out := merged[:0]
	for _, sp := range merged {
		if n := len(out); n > 0 && sp.pageStart < out[n-1].pageEnd {
			out[n-1].end = max(out[n-1].end, sp.end)
			out[n-1].pageEnd = max(out[n-1].pageEnd, sp.pageEnd)
			continue
		}
		out = append(out, sp)
	}
	var regs []*registration
	fail := func(err error) ([]*registration, error) {
		for _, r := range regs {
			_ = rs.unregister(r)
		}
		return nil, err
	}
	for _, sp := range out {
		r, err := rs.registerRange(sp.start, sp.end)
		if err != nil {
			return fail(err)
		}
		regs = append(regs, r)
	}
	byRegion := make([]*registration, len(regions))
	for i, sp := range spans {
		for _, r := range regs {
			if r.base <= sp.start && sp.end <= r.base+uintptr(r.size) {
				byRegion[i] = r
			}
		}
	}
	return byRegion, nil
}

// registerRange registers [base, end), or takes another reference to a registration that covers it.
func (rs *registrations) registerRange(base, end uintptr) (*registration, error) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for _, r := range rs.list {
		if r.base <= base && end <= r.base+uintptr(r.size) {
			r.refs++
			return r, nil
		}
	}
	size := int(end - base)
	flags := cuda.HostRegisterPortable | cuda.HostRegisterDeviceMap
	if err := rs.ctx.MemHostRegister(base, size, flags); err != nil {
		// Read-only memory (a file mapped PROT_READ) registers only read-only.
		if err2 := rs.ctx.MemHostRegister(base, size, flags|cuda.HostRegisterReadOnly); err2 != nil {
			return nil, err
		}
	}
	dev, err := rs.ctx.MemHostDevicePointer(base)
	if err != nil {
		_ = rs.ctx.MemHostUnregister(base)
		return nil, err
	}
	r := &registration{base: base, size: size, dev: dev, refs: 1}
	rs.list = append(rs.list, r)
	return r, nil
}

// unregister drops a reference, unregistering the memory with the last one.
func (rs *registrations) unregister(r *registration) error {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	r.refs--
	if r.refs > 0 {
		return nil
	}
	for i, x := range rs.list {
		if x == r {
			rs.list = append(rs.list[:i], rs.list[i+1:]...)
			break
		}
	}
	return rs.ctx.MemHostUnregister(r.base)
}
