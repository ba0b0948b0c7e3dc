package data

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/testutil"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func memoryFixture(t *testing.T, n int) ([]Field, [][]byte) {
	t.Helper()
	r := srcRand(t)
	fields := []Field{
		{Name: "image", DType: Uint8, Shape: []int{3, 4, 5}},
		{Name: "label", DType: Int64},
		{Name: "emb", DType: Float32, Shape: []int{7}},
	}
	data := make([][]byte, len(fields))
	for k, f := range fields {
		data[k] = srcRandBytes(r, n*f.Bytes())
	}
	return fields, data
}

func memoryWant(fields []Field, data [][]byte) func(i int) [][]byte {
	return func(i int) [][]byte {
		out := make([][]byte, len(fields))
		for k, f := range fields {
			b := f.Bytes()
			out[k] = data[k][i*b : (i+1)*b]
		}
		return out
	}
}

func TestMemorySourceReadsEverySample(t *testing.T) {
	const n = 37
	fields, data := memoryFixture(t, n)
	src, err := NewMemorySource(n, fields, data)
	require.NoError(t, err)
	require.Equal(t, n, src.Len())
	require.Equal(t, fields, src.Fields())
	require.Equal(t, "memory(37 × 96 B)", src.String())

	fields[0].Shape[0] = 99 // the source keeps its own copy of the layout
	require.Equal(t, []int{3, 4, 5}, src.Fields()[0].Shape)
	fields[0].Shape[0] = 3

	requireSourceSamples(t, src, memoryWant(fields, data))

	// No copy at creation: a change to the caller's memory shows in the next read.
	data[1][5*8] ^= 0xFF
	dst := srcDst(fields)
	require.NoError(t, src.ReadSample(5, dst))
	require.Equal(t, data[1][5*8:6*8], dst[1])

	requireSourceContract(t, src)
}

func TestMemorySourceConcurrentReadsAndClose(t *testing.T) {
	const n = 64
	fields, data := memoryFixture(t, n)
	src, err := NewMemorySource(n, fields, data)
	require.NoError(t, err)
	requireSourceConcurrent(t, src, memoryWant(fields, data))
}

func TestMemorySourceRejectsBadArguments(t *testing.T) {
	fields, data := memoryFixture(t, 4)
	for _, tc := range []struct {
		name   string
		n      int
		fields []Field
		data   [][]byte
		want   string
	}{
		{"zero samples", 0, fields, data, "0 samples"},
		{"negative samples", -3, fields, data, "-3 samples"},
		{"no fields", 4, nil, nil, "at least one field"},
		{"bad dtype", 4, []Field{{Name: "a"}}, [][]byte{nil}, "invalid dtype"},
		{"duplicate name", 4, []Field{fields[1], fields[1]}, [][]byte{data[1], data[1]}, "used twice"},
		{"missing buffer", 4, fields, data[:2], "2 buffers for 3 fields"},
		{"short buffer", 4, fields, [][]byte{data[0][:10], data[1], data[2]}, `"image": buffer is 10 bytes, expected 4 samples × 60 bytes = 240`},
		{"long buffer", 3, fields, data, `"image": buffer is 240 bytes, expected 3 samples × 60 bytes = 180`},
		{"overflow", 1 << 62, fields, data, "overflow"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewMemorySource(tc.n, tc.fields, tc.data)
			require.ErrorIs(t, err, engine.ErrInvalidArgument)
			require.Contains(t, err.Error(), tc.want)
		})
	}
}

// requireMemoryBacked checks the MemoryBacked contract against ReadSample for every sample: the bytes at
// Region(f)[Offset(f, i):] are those ReadSample writes for field f (for a Ragged field, its first
// SampleLen(i) elements). It also checks the out-of-range answers; it leaves src open.
func requireMemoryBacked(t *testing.T, src Source) {
	t.Helper()
	mb, ok := src.(MemoryBacked)
	require.True(t, ok, "%v is not MemoryBacked", src)
	rag, _ := src.(Ragged)
	fields := src.Fields()
	dst := srcDst(fields)
	for i := range src.Len() {
		require.NoError(t, src.ReadSample(i, dst))
		for f, field := range fields {
			n := field.Bytes()
			if rag != nil && rag.RaggedField() == f {
				n = rag.SampleLen(i) * field.DType.Size()
			}
			region, off := mb.Region(f), mb.Offset(f, i)
			require.GreaterOrEqual(t, off, int64(0), "sample %d field %q", i, field.Name)
			require.LessOrEqual(t, off+int64(n), int64(len(region)), "sample %d field %q lies inside its region", i, field.Name)
			require.Equal(t, dst[f][:n], region[off:off+int64(n)], "sample %d field %q", i, field.Name)
		}
	}
	require.Nil(t, mb.Region(-1))
	require.Nil(t, mb.Region(len(fields)))
	require.Equal(t, int64(-1), mb.Offset(-1, 0))
	require.Equal(t, int64(-1), mb.Offset(len(fields), 0))
	require.Equal(t, int64(-1), mb.Offset(0, -1))
	require.Equal(t, int64(-1), mb.Offset(0, src.Len()))
}

