package data

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/testutil"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// npyFileBytes builds a .npy file by hand: magic, version major.0, the header length in 2 (version 1)
// or 4 bytes, the header text as given, then data.
func npyFileBytes(major byte, header string, data []byte) []byte {
	var b bytes.Buffer
	b.WriteString("\x93NUMPY")
	b.Write([]byte{major, 0})
	if major == 1 {
		b.Write(binary.LittleEndian.AppendUint16(nil, uint16(len(header))))
	} else {
		b.Write(binary.LittleEndian.AppendUint32(nil, uint32(len(header))))
	}
	b.WriteString(header)
	b.Write(data)
	return b.Bytes()
}

func TestWriteNpyHeaderMatchesNumpy(t *testing.T) {
	// np.save(f, np.zeros((3, 4), '<f4')) writes exactly this 128-byte prefix (numpy 1.x and 2.x; since
	// 1.24 numpy may pad other headers further, which readers ignore).
	path := filepath.Join(t.TempDir(), "a.npy")
	data := make([]byte, 48)
	require.NoError(t, WriteNpy(path, Float32, []int{3, 4}, data))
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	dict := "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }"
	want := "\x93NUMPY\x01\x00\x76\x00" + dict + strings.Repeat(" ", 128-10-len(dict)-1) + "\n"
	require.Equal(t, want, string(got[:128]))
	require.Len(t, got, 128+48)

	for _, tc := range []struct {
		shape []int
		tuple string
	}{{[]int{5}, "(5,)"}, {[]int{}, "()"}, {[]int{2, 0, 3}, "(2, 0, 3)"}} {
		require.NoError(t, WriteNpy(path, Int16, tc.shape, make([]byte, 2*Field{Shape: tc.shape, DType: Int16}.Elems())))
		got, err := os.ReadFile(path)
		require.NoError(t, err)
		require.Contains(t, string(got), "'shape': "+tc.tuple+", }")
		h, err := parseNpyHeader(got)
		require.NoError(t, err)
		require.Equal(t, 0, h.dataOff%64)
		require.Equal(t, Int16, h.dtype)
		require.Equal(t, tc.shape, h.shape)
	}
}

func TestWriteNpyRejects(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name  string
		path  string
		dtype DType
		shape []int
		n     int
		err   error
		want  string
	}{
		{"bfloat16", "a.npy", BFloat16, []int{2}, 4, engine.ErrInvalidArgument, "numpy has no type for bfloat16"},
		{"invalid dtype", "a.npy", DTypeInvalid, []int{2}, 4, engine.ErrInvalidArgument, "numpy has no type"},
		{"negative dim", "a.npy", Uint8, []int{2, -1}, 4, engine.ErrInvalidArgument, "negative dimension"},
		{"short data", "a.npy", Uint32, []int{2, 3}, 23, engine.ErrInvalidArgument, "uint32 [2 3] needs 24 bytes, got 23"},
		{"long data", "a.npy", Uint8, []int{2}, 3, engine.ErrInvalidArgument, "needs 2 bytes, got 3"},
		{"no directory", "missing/a.npy", Uint8, []int{2}, 2, engine.ErrIO, "missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := WriteNpy(filepath.Join(dir, tc.path), tc.dtype, tc.shape, make([]byte, tc.n))
			require.ErrorIs(t, err, tc.err)
			require.Contains(t, err.Error(), tc.want)
		})
	}
}

