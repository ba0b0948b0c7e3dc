package data

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/enginetest"
	"github.com/ferry-ml/ferry/engine/internal/testutil"
)

// gptCorpus writes a random Megatron corpus (megatronCorpus) whose sequences each end in eod, and returns
// the prefix and its token stream (the sequences back to back, as int64).
func gptCorpus(t *testing.T, r *rand.Rand, code byte, n, maxLen int, eod int64) (string, []int64) {
	t.Helper()
	prefix, seqs, _ := megatronCorpus(t, r, code, n, maxLen)
	dt := megatronDTypes[code]
	var bin []byte
	var stream []int64
	for _, s := range seqs {
		k := len(s) / dt.Size()
		for j := 0; j < k; j++ {
			if j == k-1 {
				putToken(s, dt, j, eod)
			} else if readTokenOf(s, dt, j) == eod {
				putToken(s, dt, j, eod+1)
			}
			stream = append(stream, readTokenOf(s, dt, j))
		}
		bin = append(bin, s...)
	}
	require.NoError(t, os.WriteFile(prefix+".bin", bin, 0o644))
	return prefix, stream
}

func putToken(b []byte, dt DType, j int, v int64) {
	if dt.Size() == 2 {
		binary.LittleEndian.PutUint16(b[2*j:], uint16(v))
	} else {
		binary.LittleEndian.PutUint32(b[4*j:], uint32(v))
	}
}

// TestGPTSourceFerryOrder checks ferry's order: window i of a file is tokens [i*SeqLen, i*SeqLen+SeqLen+1)
// of its stream, for a back-to-back file (memory-backed, at the window's byte offset), a file whose
// sequences are stored out of order (read through the index), and several files as one corpus.
func TestGPTSourceFerryOrder(t *testing.T) {
	r := srcRand(t)
	const seq = 16
	a, streamA := gptCorpus(t, r, 8, 300, 40, 7)
	b, streamB := gptCorpus(t, r, 8, 90, 30, 7)

	src, err := NewGPTSource([]string{a}, GPTConfig{SeqLen: seq})
	require.NoError(t, err)
	require.Equal(t, (len(streamA)-1)/seq, src.Len())
	require.Equal(t, []Field{{Name: "tokens", DType: Uint16, Shape: []int{seq + 1}}}, src.Fields())
	region := src.Region(0)
	require.NotNil(t, region, "a back-to-back file is memory-backed")
	for _, i := range []int{0, 1, src.Len() / 2, src.Len() - 1} {
		require.Equal(t, streamA[i*seq:i*seq+seq+1], readWindow(t, src, i), "window %d", i)
		off := src.Offset(0, i)
		require.Equal(t, int64(i*seq*2), off)
		w := region[off : off+2*(seq+1)]
		for j := 0; j <= seq; j++ {
			require.Equal(t, streamA[i*seq+j], readTokenOf(w, Uint16, j))
		}
	}
	require.NoError(t, src.Close())
	require.ErrorIs(t, src.ReadSample(0, [][]byte{make([]byte, 2*(seq+1))}), engine.ErrClosed)

	both, err := NewGPTSource([]string{a, b}, GPTConfig{SeqLen: seq, FieldName: "w"})
	require.NoError(t, err)
	defer both.Close()
	na := (len(streamA) - 1) / seq
	require.Equal(t, na+(len(streamB)-1)/seq, both.Len())
	require.Nil(t, both.Region(0), "two files are not one region")
	require.Equal(t, int64(-1), both.Offset(0, 0))
	for _, i := range []int{0, na - 1, na, both.Len() - 1} {
		want := streamA
		k := i
		if i >= na {
			want, k = streamB, i-na
		}
		require.Equal(t, want[k*seq:k*seq+seq+1], readWindow(t, both, i), "window %d", i)
	}

	// The same sequences stored in reverse order in the .bin: the windows follow the index, not the file.
	dir := t.TempDir()
	c, err := NewMegatronSource(a, MegatronConfig{MaxLen: 1})
	require.NoError(t, err)
	var lengths []int32
	for i := 0; i < c.Len(); i++ {
		lengths = append(lengths, c.seqLen32(i))
	}
	require.NoError(t, c.Close())
	idx := megatronIndex(8, 2, lengths, []int64{0, int64(len(lengths))}, nil)
	ptrs := idx[megatronHeader+4*len(lengths):]
	var bin []byte
	pos := 0
	offsets := make([]int, len(lengths))
	for i := range lengths {
		offsets[i] = pos
		pos += int(lengths[i])
	}
	for i := len(lengths) - 1; i >= 0; i-- {
		binary.LittleEndian.PutUint64(ptrs[8*i:], uint64(len(bin)))
		for j := 0; j < int(lengths[i]); j++ {
			bin = binary.LittleEndian.AppendUint16(bin, uint16(streamA[offsets[i]+j]))
		}
	}
	testutil.WriteFile(t, dir, "rev.idx", idx)
	testutil.WriteFile(t, dir, "rev.bin", bin)
	rev, err := NewGPTSource([]string{filepath.Join(dir, "rev")}, GPTConfig{SeqLen: seq})
	require.NoError(t, err)
	defer rev.Close()
	require.Nil(t, rev.Region(0), "sequences out of order are not windows in place")
	for i := 0; i < rev.Len(); i++ {
		require.Equal(t, streamA[i*seq:i*seq+seq+1], readWindow(t, rev, i), "window %d", i)
	}
}

