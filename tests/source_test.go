package tests

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/ebitengine/purego"
	"github.com/stretchr/testify/require"
)

// sourceSpecs reads a source's fields back through ferry_source_num_fields and ferry_source_field.
func sourceSpecs(t testing.TB, h sourceHandle) []fieldSpec {
	t.Helper()
	var n int32 = -1
	requireOK(t, func() int32 { return ferrySourceNumFields(h, &n) })
	require.Greater(t, n, int32(0))
	var out []fieldSpec
	for k := int32(0); k < n; k++ {
		var f field
		requireOK(t, func() int32 { return ferrySourceField(h, k, &f) })
		name, err := goString(f.Name)
		require.NoError(t, err)
		require.GreaterOrEqual(t, f.NDim, int32(0))
		require.LessOrEqual(t, f.NDim, int32(maxDims))
		for d := f.NDim; d < maxDims; d++ {
			require.Zero(t, f.Shape[d], "field %q: shape[%d] past ndim", name, d)
		}
		out = append(out, fieldSpec{name: name, dtype: f.DType, shape: append([]int64(nil), f.Shape[:f.NDim]...), offset: f.Offset})
	}
	for _, k := range []int32{-1, n, n + 100} {
		var f field
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceField(h, k, &f) }, "index")
	}
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceField(h, 0, nil) }, "NULL")
	return out
}

func sourceLen(t testing.TB, h sourceHandle) int64 {
	t.Helper()
	var n int64 = -1
	requireOK(t, func() int32 { return ferrySourceLen(h, &n) })
	return n
}

// iterateAll runs two epochs of a source, sequential then shuffled, checking every batch.
func iterateAll(t *testing.T, h sourceHandle, specs []fieldSpec, ref refFunc, batch int64) {
	t.Helper()
	e := newCPUEngine(t, 0)
	n := sourceLen(t, h)
	it := newIterator(t, e, h, iterOptions(t, batch))
	require.Equal(t, iota64(n), flatten(runEpoch(t, it, 0, specs, ref, cpuDevice, hostRead)))
	o := iterOptions(t, batch)
	o.Flags = iteratorShuffle
	o.Seed = 99
	it = newIterator(t, e, h, o)
	requirePermutation(t, flatten(runEpoch(t, it, 0, specs, ref, cpuDevice, hostRead)), n)
}

// TestSourceMemory checks a memory source's queries and iterates it.
func TestSourceMemory(t *testing.T) {
	r := newRand(t)
	n := 50 + r.Int64N(50)
	src := newMemorySource(t, r, n, standardSpecs)
	require.Equal(t, n, sourceLen(t, src.h))
	got := sourceSpecs(t, src.h)
	require.Len(t, got, len(standardSpecs))
	for k, s := range standardSpecs {
		require.Equal(t, s.name, got[k].name)
		require.Equal(t, s.dtype, got[k].dtype)
		require.Equal(t, s.shape, got[k].shape, "field %q", s.name)
		if len(s.shape) == 0 {
			require.Empty(t, got[k].shape)
		}
	}
	iterateAll(t, src.h, standardSpecs, src.ref, 9)

	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceLen(src.h, nil) }, "NULL")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceNumFields(src.h, nil) }, "NULL")
}