// Every dtype numpy has, several shapes, through WriteNpy and NpySource, compared byte for byte.
func TestNpySourceRoundTrip(t *testing.T) {
	r := srcRand(t)
	dir := t.TempDir()
	const n = 11
	shapes := [][]int{{}, {1}, {5}, {3, 4}, {2, 3, 2}, {1, 1, 7, 1}}
	paths := map[string]string{}
	raw := map[string][]byte{}
	var want []Field
	k := 0
	for d := Bool; d.Valid(); d++ {
		if d.NumpyDescr() == "" {
			continue
		}
		f := Field{Name: fmt.Sprintf("f%02d_%v", k, d), DType: d, Shape: shapes[k%len(shapes)]}
		k++
		data := srcRandBytes(r, n*f.Bytes())
		if d == Bool {
			for i := range data {
				data[i] &= 1
			}
		}
		path := filepath.Join(dir, f.Name+".npy")
		require.NoError(t, WriteNpy(path, d, append([]int{n}, f.Shape...), data))
		paths[f.Name], raw[f.Name] = path, data
		if len(f.Shape) == 0 {
			f.Shape = nil
		}
		want = append(want, f)
	}
	src, err := NewNpySource(paths)
	require.NoError(t, err)
	require.Equal(t, n, src.Len())
	require.Equal(t, want, src.Fields(), "fields ordered by name, with the per-sample shape")
	require.True(t, strings.HasPrefix(src.String(), "npy(f00_bool="+paths["f00_bool"]+", "), src.String())
	require.True(t, strings.HasSuffix(src.String(), fmt.Sprintf("; 11 × %d B)", sampleBytes(want))), src.String())

	wantSample := func(i int) [][]byte {
		out := make([][]byte, len(want))
		for k, f := range want {
			b := f.Bytes()
			out[k] = raw[f.Name][i*b : (i+1)*b]
		}
		return out
	}
	requireSourceSamples(t, src, wantSample)
	requireSourceContract(t, src)

	src, err = NewNpySource(paths)
	require.NoError(t, err)
	requireSourceConcurrent(t, src, wantSample)
}

// Versions 2.0 and 3.0 (4-byte header length), double quotes, no trailing comma, Python 2 longs,
// unpadded headers, and byte-order-free spellings of one-byte types.
func TestNpySourceHandWrittenHeaders(t *testing.T) {
	r := srcRand(t)
	for _, tc := range []struct {
		name   string
		major  byte
		header string
		dtype  DType
		n      int
		shape  []int
	}{
		{"v2", 2, "{'descr': '<i4', 'fortran_order': False, 'shape': (4, 3), }\n", Int32, 4, []int{3}},
		{"v3", 3, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2, 2), }          \n", Float64, 2, []int{2, 2}},
		{"v3 utf8 padding", 3, "{'descr':'<u2','fortran_order':False,'shape':(6,)}\t\n", Uint16, 6, nil},
		{"double quotes", 1, `{"descr": "<f2", "shape": (3, 5), "fortran_order": False}` + "\n", Float16, 3, []int{5}},
		{"python2 longs", 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (2L, 3L), }\n", Int64, 2, []int{3}},
		{"big-endian byte", 1, "{'descr': '>u1', 'fortran_order': False, 'shape': (5, 2), }\n", Uint8, 5, []int{2}},
		{"little-endian bool", 1, "{'descr': '<b1', 'fortran_order': False, 'shape': (5,), }\n", Bool, 5, nil},
		{"native order", 1, "{'descr': '=u4', 'fortran_order': False, 'shape': (2, 1), }\n", Uint32, 2, []int{1}},
		{"trailing data", 1, "{'descr': '|i1', 'fortran_order': False, 'shape': (3,), }\n", Int8, 3, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := Field{Name: "v", DType: tc.dtype, Shape: tc.shape}
			data := srcRandBytes(r, tc.n*f.Bytes())
			file := npyFileBytes(tc.major, tc.header, data)
			if tc.name == "trailing data" {
				file = append(file, 1, 2, 3)
			}
			src, err := NewNpySource(map[string]string{"v": srcWriteFile(t, "v.npy", file)})
			require.NoError(t, err)
			defer src.Close()
			require.Equal(t, tc.n, src.Len())
			require.Equal(t, []Field{f}, src.Fields())
			requireSourceSamples(t, src, func(i int) [][]byte {
				return [][]byte{data[i*f.Bytes() : (i+1)*f.Bytes()]}
			})
		})
	}
}

