package data

import (
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ferry-ml/ferry/engine"

	"github.com/stretchr/testify/require"
)

// samplerRand returns a generator seeded from the clock; the seed is logged so a failure can be replayed.
func samplerRand(t *testing.T) *rand.Rand {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	t.Logf("random seed %d", seed)
	return rand.New(rand.NewPCG(seed, seed^0x5bd1e995))
}

func newTestSampler(t testing.TB, cfg SamplerConfig) *Sampler {
	t.Helper()
	s, err := NewSampler(cfg)
	require.NoError(t, err, "%+v", cfg)
	return s
}

// globalOrder materializes epoch's permutation through Index.
func globalOrder(s *Sampler, epoch uint64) []int {
	out := make([]int, s.Config().Len)
	for p := range out {
		out[p] = s.Index(epoch, p)
	}
	return out
}

// requirePermutation checks that perm holds every value of [0, len(perm)) exactly once.
func requirePermutation(t *testing.T, perm []int, msg string) {
	t.Helper()
	n := len(perm)
	seen := make([]uint64, (n+63)/64)
	for p, v := range perm {
		if v < 0 || v >= n {
			t.Fatalf("%s: position %d holds %d, outside [0, %d)", msg, p, v, n)
		}
		if seen[v/64]&(1<<(v%64)) != 0 {
			t.Fatalf("%s: sample %d appears twice (again at position %d)", msg, v, p)
		}
		seen[v/64] |= 1 << (v % 64)
	}
}

// refDistributedSampler is torch.utils.data.DistributedSampler.__iter__ applied to an already shuffled
// order, written as literally as Go allows.
func refDistributedSampler(indices []int, numReplicas, rank int, dropLast bool) []int {
	n := len(indices)
	var numSamples int
	if dropLast && n%numReplicas != 0 {
		numSamples = int(math.Ceil(float64(n-numReplicas) / float64(numReplicas)))
	} else {
		numSamples = int(math.Ceil(float64(n) / float64(numReplicas)))
	}
	totalSize := numSamples * numReplicas
	indices = append([]int(nil), indices...)
	if !dropLast {
		paddingSize := totalSize - n
		if paddingSize <= n {
			indices = append(indices, indices[:paddingSize]...)
		} else {
			var rep []int
			for range int(math.Ceil(float64(paddingSize) / float64(n))) {
				rep = append(rep, indices[:n]...)
			}
			indices = append(indices, rep[:paddingSize]...)
		}
	} else {
		indices = indices[:totalSize]
	}
	if len(indices) != totalSize {
		panic("reference: wrong total size")
	}
	var out []int
	for i := rank; i < totalSize; i += numReplicas {
		out = append(out, indices[i])
	}
	return out
}

// refBatches is torch's BatchSampler over a rank's samples.
func refBatches(samples []int, batchSize int, dropLast bool) [][]int {
	var out [][]int
	for i := 0; i < len(samples); i += batchSize {
		end := min(i+batchSize, len(samples))
		if dropLast && end-i < batchSize {
			break
		}
		out = append(out, samples[i:end])
	}
	return out
}

func TestNewSamplerRejectsBadConfig(t *testing.T) {
	for _, tc := range []struct {
		cfg  SamplerConfig
		want string
	}{
		{SamplerConfig{Len: 0, BatchSize: 1}, "Len is 0"},
		{SamplerConfig{Len: -5, BatchSize: 1}, "Len is -5"},
		{SamplerConfig{Len: math.MaxInt, BatchSize: 1}, "at most 2^62"},
		{SamplerConfig{Len: 10, BatchSize: 0}, "BatchSize is 0"},
		{SamplerConfig{Len: 10, BatchSize: -3}, "BatchSize is -3"},
		{SamplerConfig{Len: 10, BatchSize: 1, WorldSize: -1}, "WorldSize is -1"},
		{SamplerConfig{Len: 10, BatchSize: 1, WorldSize: math.MaxInt}, "WorldSize 9223372036854775807 is too large"},
		{SamplerConfig{Len: 10, BatchSize: 1, Rank: -1, WorldSize: 2}, "Rank is -1"},
		{SamplerConfig{Len: 10, BatchSize: 1, Rank: 2, WorldSize: 2}, "Rank is 2; it must be in [0, 2)"},
		{SamplerConfig{Len: 10, BatchSize: 1, Rank: 1}, "Rank is 1; it must be in [0, 1) for WorldSize 1"},
		{SamplerConfig{Len: 3, BatchSize: 1, WorldSize: 4, DropLast: true}, "Len 3 is less than WorldSize 4"},
		{SamplerConfig{Len: 10, BatchSize: 4, WorldSize: 4, DropLast: true}, "each rank gets 2 samples (Len 10, WorldSize 4), fewer than BatchSize 4"},
	} {
		s, err := NewSampler(tc.cfg)
		require.ErrorIs(t, err, engine.ErrInvalidArgument, "%+v", tc.cfg)
		require.ErrorContains(t, err, tc.want)
		require.Nil(t, s)
	}
	// Edge cases that are valid.
	s := newTestSampler(t, SamplerConfig{Len: 3, BatchSize: 100, WorldSize: 4})
	require.Equal(t, 1, s.SamplesPerRank())
	require.Equal(t, 1, s.BatchesPerEpoch())
	require.Equal(t, 4, newTestSampler(t, SamplerConfig{Len: 3, BatchSize: 1, Rank: 3, WorldSize: 4}).Config().WorldSize)
	require.Equal(t, 1, newTestSampler(t, SamplerConfig{Len: 3, BatchSize: 1}).Config().WorldSize, "WorldSize 0 means 1")
}