// TestSourceMemoryInvalid covers bad field specs and arguments of ferry_source_memory, and the same field
// checks in ferry_source_callback and ferry_source_records.
func TestSourceMemoryInvalid(t *testing.T) {
	r := newRand(t)
	good := []fieldSpec{{name: "a", dtype: dtypeFloat32, shape: []int64{2}}, {name: "b", dtype: dtypeUint8}}
	data := [][]byte{mappedRandom(t, r, 10*8), mappedRandom(t, r, 10)}
	recordFile := tempFile(t, "records.bin", make([]byte, 10*16))
	cb := sampleCallback()

	withField := func(k int, f func(s *fieldSpec)) []fieldSpec {
		out := append([]fieldSpec(nil), good...)
		out[k].shape = append([]int64(nil), out[k].shape...)
		f(&out[k])
		return out
	}
	tests := []struct {
		name  string
		specs []fieldSpec
		words []string
	}{
		{"ndim=9", withField(0, func(s *fieldSpec) { s.shape = []int64{1, 1, 1, 1, 1, 1, 1, 1, 1} }), []string{"ndim", "9"}},
		{"dtype=0", withField(1, func(s *fieldSpec) { s.dtype = 0 }), []string{"dtype", `"b"`}},
		{"dtype=14", withField(1, func(s *fieldSpec) { s.dtype = 14 }), []string{"dtype"}},
		{"dtype=99", withField(0, func(s *fieldSpec) { s.dtype = 99 }), []string{"dtype", `"a"`}},
		{"dtype=-1", withField(0, func(s *fieldSpec) { s.dtype = -1 }), []string{"dtype"}},
		{"shape=0", withField(0, func(s *fieldSpec) { s.shape = []int64{0} }), []string{"shape", `"a"`}},
		{"shape=-2", withField(0, func(s *fieldSpec) { s.shape = []int64{-2} }), []string{"shape"}},
		{"empty name", withField(1, func(s *fieldSpec) { s.name = "" }), []string{"name"}},
		{"duplicate names", withField(1, func(s *fieldSpec) { s.name = "a" }), []string{`"a"`}},
	}
	c := newCmem(t, 1<<16)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h sourceHandle = 0x5a5a
			fs := c.fields(tt.specs)
			requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceMemory(10, fs, 2, c.pointers(data), &h) }, tt.words...)
			require.Zero(t, h)
			requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceCallback(10, fs, 2, cb, 1, &h) }, tt.words...)
			requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceRecords(c.cstring(recordFile), 16, 0, fs, 2, &h) }, tt.words...)
		})
	}
	t.Run("ndim=-1", func(t *testing.T) {
		fs := c.fields(good)
		unsafe.Slice(fs, 2)[0].NDim = -1
		var h sourceHandle
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceMemory(10, fs, 2, c.pointers(data), &h) }, "ndim")
	})
	t.Run("NULL name", func(t *testing.T) {
		fs := c.fields(good)
		unsafe.Slice(fs, 2)[1].Name = nil
		var h sourceHandle
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceMemory(10, fs, 2, c.pointers(data), &h) }, "name", "NULL")
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceCallback(10, fs, 2, cb, 1, &h) }, "name", "NULL")
	})
	fs := c.fields(good)
	ptrs := c.pointers(data)
	var h sourceHandle
	calls := []struct {
		name  string
		fn    func() int32
		words []string
	}{
		{"NULL out", func() int32 { return ferrySourceMemory(10, fs, 2, ptrs, nil) }, []string{"NULL"}},
		{"NULL fields", func() int32 { return ferrySourceMemory(10, nil, 2, ptrs, &h) }, []string{"NULL"}},
		{"NULL data", func() int32 { return ferrySourceMemory(10, fs, 2, nil, &h) }, []string{"NULL"}},
		{"NULL data[1]", func() int32 { return ferrySourceMemory(10, fs, 2, c.pointers([][]byte{data[0], nil}), &h) }, []string{"NULL", `"b"`}},
		{"num_fields=0", func() int32 { return ferrySourceMemory(10, fs, 0, ptrs, &h) }, []string{"num_fields"}},
		{"num_fields=-1", func() int32 { return ferrySourceMemory(10, fs, -1, ptrs, &h) }, []string{"num_fields"}},
		{"num_samples=0", func() int32 { return ferrySourceMemory(0, fs, 2, ptrs, &h) }, []string{"num_samples"}},
		{"num_samples=-5", func() int32 { return ferrySourceMemory(-5, fs, 2, ptrs, &h) }, []string{"num_samples"}},
		{"callback NULL fn", func() int32 { return ferrySourceCallback(10, fs, 2, 0, 0, &h) }, []string{"NULL"}},
		{"callback NULL out", func() int32 { return ferrySourceCallback(10, fs, 2, cb, 0, nil) }, []string{"NULL"}},
		{"callback NULL fields", func() int32 { return ferrySourceCallback(10, nil, 2, cb, 0, &h) }, []string{"NULL"}},
		{"callback num_samples=0", func() int32 { return ferrySourceCallback(0, fs, 2, cb, 0, &h) }, []string{"num_samples"}},
		{"callback num_fields=0", func() int32 { return ferrySourceCallback(10, fs, 0, cb, 0, &h) }, []string{"num_fields"}},
	}
	for _, cc := range calls {
		t.Run(cc.name, func(t *testing.T) {
			requireStatus(t, ferryErrInvalidArgument, cc.fn, cc.words...)
		})
	}
	// The good specs do work.
	requireOK(t, func() int32 { return ferrySourceMemory(10, fs, 2, ptrs, &h) })
	requireOK(t, func() int32 { return ferrySourceDestroy(h) })
}

// recordFile writes header bytes then n records of size bytes, all random, and returns the path and
// the contents.
func writeRandomFile(t *testing.T, r *rand.Rand, name string, size int) (string, []byte) {
	t.Helper()
	b := make([]byte, size)
	fillRandom(r, b)
	return tempFile(t, name, b), b
}

// TestSourceRecords reads fields at their offsets inside records after a header.
func TestSourceRecords(t *testing.T) {
	r := newRand(t)
	header := r.Int64N(100)
	n := 60 + r.Int64N(60)
	specs := []fieldSpec{
		{name: "tag", dtype: dtypeUint16, shape: []int64{3}, offset: 1},
		{name: "value", dtype: dtypeFloat64, offset: 8},
		{name: "pixels", dtype: dtypeUint8, shape: []int64{5, 2}, offset: 16},
		{name: "flag", dtype: dtypeBool, offset: 26 + r.Int64N(10)},
	}
	recSize := int64(40 + r.Int64N(20))
	path, content := writeRandomFile(t, r, "data.rec", int(header+n*recSize))
	c := newCmem(t, 1<<16)
	var h sourceHandle
	requireOK(t, func() int32 {
		return ferrySourceRecords(c.cstring(path), recSize, header, c.fields(specs), int32(len(specs)), &h)
	})
	destroyAtCleanup(t, h)
	require.Equal(t, n, sourceLen(t, h))
	require.Equal(t, specs, sourceSpecs(t, h), "ferry_source_field gives the fields back with their offsets")
	ref := func(k int, i int64) []byte {
		start := header + i*recSize + specs[k].offset
		return content[start : start+int64(specs[k].bytes())]
	}
	iterateAll(t, h, specs, ref, 8)
}