func TestNpySourceRejectsMalformed(t *testing.T) {
	const good = "{'descr': '<u2', 'fortran_order': False, 'shape': (4, 2), }\n"
	hdr := func(descr, fortran, shape string) string {
		return fmt.Sprintf("{'descr': %s, 'fortran_order': %s, 'shape': %s, }\n", descr, fortran, shape)
	}
	data := make([]byte, 4096)
	for _, tc := range []struct {
		name string
		file []byte
		err  error
		want string
	}{
		{"empty", nil, engine.ErrFormat, "is empty"},
		{"bad magic", append([]byte("\x93NUMPX\x01\x00"), data[:100]...), engine.ErrFormat, `not a .npy file: it starts with "\x93NUMPX", expected "\x93NUMPY"`},
		{"too short for magic", []byte("\x93NU"), engine.ErrFormat, "not a .npy file"},
		{"text file", []byte("hello, world\n"), engine.ErrFormat, "not a .npy file"},
		{"truncated header length", []byte("\x93NUMPY\x02\x00\x10\x00"), engine.ErrFormat, "truncated in the header length"},
		{"truncated header length v1", []byte("\x93NUMPY\x01\x00\x10"), engine.ErrFormat, "truncated in the header length"},
		{"version 4", npyFileBytes(4, good, data), engine.ErrFormat, "format version 4.0 is not supported"},
		{"version 1.1", func() []byte { b := npyFileBytes(1, good, data); b[7] = 1; return b }(), engine.ErrFormat, "format version 1.1"},
		{"truncated header", npyFileBytes(1, good, nil)[:30], engine.ErrFormat, "the header says it is 60 bytes but the file has 20 after the 10-byte prefix (truncated)"},
		{"garbage dict", npyFileBytes(1, "{descr: <u2}\n", data), engine.ErrFormat, "unexpected \"descr: <u2}"},
		{"not a dict", npyFileBytes(1, "[1, 2, 3]\n", data), engine.ErrFormat, "not a dictionary"},
		{"unterminated dict", npyFileBytes(1, "{'descr': '<u2', \n", data), engine.ErrFormat, "the header ends where a value was expected"},
		{"unterminated string", npyFileBytes(1, "{'descr: 1}\n", data), engine.ErrFormat, "unterminated string"},
		{"missing colon", npyFileBytes(1, "{'descr' '<u2'}\n", data), engine.ErrFormat, `expected ':' after key "descr"`},
		{"trailing text", npyFileBytes(1, strings.TrimSpace(good)+" x\n", data), engine.ErrFormat, `unexpected "x\n" after the dictionary`},
		{"duplicate key", npyFileBytes(1, "{'shape': (1,), 'shape': (1,)}\n", data), engine.ErrFormat, `key "shape" appears twice`},
		{"non-string key", npyFileBytes(1, "{1: 2}\n", data), engine.ErrFormat, "a dictionary key is 1"},
		{"missing descr", npyFileBytes(1, "{'fortran_order': False, 'shape': (4, 2), }\n", data), engine.ErrFormat, `has no "descr"`},
		{"missing shape", npyFileBytes(1, "{'descr': '<u2', 'fortran_order': False}\n", data), engine.ErrFormat, `has no "shape"`},
		{"missing fortran_order", npyFileBytes(1, "{'descr': '<u2', 'shape': (4, 2)}\n", data), engine.ErrFormat, `has no "fortran_order"`},
		{"extra key", npyFileBytes(1, "{'descr': '<u2', 'fortran_order': False, 'shape': (4, 2), 'x': 1}\n", data), engine.ErrFormat, `unexpected key "x"`},
		{"shape list", npyFileBytes(1, hdr("'<u2'", "False", "[4, 2]"), data), engine.ErrFormat, "'shape' is [4 2], expected a tuple of integers"},
		{"shape int", npyFileBytes(1, hdr("'<u2'", "False", "4"), data), engine.ErrFormat, "'shape' is 4, expected a tuple"},
		{"shape parenthesized int", npyFileBytes(1, hdr("'<u2'", "False", "(4)"), data), engine.ErrFormat, "'shape' is 4, expected a tuple"},
		{"shape string", npyFileBytes(1, hdr("'<u2'", "False", "(4, '2')"), data), engine.ErrFormat, "dimension 1 is 2, expected a non-negative integer"},
		{"shape negative", npyFileBytes(1, hdr("'<u2'", "False", "(4, -2)"), data), engine.ErrFormat, "dimension 1 is -2"},
		{"shape float", npyFileBytes(1, hdr("'<u2'", "False", "(4, 2.0)"), data), engine.ErrFormat, `bad number "2.0`},
		{"shape huge", npyFileBytes(1, hdr("'<u2'", "False", "(99999999999999999999,)"), data), engine.ErrFormat, "bad integer"},
		{"shape unclosed", npyFileBytes(1, hdr("'<u2'", "False", "(4, 2"), data), engine.ErrFormat, `unexpected "}\n" where a value was expected`},
		{"shape without comma", npyFileBytes(1, hdr("'<u2'", "False", "(4 2)"), data), engine.ErrFormat, "expected ',' or ')'"},
		{"big-endian", npyFileBytes(1, hdr("'>f4'", "False", "(4, 2)"), data), engine.ErrFormat, `dtype ">f4" is big-endian`},
		{"fortran order", npyFileBytes(1, hdr("'<u2'", "True", "(4, 2)"), data), engine.ErrFormat, "Fortran order"},
		{"fortran not bool", npyFileBytes(1, hdr("'<u2'", "0", "(4, 2)"), data), engine.ErrFormat, "'fortran_order' is 0, expected True or False"},
		{"object dtype", npyFileBytes(1, hdr("'|O'", "False", "(4, 2)"), data), engine.ErrFormat, `dtype "|O" is not supported`},
		{"complex dtype", npyFileBytes(1, hdr("'<c8'", "False", "(4, 2)"), data), engine.ErrFormat, `dtype "<c8" is not supported`},
		{"string dtype", npyFileBytes(1, hdr("'<U5'", "False", "(4, 2)"), data), engine.ErrFormat, `dtype "<U5" is not supported`},
		{"no byte order", npyFileBytes(1, hdr("'u8'", "False", "(4, 2)"), data), engine.ErrFormat, `dtype "u8" is not supported`},
		{"structured dtype", npyFileBytes(1, hdr("[('a', '<f4'), ('b', '<i4')]", "False", "(4,)"), data), engine.ErrFormat, "structured dtype"},
		{"descr not string", npyFileBytes(1, hdr("4", "False", "(4,)"), data), engine.ErrFormat, "'descr' is 4"},
		{"0-d array", npyFileBytes(1, hdr("'<u2'", "False", "()"), data), engine.ErrFormat, "0-dimensional array"},
		{"no samples", npyFileBytes(1, hdr("'<u2'", "False", "(0, 2)"), data), engine.ErrFormat, "holds no samples (shape [0 2])"},
		{"zero-size sample", npyFileBytes(1, hdr("'<u2'", "False", "(4, 0)"), data), engine.ErrFormat, "every dimension must be positive"},
		{"truncated data", npyFileBytes(1, good, data[:15]), engine.ErrFormat, "is 85 bytes, shorter than its 70-byte header and 4 samples × 4 bytes of data (truncated?)"},
		{"data far too short", npyFileBytes(1, hdr("'<u2'", "False", "(4611686018427387904, 2)"), data[:16]), engine.ErrFormat, "shorter than its"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := srcWriteFile(t, "bad.npy", tc.file)
			src, err := NewNpySource(map[string]string{"v": path})
			require.Nil(t, src)
			require.ErrorIs(t, err, tc.err)
			require.Contains(t, err.Error(), tc.want)
			require.Contains(t, err.Error(), path)
		})
	}
}