func TestGPTSourceRefusesBadConfig(t *testing.T) {
	r := srcRand(t)
	a, _ := gptCorpus(t, r, 8, 50, 20, 7)
	for _, c := range []struct {
		prefixes []string
		cfg      GPTConfig
		want     string
	}{
		{[]string{a}, GPTConfig{}, "sequence length 0"},
		{[]string{a}, GPTConfig{SeqLen: 4, Order: 9}, "unknown order"},
		{[]string{a, a}, GPTConfig{SeqLen: 4, Order: GPTOrderMegatron}, "blend several with BlendSource"},
		{[]string{a}, GPTConfig{SeqLen: 1 << 20}, "no file holds"},
		{[]string{a}, GPTConfig{SeqLen: 4, Order: GPTOrderMegatron, Split: "1,0,0", Which: SplitValid, NoCache: true}, "no sequences"},
		{[]string{a}, GPTConfig{SeqLen: 4, Order: GPTOrderMegatron, Split: "a,b", NoCache: true}, "needs 1 to 3 weights"},
		{[]string{a}, GPTConfig{SeqLen: 4, Order: GPTOrderMegatron, Which: 5, NoCache: true}, "not train"},
		{[]string{a + "-missing"}, GPTConfig{SeqLen: 4}, "-missing.idx"},
		{nil, GPTConfig{SeqLen: 4}, "no prefix"},
	} {
		_, err := NewGPTSource(c.prefixes, c.cfg)
		require.Error(t, err, "%+v", c.cfg)
		require.Contains(t, err.Error(), c.want)
	}
}