// TestSourceRecordsInvalid covers files and layouts ferry_source_records must refuse.
func TestSourceRecordsInvalid(t *testing.T) {
	r := newRand(t)
	c := newCmem(t, 1<<16)
	specs := []fieldSpec{{name: "a", dtype: dtypeUint32, shape: []int64{2}, offset: 4}}
	fs := c.fields(specs)
	path, _ := writeRandomFile(t, r, "ten.rec", 16+10*12)
	missing := filepath.Join(t.TempDir(), "no-such-file.rec")
	dir := t.TempDir()
	empty := tempFile(t, "empty.rec", nil)
	tests := []struct {
		name         string
		path         string
		record, head int64
		want         int32
		words        []string
	}{
		{"not a whole number of records", path, 12, 10, ferryErrFormat, []string{path, "whole number"}},
		{"record size does not divide", path, 13, 16, ferryErrFormat, []string{path}},
		{"header longer than the file", path, 12, 1000, ferryErrFormat, []string{path, "header"}},
		{"header only", path, 136, 136, ferryErrFormat, []string{path}},
		{"missing file", missing, 12, 16, ferryErrIO, []string{missing}},
		{"directory", dir, 12, 16, ferryErrInvalidArgument, []string{dir}},
		{"empty file", empty, 12, 0, ferryErrFormat, []string{empty}},
		{"record_size=0", path, 0, 16, ferryErrInvalidArgument, []string{"record size"}},
		{"record_size=-12", path, -12, 16, ferryErrInvalidArgument, []string{"record size"}},
		{"header_size=-1", path, 12, -1, ferryErrInvalidArgument, []string{"header"}},
		{"field past the record", path, 8, 16, ferryErrInvalidArgument, []string{`"a"`, "offset"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := sourceHandle(0x5a5a)
			requireStatus(t, tt.want, func() int32 { return ferrySourceRecords(c.cstring(tt.path), tt.record, tt.head, fs, 1, &h) }, tt.words...)
			require.Zero(t, h)
		})
	}
	t.Run("negative offset", func(t *testing.T) {
		fs := c.fields([]fieldSpec{{name: "a", dtype: dtypeUint32, offset: -4}})
		var h sourceHandle
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceRecords(c.cstring(path), 12, 16, fs, 1, &h) }, `"a"`)
	})
	var h sourceHandle
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceRecords(nil, 12, 16, fs, 1, &h) }, "NULL")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceRecords(c.cstring(path), 12, 16, fs, 1, nil) }, "NULL")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceRecords(c.cstring(path), 12, 16, nil, 1, &h) }, "NULL")
	requireOK(t, func() int32 { return ferrySourceRecords(c.cstring(path), 12, 16, fs, 1, &h) })
	require.Equal(t, int64(10), sourceLen(t, h))
	requireOK(t, func() int32 { return ferrySourceDestroy(h) })
}

// TestSourceCIFAR10 reads a file in the CIFAR-10 binary format: 1 label byte and 3072 image bytes a record.
func TestSourceCIFAR10(t *testing.T) {
	r := newRand(t)
	const rec = 1 + 3*32*32
	n := 20 + r.IntN(20)
	content := make([]byte, n*rec)
	fillRandom(r, content)
	for i := 0; i < n; i++ {
		content[i*rec] = byte(r.IntN(10))
	}
	path := tempFile(t, "data_batch_1.bin", content)
	c := newCmem(t, 4096)
	var h sourceHandle
	requireOK(t, func() int32 { return ferrySourceCIFAR10(c.cstring(path), &h) })
	destroyAtCleanup(t, h)
	require.Equal(t, int64(n), sourceLen(t, h))
	specs := sourceSpecs(t, h)
	require.Equal(t, []fieldSpec{
		{name: "label", dtype: dtypeUint8, offset: 0},
		{name: "image", dtype: dtypeUint8, shape: []int64{3, 32, 32}, offset: 1},
	}, specs)
	ref := func(k int, i int64) []byte {
		if k == 0 {
			return content[i*rec : i*rec+1]
		}
		return content[i*rec+1 : (i+1)*rec]
	}
	iterateAll(t, h, specs, ref, 7)

	short := tempFile(t, "short.bin", content[:3*rec+100])
	requireStatus(t, ferryErrFormat, func() int32 { return ferrySourceCIFAR10(c.cstring(short), &h) }, short)
	missing := filepath.Join(t.TempDir(), "data_batch_9.bin")
	requireStatus(t, ferryErrIO, func() int32 { return ferrySourceCIFAR10(c.cstring(missing), &h) }, missing)
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceCIFAR10(nil, &h) }, "NULL")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceCIFAR10(c.cstring(path), nil) }, "NULL")
}

// npyBytes writes a version 1.0 .npy file by hand: magic, version, header length, the header dict padded
// with spaces to a multiple of 64 bytes, then the data.
func npyBytes(descr string, fortran bool, shape []int64, data []byte) []byte {
	var dims []string
	for _, s := range shape {
		dims = append(dims, strconv.FormatInt(s, 10))
	}
	tuple := "(" + strings.Join(dims, ", ")
	if len(shape) == 1 {
		tuple += ","
	}
	tuple += ")"
	fo := "False"
	if fortran {
		fo = "True"
	}
	dict := fmt.Sprintf("{'descr': '%s', 'fortran_order': %s, 'shape': %s, }", descr, fo, tuple)
	total := 10 + len(dict) + 1
	pad := (64 - total%64) % 64
	dict += strings.Repeat(" ", pad) + "\n"
	var b bytes.Buffer
	b.WriteString("\x93NUMPY")
	b.Write([]byte{1, 0})
	_ = binary.Write(&b, binary.LittleEndian, uint16(len(dict)))
	b.WriteString(dict)
	b.Write(data)
	return b.Bytes()
}

