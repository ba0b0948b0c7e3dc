package tests

import (
	"compress/gzip"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

// megatronTestdata is the directory of the corpora and the fixtures megatron-core wrote
// (engine/data/testdata/megatron/generate.py).
func megatronTestdata(t *testing.T) string {
	t.Helper()
	dir := filepath.Join("..", "engine", "data", "testdata", "megatron")
	if _, err := os.Stat(dir); err != nil {
		t.Skip("the Megatron fixtures are not here (a test binary run outside the repository)")
	}
	return dir
}

// megatronFixture is the part of a fixture the C-ABI tests compare.
type megatronFixture struct {
	Prefixes []string  `json:"prefixes"`
	Weights  []float64 `json:"weights"`
	SeqLen   int64     `json:"seq_len"`
	Seed     uint64    `json:"seed"`
	Split    string    `json:"split"`
	Which    int32     `json:"which"`
	Size     int64     `json:"size"`
	EOD      int64     `json:"eod"`
	MaskEOD  bool      `json:"eod_mask_loss"`
	Reset    bool      `json:"reset_position_ids"`
	Len      int64     `json:"len"`
	Datasets []struct {
		NumSamples int64 `json:"num_samples"`
	} `json:"datasets"`
	Samples struct {
		Positions   []int64     `json:"positions"`
		Tokens      [][]int64   `json:"tokens"`
		Labels      [][]int64   `json:"labels"`
		LossMask    [][]float32 `json:"loss_mask"`
		PositionIDs [][]int64   `json:"position_ids"`
	} `json:"samples"`
}

func readMegatronFixture(t *testing.T, dir, name string) megatronFixture {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, name+".json.gz"))
	require.NoError(t, err)
	defer f.Close()
	zr, err := gzip.NewReader(f)
	require.NoError(t, err)
	var fx megatronFixture
	require.NoError(t, json.NewDecoder(zr).Decode(&fx))
	return fx
}

// gptSource creates a GPT source through the C ABI and destroys it at cleanup.
func gptSource(t *testing.T, c *cmem, prefixes []string, o gptOptions) sourceHandle {
	t.Helper()
	var s sourceHandle
	requireOK(t, func() int32 { return ferrySourceGPT(c.strings(prefixes), int32(len(prefixes)), &o, &s) })
	destroyAtCleanup(t, s)
	return s
}

// megatronGPTOptions are the options of fixture fx's dataset d.
func megatronGPTOptions(t *testing.T, c *cmem, fx megatronFixture, numSamples int64, cache string) gptOptions {
	t.Helper()
	var o gptOptions
	requireOK(t, func() int32 { return ferryGPTOptionsInit(&o) })
	o.Order, o.SeqLen, o.Seed, o.Split, o.Which, o.NumSamples = 1, fx.SeqLen, fx.Seed, c.cstring(fx.Split), fx.Which, numSamples
	o.CacheDir = c.cstring(cache)
	return o
}

// gptShift is SHIFT_TOKENS on "tokens" with the loss mask and the position ids.
func gptShift(t *testing.T, c *cmem, fx megatronFixture) transform {
	tr := newTransform(t, transformShiftTokens, "tokens")
	tr.LossMaskName = uintptr(unsafe.Pointer(c.cstring("loss_mask")))
	tr.PositionIDsName = uintptr(unsafe.Pointer(c.cstring("position_ids")))
	tr.EOD = fx.EOD
	if fx.MaskEOD {
		tr.ShiftFlags |= 1
	}
	if fx.Reset {
		tr.ShiftFlags |= 2
	}
	return tr
}

// requireFixtureBatches iterates src in its own order on the CPU and requires the fixture's first
// samples: tokens, labels, loss_mask and position_ids.
func requireFixtureBatches(t *testing.T, c *cmem, src sourceHandle, fx megatronFixture) {
	t.Helper()
	e := newCPUEngine(t, 0)
	it := newIterator(t, e, src, withTransforms(iterOptions(t, 4), c, gptShift(t, c, fx)))
	want := len(fx.Samples.Positions) - 1 // the last one lies past these batches
	seq := int(fx.SeqLen)
	for got := 0; got < want; {
		b := next(t, it)
		p := batchInfo(t, b)
		idx := batchIndices(t, b, p.NumSamples)
		fields := map[string]*dlManagedTensor{}
		for _, name := range []string{"x", "y", "loss_mask", "position_ids"} {
			fields[name] = batchFieldByName(t, b, name)
		}
		x, y := readInt64s(fields["x"], len(idx)*seq), readInt64s(fields["y"], len(idx)*seq)
		m, pos := readFloat32s(fields["loss_mask"], len(idx)*seq), readInt64s(fields["position_ids"], len(idx)*seq)
		for r, i := range idx {
			k := int(i) // the fixture's first positions are 0, 1, ...
			require.Equal(t, fx.Samples.Positions[k], i)
			require.Equal(t, fx.Samples.Tokens[k], x[r*seq:(r+1)*seq], "tokens of sample %d", i)
			require.Equal(t, fx.Samples.Labels[k], y[r*seq:(r+1)*seq], "labels of sample %d", i)
			require.Equal(t, fx.Samples.LossMask[k], m[r*seq:(r+1)*seq], "loss_mask of sample %d", i)
			require.Equal(t, fx.Samples.PositionIDs[k], pos[r*seq:(r+1)*seq], "position_ids of sample %d", i)
			got++
		}
		for _, tensor := range fields {
			deleteTensor(t, tensor)
		}
		releaseBatch(t, b)
	}
}

