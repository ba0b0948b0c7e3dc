package data

import (
	"fmt"
	"testing"

	"github.com/ferry-ml/ferry/engine"

	"github.com/stretchr/testify/require"
)

func TestRecordSourceCIFAR10(t *testing.T) {
	r := srcRand(t)
	const n = 7
	file := srcRandBytes(r, n*3073)
	path := srcWriteFile(t, "data_batch_1.bin", file)

	src, err := NewRecordSource(path, CIFAR10Spec())
	require.NoError(t, err)
	require.Equal(t, n, src.Len())
	require.Equal(t, path, src.Path())
	require.Equal(t, []Field{
		{Name: "label", DType: Uint8},
		{Name: "image", DType: Uint8, Shape: []int{3, 32, 32}},
	}, src.Fields())
	require.Equal(t, fmt.Sprintf("records(%s, 7 × 3073 B)", path), src.String())

	requireSourceSamples(t, src, func(i int) [][]byte {
		rec := file[i*3073 : (i+1)*3073]
		return [][]byte{rec[:1], rec[1:]}
	})
	// The image is CHW: pixel (c, y, x) of record i is byte 1 + c*1024 + y*32 + x of the record.
	dst := srcDst(src.Fields())
	require.NoError(t, src.ReadSample(4, dst))
	for _, p := range [][3]int{{0, 0, 0}, {1, 5, 7}, {2, 31, 31}} {
		c, y, x := p[0], p[1], p[2]
		require.Equal(t, file[4*3073+1+c*1024+y*32+x], dst[1][c*1024+y*32+x])
	}
	requireSourceContract(t, src)
}

func TestRecordSourceCIFAR100Generic(t *testing.T) {
	r := srcRand(t)
	const n = 5
	file := srcRandBytes(r, n*3074)
	path := srcWriteFile(t, "train.bin", file)
	spec := RecordSpec{RecordSize: 3074, Fields: []RecordField{
		{Field: Field{Name: "coarse_label", DType: Uint8}, Offset: 0},
		{Field: Field{Name: "fine_label", DType: Uint8}, Offset: 1},
		{Field: Field{Name: "image", DType: Uint8, Shape: []int{3, 32, 32}}, Offset: 2},
	}}
	require.Equal(t, spec, CIFAR100Spec())
	src, err := NewRecordSource(path, spec)
	require.NoError(t, err)
	require.Equal(t, n, src.Len())
	requireSourceSamples(t, src, func(i int) [][]byte {
		rec := file[i*3074 : (i+1)*3074]
		return [][]byte{rec[0:1], rec[1:2], rec[2:]}
	})
	requireSourceContract(t, src)
}

// A header, typed fields at odd offsets, fields that overlap, and a field covering the whole record.
func TestRecordSourceHeaderAndOverlappingFields(t *testing.T) {
	r := srcRand(t)
	const header, rec, n = 13, 24, 9
	file := srcRandBytes(r, header+n*rec)
	path := srcWriteFile(t, "recs.bin", file)
	spec := RecordSpec{RecordSize: rec, HeaderSize: header, Fields: []RecordField{
		{Field: Field{Name: "f", DType: Float32, Shape: []int{2}}, Offset: 3},
		{Field: Field{Name: "id", DType: Int64}, Offset: 16},
		{Field: Field{Name: "overlap", DType: Uint16, Shape: []int{3}}, Offset: 5},
		{Field: Field{Name: "all", DType: Uint8, Shape: []int{rec}}, Offset: 0},
	}}
	src, err := NewRecordSource(path, spec)
	require.NoError(t, err)
	require.Equal(t, n, src.Len())
	for k, off := range []int{3, 16, 5, 0} {
		require.Equal(t, off, src.FieldOffset(k))
	}
	require.Equal(t, -1, src.FieldOffset(-1))
	require.Equal(t, -1, src.FieldOffset(4))
	require.Equal(t, spec, src.Spec())
	spec.Fields[0].Shape[0] = 100 // the source keeps its own copy
	require.Equal(t, []int{2}, src.Fields()[0].Shape)
	require.Equal(t, []int{2}, src.Spec().Fields[0].Shape)

	want := func(i int) [][]byte {
		b := file[header+i*rec : header+(i+1)*rec]
		return [][]byte{b[3:11], b[16:24], b[5:11], b}
	}
	requireSourceSamples(t, src, want)

	// Memory-backed: every field's region is the whole file, header included.
	for k := range spec.Fields {
		require.Equal(t, file, src.Region(k))
	}
	require.Same(t, &src.Region(0)[0], &src.Region(3)[0])
	require.Equal(t, int64(header+2*rec+16), src.Offset(1, 2))
	require.Equal(t, int64(header+(n-1)*rec), src.Offset(3, n-1))

	requireSourceConcurrent(t, src, want)
}