// TestSourceNpy reads one .npy file per field, written by hand.
func TestSourceNpy(t *testing.T) {
	r := newRand(t)
	n := int64(30 + r.IntN(30))
	type arr struct {
		name, descr string
		spec        fieldSpec
	}
	arrs := []arr{
		{"images", "|u1", fieldSpec{name: "images", dtype: dtypeUint8, shape: []int64{4, 3}}},
		{"labels", "<i8", fieldSpec{name: "labels", dtype: dtypeInt64}},
		{"embeddings", "<f4", fieldSpec{name: "embeddings", dtype: dtypeFloat32, shape: []int64{5}}},
		{"half", "<f2", fieldSpec{name: "half", dtype: dtypeFloat16, shape: []int64{2, 2}}},
		{"counts", "<u2", fieldSpec{name: "counts", dtype: dtypeUint16, shape: []int64{3}}},
	}
	dir := t.TempDir()
	content := map[string][]byte{}
	var names, paths []string
	for _, a := range arrs {
		data := make([]byte, int(n)*a.spec.bytes())
		fillRandom(r, data)
		content[a.name] = data
		p := filepath.Join(dir, a.name+".npy")
		require.NoError(t, os.WriteFile(p, npyBytes(a.descr, false, append([]int64{n}, a.spec.shape...), data), 0o644))
		names, paths = append(names, a.name), append(paths, p)
	}
	c := newCmem(t, 1<<16)
	var h sourceHandle
	requireOK(t, func() int32 { return ferrySourceNpy(c.strings(names), c.strings(paths), int32(len(names)), &h) })
	destroyAtCleanup(t, h)
	require.Equal(t, n, sourceLen(t, h))
	specs := sourceSpecs(t, h)
	require.Len(t, specs, len(arrs))
	for _, s := range specs {
		var want *fieldSpec
		for _, a := range arrs {
			if a.name == s.name {
				want = &a.spec
			}
		}
		require.NotNil(t, want, "unexpected field %q", s.name)
		require.Equal(t, want.dtype, s.dtype, s.name)
		require.Equal(t, want.shape, s.shape, s.name)
	}
	ref := func(k int, i int64) []byte {
		b := specs[k].bytes()
		return content[specs[k].name][int(i)*b : int(i+1)*b]
	}
	iterateAll(t, h, specs, ref, 8)

	// Files ferry_source_npy must refuse.
	write := func(name string, b []byte) string { return tempFile(t, name, b) }
	good := paths[0]
	other := write("other.npy", npyBytes("<i4", false, []int64{n + 1}, make([]byte, 4*(n+1))))
	badMagic := write("magic.npy", append([]byte("\x93NUMPZ"), npyBytes("<i4", false, []int64{n}, make([]byte, 4*n))[6:]...))
	fortran := write("fortran.npy", npyBytes("<i4", true, []int64{n, 2}, make([]byte, 8*n)))
	bigEndian := write("big.npy", npyBytes(">i4", false, []int64{n}, make([]byte, 4*n)))
	object := write("object.npy", npyBytes("|O", false, []int64{n}, make([]byte, 8*n)))
	truncated := write("truncated.npy", npyBytes("<f8", false, []int64{n}, make([]byte, 8*n-3)))
	scalar := write("scalar.npy", npyBytes("<f8", false, nil, make([]byte, 8)))
	missing := filepath.Join(dir, "missing.npy")
	cases := []struct {
		name   string
		names  []string
		paths  []string
		status int32
		words  []string
	}{
		{"sample counts differ", []string{"a", "b"}, []string{good, other}, ferryErrFormat, []string{other}},
		{"bad magic", []string{"a"}, []string{badMagic}, ferryErrFormat, []string{badMagic}},
		{"fortran order", []string{"a"}, []string{fortran}, ferryErrFormat, []string{fortran}},
		{"big-endian", []string{"a"}, []string{bigEndian}, ferryErrFormat, []string{"big-endian"}},
		{"object dtype", []string{"a"}, []string{object}, ferryErrFormat, []string{object}},
		{"truncated", []string{"a"}, []string{truncated}, ferryErrFormat, []string{truncated}},
		{"0-d array", []string{"a"}, []string{scalar}, ferryErrFormat, []string{scalar}},
		{"missing file", []string{"a", "b"}, []string{good, missing}, ferryErrIO, []string{missing}},
		{"duplicate names", []string{"a", "a"}, []string{good, good}, ferryErrInvalidArgument, []string{`"a"`}},
		{"empty name", []string{""}, []string{good}, ferryErrInvalidArgument, []string{"name"}},
	}
	for _, cc := range cases {
		t.Run(cc.name, func(t *testing.T) {
			h := sourceHandle(0x5a5a)
			requireStatus(t, cc.status, func() int32 {
				return ferrySourceNpy(c.strings(cc.names), c.strings(cc.paths), int32(len(cc.names)), &h)
			}, cc.words...)
			require.Zero(t, h)
		})
	}
	nullSecond := c.strings([]string{"a", "b"})
	unsafe.Slice(nullSecond, 2)[1] = nil
	for name, fn := range map[string]func() int32{
		"NULL names": func() int32 { return ferrySourceNpy(nil, c.strings(paths), 1, &h) },
		"NULL paths": func() int32 { return ferrySourceNpy(c.strings(names), nil, 1, &h) },
		"NULL out":   func() int32 { return ferrySourceNpy(c.strings(names), c.strings(paths), 1, nil) },
		"NULL name":  func() int32 { return ferrySourceNpy(nullSecond, c.strings(paths[:2]), 2, &h) },
		"NULL path":  func() int32 { return ferrySourceNpy(c.strings(names[:2]), nullSecond, 2, &h) },
		"count=0":    func() int32 { return ferrySourceNpy(c.strings(names), c.strings(paths), 0, &h) },
		"count=-1":   func() int32 { return ferrySourceNpy(c.strings(names), c.strings(paths), -1, &h) },
	} {
		t.Run(name, func(t *testing.T) { requireStatus(t, ferryErrInvalidArgument, fn) })
	}
}

