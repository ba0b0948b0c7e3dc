package data

import (
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/ferry-ml/ferry/engine"
)

// BlendOrder is how a BlendSource interleaves its sources.
type BlendOrder int

// Blend orders.
const (
	// BlendFerry makes position p of epoch e a pure function of (Seed, e, p): positions come in blocks of
	// blendBlock, each holding every source's exact share (the running count of source d over the first
	// P positions is floor(P*W_d) - floor(P*W_{d-1}), W the cumulative weights), shuffled within the
	// block; the k-th use of a source in an epoch continues its own seeded permutation, epoch after epoch
	// of the source. Resume, exact or elastic, needs no state, and any 10,000 consecutive samples hold each
	// source's weight to within 1 % (an absolute bound: two partial blocks at the ends, 65 samples).
	BlendFerry BlendOrder = iota
	// BlendMegatron reproduces megatron-core's BlendedDataset: position p takes the source whose share is
	// furthest behind its weight, and that source's next sample in the source's own order. Build each
	// source with MegatronBlendSizes' numbers of samples to match Megatron sample for sample.
	BlendMegatron
)

func (o BlendOrder) String() string {
	switch o {
	case BlendFerry:
		return "ferry"
	case BlendMegatron:
		return "megatron"
	}
	return fmt.Sprintf("BlendOrder(%d)", int(o))
}

// blendBlock is the number of positions over which BlendFerry gives every source its exact share.
const blendBlock = 128

// BlendPart is one source of a blend and its weight (any positive number; weights are normalized).
type BlendPart struct {
	Weight float64
	Source Source
}

// BlendConfig configures a BlendSource.
type BlendConfig struct {
	// Size is the number of samples of the blend (an epoch, in ferry's order).
	Size int
	// Order interleaves the sources (BlendFerry by default).
	Order BlendOrder
	// Seed keys ferry's order.
	Seed uint64
}

// Epochal is implemented by sources whose samples depend on the epoch: the iterator reads sample i of
// epoch e with ReadSampleEpoch instead of ReadSample. A BlendSource in ferry's order is one.
type Epochal interface {
	ReadSampleEpoch(epoch uint64, i int, dst [][]byte) error
}

// BlendSource mixes sources by weight. Every source must have the same fields. It does not own the
// sources: close them after the blend.
type BlendSource struct {
	parts   []BlendPart
	weights []float64 // normalized
	cum     []float64 // cumulative normalized weights; the last is exactly 1
	cfg     BlendConfig
	fields  []Field
	perEp   []int64    // ferry: uses of each source per epoch
	orders  []*Sampler // ferry: each source's seeded order, epoch after epoch of the source
	dataset []int16    // megatron: the source of each position
	sample  []int64    // megatron: the source's sample at each position
	guard   closeGuard
}

var (
	_ Source      = (*BlendSource)(nil)
	_ Epochal     = (*BlendSource)(nil)
	_ SelfOrdered = (*BlendSource)(nil)
)