func TestSamplerPermutationExhaustive(t *testing.T) {
	r := samplerRand(t)
	var dst []int
	for n := 1; n <= 2000; n++ {
		seed, epoch := r.Uint64(), r.Uint64N(1000)
		s := newTestSampler(t, SamplerConfig{Len: n, BatchSize: n, Shuffle: true, Seed: seed})
		var err error
		dst, err = s.Batch(epoch, 0, dst)
		require.NoError(t, err)
		require.Len(t, dst, n)
		requirePermutation(t, dst, "Len "+strconv.Itoa(n))
		// Index agrees with Batch at every position.
		for p, v := range dst {
			if got := s.Index(epoch, p); got != v {
				t.Fatalf("Len %d seed %d epoch %d: Index(%d) = %d, Batch has %d", n, seed, epoch, p, got, v)
			}
		}
	}
	for _, n := range []int{1 << 20, 1<<20 + 7, 1<<21 - 1, 3_000_017} {
		seed, epoch := r.Uint64(), r.Uint64()
		s := newTestSampler(t, SamplerConfig{Len: n, BatchSize: n, Shuffle: true, Seed: seed})
		perm, err := s.Batch(epoch, 0, nil)
		require.NoError(t, err)
		require.Len(t, perm, n)
		requirePermutation(t, perm, "Len "+strconv.Itoa(n))
		fixed := 0
		for p, v := range perm {
			if p == v {
				fixed++
			}
		}
		require.Less(t, fixed, 20, "Len %d: a random permutation has about one fixed point", n)
	}
}

func TestSamplerSequential(t *testing.T) {
	s := newTestSampler(t, SamplerConfig{Len: 10, BatchSize: 4, Seed: 7})
	for _, e := range []uint64{0, 1, 99} {
		require.Equal(t, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, globalOrder(s, e))
	}
	b, err := s.Batch(3, 2, nil)
	require.NoError(t, err)
	require.Equal(t, []int{8, 9}, b)
	// Sharded without shuffle: rank 1 of 4 over 10 samples, padded to 12 with 0 and 1.
	s = newTestSampler(t, SamplerConfig{Len: 10, BatchSize: 2, Rank: 1, WorldSize: 4})
	var got []int
	for i := range s.BatchesPerEpoch() {
		b, err := s.Batch(0, i, nil)
		require.NoError(t, err)
		got = append(got, b...)
	}
	require.Equal(t, []int{1, 5, 9}, got)
	s = newTestSampler(t, SamplerConfig{Len: 10, BatchSize: 3, Rank: 2, WorldSize: 4})
	b, err = s.Batch(0, 0, nil)
	require.NoError(t, err)
	require.Equal(t, []int{2, 6, 0}, b, "position 10 is the padding's first sample, 0")
}

// TestSamplerPinnedOrder pins the shuffled order, so that a change to the algorithm, which would break
// resuming from a saved state across versions, cannot go unnoticed.
func TestSamplerPinnedOrder(t *testing.T) {
	s := newTestSampler(t, SamplerConfig{Len: 10, BatchSize: 1, Shuffle: true, Seed: 42})
	require.Equal(t, pinnedOrder10, globalOrder(s, 0))
	s = newTestSampler(t, SamplerConfig{Len: 1<<20 + 7, BatchSize: 1, Shuffle: true, Seed: 1})
	require.Equal(t, pinnedLarge, []int{s.Index(0, 0), s.Index(7, 123456), s.Index(1<<40, 1<<20+6)})
}