// tokenFile is a token file written by a test, with its tokens.
type tokenFile struct {
	path   string
	tokens []uint32
	size   int // bytes per token
}

func writeTokens(t *testing.T, r *rand.Rand, name string, format int, ntok int) tokenFile {
	t.Helper()
	size := 2
	if format == tokensUint32 {
		size = 4
	}
	var b bytes.Buffer
	if format == tokensLLMC {
		hdr := make([]int32, 256)
		hdr[0], hdr[1], hdr[2] = 20240520, 1, int32(ntok)
		_ = binary.Write(&b, binary.LittleEndian, hdr)
	}
	tf := tokenFile{size: size}
	for i := 0; i < ntok; i++ {
		v := r.Uint32()
		if size == 2 {
			v &= 0xffff
			_ = binary.Write(&b, binary.LittleEndian, uint16(v))
		} else {
			_ = binary.Write(&b, binary.LittleEndian, v)
		}
		tf.tokens = append(tf.tokens, v)
	}
	tf.path = tempFile(t, name, b.Bytes())
	return tf
}

// window encodes tokens [start, start+n) of the file in its token type.
func (tf tokenFile) window(start, n int64) []byte {
	var out []byte
	for _, v := range tf.tokens[start : start+n] {
		if tf.size == 2 {
			out = binary.LittleEndian.AppendUint16(out, uint16(v))
		} else {
			out = binary.LittleEndian.AppendUint32(out, v)
		}
	}
	return out
}

func newTokenSource(t *testing.T, c *cmem, path string, format int32, seqLen int64, flags uint32, seed uint64) sourceHandle {
	t.Helper()
	var o tokenOptions
	requireOK(t, func() int32 { return ferryTokenOptionsInit(&o) })
	o.Format, o.SeqLen, o.Flags, o.Seed = format, seqLen, flags, seed
	var h sourceHandle
	requireOK(t, func() int32 { return ferrySourceTokens(c.cstring(path), &o, &h) })
	destroyAtCleanup(t, h)
	return h
}

// TestSourceTokens reads flat uint16 and uint32 token files and an llm.c shard in order: sample i is the
// window at token i*seq_len, x its first seq_len tokens and y the same shifted by one.
func TestSourceTokens(t *testing.T) {
	r := newRand(t)
	c := newCmem(t, 1<<16)
	for _, format := range []int{tokensUint16, tokensUint32, tokensLLMC} {
		t.Run("format="+strconv.Itoa(format), func(t *testing.T) {
			ntok := 500 + r.IntN(300)
			seq := int64(8 + r.IntN(16))
			tf := writeTokens(t, r, "tokens.bin", format, ntok)
			h := newTokenSource(t, c, tf.path, int32(format), seq, 0, 0)
			n := (int64(ntok) - 1) / seq
			require.Equal(t, n, sourceLen(t, h))
			dt := dtypeUint16
			if format == tokensUint32 {
				dt = dtypeUint32
			}
			specs := sourceSpecs(t, h)
			require.Equal(t, []fieldSpec{{name: "x", dtype: dt, shape: []int64{seq}}, {name: "y", dtype: dt, shape: []int64{seq}}}, specs)
			ref := func(k int, i int64) []byte { return tf.window(i*seq+int64(k), seq) }
			iterateAll(t, h, specs, ref, 5)
		})
	}
}

// TestSourceTokensRandom checks random windows: y is x shifted by one, each window is in the file, and
// the offsets are a function of the seed.
func TestSourceTokensRandom(t *testing.T) {
	r := newRand(t)
	c := newCmem(t, 1<<16)
	ntok := 400 + r.IntN(200)
	seq := int64(6)
	tf := writeTokens(t, r, "tokens.bin", tokensUint16, ntok)
	e := newCPUEngine(t, 0)
	windows := func(seed uint64) [][]byte {
		h := newTokenSource(t, c, tf.path, tokensUint16, seq, tokensRandom, seed)
		n := sourceLen(t, h)
		require.Equal(t, (int64(ntok)-1)/seq, n)
		it := newIterator(t, e, h, iterOptions(t, n))
		b := next(t, it)
		defer releaseBatch(t, b)
		x, y := batchFieldByName(t, b, "x"), batchFieldByName(t, b, "y")
		defer deleteTensor(t, x)
		defer deleteTensor(t, y)
		row := int(seq) * 2
		xs := tensorBytes(x, int(n)*row)
		ys := tensorBytes(y, int(n)*row)
		var out [][]byte
		for i := 0; i < int(n); i++ {
			xw, yw := xs[i*row:(i+1)*row], ys[i*row:(i+1)*row]
			require.Equal(t, xw[2:], yw[:row-2], "sample %d: y is x shifted by one token", i)
			full := append(append([]byte(nil), xw...), yw[row-2:]...)
			found := false
			for off := int64(0); off+seq+1 <= int64(ntok); off++ {
				if bytes.Equal(tf.window(off, seq+1), full) {
					found = true
					break
				}
			}
			require.True(t, found, "sample %d is not a window of the file", i)
			out = append(out, full)
		}
		return out
	}
	a := windows(5)
	require.Equal(t, a, windows(5), "the same seed gives the same windows")
	require.NotEqual(t, a, windows(6), "another seed gives other windows")
	var inOrder [][]byte
	for i := int64(0); i < int64(len(a)); i++ {
		inOrder = append(inOrder, tf.window(i*seq, seq+1))
	}
	require.NotEqual(t, inOrder, a, "random windows are not the sequential ones")
}