// TestGPTSourceCache checks the Megatron-order index cache: the first open writes it, the second maps it;
// other parameters get another file; a damaged file is rebuilt (and said so), never trusted.
func TestGPTSourceCache(t *testing.T) {
	r := srcRand(t)
	a, _ := gptCorpus(t, r, 4, 400, 60, 3)
	cfg := GPTConfig{SeqLen: 32, Order: GPTOrderMegatron, Seed: 9, Split: "9,1", NumSamples: 900}
	open := func(cfg GPTConfig) (*GPTSource, [][]int64) {
		s, err := NewGPTSource([]string{a}, cfg)
		require.NoError(t, err)
		var w [][]int64
		for i := 0; i < s.Len(); i += 97 {
			w = append(w, readWindow(t, s, i))
		}
		return s, w
	}
	first, want := open(cfg)
	info := first.IndexInfo()
	require.False(t, info.Cached)
	require.Empty(t, info.CacheError)
	require.Equal(t, filepath.Join(filepath.Dir(a), "cache"), filepath.Dir(info.Path), "beside the data by default")
	require.GreaterOrEqual(t, first.Len(), 900)
	require.NoError(t, first.Close())

	again, got := open(cfg)
	require.True(t, again.IndexInfo().Cached)
	require.Equal(t, want, got)
	require.NoError(t, again.Close())

	other := cfg
	other.Seed = 10
	o, gotOther := open(other)
	require.False(t, o.IndexInfo().Cached)
	require.NotEqual(t, info.Path, o.IndexInfo().Path)
	require.NotEqual(t, want, gotOther)
	require.NoError(t, o.Close())

	damaged := func(damage func([]byte) []byte) {
		data, err := os.ReadFile(info.Path)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(info.Path, damage(data), 0o644))
	}
	for _, damage := range []func([]byte) []byte{
		func(b []byte) []byte { return b[:len(b)-8] },           // truncated
		func(b []byte) []byte { b[8+48+3] ^= 1; return b },      // the key
		func(b []byte) []byte { b[8+40+3] ^= 1; return b },      // the separate-epoch flag
		func(b []byte) []byte { copy(b, "NOTFERRY"); return b }, // the magic
	} {
		damaged(damage)
		s, got := open(cfg)
		require.False(t, s.IndexInfo().Cached)
		require.Contains(t, s.IndexInfo().CacheError, info.Path)
		require.Equal(t, want, got)
		require.NoError(t, s.Close())
	}
	// A value out of range in an otherwise whole file: the window that reads it fails, naming the file;
	// the others read.
	damaged(func(b []byte) []byte { b[len(b)-8] = 0xFF; b[len(b)-1] = 0x7F; return b }) // the last shuffle entry
	s, err := NewGPTSource([]string{a}, cfg)
	require.NoError(t, err)
	require.True(t, s.IndexInfo().Cached)
	f := s.Fields()[0]
	err = s.ReadSample(s.Len()-1, [][]byte{make([]byte, f.Bytes())})
	require.ErrorIs(t, err, engine.ErrFormat)
	require.Contains(t, err.Error(), info.Path)
	require.Equal(t, want[0], readWindow(t, s, 0))
	require.NoError(t, s.Close())
	require.NoError(t, os.Remove(info.Path))

	nc := cfg
	nc.NoCache, nc.CacheDir = true, filepath.Join(t.TempDir(), "never")
	s, got = open(nc)
	require.Equal(t, want, got)
	require.Empty(t, s.IndexInfo().Path)
	require.NoError(t, s.Close())
	_, err = os.Stat(nc.CacheDir)
	require.True(t, os.IsNotExist(err))
}

// gptTransform is ShiftTokens with every GPT output.
func gptTransform(eod int64, mask, reset bool) ShiftTokens {
	return ShiftTokens{LossMask: "loss_mask", PositionIDs: "position_ids", EOD: eod, MaskEOD: mask, ResetPositions: reset}
}

// TestGPTFixturesThroughIterator reads every one-corpus fixture through the iterator on the CPU engine,
// in Megatron's order with ShiftTokens making the loss mask and position ids, and requires megatron-core's
// tokens, labels, loss_mask and position_ids for its first samples.
func TestGPTFixturesThroughIterator(t *testing.T) {
	e := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	for name, fx := range megatronFixtures(t) {
		if fx.Weights != nil {
			continue
		}
		t.Run(name, func(t *testing.T) {
			n := 0
			if fx.Size != nil {
				n = *fx.Size
			}
			src, err := NewGPTSource([]string{megatronFixturePrefix(fx.Prefixes[0])}, GPTConfig{SeqLen: fx.SeqLen, Order: GPTOrderMegatron,
				Seed: fx.Seed, Split: fx.Split, Which: MegatronSplit(fx.Which), NumSamples: n, NoCache: true})
			require.NoError(t, err)
			defer src.Close()
			it, err := NewIterator(e, src, IteratorOptions{BatchSize: 4, Workers: 2,
				Transforms: map[string]Transform{"tokens": gptTransform(fx.EOD, fx.EODMaskLoss, fx.ResetPos)}})
			require.NoError(t, err)
			defer it.Close()
			want := map[int]int{} // sample -> its place in the fixture; the last sample is past these batches
			for k, p := range fx.Samples.Positions[:len(fx.Samples.Positions)-1] {
				want[p] = k
			}
			for len(want) > 0 {
				b, err := it.Next(context.Background(), 0)
				require.NoError(t, err)
				for r, p := range b.Indices {
					k, ok := want[p]
					if !ok {
						continue
					}
					delete(want, p)
					row := func(f int) []byte {
						w := b.Fields[f].Bytes / b.Size()
						return b.Fields[f].Host[r*w : (r+1)*w]
					}
					require.Equal(t, fx.Samples.Tokens[k], int64s(row(0)), "tokens of sample %d", p)
					require.Equal(t, fx.Samples.Labels[k], int64s(row(1)), "labels of sample %d", p)
					require.Equal(t, fx.Samples.LossMask[k], float32sAs64(row(2)), "loss_mask of sample %d", p)
					require.Equal(t, fx.Samples.PositionIDs[k], int64s(row(3)), "position_ids of sample %d", p)
				}
				require.NoError(t, b.Release(0))
			}
		})
	}
}