var (
	pinnedOrder10 = []int{1, 5, 3, 8, 4, 2, 9, 7, 0, 6}
	pinnedLarge   = []int{298160, 358458, 347937}
)

func TestSamplerUniform(t *testing.T) {
	// Deterministic (fixed seeds), so these bounds cannot fail by chance; a biased or broken shuffle
	// lands far above them (the identity gives chi-square (n-1)*E).
	for _, n := range []int{2, 3, 7, 10, 33} {
		s := newTestSampler(t, SamplerConfig{Len: n, BatchSize: n, Shuffle: true, Seed: 12345})
		const perCell = 400
		epochs := perCell * n
		counts := make([]int, n*n) // counts[pos*n+value]
		var dst []int
		for e := range epochs {
			var err error
			dst, err = s.Batch(uint64(e), 0, dst)
			require.NoError(t, err)
			for p, v := range dst {
				counts[p*n+v]++
			}
		}
		chi2 := 0.0
		for _, c := range counts {
			d := float64(c - perCell)
			chi2 += d * d / perCell
		}
		df := float64((n - 1) * (n - 1))
		bound := df + 6*math.Sqrt(2*df) + 4
		t.Logf("Len %d: position×sample chi-square %.1f, %v degrees of freedom, bound %.1f", n, chi2, df, bound)
		require.Less(t, chi2, bound, "Len %d: sample by position is not uniform over %d epochs", n, epochs)
	}

	// Where sample 0 lands, over many epochs of a larger set, in 10 buckets of positions.
	const n, epochs, buckets = 500, 4000, 10
	s := newTestSampler(t, SamplerConfig{Len: n, BatchSize: n, Shuffle: true, Seed: 777})
	hist := make([]int, buckets)
	var dst []int
	for e := range epochs {
		var err error
		dst, err = s.Batch(uint64(e), 0, dst)
		require.NoError(t, err)
		for p, v := range dst {
			if v == 0 {
				hist[p*buckets/n]++
			}
		}
	}
	chi2 := 0.0
	for _, c := range hist {
		d := float64(c - epochs/buckets)
		chi2 += d * d / (epochs / buckets)
	}
	t.Logf("position of sample 0 by tenth: %v, chi-square %.1f", hist, chi2)
	require.Less(t, chi2, 9+6*math.Sqrt(18), "sample 0's position is not spread: %v", hist)
}

// TestSamplerNoCorrelation looks for structure a weak keyed permutation shows: neighbouring positions
// (or positions one rank stride apart) holding related samples, or consecutive epochs agreeing.
func TestSamplerNoCorrelation(t *testing.T) {
	r := samplerRand(t)
	const n = 1 << 20
	s := newTestSampler(t, SamplerConfig{Len: n - 13, BatchSize: 1, Shuffle: true, Seed: r.Uint64()})
	e := r.Uint64()
	cur, next := globalOrder(s, e), globalOrder(s, e+1)
	corr := func(a, b []int) float64 { // Pearson correlation
		var sa, sb, saa, sbb, sab float64
		for i := range a {
			x, y := float64(a[i]), float64(b[i])
			sa, sb, saa, sbb, sab = sa+x, sb+y, saa+x*x, sbb+y*y, sab+x*y
		}
		m := float64(len(a))
		return (sab/m - sa/m*sb/m) / math.Sqrt((saa/m-sa*sa/m/m)*(sbb/m-sb*sb/m/m))
	}
	// The standard error of a correlation over ~2^20 pairs is about 0.001.
	for _, stride := range []int{1, 2, 8, 64, 1024} {
		c := corr(cur[:len(cur)-stride], cur[stride:])
		require.Less(t, math.Abs(c), 0.008, "positions %d apart are correlated: %.4f", stride, c)
		gap := 0.0
		for i := stride; i < len(cur); i++ {
			gap += math.Abs(float64(cur[i] - cur[i-stride]))
		}
		gap /= float64(len(cur)-stride) * float64(len(cur))
		require.InDelta(t, 1.0/3, gap, 0.004, "the mean distance between samples %d positions apart", stride)
	}
	c := corr(cur, next)
	require.Less(t, math.Abs(c), 0.008, "consecutive epochs are correlated: %.4f", c)
	c = corr(cur, globalOrder(newTestSampler(t, SamplerConfig{Len: n - 13, BatchSize: 1}), 0))
	require.Less(t, math.Abs(c), 0.008, "the order is correlated with the position: %.4f", c)
}