// TestSourceTokensWindow reads each sample as one field "tokens" of seq_len+1 tokens: the same windows, in
// order and at the random offsets, as the x and y of a source without the flag.
func TestSourceTokensWindow(t *testing.T) {
	r := newRand(t)
	c := newCmem(t, 1<<16)
	e := newCPUEngine(t, 0)
	for _, format := range []int{tokensUint16, tokensUint32, tokensLLMC} {
		t.Run("format="+strconv.Itoa(format), func(t *testing.T) {
			ntok := 300 + r.IntN(300)
			seq := int64(4 + r.IntN(12))
			tf := writeTokens(t, r, "tokens.bin", format, ntok)
			h := newTokenSource(t, c, tf.path, int32(format), seq, tokensWindow, 0)
			n := (int64(ntok) - 1) / seq
			require.Equal(t, n, sourceLen(t, h))
			dt := dtypeUint16
			if format == tokensUint32 {
				dt = dtypeUint32
			}
			specs := sourceSpecs(t, h)
			require.Equal(t, []fieldSpec{{name: "tokens", dtype: dt, shape: []int64{seq + 1}}}, specs)
			iterateAll(t, h, specs, func(k int, i int64) []byte { return tf.window(i*seq, seq+1) }, 7)

			// Random windows: each is x followed by the last token of y, as the pair source gives them.
			seed := r.Uint64()
			win := newTokenSource(t, c, tf.path, int32(format), seq, tokensWindow|tokensRandom, seed)
			pair := newTokenSource(t, c, tf.path, int32(format), seq, tokensRandom, seed)
			require.Equal(t, n, sourceLen(t, win))
			read := func(h sourceHandle, name string) []byte {
				it := newIterator(t, e, h, iterOptions(t, n))
				b := next(t, it)
				defer releaseBatch(t, b)
				x := batchFieldByName(t, b, name)
				defer deleteTensor(t, x)
				width := int(seq) * tf.size
				if name == "tokens" {
					width += tf.size
				}
				return append([]byte(nil), tensorBytes(x, int(n)*width)...)
			}
			windows, xs, ys := read(win, "tokens"), read(pair, "x"), read(pair, "y")
			row, w := int(seq)*tf.size, int(seq+1)*tf.size
			for i := 0; i < int(n); i++ {
				got := windows[i*w : (i+1)*w]
				require.Equal(t, xs[i*row:(i+1)*row], got[:row], "sample %d: the window starts with x", i)
				require.Equal(t, ys[i*row:(i+1)*row], got[tf.size:], "sample %d: the window ends with y", i)
			}
		})
	}
}

