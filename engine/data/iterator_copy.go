package data

import (
	"fmt"
	"unsafe"

	"github.com/ferry-ml/ferry/engine"
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
	offOff, _, _, _ := it.metaLayout()
	b := it.opts.BatchSize
	for f := range it.plans {
		p := &it.plans[f]
		fb := p.in.Bytes()
		dst := s.devIn[f] // where a kernel-transformed field lands before its kernel
		if p.t == nil {
			dst = s.dev[p.outs[0]]
		}
		switch {
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
			offs := unsafe.Slice((*uint64)(unsafe.Pointer(&s.meta.Bytes()[offOff+f*b*8])), rows)
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
		offOff, _, _, _ := it.metaLayout()
		base := uintptr(unsafe.Pointer(&it.regionMem[f][0]))
		return it.regions[f].deviceAddr(base), s.metaAddr(offOff + f*it.opts.BatchSize*8), s.aligned[f]
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
	return it.kern.launchPerSample(it.e, "ferry_gather", perSample, len(s.indices), it.stream, s.params)
}

// launchTransform runs field f's layout kernel over the slot's batch.
func (it *Iterator) launchTransform(s *slot, f int) error {
	p := &it.plans[f]
	src, offsets, aligned := it.source(s, f)
	_, flipOff, lenOff, _ := it.metaLayout()
	var flips, lengths uint64
	if s.meta != nil {
		if p.hasFlip() {
			flips = s.metaAddr(flipOff)
		}
		lengths = s.metaAddr(lenOff)
		if offsets == 0 && p.ragged {
			offOff, _, _, _ := it.metaLayout()
			offsets = s.metaAddr(offOff + f*it.opts.BatchSize*8)
		}
	}
	dst := make([]uint64, len(p.outs))
	for i, g := range p.outs {
		dst[i] = uint64(s.dev[g].Ptr())
	}
	var err error
	s.params, err = p.launch(it.e, it.kern, launchArgs{
		batch: len(s.indices), src: src, offsets: offsets, aligned: aligned, flips: flips, lengths: lengths,
		width: s.width, dst: dst, stream: it.stream,
	}, s.params)
	return err
}

// launchArgs are a layout kernel's inputs beyond its plan.
type launchArgs struct {
	batch          int
	src, offsets   uint64 // offsets: 0 for samples contiguous at src
	aligned        bool   // every sample starts 16-byte aligned
	flips, lengths uint64 // device addresses of the flips (uint8) and lengths (uint32), or 0
	width          int    // PadSequences: the padded length
	dst            []uint64
	stream         Stream
}

// launch runs the plan's kernel; buf is scratch for the parameter block, returned for reuse.
func (p *fieldPlan) launch(e *engine.Engine, k *kernelSet, a launchArgs, buf []byte) ([]byte, error) {
	switch t := p.t.(type) {
	case Normalize:
		h, w, c := t.dims(p.in)
		ip := imageParams{src: a.src, offsets: a.offsets, flip: a.flips, dst: a.dst[0], batch: uint32(a.batch),
			h: uint32(h), w: uint32(w), c: uint32(c), scale: p.scale, bias: p.bias}
		perStore := 16 / p.lut.osize // outputs per 16-byte store
		// The tiled path loads whole 16-byte words of a tile's rows: of interleaved pixels, or of each
		// channel's plane, which needs every plane's rows to start 16-byte aligned too.
		rowsAligned := (w*c)%16 == 0
		if t.InputCHW {
			ip.planar = 1
			rowsAligned = w%16 == 0
		}
		if a.aligned && a.src%16 == 0 && rowsAligned && w%perStore == 0 && w*c <= imageTileBytes {
			ip.rows = uint32(min(h, imageTileBytes/(w*c)))
			buf = ip.pack(buf)
			tiles := uint64((h + int(ip.rows) - 1) / int(ip.rows))
			return buf, k.launchBlocks(e, p.kernel, tiles*uint64(a.batch), a.stream, buf)
		}
		buf = ip.pack(buf)
		return buf, k.launch1D(e, p.kernel, uint64(a.batch)*uint64(h*w), a.stream, buf)
	case ShiftTokens:
		seq := p.in.Shape[0] - 1
		tp := tokensParams{src: a.src, offsets: a.offsets, x: a.dst[0], y: a.dst[1], batch: uint32(a.batch), seq: uint32(seq),
			stride: uint32(seq + 1)}
		buf = tp.pack(buf)
		return buf, k.launch1D(e, p.kernel, uint64(a.batch)*uint64(seq), a.stream, buf)
	case PadSequences:
		if a.offsets == 0 || a.lengths == 0 {
			return buf, fmt.Errorf("%w: PadSequences needs the samples' offsets and lengths", engine.ErrInvalidArgument)
		}
		pp := padParams{src: a.src, offsets: a.offsets, lengths: a.lengths, tokens: a.dst[0], mask: a.dst[1],
			lengthsOut: a.dst[2], padValue: t.PadValue, batch: uint32(a.batch), maxlen: uint32(a.width)}
		buf = pp.pack(buf)
		return buf, k.launch1D(e, p.kernel, max(uint64(a.batch)*uint64(a.width), uint64(a.batch)), a.stream, buf)
	}
	return buf, fmt.Errorf("%w: no kernel for %v", engine.ErrUnsupported, p.t)
}
