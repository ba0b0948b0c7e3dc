package data

import (
	"fmt"
	"math"
	"math/bits"

	"github.com/ferry-ml/ferry/engine"
)

// SamplerConfig describes which samples make up each batch of each epoch on one rank.
type SamplerConfig struct {
	// Len is the number of samples in the source (>= 1).
	Len int
	// BatchSize is the number of samples in a full batch (>= 1).
	BatchSize int
	// Shuffle permutes the samples anew each epoch. Without it the order is 0, 1, …, Len-1 every epoch.
	Shuffle bool
	// Seed keys the permutations; it is ignored without Shuffle.
	Seed uint64
	// DropLast cuts the global order to a multiple of WorldSize instead of padding it, and drops the
	// rank's last batch when it is shorter than BatchSize. It acts like both torch's
	// DistributedSampler(drop_last=True) and DataLoader(drop_last=True).
	DropLast bool
	// Rank is this process's rank in [0, WorldSize).
	Rank int
	// WorldSize is the number of ranks that share the samples; 0 means 1.
	WorldSize int
}

// SamplerState is everything an exact resume needs: the epoch, and the index of the next batch within
// it (0 <= Batch < BatchesPerEpoch). A sampler built from the same SamplerConfig produces, from a state,
// the same batches the original would have produced from it; nothing is replayed.
type SamplerState struct {
	Epoch uint64
	Batch int
	// Offset is where the epoch's sharding began in its global order: 0, except in an epoch resumed
	// elastically (see Sampler.WithResume), where it is the number of samples all ranks had consumed.
	Offset int
}

// Sampler decides which sample indices make up batch b of epoch e on one rank. It is immutable, so its
// methods may be called from many goroutines at once, in any order, for any epoch.
//
// The global order. Epoch e's order is a permutation P_e of [0, Len): position p holds sample P_e(p)
// (see Index). Without Shuffle, P_e(p) = p. With Shuffle, P_e is a keyed bijection of [0, Len): an
// 8-round Feistel network over [0, H * 2^L) ⊇ [0, Len), with halves of L = max(floor(k/2), 4) bits and
// H = max(ceil(Len / 2^L), 16) values (2^k the next power of two >= Len), cycle-walking to stay inside
// [0, Len). Its round keys are derived from (Seed, e) with splitmix64. P_e depends only on (Len, Seed,
// e, p): not on the number of workers, the rank, the batch size, or the order in which positions are
// asked for. It is never materialized; a position costs tens of nanoseconds. The order is part of what a
// saved SamplerState means, so it must not change between versions (a test pins it).
//
// Sharding, as torch's DistributedSampler does it. Let W = WorldSize and
//
//	SamplesPerRank = ceil(Len / W)   without DropLast
//	SamplesPerRank = floor(Len / W)  with DropLast
//
// and TotalSize = SamplesPerRank * W. Without DropLast the global order is padded to TotalSize by
// repeating it from its start: global position g >= Len holds P_e(g mod Len) (when the padding is
// longer than Len, the order is repeated as many times as needed). With DropLast the order is cut to its
// first TotalSize positions. Rank r takes global positions r, r+W, r+2W, …, r+(SamplesPerRank-1)W: its
// i-th sample is P_e((r + i*W) mod Len). When Len is a multiple of W the ranks' samples are disjoint and
// together cover every sample exactly once per epoch.
//
// Batching. The rank's samples are cut, in order, into batches of BatchSize: batch b holds the rank's
// samples b*BatchSize … min((b+1)*BatchSize, SamplesPerRank)-1. With DropLast a last batch shorter than
// BatchSize is dropped (BatchesPerEpoch = floor(SamplesPerRank / BatchSize)); without it the last batch
// is kept short (BatchesPerEpoch = ceil(SamplesPerRank / BatchSize)).
type Sampler struct {
	cfg            SamplerConfig
	samplesPerRank int
	batches        int
	resume         *resumePoint // an epoch resumed elastically part-way, or nil
	// Feistel domain [0, hiSize * 2^loBits): x = hi<<loBits | lo with hi < hiSize.
	loBits uint
	hiSize uint64
}