// TestSourceTokensInvalid covers token files and options ferry_source_tokens must refuse.
func TestSourceTokensInvalid(t *testing.T) {
	r := newRand(t)
	c := newCmem(t, 1<<16)
	llmc := func(magic, version, count int32, ntok int, size int) string {
		hdr := make([]int32, 256)
		hdr[0], hdr[1], hdr[2] = magic, version, count
		var b bytes.Buffer
		_ = binary.Write(&b, binary.LittleEndian, hdr)
		body := make([]byte, ntok*size)
		fillRandom(r, body)
		b.Write(body)
		return tempFile(t, fmt.Sprintf("shard-%d-%d-%d.bin", magic, version, count), b.Bytes())
	}
	odd, _ := writeRandomFile(t, r, "odd.bin", 1001)
	tiny, _ := writeRandomFile(t, r, "tiny.bin", 8)
	good, _ := writeRandomFile(t, r, "good.bin", 1000)
	missing := filepath.Join(t.TempDir(), "missing.bin")
	badMagic := llmc(20240521, 1, 100, 100, 2)
	tests := []struct {
		name   string
		path   string
		modify func(o *tokenOptions)
		status int32
		words  []string
	}{
		{"wrong llm.c magic", badMagic, func(o *tokenOptions) { o.Format = tokensLLMC }, ferryErrFormat, []string{badMagic, "magic", "20240521"}},
		{"wrong llm.c version", llmc(20240520, 2, 100, 100, 2), func(o *tokenOptions) { o.Format = tokensLLMC }, ferryErrFormat, []string{"version"}},
		{"llm.c count mismatch", llmc(20240520, 1, 101, 100, 2), func(o *tokenOptions) { o.Format = tokensLLMC }, ferryErrFormat, []string{"101"}},
		{"llm.c shorter than its header", odd, func(o *tokenOptions) { o.Format = tokensLLMC }, ferryErrFormat, []string{odd}},
		{"odd bytes of uint16", odd, func(o *tokenOptions) {}, ferryErrFormat, []string{odd}},
		{"too few tokens", tiny, func(o *tokenOptions) { o.SeqLen = 4 }, ferryErrFormat, []string{tiny}},
		{"missing file", missing, func(o *tokenOptions) {}, ferryErrIO, []string{missing}},
		{"seq_len=0", good, func(o *tokenOptions) { o.SeqLen = 0 }, ferryErrInvalidArgument, []string{"sequence length"}},
		{"seq_len=-1", good, func(o *tokenOptions) { o.SeqLen = -1 }, ferryErrInvalidArgument, []string{"sequence length"}},
		{"format=0", good, func(o *tokenOptions) { o.Format = 0 }, ferryErrInvalidArgument, []string{"format"}},
		{"format=4", good, func(o *tokenOptions) { o.Format = 4 }, ferryErrInvalidArgument, []string{"format"}},
		{"flags=0x4", good, func(o *tokenOptions) { o.Flags = 0x4 }, ferryErrInvalidArgument, []string{"flags"}},
		{"flags=0x80000003", good, func(o *tokenOptions) { o.Flags = 0x80000003 }, ferryErrInvalidArgument, []string{"flags"}},
		{"size=0", good, func(o *tokenOptions) { o.Size = 0 }, ferryErrInvalidArgument, []string{"size"}},
		{"size=31", good, func(o *tokenOptions) { o.Size = 31 }, ferryErrInvalidArgument, []string{"size"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var o tokenOptions
			requireOK(t, func() int32 { return ferryTokenOptionsInit(&o) })
			o.SeqLen = 16
			tt.modify(&o)
			h := sourceHandle(0x5a5a)
			requireStatus(t, tt.status, func() int32 { return ferrySourceTokens(c.cstring(tt.path), &o, &h) }, tt.words...)
			require.Zero(t, h)
		})
	}
	o := tokenOptions{Size: 32, Format: tokensUint16, SeqLen: 16}
	var h sourceHandle
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceTokens(nil, &o, &h) }, "NULL")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceTokens(c.cstring(good), nil, &h) }, "NULL")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceTokens(c.cstring(good), &o, nil) }, "NULL")
	// A Llama 3 shard (uint32 tokens) and a larger options size are accepted.
	shard := llmc(20240801, 7, 300, 300, 4)
	g := newGuardBuf(unsafe.Sizeof(tokenOptions{}))
	*(*tokenOptions)(g.ptr()) = tokenOptions{Format: tokensLLMC, SeqLen: 10}
	g.setSize(unsafe.Sizeof(tokenOptions{}) + 32)
	requireOK(t, func() int32 { return ferrySourceTokens(c.cstring(shard), (*tokenOptions)(g.ptr()), &h) })
	require.Equal(t, int64(29), sourceLen(t, h))
	specs := sourceSpecs(t, h)
	require.Equal(t, dtypeUint32, specs[0].dtype)
	requireOK(t, func() int32 { return ferrySourceDestroy(h) })
}

// Callback sources. purego callbacks are never freed, so there is one, which dispatches on `user`.
type callbackSource struct {
	specs []fieldSpec
	seed  uint64
	fail  map[int64]int32 // sample → the non-zero value the callback returns for it
	calls atomic.Int64
	hook  atomic.Pointer[func(index int64)] // called first for each sample, on the worker's thread
	bad   atomic.Value                      // string: a problem the callback saw
}

var callbacks struct {
	sync.RWMutex
	once sync.Once
	fn   uintptr
	m    map[uintptr]*callbackSource
	next uintptr
}

// ref is the content the callback writes: a pure function of (seed, field, sample).
func (cs *callbackSource) ref(k int, i int64) []byte {
	r := rand.New(rand.NewPCG(cs.seed^uint64(i)*0x9e3779b97f4a7c15, uint64(k)+1))
	b := make([]byte, cs.specs[k].bytes())
	fillRandom(r, b)
	return b
}

func sampleCallback() uintptr {
	callbacks.once.Do(func() {
		callbacks.m = map[uintptr]*callbackSource{}
		callbacks.fn = purego.NewCallback(func(user uintptr, index int64, dst *unsafe.Pointer, dstBytes *int64, n int32) int32 {
			callbacks.RLock()
			cs := callbacks.m[user]
			callbacks.RUnlock()
			if cs == nil {
				return -100
			}
			cs.calls.Add(1)
			if hook := cs.hook.Load(); hook != nil {
				(*hook)(index)
			}
			if int(n) != len(cs.specs) || dst == nil || dstBytes == nil {
				cs.bad.Store(fmt.Sprintf("sample %d: num_fields %d", index, n))
				return -101
			}
			if v, ok := cs.fail[index]; ok {
				return v
			}
			ptrs := unsafe.Slice(dst, n)
			sizes := unsafe.Slice(dstBytes, n)
			for k := range ptrs {
				want := cs.specs[k].bytes()
				if sizes[k] != int64(want) || ptrs[k] == nil {
					cs.bad.Store(fmt.Sprintf("sample %d field %d: dst_bytes %d, want %d", index, k, sizes[k], want))
					return -102
				}
				copy(unsafe.Slice((*byte)(ptrs[k]), want), cs.ref(k, index))
			}
			return 0
		})
	})
	return callbacks.fn
}

func newCallbackSource(t *testing.T, n int64, specs []fieldSpec, seed uint64, fail map[int64]int32) (sourceHandle, *callbackSource) {
	t.Helper()
	fn := sampleCallback()
	cs := &callbackSource{specs: specs, seed: seed, fail: fail}
	callbacks.Lock()
	callbacks.next++
	user := callbacks.next
	callbacks.m[user] = cs
	callbacks.Unlock()
	c := newCmem(t, 1<<16)
	var h sourceHandle
	requireOK(t, func() int32 { return ferrySourceCallback(n, c.fields(specs), int32(len(specs)), fn, user, &h) })
	destroyAtCleanup(t, h)
	t.Cleanup(func() {
		if s, _ := cs.bad.Load().(string); s != "" {
			t.Errorf("the sample callback saw: %s", s)
		}
	})
	return h, cs
}