func int64s(b []byte) []int64 {
	out := make([]int64, len(b)/8)
	for i := range out {
		out[i] = int64(binary.LittleEndian.Uint64(b[8*i:]))
	}
	return out
}

func float32sAs64(b []byte) []float64 {
	out := make([]float64, len(b)/4)
	for i := range out {
		out[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:])))
	}
	return out
}

// gptChecks runs GPT windows with every ShiftTokens output through engine e and through the CPU engine
// (the reference, whose host transforms are checked against megatron-core above), ring poisoned, and
// requires equal batches: ferry's order (memory-backed: mapped staging on a GPU) and Megatron's (host
// gather), uint16 and int32 tokens.
func gptChecks(t *testing.T, e *engine.Engine) {
	cpu := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	r := srcRand(t)
	u16, _ := gptCorpus(t, r, 8, 500, 300, 50256)
	i32, _ := gptCorpus(t, r, 4, 300, 500, 99999)
	for _, c := range []struct {
		name   string
		prefix string
		cfg    GPTConfig
		eod    int64
	}{
		{"ferry order u16", u16, GPTConfig{SeqLen: 128}, 50256},
		{"megatron order u16", u16, GPTConfig{SeqLen: 128, Order: GPTOrderMegatron, Seed: 3, NumSamples: 3000, NoCache: true}, 50256},
		{"ferry order i32", i32, GPTConfig{SeqLen: 300}, 99999},
		{"megatron order i32", i32, GPTConfig{SeqLen: 64, Order: GPTOrderMegatron, Seed: 4, NoCache: true}, 99999},
	} {
		t.Run(c.name, func(t *testing.T) {
			poisonRing(t)
			src, err := NewGPTSource([]string{c.prefix}, c.cfg)
			require.NoError(t, err)
			defer src.Close()
			for _, reset := range []bool{false, true} {
				opts := IteratorOptions{BatchSize: 24, Shuffle: c.cfg.Order == GPTOrderFerry, Seed: 5, Workers: 3,
					Transforms: map[string]Transform{"tokens": gptTransform(c.eod, true, reset)}}
				want := epochContents(t, cpu, src, opts)
				got := epochContents(t, e, src, opts)
				require.NotEmpty(t, want)
				require.Equal(t, len(want), len(got))
				for i := range want {
					require.Equal(t, want[i], got[i], "batch %d (reset %v) differs from the CPU reference", i, reset)
				}
			}
		})
	}
}

func TestGPTSourceGPU(t *testing.T) {
	testutil.RequireGPU(t)
	e, err := engine.Open(0, engine.WithSampleInterval(0))
	require.NoError(t, err)
	defer e.Close()
	gptChecks(t, e)
}

// TestSelfOrderedSourcesRefuseShuffle: a Megatron-order GPT source and a blend keep their own order.
func TestSelfOrderedSourcesRefuseShuffle(t *testing.T) {
	e := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	r := srcRand(t)
	a, _ := gptCorpus(t, r, 8, 100, 40, 7)
	m, err := NewGPTSource([]string{a}, GPTConfig{SeqLen: 8, Order: GPTOrderMegatron, NoCache: true})
	require.NoError(t, err)
	defer m.Close()
	f, err := NewGPTSource([]string{a}, GPTConfig{SeqLen: 8})
	require.NoError(t, err)
	defer f.Close()
	b, err := NewBlendSource([]BlendPart{{1, m}, {1, f}}, BlendConfig{Size: 50})
	require.NoError(t, err)
	for _, src := range []Source{m, b} {
		_, err := NewIterator(e, src, IteratorOptions{BatchSize: 4, Shuffle: true})
		require.ErrorIs(t, err, engine.ErrInvalidArgument)
		require.Contains(t, err.Error(), "without Shuffle")
	}
	it, err := NewIterator(e, f, IteratorOptions{BatchSize: 4, Shuffle: true})
	require.NoError(t, err)
	require.NoError(t, it.Close())
}