func TestSamplerEpochsAndSeedsDiffer(t *testing.T) {
	r := samplerRand(t)
	const n = 10000
	seed := r.Uint64()
	agree := func(a, b []int) int {
		k := 0
		for i := range a {
			if a[i] == b[i] {
				k++
			}
		}
		return k
	}
	base := globalOrder(newTestSampler(t, SamplerConfig{Len: n, BatchSize: 1, Shuffle: true, Seed: seed}), 5)
	for _, tc := range []struct {
		name  string
		seed  uint64
		epoch uint64
	}{
		{"next epoch", seed, 6},
		{"previous epoch", seed, 4},
		{"far epoch", seed, 5 + 1<<32},
		{"next seed", seed + 1, 5},
		{"seed with the top bit flipped", seed ^ 1<<63, 5},
		{"seed and epoch swapped by one", seed + 1, 4},
	} {
		other := globalOrder(newTestSampler(t, SamplerConfig{Len: n, BatchSize: 1, Shuffle: true, Seed: tc.seed}), tc.epoch)
		requirePermutation(t, other, tc.name)
		require.Less(t, agree(base, other), 12, "%s: two independent orders agree at about one position", tc.name)
	}
	// The same (seed, epoch) gives the same order from another sampler with other batch settings.
	again := newTestSampler(t, SamplerConfig{Len: n, BatchSize: 77, Shuffle: true, Seed: seed, Rank: 3, WorldSize: 5})
	require.Equal(t, base, globalOrder(again, 5))
}

func TestSamplerShardingMatchesDistributedSampler(t *testing.T) {
	r := samplerRand(t)
	var checked, rejected int
	for _, n := range []int{1, 2, 3, 7, 10, 16, 17, 100, 101, 257, 1000} {
		for _, w := range []int{1, 2, 3, 4, 8, 13} {
			for _, bs := range []int{1, 3, 8, 32} {
				for _, dropLast := range []bool{false, true} {
					for _, shuffle := range []bool{false, true} {
						seed, epoch := r.Uint64(), r.Uint64N(1<<20)
						perm := make([]int, n)
						for rank := range w {
							cfg := SamplerConfig{Len: n, BatchSize: bs, Shuffle: shuffle, Seed: seed, DropLast: dropLast, Rank: rank, WorldSize: w}
							want := refBatches(refDistributedSampler(perm, w, rank, dropLast), bs, dropLast)
							s, err := NewSampler(cfg)
							if len(want) == 0 {
								require.ErrorIs(t, err, engine.ErrInvalidArgument, "%+v gives no batch", cfg)
								rejected++
								continue
							}
							require.NoError(t, err, "%+v", cfg)
							if rank == 0 {
								perm = globalOrder(s, epoch)
								want = refBatches(refDistributedSampler(perm, w, rank, dropLast), bs, dropLast)
							}
							require.Equal(t, len(want), s.BatchesPerEpoch(), "%+v", cfg)
							require.Equal(t, len(refDistributedSampler(perm, w, rank, dropLast)), s.SamplesPerRank(), "%+v", cfg)
							for b, wb := range want {
								got, err := s.Batch(epoch, b, nil)
								require.NoError(t, err)
								require.Equal(t, wb, got, "%+v epoch %d batch %d", cfg, epoch, b)
								require.Equal(t, len(wb), s.BatchLen(b))
							}
							checked++
						}
					}
				}
			}
		}
	}
	t.Logf("%d (config, rank) pairs match the reference; %d configurations without batches rejected", checked, rejected)
	require.Greater(t, rejected, 0)
}

