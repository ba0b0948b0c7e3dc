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
	tr     traits    // t's (zero for none)
	op     op        // t bound to in
	outs   []int     // the batch fields it makes (indexes into Iterator.outs)
	ragged bool      // the source's Ragged field
}

// hasFlip reports whether the plan flips samples.
func (p *fieldPlan) hasFlip() bool { return p.tr.flip > 0 }

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
		if f := t.traits().flip; f > 0 {
			if flip > 0 && f != flip {
				return fmt.Errorf("%w: Normalize transforms flip with different probabilities (%g on %q and %g); one batch flips its samples once, for every image field", engine.ErrInvalidArgument, f, name, flip)
			}
			flip = f
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
	if t != nil {
		var err error
		p.tr = t.traits()
		if p.op, err = t.bind(in, ragged); err != nil {
			return p, nil, err
		}
	}
	return p, outs, nil
}

// metaLayout is where the per-batch metadata lies in a slot's meta buffer: per source field, the
// samples' byte offsets (uint64); the flips (uint8); the lengths of a variable-length field (uint32).
type metaLayout struct {
	batch   int // samples per batch
	offsets int // field f's offsets start at offsets + f*batch*8
	flips   int
	lengths int
	size    int
}

func newMetaLayout(fields, batch int) metaLayout {
	m := metaLayout{batch: batch, flips: fields * batch * 8}
	m.lengths = (m.flips + batch + 7) &^ 7
	m.size = m.lengths + batch*4
	return m
}

// offsetsOf is where source field f's sample offsets start.
func (m metaLayout) offsetsOf(f int) int { return m.offsets + f*m.batch*8 }

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
	if p := it.plans[it.outSrc[g]]; p.ragged && p.tr.pads && len(o.Shape) == 1 {
		shape[1] = s.width
	}
	return shape
}

// prepare sets the slot's per-batch figures and metadata once its indices are known.
func (it *Iterator) prepare(s *slot) {
	rows := len(s.indices)
	if it.imageDevice {
		if err := it.prepareImages(s); err != nil {
			s.fail(err)
		}
	}
	s.width, s.staged = 0, 0
	if it.ragged != nil {
		p := &it.plans[it.raggedField]
		if p.tr.fullWidth {
			s.width = p.in.Shape[0]
		} else {
			for _, i := range s.indices {
				s.width = max(s.width, it.ragged.SampleLen(i))
			}
		}
	}
	for _, p := range it.plans {
		if p.ragged && (it.staging == StagingMapped || it.workerInput(p)) { // the samples' own bytes
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
	ml := it.metaLayout
	meta := s.meta.Bytes()
	b := it.rows
	inPlace := it.staging == StagingMapped || it.staging == StagingDMA
	for f, p := range it.plans {
		offs := unsafe.Slice((*uint64)(unsafe.Pointer(&meta[ml.offsetsOf(f)])), b)
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
			meta[ml.flips+r] = 0
			if flipSample(prob, it.opts.Seed, s.epoch, i) {
				meta[ml.flips+r] = 1
			}
		}
	}
	if it.ragged != nil {
		lens := unsafe.Slice((*uint32)(unsafe.Pointer(&meta[ml.lengths])), b)
		for r, i := range s.indices {
			lens[r] = uint32(min(it.ragged.SampleLen(i), s.width))
		}
	}
}

// flipProb is the flip probability of the iterator's Normalize transforms (planFields checks that they
// agree), or 0.
func (it *Iterator) flipProb() float64 {
	for _, p := range it.plans {
		if p.tr.flip > 0 {
			return p.tr.flip
		}
	}
	return 0
}

// transformRow runs the host transforms on row r, whose source fields the worker just read into in;
// scratch is the worker's, at least as long as the batch's fields. An op that fails on the sample (an image
// that does not decode) gives an error naming the sample.
func (it *Iterator) transformRow(s *slot, r int, in, scratch [][]byte) error {
	for f, p := range it.plans {
		if p.op == nil {
			continue
		}
		out := scratch[:len(p.outs)]
		for k, g := range p.outs {
			n := it.rowBytes(s, g)
			out[k] = s.hostOut[g].Bytes()[r*n : (r+1)*n]
		}
		a := rowArgs{width: s.width, seed: it.opts.Seed, epoch: s.epoch, index: s.indices[r]}
		if p.tr.flip > 0 {
			a.flip = flipSample(p.tr.flip, it.opts.Seed, s.epoch, s.indices[r])
		}
		if p.ragged {
			a.n = min(it.ragged.SampleLen(s.indices[r]), s.width)
		}
		if he, ok := p.op.(hostErrOp); ok {
			if err := he.hostErr(out, in[f], a); err != nil {
				return fmt.Errorf("%v on %s: %w", p.t, sampleName(it.src, s.indices[r]), err)
			}
			continue
		}
		p.op.host(out, in[f], a)
	}
	return nil
}

// sampleName is how errors name sample i: the source's name for it (a file, a shard member), or its index.
func sampleName(src Source, i int) string {
	if n, ok := src.(Named); ok {
		if name := n.SampleName(i); name != "" {
			return fmt.Sprintf("sample %d (%s)", i, name)
		}
	}
	return fmt.Sprintf("sample %d", i)
}

// rowBytes is the size of one sample of batch field g in the slot's batch.
func (it *Iterator) rowBytes(s *slot, g int) int {
	o := it.outs[g]
	if p := it.plans[it.outSrc[g]]; p.ragged && p.tr.pads && len(o.Shape) == 1 {
		return s.width * o.DType.Size() // batchShape's padded width
	}
	return o.Bytes()
}