// TestGPTSourceIteratorCPU reads a whole ferry-order epoch through the CPU iterator and finds every window
// once.
func TestGPTSourceIteratorCPU(t *testing.T) {
	e := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	r := srcRand(t)
	a, stream := gptCorpus(t, r, 8, 200, 50, 7)
	src, err := NewGPTSource([]string{a}, GPTConfig{SeqLen: 20})
	require.NoError(t, err)
	defer src.Close()
	it, err := NewIterator(e, src, IteratorOptions{BatchSize: 16, Shuffle: true, Seed: 1,
		Transforms: map[string]Transform{"tokens": ShiftTokens{}}})
	require.NoError(t, err)
	defer it.Close()
	seen := map[int]bool{}
	for {
		b, err := it.Next(context.Background(), 0)
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		x, y := int64s(b.Fields[0].Host), int64s(b.Fields[1].Host)
		for row, i := range b.Indices {
			require.False(t, seen[i])
			seen[i] = true
			require.Equal(t, stream[i*20:i*20+20], x[row*20:(row+1)*20])
			require.Equal(t, stream[i*20+1:i*20+21], y[row*20:(row+1)*20])
		}
		require.NoError(t, b.Release(0))
	}
	require.Len(t, seen, src.Len())
}

// TestGPTSourceResume checks ferry's order across a resume: exactly (State/Restore gives the batch that
// would have come) and elastically (4 ranks, then 3 from the job's position: every window of the epoch
// comes once, apart from DistributedSampler's padding), each window's tokens being its stream slice.
func TestGPTSourceResume(t *testing.T) {
	e := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	r := srcRand(t)
	a, stream := gptCorpus(t, r, 8, 400, 50, 7)
	const seq = 16
	src, err := NewGPTSource([]string{a}, GPTConfig{SeqLen: seq})
	require.NoError(t, err)
	defer src.Close()
	open := func(rank, world int) *Iterator {
		it, err := NewIterator(e, src, IteratorOptions{BatchSize: 8, Shuffle: true, Seed: 5, Rank: rank, WorldSize: world,
			Transforms: map[string]Transform{"tokens": ShiftTokens{}}})
		require.NoError(t, err)
		t.Cleanup(func() { _ = it.Close() })
		return it
	}
	next := func(it *Iterator) []int {
		b, err := it.Next(context.Background(), 0)
		if errors.Is(err, io.EOF) {
			return nil
		}
		require.NoError(t, err)
		x := int64s(b.Fields[0].Host)
		for row, i := range b.Indices {
			require.Equal(t, stream[i*seq:i*seq+seq], x[row*seq:(row+1)*seq], "window %d", i)
		}
		idx := append([]int(nil), b.Indices...)
		require.NoError(t, b.Release(0))
		return idx
	}

	one := open(0, 1)
	for range 3 {
		next(one)
	}
	st := one.State()
	want := next(one)
	again := open(0, 1)
	require.NoError(t, again.Restore(st))
	require.Equal(t, want, next(again))

	before := []*Iterator{open(0, 4), open(1, 4), open(2, 4), open(3, 4)}
	seen := map[int]int{}
	for range 5 {
		for _, it := range before {
			for _, i := range next(it) {
				seen[i]++
			}
		}
	}
	es := before[0].ElasticState()
	after := []*Iterator{open(0, 3), open(1, 3), open(2, 3)}
	for _, it := range after {
		require.NoError(t, it.RestoreElastic(es))
	}
	for done := false; !done; {
		done = true
		for _, it := range after {
			idx := next(it)
			done = done && idx == nil
			for _, i := range idx {
				seen[i]++
			}
		}
	}
	remaining := src.Len() - es.Consumed
	padding := (remaining+2)/3*3 - remaining
	extra := 0
	for i := 0; i < src.Len(); i++ {
		require.GreaterOrEqual(t, seen[i], 1, "window %d never came", i)
		extra += seen[i] - 1
	}
	require.Equal(t, padding, extra, "only the padding repeats a window")
}