// NewBlendSource checks the parts (at least one, positive finite weights, equal fields, no empty source)
// and builds the blend. In Megatron's order a source asked for more samples than it holds is an error, as
// megatron-core's IndexError is.
func NewBlendSource(parts []BlendPart, cfg BlendConfig) (*BlendSource, error) {
	if len(parts) == 0 || len(parts) > math.MaxInt16 {
		return nil, fmt.Errorf("%w: blend: %d sources; give 1 to %d", engine.ErrInvalidArgument, len(parts), math.MaxInt16)
	}
	if cfg.Size < 1 {
		return nil, fmt.Errorf("%w: blend: size %d must be positive", engine.ErrInvalidArgument, cfg.Size)
	}
	if cfg.Order != BlendFerry && cfg.Order != BlendMegatron {
		return nil, fmt.Errorf("%w: blend: unknown order %v (ferry or megatron)", engine.ErrInvalidArgument, cfg.Order)
	}
	w := make([]float64, len(parts))
	for d, p := range parts {
		if p.Source == nil {
			return nil, fmt.Errorf("%w: blend: source %d is missing", engine.ErrInvalidArgument, d)
		}
		if !(p.Weight > 0) || math.IsInf(p.Weight, 0) {
			return nil, fmt.Errorf("%w: blend: source %d has weight %v; weights must be positive and finite", engine.ErrInvalidArgument, d, p.Weight)
		}
		if p.Source.Len() < 1 {
			return nil, fmt.Errorf("%w: blend: source %d (%v) has no samples", engine.ErrInvalidArgument, d, p.Source)
		}
		if d > 0 && !sameFields(p.Source.Fields(), parts[0].Source.Fields()) {
			return nil, fmt.Errorf("%w: blend: source %d's fields %s differ from source 0's %s", engine.ErrInvalidArgument, d,
				describeFields(p.Source.Fields()), describeFields(parts[0].Source.Fields()))
		}
		w[d] = p.Weight
	}
	weights, err := megatronNormalize(w)
	if err != nil {
		return nil, fmt.Errorf("blend: %w", err)
	}
	s := &BlendSource{parts: append([]BlendPart(nil), parts...), weights: weights, cfg: cfg,
		fields: cloneFields(parts[0].Source.Fields())}
	if cfg.Order == BlendMegatron {
		// Megatron's BlendedDataset normalizes the weights it is given once more.
		if weights, err = megatronNormalize(weights); err != nil {
			return nil, fmt.Errorf("blend: %w", err)
		}
		s.dataset, s.sample = megatronBlendIndex(weights, cfg.Size)
		counts := make([]int64, len(parts))
		for _, d := range s.dataset {
			counts[d]++
		}
		for d, c := range counts {
			if c > int64(parts[d].Source.Len()) {
				return nil, fmt.Errorf("%w: blend: %d samples of %d are asked of source %d (%v), which holds %d; build it with more samples (MegatronBlendSizes)",
					engine.ErrInvalidArgument, c, cfg.Size, d, parts[d].Source, parts[d].Source.Len())
			}
		}
		return s, nil
	}
	sum := 0.0
	for _, v := range weights {
		sum += v
		s.cum = append(s.cum, sum)
	}
	s.cum[len(s.cum)-1] = 1
	for d := range parts {
		s.perEp = append(s.perEp, s.share(d, int64(cfg.Size)))
		s.orders = append(s.orders, sourceOrder(cfg.Seed, d, uint64(parts[d].Source.Len())))
	}
	return s, nil
}

func sameFields(a, b []Field) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Name != b[i].Name || a[i].DType != b[i].DType || !slices.Equal(a[i].Shape, b[i].Shape) {
			return false
		}
	}
	return true
}