// TestSourceGPTMegatronOrder reads a fixture through ferry_source_gpt in Megatron's order with SHIFT_TOKENS
// making every GPT output, and requires megatron-core's samples; the second creation maps the cache.
func TestSourceGPTMegatronOrder(t *testing.T) {
	dir := megatronTestdata(t)
	c := newCmem(t, 1<<16)
	fx := readMegatronFixture(t, dir, "epochs_separate_last")
	cache := t.TempDir()
	for _, cached := range []int32{0, 1} {
		src := gptSource(t, c, []string{filepath.Join(dir, fx.Prefixes[0])}, megatronGPTOptions(t, c, fx, fx.Size, cache))
		var n int64
		requireOK(t, func() int32 { return ferrySourceLen(src, &n) })
		require.Equal(t, fx.Len, n)
		info := gptIndexInfo{Size: uint32(unsafe.Sizeof(gptIndexInfo{}))}
		requireOK(t, func() int32 { return ferrySourceGPTIndexInfo(src, &info) })
		require.Equal(t, cached, info.Cached)
		path, ok := fixedString(info.Path[:])
		require.True(t, ok)
		require.Equal(t, cache, filepath.Dir(path))
		require.Greater(t, info.Epochs, int64(1))
		requireFixtureBatches(t, c, src, fx)
	}
}

// TestSourceBlendMegatronOrder builds a fixture's blend through the C ABI as Megatron builds it
// (ferry_megatron_blend_sizes, one GPT source per prefix, ferry_source_blend) and requires its samples.
func TestSourceBlendMegatronOrder(t *testing.T) {
	dir := megatronTestdata(t)
	c := newCmem(t, 1<<16)
	fx := readMegatronFixture(t, dir, "blend_two")
	per := make([]int64, len(fx.Weights))
	var size int64
	requireOK(t, func() int32 {
		return ferryMegatronBlendSizes(&fx.Weights[0], int32(len(fx.Weights)), fx.Size, &per[0], &size)
	})
	require.Equal(t, fx.Len, size)
	var parts []sourceHandle
	for d, p := range fx.Prefixes {
		require.Equal(t, fx.Datasets[d].NumSamples, per[d])
		o := megatronGPTOptions(t, c, fx, per[d], t.TempDir())
		o.Flags = 1 // FERRY_GPT_F_NO_CACHE
		parts = append(parts, gptSource(t, c, []string{filepath.Join(dir, p)}, o))
	}
	var bo blendOptions
	requireOK(t, func() int32 { return ferryBlendOptionsInit(&bo) })
	bo.Order, bo.NumSamples = 1, size
	var blend sourceHandle
	requireOK(t, func() int32 { return ferrySourceBlend(&parts[0], &fx.Weights[0], int32(len(parts)), &bo, &blend) })
	destroyAtCleanup(t, blend)
	requireFixtureBatches(t, c, blend, fx)

	// A part destroyed under the blend makes its reads fail, never crash.
	requireOK(t, func() int32 { return ferrySourceDestroy(parts[0]) })
	e := newCPUEngine(t, 0)
	it := newIterator(t, e, blend, iterOptions(t, 8))
	var b batchHandle
	status := ferryIteratorNext(it, 0, &b)
	require.NotEqual(t, ferryOK, status)
	requireUsable(t)
}

// TestSourceMegatronDocuments reads a corpus through ferry_source_megatron as variable-length sequences.
func TestSourceMegatronDocuments(t *testing.T) {
	dir := megatronTestdata(t)
	c := newCmem(t, 1<<12)
	var o megatronOptions
	requireOK(t, func() int32 { return ferryMegatronOptionsInit(&o) })
	o.MaxLen = 64
	prefixes := []string{filepath.Join(dir, "corpus_u16"), filepath.Join(dir, "corpus_u16b")}
	var s sourceHandle
	requireOK(t, func() int32 { return ferrySourceMegatron(c.strings(prefixes), 2, &o, &s) })
	destroyAtCleanup(t, s)
	var n int64
	requireOK(t, func() int32 { return ferrySourceLen(s, &n) })
	require.Greater(t, n, int64(600), "two files' sequences")
	var f field
	requireOK(t, func() int32 { return ferrySourceField(s, 0, &f) })
	name, _ := fixedString(unsafe.Slice(f.Name, 16))
	require.Equal(t, "tokens", name)
	require.Equal(t, dtypeUint16, f.DType)
	require.Equal(t, int64(64), f.Shape[0])
}