func TestRecordSourceRejects(t *testing.T) {
	r := srcRand(t)
	u8 := func(name string, n, off int) RecordField {
		return RecordField{Field: Field{Name: name, DType: Uint8, Shape: []int{n}}, Offset: off}
	}
	ok := []RecordField{u8("a", 4, 0)}
	for _, tc := range []struct {
		name string
		size int // file size
		spec RecordSpec
		err  error
		want string
	}{
		{"zero record size", 40, RecordSpec{RecordSize: 0, Fields: ok}, engine.ErrInvalidArgument, "record size 0 must be positive"},
		{"negative header", 40, RecordSpec{RecordSize: 4, HeaderSize: -1, Fields: ok}, engine.ErrInvalidArgument, "header size -1 is negative"},
		{"no fields", 40, RecordSpec{RecordSize: 4}, engine.ErrInvalidArgument, "at least one field"},
		{"duplicate field", 40, RecordSpec{RecordSize: 4, Fields: []RecordField{u8("a", 1, 0), u8("a", 1, 1)}}, engine.ErrInvalidArgument, "used twice"},
		{"field past the end", 40, RecordSpec{RecordSize: 4, Fields: []RecordField{u8("a", 3, 2)}}, engine.ErrInvalidArgument, `field "a" (3 bytes at offset 2) does not fit in a 4-byte record`},
		{"typed field past the end", 40, RecordSpec{RecordSize: 10, Fields: []RecordField{{Field: Field{Name: "d", DType: Float64, Shape: []int{1}}, Offset: 3}}}, engine.ErrInvalidArgument, `field "d" (8 bytes at offset 3) does not fit in a 10-byte record`},
		{"negative offset", 40, RecordSpec{RecordSize: 4, Fields: []RecordField{u8("a", 1, -1)}}, engine.ErrInvalidArgument, "offset -1"},
		{"partial record", 3073*3 + 100, CIFAR10Spec(), engine.ErrFormat, "9319 bytes after the 0-byte header are not a whole number of 3073-byte records (3 records and 100 bytes left over)"},
		{"partial record after header", 10 + 9, RecordSpec{RecordSize: 4, HeaderSize: 10, Fields: ok}, engine.ErrFormat, "9 bytes after the 10-byte header are not a whole number of 4-byte records"},
		{"shorter than header", 5, RecordSpec{RecordSize: 4, HeaderSize: 10, Fields: ok}, engine.ErrFormat, "the file is 5 bytes, shorter than the 10-byte header"},
		{"header only", 10, RecordSpec{RecordSize: 4, HeaderSize: 10, Fields: ok}, engine.ErrFormat, "no records"},
		{"empty file", 0, CIFAR10Spec(), engine.ErrFormat, "is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := srcWriteFile(t, "f.bin", srcRandBytes(r, tc.size))
			src, err := NewRecordSource(path, tc.spec)
			require.Nil(t, src)
			require.ErrorIs(t, err, tc.err)
			require.Contains(t, err.Error(), tc.want)
			require.Contains(t, err.Error(), path)
		})
	}
	_, err := NewRecordSource(srcWriteFile(t, "x", nil)+".missing", CIFAR10Spec())
	require.ErrorIs(t, err, engine.ErrIO)
}