func describeFields(fs []Field) string {
	var parts []string
	for _, f := range fs {
		parts = append(parts, fmt.Sprintf("%s %v %v", f.Name, f.DType, f.Shape))
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// MegatronBlendSizes is the number of samples Megatron's builder asks of each dataset of a blend of `size`
// samples with these weights (its target plus its 0.5 % surplus), and the blend's own size (the sum of
// the targets): build each GPTSource with these NumSamples and the BlendSource with this size to match
// megatron-core's BlendedDataset.
func MegatronBlendSizes(weights []float64, size int) (perSource []int, blendSize int, err error) {
	if size < 1 {
		return nil, 0, fmt.Errorf("%w: blend size %d must be positive", engine.ErrInvalidArgument, size)
	}
	target, build, err := megatronBlendSizes(weights, size)
	if err != nil {
		return nil, 0, err
	}
	for _, t := range target {
		blendSize += t
	}
	return build, blendSize, nil
}

// share is how many of the first p positions of an epoch go to source d in ferry's order.
func (s *BlendSource) share(d int, p int64) int64 {
	lo := int64(0)
	if d > 0 {
		lo = int64(math.Floor(float64(p) * s.cum[d-1]))
	}
	return int64(math.Floor(float64(p)*s.cum[d])) - lo
}

// cumShare is how many of the first p positions go to sources 0..d.
func (s *BlendSource) cumShare(d int, p int64) int64 {
	if d == len(s.cum)-1 {
		return p
	}
	return int64(math.Floor(float64(p) * s.cum[d]))
}

// Pick is the source and the source's sample at position i of epoch: megatron-core's indices in
// Megatron's order, a pure function of (Seed, epoch, i) in ferry's. It returns (-1, -1) out of range.
func (s *BlendSource) Pick(epoch uint64, i int) (source, sample int) {
	if i < 0 || i >= s.cfg.Size {
		return -1, -1
	}
	if s.dataset != nil {
		return int(s.dataset[i]), int(s.sample[i])
	}
	k := int64(i / blendBlock)
	p0, p1 := k*blendBlock, min((k+1)*blendBlock, int64(s.cfg.Size))
	q := int64(blockOrder(s.cfg.Seed, epoch, uint64(k), int(p1-p0)).Index(epoch, int(int64(i)-p0)))
	d := 0
	prev := int64(0) // positions of the block taken by sources before d
	for ; d < len(s.cum)-1; d++ {
		g := s.cumShare(d, p1) - s.cumShare(d, p0)
		if q < g {
			break
		}
		prev = g
	}
	use := uint64(epoch)*uint64(s.perEp[d]) + uint64(s.share(d, p0)) + uint64(q-prev)
	n := uint64(s.parts[d].Source.Len())
	return d, s.orders[d].Index(use/n, int(use%n))
}

// blockOrder is the seeded shuffle of the positions of one block.
func blockOrder(seed, epoch, block uint64, n int) *Sampler {
	s, _ := NewSampler(SamplerConfig{Len: n, BatchSize: 1, Shuffle: true, Seed: mix64(seed^0x243f6a8885a308d3) ^ mix64(block+epoch<<40)})
	return s
}

// sourceOrder is the seeded order of source d's samples, epoch after epoch of the source.
func sourceOrder(seed uint64, d int, n uint64) *Sampler {
	s, _ := NewSampler(SamplerConfig{Len: int(n), BatchSize: 1, Shuffle: true, Seed: mix64(seed^0x13198a2e03707344) ^ mix64(uint64(d))})
	return s
}

// OrdersItself says the blend's positions are its order: the mix holds over consecutive positions.
func (s *BlendSource) OrdersItself() string {
	return "a blend's mix holds over consecutive positions"
}

// Len is the blend's size.
func (s *BlendSource) Len() int { return s.cfg.Size }

// Fields is the sources' fields; do not modify it.
func (s *BlendSource) Fields() []Field { return s.fields }

// Weights is the normalized weights.
func (s *BlendSource) Weights() []float64 { return append([]float64(nil), s.weights...) }

// ReadSample reads position i of epoch 0.
func (s *BlendSource) ReadSample(i int, dst [][]byte) error { return s.ReadSampleEpoch(0, i, dst) }

// ReadSampleEpoch reads position i of epoch from the source Pick names. It is safe for concurrent use.
func (s *BlendSource) ReadSampleEpoch(epoch uint64, i int, dst [][]byte) error {
	if err := checkRead(s, s.cfg.Size, s.fields, i, dst); err != nil {
		return err
	}
	if !s.guard.enter() {
		return errClosedSource(s, i)
	}
	defer s.guard.exit()
	d, j := s.Pick(epoch, i)
	if err := s.parts[d].Source.ReadSample(j, dst); err != nil {
		return fmt.Errorf("blend position %d: %w", i, err)
	}
	return nil
}

// Close marks the blend closed; the sources stay open.
func (s *BlendSource) Close() error { return s.guard.close(s, nil) }

func (s *BlendSource) String() string {
	return fmt.Sprintf("blend(%d sources, weights %v, size %d, order %v)", len(s.parts), s.weights, s.cfg.Size, s.cfg.Order)
}