// TestSourceMegatronInvalid covers what the Megatron entry points must refuse, each with a message naming
// the problem, the library staying usable.
func TestSourceMegatronInvalid(t *testing.T) {
	dir := megatronTestdata(t)
	c := newCmem(t, 1<<14)
	prefix := filepath.Join(dir, "corpus_u16")
	gpt := func(modify func(o *gptOptions)) gptOptions {
		var o gptOptions
		requireOK(t, func() int32 { return ferryGPTOptionsInit(&o) })
		o.SeqLen = 16
		modify(&o)
		return o
	}
	one := c.strings([]string{prefix})
	var s sourceHandle
	for _, tt := range []struct {
		name   string
		status int32
		call   func() int32
		words  []string
	}{
		{"NULL prefixes", ferryErrInvalidArgument, func() int32 { o := gpt(func(*gptOptions) {}); return ferrySourceGPT(nil, 1, &o, &s) }, []string{"prefixes"}},
		{"count 0", ferryErrInvalidArgument, func() int32 { o := gpt(func(*gptOptions) {}); return ferrySourceGPT(one, 0, &o, &s) }, []string{"count"}},
		{"NULL options", ferryErrInvalidArgument, func() int32 { return ferrySourceGPT(one, 1, nil, &s) }, []string{"opts"}},
		{"size 0", ferryErrInvalidArgument, func() int32 { o := gpt(func(o *gptOptions) { o.Size = 0 }); return ferrySourceGPT(one, 1, &o, &s) }, []string{"ferry_gpt_options", "size"}},
		{"unknown flag", ferryErrInvalidArgument, func() int32 { o := gpt(func(o *gptOptions) { o.Flags = 8 }); return ferrySourceGPT(one, 1, &o, &s) }, []string{"flags"}},
		{"seed above 2^32", ferryErrInvalidArgument, func() int32 {
			o := gpt(func(o *gptOptions) { o.Order, o.Seed = 1, 1<<32 })
			return ferrySourceGPT(one, 1, &o, &s)
		}, []string{"seed", "2^32"}},
		{"empty split", ferryErrInvalidArgument, func() int32 {
			o := gpt(func(o *gptOptions) { o.Order, o.Split = 1, c.cstring("") })
			return ferrySourceGPT(one, 1, &o, &s)
		}, []string{"split", "empty"}},
		{"unknown order", ferryErrInvalidArgument, func() int32 { o := gpt(func(o *gptOptions) { o.Order = 7 }); return ferrySourceGPT(one, 1, &o, &s) }, []string{"order"}},
		{"missing file", ferryErrIO, func() int32 {
			o := gpt(func(*gptOptions) {})
			return ferrySourceGPT(c.strings([]string{prefix + "_nope"}), 1, &o, &s)
		}, []string{"corpus_u16_nope.idx"}},
		{"index info of another source", ferryErrInvalidArgument, func() int32 {
			var o megatronOptions
			ferryMegatronOptionsInit(&o)
			o.MaxLen = 4
			var m sourceHandle
			requireOK(t, func() int32 { return ferrySourceMegatron(one, 1, &o, &m) })
			defer ferrySourceDestroy(m)
			info := gptIndexInfo{Size: uint32(unsafe.Sizeof(gptIndexInfo{}))}
			return ferrySourceGPTIndexInfo(m, &info)
		}, []string{"not a GPT source"}},
		{"megatron max_len 0", ferryErrInvalidArgument, func() int32 {
			var o megatronOptions
			ferryMegatronOptionsInit(&o)
			return ferrySourceMegatron(one, 1, &o, &s)
		}, []string{"maximum length"}},
		{"blend of a stale handle", ferryErrInvalidHandle, func() int32 {
			var bo blendOptions
			ferryBlendOptionsInit(&bo)
			bo.NumSamples = 10
			hs := []sourceHandle{0x7fff1234}
			w := []float64{1}
			return ferrySourceBlend(&hs[0], &w[0], 1, &bo, &s)
		}, []string{"sources[0]"}},
		{"blend weight NaN", ferryErrInvalidArgument, func() int32 {
			o := gpt(func(*gptOptions) {})
			g := gptSource(t, c, []string{prefix}, o)
			var bo blendOptions
			ferryBlendOptionsInit(&bo)
			bo.NumSamples = 10
			w := []float64{math.NaN()}
			return ferrySourceBlend(&g, &w[0], 1, &bo, &s)
		}, []string{"weight NaN"}},
		{"blend sizes of size 0", ferryErrInvalidArgument, func() int32 {
			w := []float64{1, 2}
			per := make([]int64, 2)
			var n int64
			return ferryMegatronBlendSizes(&w[0], 2, 0, &per[0], &n)
		}, []string{"size 0"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s = 0x5a5a
			requireStatus(t, tt.status, tt.call, tt.words...)
			requireUsable(t)
		})
	}
}