// feistelRounds is the number of Feistel rounds; each round adds a keyed hash of one half to the other,
// modulo that half's size, alternating halves. Four rounds make a strong pseudorandom permutation
// (Luby–Rackoff); eight give a margin for small domains. Addition rather than XOR lets the network reach
// odd permutations too (XOR rounds over two or more bits are all even).
const feistelRounds = 8

// minFeistelHalfBits makes each half of the Feistel domain at least 2^4 wide, the domain at least 2^8:
// with halves one or two bits wide a Feistel network is measurably far from uniform. Cycle-walking a
// small Len through the larger domain costs at most about 2^8 passes per batch, since a batch holds at
// most Len samples.
const minFeistelHalfBits = 4

// maxSamplerLen bounds Len so that the Feistel domain and the padded order stay inside uint64/int.
const maxSamplerLen = 1 << 62

// NewSampler validates cfg and returns its sampler. Errors wrap ErrInvalidArgument and name the field.
// A configuration that yields no batch at all in an epoch (possible only with DropLast: Len < WorldSize,
// or fewer than BatchSize samples per rank) is an error too, since an epoch without batches is almost
// certainly a mistake.
func NewSampler(cfg SamplerConfig) (*Sampler, error) {
	if cfg.WorldSize == 0 {
		cfg.WorldSize = 1
	}
	switch {
	case cfg.Len < 1:
		return nil, fmt.Errorf("%w: sampler Len is %d; it must be at least 1", engine.ErrInvalidArgument, cfg.Len)
	case cfg.Len > maxSamplerLen:
		return nil, fmt.Errorf("%w: sampler Len is %d; it must be at most 2^62", engine.ErrInvalidArgument, cfg.Len)
	case cfg.BatchSize < 1:
		return nil, fmt.Errorf("%w: sampler BatchSize is %d; it must be at least 1", engine.ErrInvalidArgument, cfg.BatchSize)
	case cfg.WorldSize < 0:
		return nil, fmt.Errorf("%w: sampler WorldSize is %d; it must be at least 1 (0 means 1)", engine.ErrInvalidArgument, cfg.WorldSize)
	case cfg.WorldSize > math.MaxInt-cfg.Len:
		return nil, fmt.Errorf("%w: sampler WorldSize %d is too large for Len %d", engine.ErrInvalidArgument, cfg.WorldSize, cfg.Len)
	case cfg.Rank < 0 || cfg.Rank >= cfg.WorldSize:
		return nil, fmt.Errorf("%w: sampler Rank is %d; it must be in [0, %d) for WorldSize %d",
			engine.ErrInvalidArgument, cfg.Rank, cfg.WorldSize, cfg.WorldSize)
	}
	s := &Sampler{cfg: cfg}
	if cfg.DropLast {
		s.samplesPerRank = cfg.Len / cfg.WorldSize
		if s.samplesPerRank == 0 {
			return nil, fmt.Errorf("%w: sampler with DropLast: Len %d is less than WorldSize %d, so no rank gets a sample",
				engine.ErrInvalidArgument, cfg.Len, cfg.WorldSize)
		}
		s.batches = s.samplesPerRank / cfg.BatchSize
		if s.batches == 0 {
			return nil, fmt.Errorf("%w: sampler with DropLast: each rank gets %d samples (Len %d, WorldSize %d), fewer than BatchSize %d, so an epoch has no batch",
				engine.ErrInvalidArgument, s.samplesPerRank, cfg.Len, cfg.WorldSize, cfg.BatchSize)
		}
	} else {
		s.samplesPerRank = (cfg.Len + cfg.WorldSize - 1) / cfg.WorldSize
		s.batches = s.samplesPerRank/cfg.BatchSize + boolInt(s.samplesPerRank%cfg.BatchSize != 0)
	}
	k := uint(bits.Len64(uint64(cfg.Len - 1))) // 2^k is the next power of two >= Len
	s.loBits = max(k/2, minFeistelHalfBits)
	s.hiSize = max(uint64(cfg.Len-1)>>s.loBits+1, 1<<minFeistelHalfBits) // at least ceil(Len / 2^loBits)
	return s, nil
}

// resumePoint is an epoch that continues from global position offset under this sampler's world size:
// its remaining Len-offset positions are sharded afresh, as a whole epoch is.
type resumePoint struct {
	epoch          uint64
	offset         int
	samplesPerRank int
	batches        int
}

