package data

import (
	"fmt"
	"unsafe"

	"github.com/ferry-ml/ferry/engine"
)

// fieldPlan is what the iterator does with one source field.
type fieldPlan struct {
	in     Field
	t      Transform // nil: the field crosses as is
	outs   []int     // the batch fields it makes (indexes into Iterator.outs)
	lut    *imageLUT // Normalize's host form
	scale  [maxChannels]float32
	bias   [maxChannels]float32
	ragged bool // the source's Ragged field
	kernel string
}

// hasFlip reports whether the plan flips samples.
func (p *fieldPlan) hasFlip() bool {
	n, ok := p.t.(Normalize)
	return ok && n.Flip > 0
}

// planFields checks the transforms against the source's fields and lays out the batch's fields.
func (it *Iterator) planFields(transforms map[string]Transform) error {
	known := map[string]bool{}
	for _, f := range it.fields {
		known[f.Name] = true
	}
	for name, t := range transforms {
		if !known[name] {
			return fmt.Errorf("%w: a transform is given for field %q, which the source does not have", engine.ErrInvalidArgument, name)
		}
		if t == nil {
			return fmt.Errorf("%w: the transform for field %q is nil", engine.ErrInvalidArgument, name)
		}
	}
	it.raggedField = -1
	if r, ok := it.src.(Ragged); ok {
		it.raggedField = r.RaggedField()
		it.ragged = r
	}
	flip := 0.0
	for name, t := range transforms {
		if n, ok := t.(Normalize); ok && n.Flip > 0 {
			if flip > 0 && n.Flip != flip {
				return fmt.Errorf("%w: Normalize transforms flip with different probabilities (%g on %q and %g); one batch flips its samples once, for every image field", engine.ErrInvalidArgument, n.Flip, name, flip)
			}
			flip = n.Flip
		}
	}
	seen := map[string]bool{}
	for f, in := range it.fields {
		p, outs, err := newFieldPlan(in, transforms[in.Name], f == it.raggedField)
		if err != nil {
			return err
		}
		for _, o := range outs {
			if seen[o.Name] {
				return fmt.Errorf("%w: two batch fields would be named %q; rename a transform's output", engine.ErrInvalidArgument, o.Name)
			}
			seen[o.Name] = true
			p.outs = append(p.outs, len(it.outs))
			it.outs = append(it.outs, o)
			it.outSrc = append(it.outSrc, f)
		}
		it.plans = append(it.plans, p)
	}
	return nil
}

// newFieldPlan checks t (nil for none) against the source field in and returns the plan and its outputs.
func newFieldPlan(in Field, t Transform, ragged bool) (fieldPlan, []Field, error) {
	p := fieldPlan{in: in, t: t, ragged: ragged}
	outs := []Field{in}
	if t != nil {
		var err error
		if outs, err = t.Outputs(in); err != nil {
			return p, nil, err
		}
	}
	switch t := t.(type) {
	case Normalize:
		lut, err := newImageLUT(t, in)
		if err != nil {
			return p, nil, err
		}
		p.lut = lut
		_, _, c := t.dims(in)
		p.scale, p.bias, _ = t.coefficients(c)
		p.kernel = fmt.Sprintf("ferry_image_%s_%s", map[DType]string{Float32: "f32", Float16: "f16", BFloat16: "bf16"}[t.outType()],
			map[ImageLayout]string{LayoutCHW: "chw", LayoutHWC: "hwc"}[t.Layout])
	case ShiftTokens:
		p.kernel = map[DType]string{Uint16: "ferry_tokens_u16", Uint32: "ferry_tokens_u32"}[in.DType]
	case PadSequences:
		if !ragged {
			return p, nil, fmt.Errorf("%w: PadSequences on field %q needs a source whose field %q has variable length (a Ragged source such as RaggedTokenSource)", engine.ErrInvalidArgument, in.Name, in.Name)
		}
		p.kernel = map[DType]string{Uint16: "ferry_pad_u16", Uint32: "ferry_pad_u32"}[in.DType]
	case nil:
	default:
		return p, nil, fmt.Errorf("%w: field %q: unknown transform %v", engine.ErrInvalidArgument, in.Name, t)
	}
	return p, outs, nil
}

// metaLayout is where the per-batch metadata lies in a slot's meta buffer: per source field, the
// samples' byte offsets (uint64); the flips (uint8); the lengths of a variable-length field (uint32).
func (it *Iterator) metaLayout() (offsets, flips, lengths, size int) {
	b := it.opts.BatchSize
	offsets = 0
	flips = len(it.fields) * b * 8
	lengths = (flips + b + 7) &^ 7
	size = lengths + b*4
	return
}