func TestNpySourceRejectsMismatchAndBadArguments(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, dtype DType, shape ...int) string {
		p := filepath.Join(dir, name)
		require.NoError(t, WriteNpy(p, dtype, shape, make([]byte, Field{DType: dtype, Shape: shape}.Bytes())))
		return p
	}
	a := write("a.npy", Uint8, 10, 3)
	b := write("b.npy", Float32, 9)

	_, err := NewNpySource(map[string]string{"a": a, "b": b})
	require.ErrorIs(t, err, engine.ErrFormat)
	require.Contains(t, err.Error(), fmt.Sprintf("%s holds 9 samples but %s holds 10", b, a))

	_, err = NewNpySource(nil)
	require.ErrorIs(t, err, engine.ErrInvalidArgument)
	require.Contains(t, err.Error(), "no files")

	_, err = NewNpySource(map[string]string{"": a})
	require.ErrorIs(t, err, engine.ErrInvalidArgument)
	require.Contains(t, err.Error(), "empty field name")

	_, err = NewNpySource(map[string]string{"a": a, "m": filepath.Join(dir, "missing.npy")})
	require.ErrorIs(t, err, engine.ErrIO)
	require.Contains(t, err.Error(), `field "m"`)
	require.Contains(t, err.Error(), "missing.npy")
}

