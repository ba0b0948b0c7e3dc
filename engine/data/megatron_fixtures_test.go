package data

import (
	"compress/gzip"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// megatronFixture is one configuration built by megatron-core (testdata/megatron/generate.py).
type megatronFixture struct {
	Generator   string    `json:"generator"`
	Prefixes    []string  `json:"prefixes"`
	Weights     []float64 `json:"weights"`
	SeqLen      int       `json:"seq_len"`
	Seed        uint32    `json:"seed"`
	Split       string    `json:"split"`
	Which       int       `json:"which"`
	Size        *int      `json:"size"`
	EOD         int64     `json:"eod"`
	EODMaskLoss bool      `json:"eod_mask_loss"`
	ResetPos    bool      `json:"reset_position_ids"`
	Len         int       `json:"len"`
	Datasets    []struct {
		NumSamples *int    `json:"num_samples"`
		Len        int     `json:"len"`
		Documents  []int64 `json:"document_index"`
		Samples    []int64 `json:"sample_index"`
		Shuffle    []int64 `json:"shuffle_index"`
	} `json:"datasets"`
	Blend *struct {
		Dataset []int64 `json:"dataset_index"`
		Sample  []int64 `json:"dataset_sample_index"`
	} `json:"blend"`
	Samples struct {
		Positions   []int       `json:"positions"`
		Tokens      [][]int64   `json:"tokens"`
		Labels      [][]int64   `json:"labels"`
		LossMask    [][]float64 `json:"loss_mask"`
		PositionIDs [][]int64   `json:"position_ids"`
	} `json:"samples"`
}

func megatronFixtures(t *testing.T) map[string]*megatronFixture {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join("testdata", "megatron", "*.json.gz"))
	require.NoError(t, err)
	require.NotEmpty(t, paths)
	out := map[string]*megatronFixture{}
	for _, p := range paths {
		f, err := os.Open(p)
		require.NoError(t, err)
		zr, err := gzip.NewReader(f)
		require.NoError(t, err)
		var fx megatronFixture
		require.NoError(t, json.NewDecoder(zr).Decode(&fx))
		require.NoError(t, f.Close())
		out[strings.TrimSuffix(filepath.Base(p), ".json.gz")] = &fx
	}
	return out
}

func megatronFixturePrefix(name string) string { return filepath.Join("testdata", "megatron", name) }

func asInt64[T int32 | int64 | int16](s []T) []int64 {
	out := make([]int64, len(s))
	for i, v := range s {
		out[i] = int64(v)
	}
	return out
}

// TestMegatronIndexMatchesMegatronCore rebuilds, for every fixture, each GPTDataset's document, sample and
// shuffle index and the blend's dataset and dataset-sample index, and requires them equal to
// megatron-core's, element by element.
func TestMegatronIndexMatchesMegatronCore(t *testing.T) {
	for name, fx := range megatronFixtures(t) {
		t.Run(name, func(t *testing.T) {
			require.Len(t, fx.Datasets, len(fx.Prefixes))
			var build []int
			if fx.Weights != nil {
				target, b, err := megatronBlendSizes(fx.Weights, *fx.Size)
				require.NoError(t, err)
				build = b
				sum := 0
				for _, v := range target {
					sum += v
				}
				require.Equal(t, fx.Len, sum, "blend size")
			}
			for d, prefix := range fx.Prefixes {
				src, err := NewMegatronSource(megatronFixturePrefix(prefix), MegatronConfig{MaxLen: 1})
				require.NoError(t, err)
				t.Cleanup(func() { _ = src.Close() })
				beg, end, ok, err := megatronSplitRange(fx.Split, MegatronSplit(fx.Which), src.Len())
				require.NoError(t, err)
				require.True(t, ok)
				n := 0
				switch {
				case build != nil:
					n = build[d]
				case fx.Size != nil:
					n = *fx.Size
				}
				want := fx.Datasets[d]
				if want.NumSamples != nil {
					require.Equal(t, *want.NumSamples, n, "dataset %d's number of samples", d)
				}
				idx, err := buildMegatronGPTIndex(src.seqLen32, beg, end, megatronGPTParams{
					seqLen: fx.SeqLen, seed: fx.Seed, which: MegatronSplit(fx.Which), numSamples: n,
				})
				require.NoError(t, err)
				require.Equal(t, want.Len, idx.Len(), "dataset %d's length", d)
				switch name {
				case "epochs_separate_last":
					require.True(t, idx.epochs > 1 && idx.separate, "%d epochs, separate %v", idx.epochs, idx.separate)
				case "epochs_joint_last":
					require.True(t, idx.epochs > 1 && !idx.separate, "%d epochs, separate %v", idx.epochs, idx.separate)
				}
				require.Equal(t, want.Documents, asInt64(idx.docs), "dataset %d's document index", d)
				require.Equal(t, want.Samples, idx.samples, "dataset %d's sample index", d)
				require.Equal(t, want.Shuffle, idx.shuffle, "dataset %d's shuffle index", d)
			}
			if fx.Blend != nil {
				w, err := megatronNormalize(fx.Weights)
				require.NoError(t, err)
				ds, ss := megatronBlendIndex(w, fx.Len)
				require.Equal(t, fx.Blend.Dataset, asInt64(ds), "blend dataset index")
				require.Equal(t, fx.Blend.Sample, ss, "blend dataset-sample index")
			}
		})
	}
}