// needsMeta reports whether batches carry metadata: offsets for StagingDMA, and for the kernels.
func (it *Iterator) needsMeta() bool {
	if !it.e.GPU() {
		return false
	}
	if it.staging == StagingMapped || it.staging == StagingDMA {
		return true
	}
	if it.hostXform {
		return false
	}
	for _, p := range it.plans {
		if p.hasFlip() || p.ragged {
			return true
		}
	}
	return false
}

// needsHostStaging reports whether samples are gathered into host staging (and so need the workers).
func (it *Iterator) needsHostStaging() bool {
	return it.staging == StagingGather
}

// batchShape is the shape of batch field g in the slot's batch: [rows, per-sample shape...], with a padded
// variable-length field's length replaced by the batch's padded width.
func (it *Iterator) batchShape(s *slot, g int) []int {
	o := it.outs[g]
	shape := append([]int{len(s.indices)}, o.Shape...)
	if f := it.outSrc[g]; it.plans[f].ragged && len(o.Shape) == 1 {
		if _, ok := it.plans[f].t.(PadSequences); ok {
			shape[1] = s.width
		}
	}
	return shape
}

// prepare sets the slot's per-batch figures and metadata once its indices are known.
func (it *Iterator) prepare(s *slot) {
	rows := len(s.indices)
	s.width, s.staged = 0, 0
	if it.ragged != nil {
		p := &it.plans[it.raggedField]
		if pad, ok := p.t.(PadSequences); ok && pad.Fixed {
			s.width = p.in.Shape[0]
		} else {
			for _, i := range s.indices {
				s.width = max(s.width, it.ragged.SampleLen(i))
			}
		}
	}
	for _, p := range it.plans {
		if p.ragged && it.staging == StagingMapped {
			for _, i := range s.indices {
				s.staged += it.ragged.SampleLen(i) * p.in.DType.Size()
			}
		} else {
			s.staged += rows * p.in.Bytes()
		}
	}
	if s.meta == nil {
		return
	}
	offOff, flipOff, lenOff, _ := it.metaLayout()
	meta := s.meta.Bytes()
	b := it.opts.BatchSize
	inPlace := it.staging == StagingMapped || it.staging == StagingDMA
	for f, p := range it.plans {
		offs := unsafe.Slice((*uint64)(unsafe.Pointer(&meta[offOff+f*b*8])), b)
		aligned := true
		for r, i := range s.indices {
			if inPlace {
				o := it.backed.Offset(f, i)
				offs[r] = uint64(o)
				aligned = aligned && (uintptr(unsafe.Pointer(&it.regionMem[f][0]))+uintptr(o))%16 == 0
			} else {
				offs[r] = uint64(r * p.in.Bytes())
			}
		}
		s.aligned[f] = aligned
	}
	if prob := it.flipProb(); prob > 0 {
		for r, i := range s.indices {
			meta[flipOff+r] = 0
			if flipSample(prob, it.opts.Seed, s.epoch, i) {
				meta[flipOff+r] = 1
			}
		}
	}
	if it.ragged != nil {
		lens := unsafe.Slice((*uint32)(unsafe.Pointer(&meta[lenOff])), b)
		for r, i := range s.indices {
			lens[r] = uint32(min(it.ragged.SampleLen(i), s.width))
		}
	}
}

// flipProb is the flip probability of the iterator's Normalize transforms (planFields checks that they
// agree), or 0.
func (it *Iterator) flipProb() float64 {
	for _, p := range it.plans {
		if n, ok := p.t.(Normalize); ok && n.Flip > 0 {
			return n.Flip
		}
	}
	return 0
}

// transformRow runs the host transforms on row r, whose source fields the worker just read into in.
func (it *Iterator) transformRow(s *slot, r int, in [][]byte) {
	for f, p := range it.plans {
		switch t := p.t.(type) {
		case Normalize:
			g := p.outs[0]
			n := it.outs[g].Bytes()
			p.lut.apply(s.hostOut[g].Bytes()[r*n:(r+1)*n], in[f], flipSample(t.Flip, it.opts.Seed, s.epoch, s.indices[r]))
		case ShiftTokens:
			seq := p.in.Shape[0] - 1
			x, y := s.hostOut[p.outs[0]].Bytes(), s.hostOut[p.outs[1]].Bytes()
			shiftTokensHost(x[r*seq*8:(r+1)*seq*8], y[r*seq*8:(r+1)*seq*8], in[f], p.in.DType.Size(), seq)
		case PadSequences:
			w := s.width
			n := min(it.ragged.SampleLen(s.indices[r]), w)
			tok, mask, lens := s.hostOut[p.outs[0]].Bytes(), s.hostOut[p.outs[1]].Bytes(), s.hostOut[p.outs[2]].Bytes()
			padHost(tok[r*w*8:(r+1)*w*8], mask[r*w:(r+1)*w], lens[r*8:(r+1)*8], in[f], p.in.DType.Size(), n, w, t.PadValue)
		}
	}
}