// pythonWithNumpy returns a python3 that can import numpy, or skips the test.
func pythonWithNumpy(t *testing.T) string {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not on PATH; skipping the numpy cross-check")
	}
	if out, err := exec.Command(py, "-c", "import numpy").CombinedOutput(); err != nil {
		t.Skipf("numpy is not importable by %s (%v: %s); skipping the numpy cross-check", py, err, strings.TrimSpace(string(out)))
	}
	return py
}

// numpy writes arrays (format versions 1.0, 2.0 and 3.0) and their raw bytes; NpySource must read the
// same bytes.
func TestNpySourceReadsNumpyFiles(t *testing.T) {
	py := pythonWithNumpy(t)
	dir := t.TempDir()
	script := `
import sys, numpy as np
d = sys.argv[1]
rng = np.random.default_rng(int(sys.argv[2]))
cases = [
    ("a_u8", rng.integers(0, 256, (13, 3, 4, 5), dtype=np.uint8), None),
    ("b_f32", rng.standard_normal((13, 7)).astype(np.float32), None),
    ("c_i64", rng.integers(-2**62, 2**62, (13,), dtype=np.int64), None),
    ("d_bool", rng.integers(0, 2, (13, 2)).astype(np.bool_), None),
    ("e_f16", rng.standard_normal((13, 2, 2)).astype(np.float16), (2, 0)),
    ("f_u16", rng.integers(0, 2**16, (13, 6), dtype=np.uint16), (3, 0)),
    ("g_f64", np.asfortranarray(rng.standard_normal((13, 3))).copy(order="C"), None),
]
for name, a, version in cases:
    with open(f"{d}/{name}.npy", "wb") as f:
        np.lib.format.write_array(f, a, version=version)
    with open(f"{d}/{name}.raw", "wb") as f:
        f.write(a.tobytes())
`
	out, err := exec.Command(py, "-c", script, dir, fmt.Sprint(srcRand(t).Uint32())).CombinedOutput()
	require.NoError(t, err, "%s", out)

	names := []string{"a_u8", "b_f32", "c_i64", "d_bool", "e_f16", "f_u16", "g_f64"}
	paths := map[string]string{}
	raw := map[string][]byte{}
	for _, name := range names {
		paths[name] = filepath.Join(dir, name+".npy")
		raw[name], err = os.ReadFile(filepath.Join(dir, name+".raw"))
		require.NoError(t, err)
	}
	src, err := NewNpySource(paths)
	require.NoError(t, err)
	defer src.Close()
	require.Equal(t, 13, src.Len())
	require.Equal(t, []Field{
		{Name: "a_u8", DType: Uint8, Shape: []int{3, 4, 5}},
		{Name: "b_f32", DType: Float32, Shape: []int{7}},
		{Name: "c_i64", DType: Int64},
		{Name: "d_bool", DType: Bool, Shape: []int{2}},
		{Name: "e_f16", DType: Float16, Shape: []int{2, 2}},
		{Name: "f_u16", DType: Uint16, Shape: []int{6}},
		{Name: "g_f64", DType: Float64, Shape: []int{3}},
	}, src.Fields())
	requireSourceSamples(t, src, func(i int) [][]byte {
		out := make([][]byte, len(names))
		for k, f := range src.Fields() {
			out[k] = raw[f.Name][i*f.Bytes() : (i+1)*f.Bytes()]
		}
		return out
	})

	// numpy's Fortran-ordered and big-endian files are refused by name.
	script = `
import sys, numpy as np
np.save(sys.argv[1] + "/fortran.npy", np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)))
np.save(sys.argv[1] + "/big.npy", np.arange(12, dtype=">f4").reshape(3, 4))
`
	out, err = exec.Command(py, "-c", script, dir).CombinedOutput()
	require.NoError(t, err, "%s", out)
	_, err = NewNpySource(map[string]string{"x": filepath.Join(dir, "fortran.npy")})
	require.ErrorIs(t, err, engine.ErrFormat)
	require.Contains(t, err.Error(), "Fortran order")
	_, err = NewNpySource(map[string]string{"x": filepath.Join(dir, "big.npy")})
	require.ErrorIs(t, err, engine.ErrFormat)
	require.Contains(t, err.Error(), "big-endian")
}