// TestNumpyRandomState pins the generator to numpy: RandomState(seed).shuffle(arange(n)) and the draw
// after it, as numpy printed them.
func TestNumpyRandomState(t *testing.T) {
	for _, c := range []struct {
		seed  uint32
		n     int
		first []int32
		dot   int64 // sum of i*a[i] mod 2^61-1
		after uint32
	}{
		{0, 10, []int32{2, 8, 4, 9, 1, 6, 7, 3}, 185, 1879422756},
		{1234, 37, []int32{8, 36, 14, 1, 4, 29, 20, 17}, 13034, 1360800782},
		{4294967295, 1000, []int32{94, 405, 819, 632, 217, 169, 449, 275}, 249935792, 442012709},
		{42, 70000, []int32{46730, 48393, 41416, 34506, 43725, 11615, 24656, 22411}, 85612547933264, 163248839},
	} {
		r := newNumpyRandomState(c.seed)
		a := make([]int32, c.n)
		for i := range a {
			a[i] = int32(i)
		}
		npShuffle(r, a)
		require.Equal(t, c.first, a[:8], "seed %d", c.seed)
		var dot int64
		for i, v := range a {
			dot = (dot + int64(i)*int64(v)) % (1<<61 - 1)
		}
		require.Equal(t, c.dot, dot, "seed %d", c.seed)
		require.Equal(t, c.after, r.uint32()&0x7fffffff, "seed %d: randint(2**31) after the shuffle", c.seed)
	}
}

// TestNumpyIntervals checks the batched draws of a shuffle's walk against interval's, one call per draw:
// the same values and the generator left in the same state, across mask boundaries, down to limit 0, and
// for limits beyond 32 bits.
func TestNumpyIntervals(t *testing.T) {
	for _, c := range []struct {
		seed uint32
		hi   uint64
		n    int
	}{
		{1, 10, 11}, {2, 1, 2}, {3, 1024, 1025}, {4, 1 << 20, 5000}, {5, 1<<20 + 3, 700}, {6, 1800000, 70000},
		{7, 0xffffffff, 2000}, {8, 1<<32 + 100, 300}, {9, 65, 3},
	} {
		want := newNumpyRandomState(c.seed)
		got := newNumpyRandomState(c.seed)
		for range int(c.seed) * 97 { // start off a state boundary
			want.uint32()
			got.uint32()
		}
		d := make([]uint32, c.n)
		got.intervals(d, c.hi)
		for k := range d {
			require.Equal(t, uint32(want.interval(c.hi-uint64(k))), d[k], "seed %d, draw %d (limit %d)", c.seed, k, c.hi-uint64(k))
		}
		require.Equal(t, want.uint32(), got.uint32(), "seed %d: the state after the draws", c.seed)
	}
}

// readWindow reads sample i of src's one field as int64 tokens.
func readWindow(t *testing.T, src Source, i int) []int64 {
	t.Helper()
	f := src.Fields()[0]
	buf := make([]byte, f.Bytes())
	require.NoError(t, src.ReadSample(i, [][]byte{buf}))
	out := make([]int64, f.Elems())
	for k := range out {
		out[k] = readTokenOf(buf, f.DType, k)
	}
	return out
}

