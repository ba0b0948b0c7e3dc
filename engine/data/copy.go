package data

import (
	"unsafe"
)

// copyToDevice issues a filled slot's work on the iterator's stream: the batch's copies (or, with
// StagingMapped, the kernels that read the source's memory in place), then the layout kernels, then the
// slot's copied event. It runs on the copier's locked thread with the context current.
func (it *Iterator) copyToDevice(s *slot) error {
	ctx := it.e.Context()
	if s.mustWaitRels {
		// The consumer's stream may still read this slot's device buffers: order the copy after it.
		if err := ctx.StreamWaitEvent(it.stream, s.released); err != nil {
			return err
		}
		s.mustWaitRels = false
	}
	rows := len(s.indices)
	if rows == 0 {
		return ctx.EventRecord(s.copied, it.stream)
	}
	if it.imageDevice {
		// First: replacing a sample that fails here rewrites its row of the other fields' staging.
		if err := it.decodeImages(s); err != nil {
			return err
		}
	}
	for f := range it.plans {
		p := &it.plans[f]
		fb := p.in.Bytes()
		dst := s.devIn[f] // where a kernel-transformed field lands before its kernel
		if p.t == nil {
			dst = s.dev[p.outs[0]]
		}
		switch {
		case p.t != nil && p.tr.decodes && it.imageDevice:
			if !s.imgs[f].direct {
				if err := it.launchCrop(s, f); err != nil {
					return err
				}
			}
			continue
		case p.t != nil && it.hostXform:
			for _, g := range p.outs {
				n := it.outs[g].DType.Size()
				for _, d := range it.batchShape(s, g) {
					n *= d
				}
				if err := ctx.MemcpyHtoDAsync(s.dev[g].Ptr(), s.hostOut[g].Pointer(), n, it.stream); err != nil {
					return err
				}
			}
			continue
		case it.staging == StagingGather:
			if err := ctx.MemcpyHtoDAsync(dst.Ptr(), s.host[f].Pointer(), rows*fb, it.stream); err != nil {
				return err
			}
		case it.staging == StagingDMA:
			offs := unsafe.Slice((*uint64)(unsafe.Pointer(&s.meta.Bytes()[it.metaLayout.offsetsOf(f)])), rows)
			base := uintptr(unsafe.Pointer(&it.regionMem[f][0]))
			if err := ctx.MemcpyHtoDGather(dst.Ptr(), base, offs, fb, it.stream); err != nil {
				return err
			}
		}
		if it.staging == StagingMapped && p.t == nil {
			if err := it.launchGather(s, f); err != nil {
				return err
			}
		}
		if p.t != nil {
			if err := it.launchTransform(s, f); err != nil {
				return err
			}
		}
	}
	return ctx.EventRecord(s.copied, it.stream)
}

// metaAddr is the device address of byte off of the slot's metadata: page-locked host memory, which
// kernels read in place under unified addressing.
func (s *slot) metaAddr(off int) uint64 { return uint64(uintptr(s.meta.Pointer())) + uint64(off) }

// source is where field f's samples are for the kernels: the registered source memory and the offsets
// in the device metadata (StagingMapped), or the field's contiguous device staging.
func (it *Iterator) source(s *slot, f int) (src, offsets uint64, aligned bool) {
	if it.staging == StagingMapped {
		base := uintptr(unsafe.Pointer(&it.regionMem[f][0]))
		return it.regions[f].deviceAddr(base), s.metaAddr(it.metaLayout.offsetsOf(f)), s.aligned[f]
	}
	return uint64(s.devIn[f].Ptr()), 0, it.plans[f].in.Bytes()%16 == 0
}

// launchGather copies field f's samples from the registered source memory into the batch.
func (it *Iterator) launchGather(s *slot, f int) error {
	src, offsets, aligned := it.source(s, f)
	fb := it.plans[f].in.Bytes()
	gp := gatherParams{src: src, offsets: offsets, dst: uint64(s.dev[it.plans[f].outs[0]].Ptr()), bytes: uint64(fb),
		batch: uint32(len(s.indices))}
	if aligned && fb%16 == 0 {
		gp.vec = 1
	}
	s.params = gp.pack(s.params)
	perSample := uint32(min(64, max(1, (fb/16+kernelBlock-1)/kernelBlock)))
	return it.kern.launchPerSample(it.e, gatherKernel, perSample, len(s.indices), it.stream, s.params)
}

// launchTransform runs field f's layout kernel over the slot's batch.
func (it *Iterator) launchTransform(s *slot, f int) error {
	p := &it.plans[f]
	src, offsets, aligned := it.source(s, f)
	ml := it.metaLayout
	var flips, lengths uint64
	if s.meta != nil {
		if p.hasFlip() {
			flips = s.metaAddr(ml.flips)
		}
		lengths = s.metaAddr(ml.lengths)
		if offsets == 0 && p.ragged {
			offsets = s.metaAddr(ml.offsetsOf(f))
		}
	}
	dst := make([]uint64, len(p.outs))
	for i, g := range p.outs {
		dst[i] = uint64(s.dev[g].Ptr())
	}
	var err error
	s.params, err = p.op.launch(it.kern, it.e, launchArgs{
		batch: len(s.indices), src: src, offsets: offsets, aligned: aligned, flips: flips, lengths: lengths,
		width: s.width, dst: dst, stream: it.stream,
	}, s.params)
	return err
}