// WithResume returns a sampler that continues epoch from global position offset (0 < offset < Len): the
// positions offset..Len-1 of the epoch's global order, the samples no rank has consumed yet, are
// sharded among this sampler's ranks as DistributedSampler shards a whole epoch (padded by repeating
// them, or cut with DropLast), and batched. Later epochs are whole. This is the elastic resume: a state
// saved under one world size, restored under another, covers every remaining sample exactly once
// (without padding). With offset 0 it returns s itself.
func (s *Sampler) WithResume(epoch uint64, offset int) (*Sampler, error) {
	if offset == 0 {
		if s.resume == nil {
			return s, nil
		}
		c := *s
		c.resume = nil
		return &c, nil
	}
	if offset < 0 || offset >= s.cfg.Len {
		return nil, fmt.Errorf("%w: resume offset %d is outside 0..%d (Len %d)", engine.ErrInvalidArgument, offset, s.cfg.Len-1, s.cfg.Len)
	}
	rem, w := s.cfg.Len-offset, s.cfg.WorldSize
	r := &resumePoint{epoch: epoch, offset: offset}
	if s.cfg.DropLast {
		r.samplesPerRank = rem / w
		r.batches = r.samplesPerRank / s.cfg.BatchSize
	} else {
		r.samplesPerRank = (rem + w - 1) / w
		r.batches = r.samplesPerRank/s.cfg.BatchSize + boolInt(r.samplesPerRank%s.cfg.BatchSize != 0)
	}
	c := *s
	c.resume = r
	return &c, nil
}

// geometry is epoch's sharding: where it starts in the global order, how many positions remain from
// there, the samples per rank and the batches.
func (s *Sampler) geometry(epoch uint64) (offset, rem, samplesPerRank, batches int) {
	if r := s.resume; r != nil && r.epoch == epoch {
		return r.offset, s.cfg.Len - r.offset, r.samplesPerRank, r.batches
	}
	return 0, s.cfg.Len, s.samplesPerRank, s.batches
}

// Offset is where epoch's sharding begins in its global order (0 unless it is the resumed epoch).
func (s *Sampler) Offset(epoch uint64) int {
	off, _, _, _ := s.geometry(epoch)
	return off
}

// BatchesIn is the number of batches this rank gets in epoch: BatchesPerEpoch, except in a resumed
// epoch, which may have fewer (even none, with DropLast).
func (s *Sampler) BatchesIn(epoch uint64) int {
	_, _, _, b := s.geometry(epoch)
	return b
}