// TestGPTSourceMegatronMatchesMegatronCore reads the windows of every one-corpus fixture through a
// Megatron-order GPTSource and requires megatron-core's tokens and labels; a second open maps the cache
// and gives the same windows.
func TestGPTSourceMegatronMatchesMegatronCore(t *testing.T) {
	for name, fx := range megatronFixtures(t) {
		if fx.Weights != nil {
			continue
		}
		t.Run(name, func(t *testing.T) {
			cache := t.TempDir()
			n := 0
			if fx.Size != nil {
				n = *fx.Size
			}
			cfg := GPTConfig{SeqLen: fx.SeqLen, Order: GPTOrderMegatron, Seed: fx.Seed, Split: fx.Split,
				Which: MegatronSplit(fx.Which), NumSamples: n, CacheDir: cache}
			for _, cached := range []bool{false, true} {
				src, err := NewGPTSource([]string{megatronFixturePrefix(fx.Prefixes[0])}, cfg)
				require.NoError(t, err)
				info := src.IndexInfo()
				require.Equal(t, cached, info.Cached, "%+v", info)
				require.Empty(t, info.CacheError)
				require.Equal(t, fx.Len, src.Len())
				for k, p := range fx.Samples.Positions {
					w := readWindow(t, src, p)
					require.Equal(t, fx.Samples.Tokens[k], w[:fx.SeqLen], "tokens of sample %d", p)
					require.Equal(t, fx.Samples.Labels[k], w[1:], "labels of sample %d", p)
				}
				require.NoError(t, src.Close())
			}
		})
	}
}

// megatronSampleIndexWalk is helpers.cpp's build_sample_idx line for line (drop_last_partial_sequence,
// add_extra_token_to_sequence): the reference for the parallel build.
func megatronSampleIndexWalk(lengths func(i int) int32, docs []int32, seq, tokens int64) []int64 {
	n := (tokens - 1) / seq
	out := make([]int64, 0, 2*(n+1))
	pos, offset := int64(0), int64(0)
	out = append(out, pos, offset)
	for k := int64(1); k <= n; k++ {
		remaining := seq + 1
		for remaining != 0 {
			docLen := int64(lengths(int(docs[pos]))) - offset
			remaining -= docLen
			if remaining <= 0 {
				offset += remaining + docLen - 1
				remaining = 0
			} else {
				if pos == int64(len(docs))-1 {
					offset = int64(lengths(int(docs[pos]))) - 1
					break
				}
				pos++
				offset = 0
			}
		}
		out = append(out, pos, offset)
	}
	return out
}

// TestMegatronSampleIndexParallel compares the parallel sample index with build_sample_idx's walk on
// random documents, empty ones among them, over chunk boundaries; and the pipelined shuffles with
// RandomState's.
func TestMegatronSampleIndexParallel(t *testing.T) {
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	for _, c := range []struct{ docs, maxLen, seq int }{{10, 5, 2}, {3000, 40, 7}, {200000, 9, 64}, {150000, 300, 1000}} {
		lens := make([]int32, c.docs)
		var total int64
		for i := range lens {
			if r.IntN(10) > 0 {
				lens[i] = int32(r.IntN(c.maxLen + 1))
			}
			total += int64(lens[i])
		}
		if total <= int64(c.seq) {
			continue
		}
		docs := make([]int32, 2*c.docs)
		for i := range docs {
			docs[i] = int32(r.IntN(c.docs))
		}
		var tokens int64
		for _, d := range docs {
			tokens += int64(lens[d])
		}
		lf := func(i int) int32 { return lens[i] }
		want := megatronSampleIndexWalk(lf, docs, int64(c.seq), tokens)
		pairs := make([]docLen, len(docs))
		for k, d := range docs {
			pairs[k] = docLen{d, lens[d]}
		}
		got := megatronSampleIndexParallel(pairs, int64(c.seq), tokens)
		require.Equal(t, want, got, "%+v", c)
	}
	for _, n := range []int{0, 1, 2, 70000, 300001} {
		a, b := make([]int32, n), make([]int64, n/3)
		for i := range a {
			a[i] = int32(i)
		}
		for i := range b {
			b[i] = int64(i)
		}
		ra, rb := make([]int32, len(a)), make([]int64, len(b))
		copy(ra, a)
		copy(rb, b)
		ref := newNumpyRandomState(99)
		npShuffle(ref, ra)
		npShuffle(ref, rb)
		rs := newNumpyRandomState(99)
		parallelShuffles(rs, newShuffleJob(a), newShuffleJob(b))
		require.Equal(t, ra, a)
		require.Equal(t, rb, b)
		require.Equal(t, ref.uint32(), rs.uint32(), "the state after the shuffles")
	}
}
