package data

import (
	"context"
	"errors"
	"io"
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/enginetest"
)

// TestBlendMegatronMatchesMegatronCore builds every blend fixture as Megatron builds it (each GPTSource
// with MegatronBlendSizes' samples, the blend with its size) and requires megatron-core's dataset and
// dataset-sample index at every position and its tokens and labels for the first samples.
func TestBlendMegatronMatchesMegatronCore(t *testing.T) {
	seen := 0
	for name, fx := range megatronFixtures(t) {
		if fx.Weights == nil {
			continue
		}
		seen++
		t.Run(name, func(t *testing.T) {
			per, size, err := MegatronBlendSizes(fx.Weights, *fx.Size)
			require.NoError(t, err)
			require.Equal(t, fx.Len, size)
			var parts []BlendPart
			for d, prefix := range fx.Prefixes {
				require.Equal(t, *fx.Datasets[d].NumSamples, per[d])
				src, err := NewGPTSource([]string{megatronFixturePrefix(prefix)}, GPTConfig{SeqLen: fx.SeqLen, Order: GPTOrderMegatron,
					Seed: fx.Seed, Split: fx.Split, Which: MegatronSplit(fx.Which), NumSamples: per[d], NoCache: true})
				require.NoError(t, err)
				t.Cleanup(func() { _ = src.Close() })
				parts = append(parts, BlendPart{Weight: fx.Weights[d], Source: src})
			}
			b, err := NewBlendSource(parts, BlendConfig{Size: size, Order: BlendMegatron})
			require.NoError(t, err)
			defer b.Close()
			for p := 0; p < size; p++ {
				d, j := b.Pick(7, p) // the epoch does not matter in Megatron's order
				require.Equal(t, fx.Blend.Dataset[p], int64(d), "position %d", p)
				require.Equal(t, fx.Blend.Sample[p], int64(j), "position %d", p)
			}
			for k, p := range fx.Samples.Positions {
				w := readWindow(t, b, p)
				require.Equal(t, fx.Samples.Tokens[k], w[:fx.SeqLen], "tokens of sample %d", p)
				require.Equal(t, fx.Samples.Labels[k], w[1:], "labels of sample %d", p)
			}
		})
	}
	require.Equal(t, 2, seen)
}

// blendParts is three memory sources of distinct sizes whose one int64 field holds (source << 32 | sample).
func blendParts(t *testing.T, weights []float64, lens []int) []BlendPart {
	t.Helper()
	var parts []BlendPart
	for d, n := range lens {
		data := make([]byte, 8*n)
		for i := range n {
			putInt64(data[8*i:], int64(d)<<32|int64(i))
		}
		src, err := NewMemorySource(n, []Field{{Name: "id", DType: Int64}}, [][]byte{data})
		require.NoError(t, err)
		parts = append(parts, BlendPart{Weight: weights[d], Source: src})
	}
	return parts
}

func putInt64(b []byte, v int64) {
	for k := range 8 {
		b[k] = byte(v >> (8 * k))
	}
}

// TestBlendFerryProportionsAndOrder checks ferry's blend: over every window of 10,000 consecutive
// positions (across an epoch boundary too) each source's share is within 1 % of its weight; each source's
// samples come in its own permutation, each once before any repeats; and a position is the same whenever
// and however it is asked for.
func TestBlendFerryProportionsAndOrder(t *testing.T) {
	weights := []float64{0.5, 0.3, 0.15, 0.05}
	lens := []int{5000, 700, 2600, 40}
	parts := blendParts(t, weights, lens)
	const size = 30000
	b, err := NewBlendSource(parts, BlendConfig{Size: size, Seed: 42})
	require.NoError(t, err)
	defer b.Close()

	var seqSrc []int
	uses := make([]map[int]int, len(parts))
	for d := range uses {
		uses[d] = map[int]int{}
	}
	for e := uint64(0); e < 2; e++ {
		for p := range size {
			d, j := b.Pick(e, p)
			require.True(t, j >= 0 && j < lens[d])
			seqSrc = append(seqSrc, d)
			uses[d][j]++
		}
	}
	// Each source cycles through all its samples before repeating one: counts differ by at most one.
	for d := range parts {
		lo, hi := math.MaxInt, 0
		for j := range lens[d] {
			lo, hi = min(lo, uses[d][j]), max(hi, uses[d][j])
		}
		require.LessOrEqual(t, hi-lo, 1, "source %d", d)
	}
	const window = 10000
	counts := make([]int, len(parts))
	worst := 0.0
	for p, d := range seqSrc {
		counts[d]++
		if p >= window {
			counts[seqSrc[p-window]]--
		}
		if p >= window-1 {
			for d, w := range weights {
				worst = max(worst, math.Abs(float64(counts[d])/window-w))
			}
		}
	}
	require.Less(t, worst, 0.01, "largest deviation of a source's share over 10,000 consecutive samples")
	t.Logf("largest deviation over any 10,000 consecutive samples: %.4f", worst)

	// Same answer from a fresh blend with the same seed; a different seed gives another order.
	again, err := NewBlendSource(parts, BlendConfig{Size: size, Seed: 42})
	require.NoError(t, err)
	other, err := NewBlendSource(parts, BlendConfig{Size: size, Seed: 43})
	require.NoError(t, err)
	diff := 0
	for _, p := range []int{29999, 0, 12345, 7} {
		d1, j1 := b.Pick(1, p)
		d2, j2 := again.Pick(1, p)
		require.Equal(t, [2]int{d1, j1}, [2]int{d2, j2})
		if d3, j3 := other.Pick(1, p); d3 != d1 || j3 != j1 {
			diff++
		}
	}
	require.Positive(t, diff)
	d, j := b.Pick(0, size)
	require.Equal(t, [2]int{-1, -1}, [2]int{d, j})
}