// Every memory-backed source, against ReadSample; after Close the regions are gone.
func TestMemoryBackedMatchesReadSample(t *testing.T) {
	r := srcRand(t)
	tokenSource := func(tc tokenCase, cfg TokenConfig) func(t *testing.T) Source {
		return func(t *testing.T) Source {
			path := tc.write(t, randTokens(r, 300, tc.size))
			cfg.Format = tc.format
			src, err := NewTokenSource(path, cfg)
			require.NoError(t, err)
			return src
		}
	}
	cases := []struct {
		name string
		open func(t *testing.T) Source
	}{
		{"memory", func(t *testing.T) Source {
			fields, data := memoryFixture(t, 13)
			src, err := NewMemorySource(13, fields, data)
			require.NoError(t, err)
			return src
		}},
		{"npy", func(t *testing.T) Source {
			dir := t.TempDir()
			paths := map[string]string{}
			for _, f := range []Field{{Name: "a", DType: Float32, Shape: []int{3, 2}}, {Name: "b", DType: Int64}, {Name: "c", DType: Uint8, Shape: []int{5}}} {
				paths[f.Name] = filepath.Join(dir, f.Name+".npy")
				require.NoError(t, WriteNpy(paths[f.Name], f.DType, append([]int{9}, f.Shape...), srcRandBytes(r, 9*f.Bytes())))
			}
			src, err := NewNpySource(paths)
			require.NoError(t, err)
			return src
		}},
		{"records with a header and overlapping fields", func(t *testing.T) Source {
			path := srcWriteFile(t, "recs.bin", srcRandBytes(r, 13+9*24))
			src, err := NewRecordSource(path, RecordSpec{RecordSize: 24, HeaderSize: 13, Fields: []RecordField{
				{Field: Field{Name: "f", DType: Float32, Shape: []int{2}}, Offset: 3},
				{Field: Field{Name: "id", DType: Int64}, Offset: 16},
				{Field: Field{Name: "overlap", DType: Uint16, Shape: []int{3}}, Offset: 5},
				{Field: Field{Name: "all", DType: Uint8, Shape: []int{24}}, Offset: 0},
			}})
			require.NoError(t, err)
			return src
		}},
		{"CIFAR-10", func(t *testing.T) Source {
			src, err := NewRecordSource(srcWriteFile(t, "data_batch_1.bin", srcRandBytes(r, 4*3073)), CIFAR10Spec())
			require.NoError(t, err)
			return src
		}},
		{"ragged tokens", func(t *testing.T) Source {
			dir := t.TempDir()
			tokPath := filepath.Join(dir, "tokens.bin")
			require.NoError(t, os.WriteFile(tokPath, tokenFile(nil, 4, randTokens(r, 60, 4)), 0o644))
			src, err := NewRaggedTokenSource(tokPath, offsetsNpy(t, dir, Int64, []uint64{2, 2, 9, 30, 31, 60}),
				RaggedConfig{Format: TokensUint32, MaxLen: 10})
			require.NoError(t, err)
			return src
		}},
	}
	for _, tc := range tokenCases {
		for _, mode := range []struct {
			name string
			cfg  TokenConfig
		}{
			{"sequential", TokenConfig{SeqLen: 7}},
			{"random", TokenConfig{SeqLen: 5, Random: true, Seed: r.Uint64()}},
			{"window", TokenConfig{SeqLen: 7, Window: true}},
			{"random window", TokenConfig{SeqLen: 1, Random: true, Seed: r.Uint64(), Window: true}},
		} {
			cases = append(cases, struct {
				name string
				open func(t *testing.T) Source
			}{"tokens " + tc.name + " " + mode.name, tokenSource(tc, mode.cfg)})
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := tc.open(t)
			requireMemoryBacked(t, src)
			mb := src.(MemoryBacked)
			require.NoError(t, src.Close())
			for f := range src.Fields() {
				require.Nil(t, mb.Region(f), "field %d after Close", f)
			}
		})
	}
}

// Caller memory may be a file mapping (numpy's mmap_mode="r"). When the file shrinks under it, reading
// the vanished pages raises SIGBUS; the read must return an ErrIO error, as the file sources do, and not
// kill the process. The reads run in a child process, so that a crash fails this test and nothing else.
func TestMemorySourceOverTruncatedMapping(t *testing.T) {
	out := testutil.RunIsolated(t, "TestMemorySourceOverTruncatedMappingChild")
	require.Contains(t, out, "faulted")
}

func TestMemorySourceOverTruncatedMappingChild(t *testing.T) {
	testutil.IsolatedChild(t)
	r := srcRand(t)
	const sampleSize, n = 4096, 16
	data := srcRandBytes(r, sampleSize*n)
	path := srcWriteFile(t, "mapped.bin", data)
	f, err := os.Open(path)
	require.NoError(t, err)
	mem, err := unix.Mmap(int(f.Fd()), 0, len(data), unix.PROT_READ, unix.MAP_SHARED)
	require.NoError(t, f.Close())
	require.NoError(t, err)
	defer func() { require.NoError(t, unix.Munmap(mem)) }()

	src, err := NewMemorySource(n, []Field{{Name: "x", DType: Uint8, Shape: []int{sampleSize}}}, [][]byte{mem})
	require.NoError(t, err)
	defer src.Close()
	t.Log(requireTruncationIsAnError(t, src, path, data, sampleSize, n))
}