// WriteNpy's files load in numpy with the right dtype, shape and bytes.
func TestWriteNpyReadByNumpy(t *testing.T) {
	py := pythonWithNumpy(t)
	r := srcRand(t)
	dir := t.TempDir()
	var lines []string
	shapes := [][]int{{4, 3, 2}, {7}, {}, {2, 1, 5}, {0, 3}}
	k := 0
	for d := Bool; d.Valid(); d++ {
		if d.NumpyDescr() == "" {
			continue
		}
		shape := shapes[k%len(shapes)]
		k++
		data := srcRandBytes(r, Field{DType: d, Shape: shape}.Bytes())
		if d == Bool {
			for i := range data {
				data[i] &= 1
			}
		}
		name := d.String()
		require.NoError(t, WriteNpy(filepath.Join(dir, name+".npy"), d, shape, data))
		require.NoError(t, os.WriteFile(filepath.Join(dir, name+".raw"), data, 0o644))
		dims := make([]string, len(shape))
		for i, s := range shape {
			dims[i] = fmt.Sprint(s)
		}
		lines = append(lines, fmt.Sprintf("%s %s %s", name, d.NumpyDescr(), strings.Join(dims, ",")))
	}
	script := `
import sys, numpy as np
d = sys.argv[1]
for line in sys.stdin.read().splitlines():
    name, descr, dims = line.split(" ")
    shape = tuple(int(x) for x in dims.split(",") if x)
    for mode in (None, "r"):
        a = np.load(f"{d}/{name}.npy", mmap_mode=mode if shape and 0 not in shape else None)
        raw = open(f"{d}/{name}.raw", "rb").read()
        assert a.dtype == np.dtype(descr), (name, a.dtype, descr)
        assert a.shape == shape, (name, a.shape, shape)
        assert a.flags.c_contiguous
        assert a.tobytes() == raw, name
    print("ok", name)
`
	cmd := exec.Command(py, "-c", script, dir)
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n"))
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Equal(t, len(lines), strings.Count(string(out), "ok "), "%s", out)
}

// WriteNpy to a named pipe that no process reads is refused at once instead of waiting for a reader.
func TestWriteNpyToANamedPipeWithoutAReader(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "out.npy")
	require.NoError(t, unix.Mkfifo(fifo, 0o600))
	err := testutil.Within(t, testutil.FaultBound, "WriteNpy", func() error {
		return WriteNpy(fifo, Uint8, []int{4}, make([]byte, 4))
	})
	require.ErrorIs(t, err, engine.ErrIO)
	require.Contains(t, err.Error(), "named pipe that no process has open for reading")
}