// TestSourceCallback fills samples through a C function pointer called from ferry's worker threads.
func TestSourceCallback(t *testing.T) {
	r := newRand(t)
	n := int64(80 + r.IntN(40))
	h, cs := newCallbackSource(t, n, standardSpecs, r.Uint64(), nil)
	require.Equal(t, n, sourceLen(t, h))
	require.Equal(t, len(standardSpecs), len(sourceSpecs(t, h)))
	iterateAll(t, h, standardSpecs, cs.ref, 8)
	require.GreaterOrEqual(t, cs.calls.Load(), 2*n, "every sample of both epochs came from the callback")
}

// TestSourceCallbackFailure makes the callback fail one sample: its batch fails with FERRY_ERR_IO naming
// the sample, and the iterator goes on with the next batch; every epoch fails the same way.
func TestSourceCallbackFailure(t *testing.T) {
	r := newRand(t)
	const n, batch = 60, 8
	bad := int64(17 + r.IntN(30))
	h, cs := newCallbackSource(t, n, standardSpecs, r.Uint64(), map[int64]int32{bad: 7})
	it := newIterator(t, newCPUEngine(t, 0), h, iterOptions(t, batch))
	badBatch := bad / batch
	for epoch := uint64(0); epoch < 2; epoch++ {
		for i := int64(0); i < (n+batch-1)/batch; i++ {
			if i == badBatch {
				var b batchHandle = 0x5a5a
				requireStatus(t, ferryErrIO, func() int32 { return ferryIteratorNext(it, 0, &b) },
					"sample "+strconv.FormatInt(bad, 10))
				require.Zero(t, b)
				continue
			}
			b := next(t, it)
			info, idx := checkBatch(t, b, standardSpecs, cs.ref, cpuDevice, hostRead)
			require.Equal(t, i, info.Index)
			require.Equal(t, epoch, info.Epoch)
			require.NotContains(t, idx, bad)
			releaseBatch(t, b)
		}
		requireEndOfEpoch(t, it)
	}
}

// TestSourceQueriesInvalid covers NULL out-pointers of the source queries.
func TestSourceQueriesInvalid(t *testing.T) {
	r := newRand(t)
	src := newMemorySource(t, r, 5, standardSpecs)
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceLen(src.h, nil) }, "NULL")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceNumFields(src.h, nil) }, "NULL")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceField(src.h, 0, nil) }, "NULL")
}

// TestSourceCallbackReentry calls back into ferry from inside the sample callback, on the iterator's own
// worker: the calls that would wait for that worker (next, state, restore, set_epoch) fail at once with a
// message that says why, and destroying the iterator (as Python's garbage collector does when it
// finalizes a loader on one of its workers) returns at once and closes it once the callback has returned,
// instead of joining the worker it runs on for ever.
func TestSourceCallbackReentry(t *testing.T) {
	r := newRand(t)
	const n, batch, trigger = 64, 8, 40
	h, cs := newCallbackSource(t, n, standardSpecs, r.Uint64(), nil)
	o := iterOptions(t, batch)
	o.Prefetch = 2
	o.TimeoutMS = 20000
	it := newIterator(t, newCPUEngine(t, 0), h, o)
	type result struct {
		status int32
		msg    string
	}
	results := make(chan map[string]result, 1)
	hook := func(index int64) {
		if index != trigger {
			return
		}
		got := map[string]result{}
		var b batchHandle
		var pos iteratorPosition
		pos.Size = uint32(unsafe.Sizeof(pos))
		for name, f := range map[string]func() int32{
			"next":      func() int32 { return ferryIteratorNext(it, 0, &b) },
			"next_wait": func() int32 { return ferryIteratorNextWait(it, 0, 10, &b) },
			"state":     func() int32 { return ferryIteratorState(it, &pos) },
			"restore":   func() int32 { return ferryIteratorRestore(it, &pos) },
			"set_epoch": func() int32 { return ferryIteratorSetEpoch(it, 1) },
		} {
			s := f()
			got[name] = result{s, lastError(t)}
		}
		s := ferryIteratorDestroy(it)
		got["destroy"] = result{s, lastError(t)}
		results <- got
	}
	cs.hook.Store(&hook)
	start := time.Now()
	var status int32
	for k := 0; ; k++ {
		var b batchHandle
		status = ferryIteratorNext(it, 0, &b)
		if status != ferryOK {
			break
		}
		// The destroy may come between the next and this release, which then finds the batch gone.
		require.Contains(t, []int32{ferryOK, ferryErrInvalidHandle}, ferryBatchRelease(b, 0))
		require.Less(t, k, n/batch, "the iterator must be gone by the batch of sample %d", trigger)
	}
	require.Contains(t, []int32{ferryErrInvalidHandle, ferryErrClosed}, status, "next after the destroy")
	var got map[string]result
	select {
	case got = <-results:
	case <-time.After(faultBound):
		t.Fatalf("the callback did not return within %v", faultBound)
	}
	require.Less(t, time.Since(start), faultBound)
	for _, name := range []string{"next", "next_wait", "state", "restore", "set_epoch"} {
		require.Equal(t, ferryErrInvalidArgument, got[name].status, name)
		require.Contains(t, got[name].msg, "inside the sample callback of this iterator's own source", name)
	}
	require.Equal(t, ferryOK, got["destroy"].status, got["destroy"].msg)
	requireUsable(t)
}
