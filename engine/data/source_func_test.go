package data

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/ferry-ml/ferry/engine"

	"github.com/stretchr/testify/require"
)

// funcFixture is a callback that fills sample i from a table of random samples.
func funcFixture(t *testing.T, n int) ([]Field, [][][]byte, func(i int, dst [][]byte) error) {
	t.Helper()
	r := srcRand(t)
	fields := []Field{{Name: "x", DType: Float16, Shape: []int{9}}, {Name: "y", DType: Uint8}}
	table := make([][][]byte, n)
	for i := range table {
		table[i] = [][]byte{srcRandBytes(r, 18), srcRandBytes(r, 1)}
	}
	fn := func(i int, dst [][]byte) error {
		copy(dst[0], table[i][0])
		copy(dst[1], table[i][1])
		return nil
	}
	return fields, table, fn
}

func TestFuncSourceReadsEverySample(t *testing.T) {
	fields, table, fn := funcFixture(t, 23)
	src, err := NewFuncSource(23, fields, fn)
	require.NoError(t, err)
	require.Equal(t, 23, src.Len())
	require.Equal(t, fields, src.Fields())
	require.Equal(t, "func(23 × 19 B)", src.String())
	requireSourceSamples(t, src, func(i int) [][]byte { return table[i] })
	requireSourceContract(t, src)
}

func TestFuncSourceConcurrentReadsAndClose(t *testing.T) {
	fields, table, fn := funcFixture(t, 50)
	src, err := NewFuncSource(50, fields, fn)
	require.NoError(t, err)
	requireSourceConcurrent(t, src, func(i int) [][]byte { return table[i] })
}

func TestFuncSourceCallbackErrorsAndPanics(t *testing.T) {
	fields := []Field{{Name: "v", DType: Int32, Shape: []int{2}}}
	plain := errors.New("disk on fire")
	var calls atomic.Int64
	src, err := NewFuncSource(10, fields, func(i int, dst [][]byte) error {
		calls.Add(1)
		switch i {
		case 3:
			return plain
		case 4:
			return fmt.Errorf("%w: bad record", engine.ErrFormat)
		case 5:
			panic("boom")
		case 6:
			var m map[string]int
			m["x"] = 1 //nolint:staticcheck // a deliberate runtime error panic
		case 7:
			_ = dst[5] // index out of range
		}
		dst[0][0] = byte(i)
		return nil
	})
	require.NoError(t, err)
	dst := srcDst(fields)

	err = src.ReadSample(3, dst)
	require.ErrorIs(t, err, plain)
	require.ErrorIs(t, err, engine.ErrIO, "an error wrapping no engine error is also an ErrIO")
	require.Contains(t, err.Error(), "sample 3")

	err = src.ReadSample(4, dst)
	require.ErrorIs(t, err, engine.ErrFormat)
	require.NotErrorIs(t, err, engine.ErrIO)
	require.Contains(t, err.Error(), "sample 4: malformed data: bad record")

	for _, i := range []int{5, 6, 7} {
		err = src.ReadSample(i, dst)
		require.ErrorIs(t, err, engine.ErrIO, "sample %d", i)
		require.Contains(t, err.Error(), fmt.Sprintf("sample %d: the function panicked", i))
	}
	require.Contains(t, src.ReadSample(5, dst).Error(), "boom")

	require.NoError(t, src.ReadSample(9, dst), "the source stays usable after a panic")
	require.Equal(t, byte(9), dst[0][0])

	before := calls.Load()
	require.ErrorIs(t, src.ReadSample(10, dst), engine.ErrInvalidArgument)
	require.Equal(t, before, calls.Load(), "bad arguments never reach the function")
	require.NoError(t, src.Close())
	require.ErrorIs(t, src.ReadSample(0, dst), engine.ErrClosed)
	require.Equal(t, before, calls.Load(), "the function is not called after Close")
}

func TestFuncSourceRejectsBadArguments(t *testing.T) {
	fields := []Field{{Name: "v", DType: Uint8}}
	fn := func(int, [][]byte) error { return nil }
	for _, tc := range []struct {
		name   string
		n      int
		fields []Field
		fn     func(int, [][]byte) error
		want   string
	}{
		{"zero samples", 0, fields, fn, "0 samples"},
		{"no fields", 3, nil, fn, "at least one field"},
		{"bad shape", 3, []Field{{Name: "v", DType: Uint8, Shape: []int{0}}}, fn, "must be positive"},
		{"nil function", 3, fields, nil, "function is nil"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewFuncSource(tc.n, tc.fields, tc.fn)
			require.ErrorIs(t, err, engine.ErrInvalidArgument)
			require.Contains(t, err.Error(), tc.want)
		})
	}
}
