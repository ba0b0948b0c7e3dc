package engine

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ferry-ml/ferry/engine/internal/cuda"
)

// Staging is how an iterator moves samples from host memory to the device.
type Staging int

// Staging strategies.
const (
	// StagingAuto picks the fastest strategy that applies: StagingMapped when the source is memory-backed,
	// its memory fits the pinned budget and registers, and the kernels load; else StagingGather.
	StagingAuto Staging = iota
	// StagingGather: worker threads copy each sample into page-locked staging, then one DMA per field.
	// It works for every source.
	StagingGather
	// StagingDMA: the source's memory is registered with the driver, and each sample crosses by its own
	// DMA, straight from the source's memory: no host copy and no kernel.
	StagingDMA
	// StagingMapped: the source's memory is registered and mapped into the device's address space, and a
	// kernel reads the samples directly, fused with the layout transforms: no host copy at all.
	StagingMapped
)

func (s Staging) String() string {
	switch s {
	case StagingAuto:
		return "auto"
	case StagingGather:
		return "gather"
	case StagingDMA:
		return "dma"
	case StagingMapped:
		return "mapped"
	}
	return fmt.Sprintf("Staging(%d)", int(s))
}

// ParseStaging accepts "auto", "gather", "dma" and "mapped".
func ParseStaging(s string) (Staging, error) {
	for v := StagingAuto; v <= StagingMapped; v++ {
		if strings.EqualFold(strings.TrimSpace(s), v.String()) {
			return v, nil
		}
	}
	return 0, fmt.Errorf("%w: unknown staging %q (auto, gather, dma or mapped)", ErrInvalidArgument, s)
}

// defaultPinnedBudget is the most source memory an iterator registers by default: a quarter of the
// machine's physical memory.
func defaultPinnedBudget() int64 {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0
	}
	return int64(si.Totalram) * int64(si.Unit) / 4
}

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

type registrations struct {
	mu   sync.Mutex
	list []*registration
}

// pageRange is the page-aligned range [base, end) that holds mem.
func pageRange(mem []byte) (base, end uintptr) {
	page := uintptr(unix.Getpagesize())
	start := uintptr(unsafe.Pointer(&mem[0]))
	return start &^ (page - 1), (start + uintptr(len(mem)) + page - 1) &^ (page - 1)
}

// registerRegions registers the memory of every region for the device and returns, per region, the
// registration that covers it. The driver pins whole pages, but a registration covers exactly the bytes
// registered: memory next to the source in its first and last page (another allocation of the caller's)
// stays ordinary pageable memory, a valid destination for the caller's own copies. (Rounding the range
// out to whole pages breaks those: a copy into a buffer that straddles a registration's end fails with
// CUDA_ERROR_INVALID_VALUE.) Regions that share a page (fields of one record file, small caller buffers
// side by side) are registered as one range, since the driver refuses to register a page twice. A range
// is registered writable when it can be, and read-only otherwise (a file mapped read-only).
func (e *Engine) registerRegions(regions [][]byte) ([]*registration, error) {
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
			_ = e.unregister(r)
		}
		return nil, err
	}
	for _, sp := range out {
		r, err := e.registerRange(sp.start, sp.end)
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
func (e *Engine) registerRange(base, end uintptr) (*registration, error) {
	e.regs.mu.Lock()
	defer e.regs.mu.Unlock()
	for _, r := range e.regs.list {
		if r.base <= base && end <= r.base+uintptr(r.size) {
			r.refs++
			return r, nil
		}
	}
	size := int(end - base)
	flags := cuda.HostRegisterPortable | cuda.HostRegisterDeviceMap
	if err := e.ctx.MemHostRegister(base, size, flags); err != nil {
		// Read-only memory (a file mapped PROT_READ) registers only read-only.
		if err2 := e.ctx.MemHostRegister(base, size, flags|cuda.HostRegisterReadOnly); err2 != nil {
			return nil, err
		}
	}
	dev, err := e.ctx.MemHostDevicePointer(base)
	if err != nil {
		_ = e.ctx.MemHostUnregister(base)
		return nil, err
	}
	r := &registration{base: base, size: size, dev: dev, refs: 1}
	e.regs.list = append(e.regs.list, r)
	return r, nil
}

// unregister drops a reference, unregistering the memory with the last one.
func (e *Engine) unregister(r *registration) error {
	e.regs.mu.Lock()
	defer e.regs.mu.Unlock()
	r.refs--
	if r.refs > 0 {
		return nil
	}
	for i, x := range e.regs.list {
		if x == r {
			e.regs.list = append(e.regs.list[:i], e.regs.list[i+1:]...)
			break
		}
	}
	return e.ctx.MemHostUnregister(r.base)
}