// Consumed is how many samples of epoch's global order all ranks together have consumed once each rank
// has taken its first batches batches: the epoch's offset plus batches × BatchSize × WorldSize, at most
// Len. It is the same on every rank (ranks advance in lockstep), which makes it the job's global
// position: an elastic resume continues from it under any world size.
func (s *Sampler) Consumed(epoch uint64, batches int) int {
	off, rem, spr, _ := s.geometry(epoch)
	taken := min(batches*s.cfg.BatchSize, spr) * s.cfg.WorldSize
	return off + min(taken, rem)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Config returns the sampler's configuration, with WorldSize 0 replaced by 1.
func (s *Sampler) Config() SamplerConfig { return s.cfg }

// SamplesPerRank is the number of samples this rank sees each epoch: ceil(Len/WorldSize) without
// DropLast, floor(Len/WorldSize) with it. Every rank gets the same number.
func (s *Sampler) SamplesPerRank() int { return s.samplesPerRank }

// BatchesPerEpoch is the number of batches this rank gets each epoch: ceil(SamplesPerRank/BatchSize)
// without DropLast, floor(SamplesPerRank/BatchSize) with it. It is at least 1 and the same on every rank.
func (s *Sampler) BatchesPerEpoch() int { return s.batches }

// MaxBatchLen is the most samples any batch of this rank holds, in any epoch: BatchSize, or the rank's
// SamplesPerRank when that is smaller (a batch size larger than the data set gives one short batch). An
// epoch resumed elastically (WithResume) has no more samples per rank, so it holds for it too. Buffers
// for a batch are sized by it, not by BatchSize.
func (s *Sampler) MaxBatchLen() int { return min(s.cfg.BatchSize, s.samplesPerRank) }

// BatchLen is the number of samples in batch b (0 <= b < BatchesPerEpoch): BatchSize, except for a
// short last batch without DropLast. It returns 0 for b out of range.
func (s *Sampler) BatchLen(b int) int {
	if b < 0 || b >= s.batches {
		return 0
	}
	return min(s.cfg.BatchSize, s.samplesPerRank-b*s.cfg.BatchSize)
}

// Index returns the sample at position pos (0 <= pos < Len) of epoch's global order, P_epoch(pos); it
// returns -1 for pos out of range. It is O(1) and allocates nothing.
func (s *Sampler) Index(epoch uint64, pos int) int {
	if pos < 0 || pos >= s.cfg.Len {
		return -1
	}
	if !s.cfg.Shuffle {
		return pos
	}
	f := s.feistel(epoch)
	return int(f.permute(uint64(pos)))
}

// Batch appends the sample indices of batch b of epoch on this rank to dst[:0] and returns the result,
// in the order the rank's samples come (see Sampler). It allocates only when dst is too small. An
// out-of-range b is an ErrInvalidArgument error.
func (s *Sampler) Batch(epoch uint64, b int, dst []int) ([]int, error) {
	off, rem, spr, batches := s.geometry(epoch)
	if b < 0 || b >= batches {
		return dst[:0], fmt.Errorf("%w: batch %d of an epoch with %d batches", engine.ErrInvalidArgument, b, batches)
	}
	n := min(s.cfg.BatchSize, spr-b*s.cfg.BatchSize)
	if cap(dst) < n {
		dst = make([]int, n)
	}
	dst = dst[:n]
	w, length, base := uint64(s.cfg.WorldSize), uint64(rem), uint64(off)
	g := uint64(s.cfg.Rank) + uint64(b)*uint64(s.cfg.BatchSize)*w // padded position of the first sample
	// pos returns the next sample's position in the unpadded order (from the epoch's offset).
	pos := func() uint64 {
		p := g
		if p >= length {
			p %= length
		}
		g += w
		return base + p
	}
	if !s.cfg.Shuffle {
		for i := range dst {
			dst[i] = int(pos())
		}
		return dst, nil
	}
	f := s.feistel(epoch)
	i := 0
	if f.n > 1 {
		// Four samples at a time, in lockstep: the rounds of one sample are a chain of dependent
		// multiplications, and four independent chains keep the multiplier busy.
		for ; i+4 <= n; i += 4 {
			x0, x1, x2, x3 := f.pass4(pos(), pos(), pos(), pos())
			dst[i], dst[i+1], dst[i+2], dst[i+3] = int(f.walk(x0)), int(f.walk(x1)), int(f.walk(x2)), int(f.walk(x3))
		}
	}
	for ; i < n; i++ {
		dst[i] = int(f.permute(pos()))
	}
	return dst, nil
}

// Next returns the state after the batch at st: the next batch of the epoch, or batch 0 of the next
// epoch after the last one.
func (s *Sampler) Next(st SamplerState) SamplerState {
	if st.Batch+1 >= s.BatchesIn(st.Epoch) {
		return SamplerState{Epoch: st.Epoch + 1}
	}
	return SamplerState{Epoch: st.Epoch, Batch: st.Batch + 1, Offset: st.Offset}
}

// CheckState returns an ErrInvalidArgument error when st.Batch is outside [0, BatchesPerEpoch), e.g. a
// state saved with a different configuration.
func (s *Sampler) CheckState(st SamplerState) error {
	if st.Batch < 0 || st.Batch >= s.batches {
		return fmt.Errorf("%w: sampler state at batch %d of epoch %d, but an epoch has %d batches (Len %d, BatchSize %d, WorldSize %d, DropLast %v)",
			engine.ErrInvalidArgument, st.Batch, st.Epoch, s.batches, s.cfg.Len, s.cfg.BatchSize, s.cfg.WorldSize, s.cfg.DropLast)
	}
	return nil
}

// splitmix64 advances *state and returns the next output of the splitmix64 generator.
func splitmix64(state *uint64) uint64 {
	*state += 0x9e3779b97f4a7c15
	return mix64(*state)
}

// mix64 is splitmix64's finalizer, a bijection of uint64 with good avalanche.
func mix64(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// feistel is the keyed bijection of one epoch, over [0, hiSize * 2^loBits).
type feistel struct {
	keys   [feistelRounds]uint64
	hiSize uint64
	loBits uint
	loMask uint64
	n      uint64 // Len
}

// feistel derives epoch's round keys from (Seed, epoch) with splitmix64. Distinct epochs give distinct
// generator states for a seed, since mix64 is a bijection.
func (s *Sampler) feistel(epoch uint64) feistel {
	f := feistel{hiSize: s.hiSize, loBits: s.loBits, loMask: 1<<s.loBits - 1, n: uint64(s.cfg.Len)}
	st := mix64(mix64(s.cfg.Seed^0x6a09e667f3bcc908) ^ epoch)
	for i := range f.keys {
		f.keys[i] = splitmix64(&st)
	}
	return f
}

// permute maps x in [0, Len) to P(x) in [0, Len).
func (f *feistel) permute(x uint64) uint64 {
	if f.n == 1 {
		return 0
	}
	return f.walk(f.pass(x))
}

// walk finishes the cycle-walk from x = pass(…): while x is outside [0, Len) it applies pass again. That
// ends, because the cycle through the starting position returns to it, and it is rare: the domain
// exceeds Len by less than 2^loBits, about sqrt(Len) (below 2^8 samples the domain is 2^8).
func (f *feistel) walk(x uint64) uint64 {
	for x >= f.n {
		x = f.pass(x)
	}
	return x
}

// pass is one application of the Feistel bijection of [0, hiSize * 2^loBits), x = hi<<loBits | lo:
// rounds alternately add to hi a keyed hash of lo (mod hiSize) and to lo a keyed hash of hi (mod
// 2^loBits). Each round is undone by subtracting the same hash, so the whole is a bijection.
func (f *feistel) pass(x uint64) uint64 {
	hi, lo := x>>f.loBits, x&f.loMask
	for i := 0; i < feistelRounds; i += 2 {
		hi = f.addHi(hi, lo, f.keys[i])
		lo = f.addLo(lo, hi, f.keys[i+1])
	}
	return hi<<f.loBits | lo
}

// pass4 is pass on four values at once.
func (f *feistel) pass4(x0, x1, x2, x3 uint64) (uint64, uint64, uint64, uint64) {
	h0, l0 := x0>>f.loBits, x0&f.loMask
	h1, l1 := x1>>f.loBits, x1&f.loMask
	h2, l2 := x2>>f.loBits, x2&f.loMask
	h3, l3 := x3>>f.loBits, x3&f.loMask
	for i := 0; i < feistelRounds; i += 2 {
		k := f.keys[i]
		h0, h1, h2, h3 = f.addHi(h0, l0, k), f.addHi(h1, l1, k), f.addHi(h2, l2, k), f.addHi(h3, l3, k)
		k = f.keys[i+1]
		l0, l1, l2, l3 = f.addLo(l0, h0, k), f.addLo(l1, h1, k), f.addLo(l2, h2, k), f.addLo(l3, h3, k)
	}
	return h0<<f.loBits | l0, h1<<f.loBits | l1, h2<<f.loBits | l2, h3<<f.loBits | l3
}

// addHi returns (hi + F(lo)) mod hiSize, where F(lo) is hash(lo, key) scaled to [0, hiSize); no branch.
func (f *feistel) addHi(hi, lo, key uint64) uint64 {
	t, _ := bits.Mul64(roundHash(lo, key), f.hiSize)
	d := hi + t - f.hiSize // in (-hiSize, hiSize) as a signed number
	return d + f.hiSize&uint64(int64(d)>>63)
}

// addLo returns (lo + F(hi)) mod 2^loBits, where F(hi) is the top loBits bits of hash(hi, key).
func (f *feistel) addLo(lo, hi, key uint64) uint64 {
	return (lo + roundHash(hi, key)>>(64-f.loBits)) & f.loMask
}

// roundHash is the Feistel round function: a keyed multiply–xorshift–multiply hash, whose top bits are
// used.
func roundHash(x, key uint64) uint64 {
	h := (x ^ key) * 0xbf58476d1ce4e5b9
	h ^= h >> 32
	return h * 0x94d049bb133111eb
}