// TestBlendThroughIterator reads a ferry blend through the CPU iterator: epoch e's batches are the Pick of
// epoch e, and a resume from a saved state continues with the same samples.
func TestBlendThroughIterator(t *testing.T) {
	e := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	parts := blendParts(t, []float64{1, 3}, []int{50, 70})
	b, err := NewBlendSource(parts, BlendConfig{Size: 300, Seed: 1})
	require.NoError(t, err)
	opts := IteratorOptions{BatchSize: 32, Workers: 2}
	it, err := NewIterator(e, b, opts)
	require.NoError(t, err)
	defer it.Close()
	var saved IteratorState
	var afterSave []int64
	for epoch := uint64(0); epoch < 2; epoch++ {
		for k := 0; ; k++ {
			bt, err := it.Next(context.Background(), 0)
			if errors.Is(err, io.EOF) {
				break
			}
			require.NoError(t, err)
			require.Equal(t, epoch, bt.Epoch)
			ids := int64s(bt.Fields[0].Host)
			for r, p := range bt.Indices {
				d, j := b.Pick(epoch, p)
				require.Equal(t, int64(d)<<32|int64(j), ids[r], "epoch %d position %d", epoch, p)
			}
			if epoch == 1 && k == 2 {
				saved = it.State()
			}
			if epoch == 1 && k == 3 {
				afterSave = ids
			}
			require.NoError(t, bt.Release(0))
		}
	}
	re, err := NewIterator(e, b, opts)
	require.NoError(t, err)
	defer re.Close()
	require.NoError(t, re.Restore(saved))
	bt, err := re.Next(context.Background(), 0)
	require.NoError(t, err)
	require.Equal(t, afterSave, int64s(bt.Fields[0].Host))
	require.NoError(t, bt.Release(0))
}

func TestBlendRefusesBadParts(t *testing.T) {
	parts := blendParts(t, []float64{1, 1}, []int{10, 10})
	other, err := NewMemorySource(4, []Field{{Name: "id", DType: Int32}}, [][]byte{make([]byte, 16)})
	require.NoError(t, err)
	for _, c := range []struct {
		parts []BlendPart
		cfg   BlendConfig
		want  string
	}{
		{nil, BlendConfig{Size: 5}, "0 sources"},
		{parts, BlendConfig{}, "size 0"},
		{parts, BlendConfig{Size: 5, Order: 4}, "unknown order"},
		{[]BlendPart{{1, parts[0].Source}, {0, parts[1].Source}}, BlendConfig{Size: 5}, "weight 0"},
		{[]BlendPart{{1, parts[0].Source}, {math.NaN(), parts[1].Source}}, BlendConfig{Size: 5}, "weight NaN"},
		{[]BlendPart{{1, parts[0].Source}, {1, nil}}, BlendConfig{Size: 5}, "source 1 is missing"},
		{[]BlendPart{{1, parts[0].Source}, {1, other}}, BlendConfig{Size: 5}, "differ from source 0"},
		{parts, BlendConfig{Size: 25, Order: BlendMegatron}, "holds 10"},
	} {
		_, err := NewBlendSource(c.parts, c.cfg)
		require.Error(t, err)
		require.Contains(t, err.Error(), c.want)
		require.ErrorIs(t, err, engine.ErrInvalidArgument)
	}
}
