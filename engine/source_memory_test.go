package engine

import (
	"testing"

	"github.com/stretchr/testify/require"
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
			require.ErrorIs(t, err, ErrInvalidArgument)
			require.Contains(t, err.Error(), tc.want)
		})
	}
}