func TestSamplerRanksPartitionTheEpoch(t *testing.T) {
	r := samplerRand(t)
	for _, tc := range []struct{ n, w, bs int }{{12, 4, 3}, {22, 4, 2}, {1000, 8, 32}, {4096, 16, 256}, {999, 3, 7}} {
		for _, dropLast := range []bool{false, true} {
			seed, epoch := r.Uint64(), r.Uint64()
			seen := make([]int, tc.n)
			for rank := range tc.w {
				s := newTestSampler(t, SamplerConfig{Len: tc.n, BatchSize: tc.bs, Shuffle: true, Seed: seed, DropLast: dropLast, Rank: rank, WorldSize: tc.w})
				for b := range s.BatchesPerEpoch() {
					batch, err := s.Batch(epoch, b, nil)
					require.NoError(t, err)
					for _, v := range batch {
						seen[v]++
					}
				}
			}
			perRank := (tc.n + tc.w - 1) / tc.w
			if dropLast {
				perRank = tc.n / tc.w / tc.bs * tc.bs
			}
			total, twice := 0, 0
			for v, c := range seen {
				total += c
				switch {
				case tc.n%tc.w == 0 && (!dropLast || tc.n/tc.w%tc.bs == 0):
					require.Equal(t, 1, c, "n %d w %d: sample %d is seen %d times", tc.n, tc.w, v, c)
				case dropLast:
					require.LessOrEqual(t, c, 1, "n %d w %d drop_last: sample %d is seen %d times", tc.n, tc.w, v, c)
				default:
					require.Contains(t, []int{1, 2}, c, "n %d w %d: sample %d is seen %d times", tc.n, tc.w, v, c)
				}
				if c == 2 {
					twice++
				}
			}
			require.Equal(t, tc.w*perRank, total, "n %d w %d bs %d drop_last %v", tc.n, tc.w, tc.bs, dropLast)
			if !dropLast {
				require.Equal(t, tc.w*perRank-tc.n, twice, "the padding repeats that many samples")
			}
		}
	}
}

func TestSamplerBatchCounts(t *testing.T) {
	for _, tc := range []struct {
		n, bs, w        int
		dropLast        bool
		perRank, batchN int
		lastLen         int
	}{
		{10, 3, 1, false, 10, 4, 1},
		{10, 3, 1, true, 10, 3, 3},
		{10, 3, 3, false, 4, 2, 1},
		{10, 3, 3, true, 3, 1, 3},
		{10, 4, 4, false, 3, 1, 3},
		{7, 2, 8, false, 1, 1, 1},
		{9, 2, 8, true, 1, 0, 0}, // rejected: one sample per rank, batches of 2
		{7, 1, 8, true, 0, 0, 0}, // rejected: fewer samples than ranks
		{1000, 256, 3, false, 334, 2, 78},
		{1000, 256, 3, true, 333, 1, 256},
		{1024, 256, 4, true, 256, 1, 256},
		{1<<20 + 7, 256, 8, false, 131073, 513, 1},
		{1<<20 + 7, 256, 8, true, 131072, 512, 256},
		{1_281_167, 256, 8, true, 160145, 625, 256},
		{1_281_167, 256, 8, false, 160146, 626, 146},
	} {
		cfg := SamplerConfig{Len: tc.n, BatchSize: tc.bs, WorldSize: tc.w, DropLast: tc.dropLast, Rank: tc.w - 1, Shuffle: true}
		s, err := NewSampler(cfg)
		if tc.batchN == 0 {
			require.ErrorIs(t, err, engine.ErrInvalidArgument, "%+v", cfg)
			continue
		}
		require.NoError(t, err, "%+v", cfg)
		require.Equal(t, tc.perRank, s.SamplesPerRank(), "%+v", cfg)
		require.Equal(t, tc.batchN, s.BatchesPerEpoch(), "%+v", cfg)
		require.Equal(t, min(tc.bs, tc.perRank), s.BatchLen(0), "%+v", cfg)
		require.Equal(t, tc.lastLen, s.BatchLen(tc.batchN-1), "%+v", cfg)
		last, err := s.Batch(1, tc.batchN-1, nil)
		require.NoError(t, err)
		require.Len(t, last, tc.lastLen)
		require.Zero(t, s.BatchLen(tc.batchN))
		require.Zero(t, s.BatchLen(-1))
	}
}

func TestSamplerOutOfRange(t *testing.T) {
	s := newTestSampler(t, SamplerConfig{Len: 50, BatchSize: 8, Shuffle: true, Seed: 3})
	require.Equal(t, 7, s.BatchesPerEpoch())
	buf := make([]int, 3, 16)
	for _, b := range []int{-1, 7, math.MaxInt} {
		got, err := s.Batch(0, b, buf)
		require.ErrorIs(t, err, engine.ErrInvalidArgument)
		require.ErrorContains(t, err, "batch "+strconv.Itoa(b)+" of an epoch with 7 batches")
		require.Empty(t, got)
	}
	require.Equal(t, -1, s.Index(0, -1))
	require.Equal(t, -1, s.Index(0, 50))
	require.NoError(t, s.CheckState(SamplerState{Epoch: 9, Batch: 6}))
	require.ErrorIs(t, s.CheckState(SamplerState{Batch: 7}), engine.ErrInvalidArgument)
	require.ErrorIs(t, s.CheckState(SamplerState{Batch: -1}), engine.ErrInvalidArgument)
	// Len 1 shuffles trivially.
	one := newTestSampler(t, SamplerConfig{Len: 1, BatchSize: 4, Shuffle: true, Seed: 3})
	b, err := one.Batch(12, 0, nil)
	require.NoError(t, err)
	require.Equal(t, []int{0}, b)
}

