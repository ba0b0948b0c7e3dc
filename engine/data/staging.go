package data

import (
	"fmt"
	"strings"
	"unsafe"

	"github.com/ferry-ml/ferry/engine"

	"golang.org/x/sys/unix"
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
	return 0, fmt.Errorf("%w: unknown staging %q (auto, gather, dma or mapped)", engine.ErrInvalidArgument, s)
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

// chooseStaging picks how samples cross: see Staging. It registers the source's memory when a
// strategy that reads it in place is picked, and records why it picked what it did.
func (it *Iterator) chooseStaging() {
	e, want := it.e, it.opts.Staging
	it.staging = StagingGather
	if !e.GPU() {
		it.hostXform = true
		it.stagingWhy = "the CPU engine gathers on the host"
		return
	}
	needKernels := want == StagingMapped || want == StagingAuto
	for _, p := range it.plans {
		if p.t != nil {
			needKernels = true
		}
	}
	var kernErr error
	if needKernels {
		it.kern, kernErr = kernelsOf(e)
	}
	it.hostXform = it.kern == nil
	for _, p := range it.plans {
		if p.t != nil && p.tr.decodes {
			// Encoded images are read by the gather workers; their crops run as kernels when these load.
			if it.kern == nil {
				it.hostXform = true
				it.stagingWhy = fmt.Sprintf("%v runs on the host: kernels unavailable: %v", p.t, kernErr)
				return
			}
			it.imageDevice = true
			it.images = imageDecodersOf(e)
			it.stagingWhy = "images are decoded into device arenas: " + it.images.describe()
			return
		}
	}
	why := func(s string) {
		it.stagingWhy = s
		if want != StagingAuto && want != StagingGather {
			e.Logger().Info().Str("wanted", want.String()).Str("staging", "gather").Msg(s)
		}
	}
	if want == StagingGather {
		it.stagingWhy = "asked for"
		return
	}
	backed, ok := it.src.(MemoryBacked)
	if ok && remoteSource(it.src) {
		why("the source reads an object store in ranges: its bytes are fetched as batches are assigned, then gathered")
		return
	}
	if !ok {
		why("the source's samples are not in memory the driver can register (not memory-backed)")
		return
	}
	if want == StagingMapped || want == StagingAuto {
		if it.kern == nil {
			why(fmt.Sprintf("kernels unavailable: %v", kernErr))
			if want == StagingAuto {
				return
			}
			want = StagingDMA
		}
	}
	if want == StagingDMA {
		for _, p := range it.plans {
			if p.ragged {
				why("a variable-length field cannot cross by fixed-size DMA")
				return
			}
			if p.t != nil && it.hostXform {
				why("host transforms need the samples in host staging")
				return
			}
		}
	}
	for _, p := range it.plans {
		if p.ragged && p.t == nil {
			why(fmt.Sprintf("variable-length field %q has no PadSequences transform", p.in.Name))
			return
		}
	}
	// Kernels read mapped memory in 16-byte words; large samples that are not 16-byte aligned (a field at
	// an odd offset of a record) would cross PCIe in small reads, slower than a host gather. Small fields
	// (labels) cost little either way.
	if want == StagingAuto {
		for f, p := range it.plans {
			if p.tr.anyAlignment || p.ragged || p.in.Bytes() < 256 {
				continue // the token kernels read tokens one by one, aligned or not
			}
			base := uintptr(unsafe.Pointer(&backed.Region(f)[0]))
			for _, i := range []int{0, 1, it.src.Len() - 1} {
				if i < it.src.Len() && (base+uintptr(backed.Offset(f, i)))%16 != 0 {
					why(fmt.Sprintf("field %q's samples are not 16-byte aligned in the source's memory", p.in.Name))
					return
				}
			}
		}
	}
	// Register each distinct region, within the budget.
	budget := it.opts.PinnedBudget
	if budget == 0 {
		budget = defaultPinnedBudget()
	}
	var total int64
	regions := make([][]byte, len(it.fields))
	for f := range it.fields {
		regions[f] = backed.Region(f)
		if len(regions[f]) == 0 {
			why(fmt.Sprintf("field %q does not lie in one region of the source's memory", it.fields[f].Name))
			return
		}
		dup := false
		for g := 0; g < f; g++ {
			if unsafe.Pointer(&regions[g][0]) == unsafe.Pointer(&regions[f][0]) && len(regions[g]) == len(regions[f]) {
				dup = true
			}
		}
		if !dup {
			total += int64(len(regions[f]))
		}
	}
	if budget < 0 || total > budget {
		why(fmt.Sprintf("the source's %d bytes exceed the pinned budget of %d bytes", total, max(budget, 0)))
		return
	}
	rs, err := registrationsOf(e)
	var regs []*registration
	if err == nil {
		regs, err = rs.register(regions)
	}
	if err != nil {
		why(fmt.Sprintf("registering the source's memory failed: %v", err))
		return
	}
	it.backed, it.registrations, it.regions, it.regionMem = backed, rs, regs, regions
	it.staging = want
	if want == StagingAuto {
		it.staging = StagingMapped
	}
	it.stagingWhy = fmt.Sprintf("%d bytes of source memory registered", total)
	e.Logger().Debug().Str("staging", it.staging.String()).Int64("registered", total).Msg("iterator staging")
}