func TestSamplerCallOrderAndConcurrency(t *testing.T) {
	r := samplerRand(t)
	cfg := SamplerConfig{Len: 5003, BatchSize: 64, Shuffle: true, Seed: r.Uint64(), Rank: 2, WorldSize: 3}
	inOrder := newTestSampler(t, cfg)
	const epochs = 3
	nb := inOrder.BatchesPerEpoch()
	want := make([][]int, epochs*nb)
	for i := range want {
		b, err := inOrder.Batch(uint64(i/nb), i%nb, nil)
		require.NoError(t, err)
		want[i] = b
	}
	// Another sampler, batches asked for in a random order and from several goroutines at once, with
	// reused buffers.
	other := newTestSampler(t, cfg)
	order := r.Perm(len(want))
	got := make([][]int, len(want))
	var wg sync.WaitGroup
	const workers = 4
	errs := make([]error, workers)
	for w := range workers {
		wg.Go(func() {
			var buf []int
			for k := w; k < len(order); k += workers {
				i := order[k]
				var err error
				buf, err = other.Batch(uint64(i/nb), i%nb, buf)
				if err != nil {
					errs[w] = err
					return
				}
				got[i] = append([]int(nil), buf...)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	require.Equal(t, want, got)
	require.NotEqual(t, want[0], want[nb], "epoch 1 starts differently from epoch 0")
}

func TestSamplerResume(t *testing.T) {
	r := samplerRand(t)
	for _, cfg := range []SamplerConfig{
		{Len: 1000, BatchSize: 64, Shuffle: true, Seed: r.Uint64()},
		{Len: 1001, BatchSize: 10, Shuffle: true, Seed: r.Uint64(), DropLast: true, Rank: 1, WorldSize: 4},
		{Len: 97, BatchSize: 7, Rank: 2, WorldSize: 3},
	} {
		s := newTestSampler(t, cfg)
		nb := s.BatchesPerEpoch()
		total := 3*nb + 2
		var states []SamplerState
		var batches [][]int
		st := SamplerState{}
		for range total {
			require.NoError(t, s.CheckState(st))
			states = append(states, st)
			b, err := s.Batch(st.Epoch, st.Batch, nil)
			require.NoError(t, err)
			batches = append(batches, b)
			st = s.Next(st)
		}
		require.Equal(t, SamplerState{Epoch: 3, Batch: 2}, st)
		for _, k := range []int{0, 1, nb - 1, nb, nb + 1, 2*nb + r.IntN(nb), total - 1} {
			resumed := newTestSampler(t, cfg) // as after a restart
			st := states[k]
			for i := k; i < total; i++ {
				require.Equal(t, states[i], st)
				b, err := resumed.Batch(st.Epoch, st.Batch, nil)
				require.NoError(t, err)
				require.Equal(t, batches[i], b, "%+v resumed at %d: batch %d differs", cfg, k, i)
				st = resumed.Next(st)
			}
		}
	}
}

func TestSamplerBatchDoesNotAllocate(t *testing.T) {
	s := newTestSampler(t, SamplerConfig{Len: 1_281_167, BatchSize: 256, Shuffle: true, Seed: 1, Rank: 3, WorldSize: 8})
	buf := make([]int, 0, 256)
	allocs := testing.AllocsPerRun(100, func() {
		buf, _ = s.Batch(2, 17, buf)
	})
	require.Zero(t, allocs)
	require.Len(t, buf, 256)
}

func BenchmarkSamplerBatch(b *testing.B) {
	s := newTestSampler(b, SamplerConfig{Len: 1_281_167, BatchSize: 256, Shuffle: true, Seed: 1, Rank: 3, WorldSize: 8})
	buf := make([]int, 0, 256)
	nb := s.BatchesPerEpoch()
	i := 0
	for b.Loop() {
		buf, _ = s.Batch(uint64(i/nb), i%nb, buf)
		i++
	}
}
