package data

// Fuzz targets for every parser of outside input: the .npy header and its Python-literal dictionary,
// whole .npy files, token shards (llm.c and flat), ragged offsets files, field specs and the names the
// options take, the transforms' output rules, and the JSON report reader and merger. `go test` replays
// the seed corpora under testdata/fuzz/<FuzzName>/; `go test -run '^$' -fuzz '^FuzzName$' ./engine`
// explores further. Each target checks invariants beyond "no panic": errors wrap the documented
// sentinels and name the problem, and accepted input reads back consistently or round-trips.

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/ferry-ml/ferry/engine/internal/testutil"

	"github.com/ferry-ml/ferry/engine"

	"github.com/stretchr/testify/require"
)

// fuzzProduct is the product of dims with an overflow check; ok is false when it overflows int or a
// dimension is negative.
func fuzzProduct(dims []int) (n int, ok bool) {
	n = 1
	for _, d := range dims {
		if d < 0 {
			return 0, false
		}
		hi, lo := bits.Mul64(uint64(n), uint64(d))
		if hi != 0 || lo > math.MaxInt {
			return 0, false
		}
		n = int(lo)
	}
	return n, true
}

// fuzzDims decodes up to limit little-endian int64 dimensions from b, 8 bytes each.
func fuzzDims(b []byte, limit int) []int {
	var dims []int
	for len(b) >= 8 && len(dims) < limit {
		dims = append(dims, int(int64(binary.LittleEndian.Uint64(b))))
		b = b[8:]
	}
	return dims
}

// FuzzNpyHeader parses arbitrary bytes as the start of a .npy file. An accepted header has a valid dtype,
// non-negative dimensions and a data offset inside the input; writing the same dtype and shape with
// WriteNpy and parsing that gives them back, with the data aligned as numpy aligns it.
func FuzzNpyHeader(f *testing.F) {
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := parseNpyHeader(data)
		if err != nil {
			require.NotEmpty(t, err.Error())
			return
		}
		require.True(t, h.dtype.Valid(), "accepted dtype %v", h.dtype)
		require.NotEmpty(t, h.dtype.NumpyDescr(), "accepted a dtype numpy has no string for")
		require.GreaterOrEqual(t, h.dataOff, 10)
		require.LessOrEqual(t, h.dataOff, len(data))
		for _, d := range h.shape {
			require.GreaterOrEqual(t, d, 0, "shape %v", h.shape)
		}
		elems, ok := fuzzProduct(h.shape)
		if !ok || elems > 1<<16 {
			return // a valid header of a large array: nothing small to write back
		}
		p := filepath.Join(dir, "rt.npy")
		require.NoError(t, WriteNpy(p, h.dtype, h.shape, make([]byte, elems*h.dtype.Size())))
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		h2, err := parseNpyHeader(b)
		require.NoError(t, err, "WriteNpy wrote a header parseNpyHeader refuses: %q", b)
		require.Equal(t, h.dtype, h2.dtype)
		require.Equal(t, h.shape, h2.shape)
		require.Zero(t, h2.dataOff%npyAlign, "data offset %d", h2.dataOff)
		require.Len(t, b, h2.dataOff+elems*h.dtype.Size())
	})
}

// fuzzPyLiteral writes v, a value parsePyDict returns, back as a Python literal.
func fuzzPyLiteral(v any) string {
	switch v := v.(type) {
	case nil:
		return "None"
	case bool:
		if v {
			return "True"
		}
		return "False"
	case int64:
		return strconv.FormatInt(v, 10)
	case string:
		if strings.IndexByte(v, '\'') >= 0 {
			return `"` + v + `"`
		}
		return "'" + v + "'"
	case pyTuple:
		parts := make([]string, len(v))
		for i, x := range v {
			parts[i] = fuzzPyLiteral(x)
		}
		if len(v) == 1 {
			return "(" + parts[0] + ",)"
		}
		return "(" + strings.Join(parts, ", ") + ")"
	case pyList:
		parts := make([]string, len(v))
		for i, x := range v {
			parts[i] = fuzzPyLiteral(x)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = fuzzPyLiteral(k) + ": " + fuzzPyLiteral(v[k])
		}
		return "{" + strings.Join(parts, ", ") + "}"
	}
	panic(fmt.Sprintf("parsePyDict returned a %T", v))
}

// FuzzPyDict parses arbitrary text as a .npy header dictionary. Whatever it accepts is made of the
// literal types it documents, and writing it back as a Python literal parses to the same value.
func FuzzPyDict(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		d, err := parsePyDict(s)
		if err != nil {
			require.NotEmpty(t, err.Error())
			return
		}
		require.NotNil(t, d)
		lit := fuzzPyLiteral(d)
		d2, err := parsePyDict(lit)
		require.NoError(t, err, "the literal %q, written back from %q, does not parse", lit, s)
		require.True(t, reflect.DeepEqual(d, d2), "%q parsed to %#v, its literal %q to %#v", s, d, lit, d2)
	})
}

// FuzzNpySource opens arbitrary bytes as a one-field .npy source. It never panics; a refusal wraps
// ErrFormat, ErrInvalidArgument or ErrIO. An accepted file serves its samples from the data after the
// header, and written back with WriteNpy it opens to the same fields and bytes.
func FuzzNpySource(f *testing.F) {
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := testutil.WriteFile(t, dir, "in.npy", data)
		s, err := NewNpySource(map[string]string{"x": p})
		if err != nil {
			testutil.RequireWraps(t, err, engine.ErrFormat, engine.ErrInvalidArgument, engine.ErrIO)
			return
		}
		defer func() { require.NoError(t, s.Close()) }()
		fields := s.Fields()
		require.NoError(t, validateFields(fields))
		require.Len(t, fields, 1)
		n, b := s.Len(), fields[0].Bytes()
		require.Positive(t, n)
		require.Positive(t, b)
		region := s.Region(0)
		require.Len(t, region, n*b)
		h, err := parseNpyHeader(data)
		require.NoError(t, err)
		require.Equal(t, data[h.dataOff:h.dataOff+n*b], region)
		dst := [][]byte{make([]byte, b)}
		for _, i := range []int{0, n - 1} {
			require.NoError(t, s.ReadSample(i, dst))
			require.Equal(t, region[i*b:(i+1)*b], dst[0], "sample %d", i)
			require.Equal(t, int64(i*b), s.Offset(0, i))
		}
		testutil.RequireWraps(t, s.ReadSample(n, dst), engine.ErrInvalidArgument)

		p2 := filepath.Join(dir, "rt.npy")
		require.NoError(t, WriteNpy(p2, fields[0].DType, append([]int{n}, fields[0].Shape...), region))
		s2, err := NewNpySource(map[string]string{"x": p2})
		require.NoError(t, err, "a file WriteNpy wrote from an accepted one does not open")
		require.Equal(t, fields, s2.Fields())
		require.Equal(t, n, s2.Len())
		require.Equal(t, region, s2.Region(0))
		require.NoError(t, s2.Close())
	})
}

// fuzzCheckTokens checks an open token source against the token bytes it maps: its sample count and
// fields, and the windows of its first and last samples.
func fuzzCheckTokens(t *testing.T, s *TokenSource, tokens []byte, tsize int, cfg TokenConfig) {
	t.Helper()
	ntok := len(tokens) / tsize
	require.Equal(t, ntok, s.Tokens())
	require.Equal(t, (ntok-1)/cfg.SeqLen, s.Len())
	require.Positive(t, s.Len())
	require.NoError(t, validateFields(s.Fields()))
	require.Equal(t, tokens, s.Region(0))
	dst := make([][]byte, len(s.Fields()))
	for k, f := range s.Fields() {
		dst[k] = make([]byte, f.Bytes())
	}
	for _, i := range []int{0, s.Len() - 1} {
		o := s.WindowStart(i)
		require.GreaterOrEqual(t, o, 0)
		require.LessOrEqual(t, o+cfg.SeqLen+1, ntok, "sample %d's window starts at token %d of %d", i, o, ntok)
		require.NoError(t, s.ReadSample(i, dst))
		if cfg.Window {
			require.Equal(t, tokens[o*tsize:(o+cfg.SeqLen+1)*tsize], dst[0])
			continue
		}
		require.Equal(t, tokens[o*tsize:(o+cfg.SeqLen)*tsize], dst[0])
		require.Equal(t, tokens[(o+1)*tsize:(o+1+cfg.SeqLen)*tsize], dst[1])
		require.Equal(t, int64((o+1)*tsize), s.Offset(1, i))
	}
	require.Equal(t, -1, s.WindowStart(s.Len()))
	testutil.RequireWraps(t, s.ReadSample(s.Len(), dst), engine.ErrInvalidArgument)
}

// FuzzTokenLLMC opens arbitrary bytes as an llm.c shard. Only a known magic and version with a token
// count that matches the file are accepted; anything else is an ErrFormat or ErrInvalidArgument error.
// An accepted shard serves windows of the tokens after the 1024-byte header.
func FuzzTokenLLMC(f *testing.F) {
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte, seqLen int64, window, random bool, seed uint64) {
		cfg := TokenConfig{Format: TokensLLMC, SeqLen: int(seqLen), Window: window, Random: random, Seed: seed}
		s, err := NewTokenSource(testutil.WriteFile(t, dir, "shard.bin", data), cfg)
		if err != nil {
			testutil.RequireWraps(t, err, engine.ErrFormat, engine.ErrInvalidArgument, engine.ErrIO)
			return
		}
		defer func() { require.NoError(t, s.Close()) }()
		require.GreaterOrEqual(t, len(data), llmcHeaderBytes)
		magic := binary.LittleEndian.Uint32(data)
		version := binary.LittleEndian.Uint32(data[4:])
		count := binary.LittleEndian.Uint32(data[8:])
		tsize := 2
		switch {
		case magic == llmcMagicGPT2 && version == llmcVersionGPT2:
			require.Equal(t, Uint16, s.Fields()[0].DType)
		case magic == llmcMagicLlama3 && version == llmcVersionLlama3:
			require.Equal(t, Uint32, s.Fields()[0].DType)
			tsize = 4
		default:
			t.Fatalf("accepted magic %d version %d", magic, version)
		}
		require.Equal(t, int(count), s.Tokens(), "the header's token count")
		fuzzCheckTokens(t, s, data[llmcHeaderBytes:], tsize, cfg)
	})
}

// FuzzTokenFlat opens arbitrary bytes as a flat uint16 or uint32 token file: a size that is not a whole
// number of tokens, or too few tokens for one window, is an ErrFormat error.
func FuzzTokenFlat(f *testing.F) {
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte, wide bool, seqLen int64, window bool) {
		cfg := TokenConfig{Format: TokensUint16, SeqLen: int(seqLen), Window: window}
		tsize := 2
		if wide {
			cfg.Format, tsize = TokensUint32, 4
		}
		s, err := NewTokenSource(testutil.WriteFile(t, dir, "tokens.bin", data), cfg)
		if err != nil {
			testutil.RequireWraps(t, err, engine.ErrFormat, engine.ErrInvalidArgument, engine.ErrIO)
			if seqLen > 0 && len(data)%tsize != 0 {
				require.ErrorIs(t, err, engine.ErrFormat, "%d bytes of %d-byte tokens", len(data), tsize)
			}
			return
		}
		defer func() { require.NoError(t, s.Close()) }()
		require.Zero(t, len(data)%tsize)
		fuzzCheckTokens(t, s, data, tsize, cfg)
	})
}

// FuzzRaggedOffsets opens a ragged token source whose offsets file is arbitrary bytes, or, with wrap,
// arbitrary offsets in a valid int64 or uint64 .npy file. It accepts only offsets that start at 0 or
// more, never decrease and never pass the token count; an accepted source serves each sample's tokens,
// truncated to MaxLen and zero-padded.
func FuzzRaggedOffsets(f *testing.F) {
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, offsets []byte, wrap, unsigned bool, ntokens uint16, wide bool, maxLen int64) {
		cfg := RaggedConfig{Format: TokensUint16, MaxLen: int(maxLen)}
		tsize := 2
		if wide {
			cfg.Format, tsize = TokensUint32, 4
		}
		tokens := make([]byte, int(ntokens)*tsize)
		for i := range tokens {
			tokens[i] = byte(i*7 + 1)
		}
		tp := testutil.WriteFile(t, dir, "tokens.bin", tokens)
		op := filepath.Join(dir, "offsets.npy")
		if wrap {
			dtype := Int64
			if unsigned {
				dtype = Uint64
			}
			raw := offsets[:len(offsets)/8*8]
			require.NoError(t, WriteNpy(op, dtype, []int{len(raw) / 8}, raw))
		} else {
			testutil.WriteFile(t, dir, "offsets.npy", offsets)
		}
		s, err := NewRaggedTokenSource(tp, op, cfg)
		if err != nil {
			testutil.RequireWraps(t, err, engine.ErrFormat, engine.ErrInvalidArgument, engine.ErrIO)
			return
		}
		defer func() { require.NoError(t, s.Close()) }()
		require.Equal(t, int(ntokens), s.Tokens())
		require.Positive(t, s.Len())
		require.NoError(t, validateFields(s.Fields()))
		f0 := s.Fields()[0]
		require.Equal(t, []int{int(maxLen)}, f0.Shape)
		dst := [][]byte{make([]byte, f0.Bytes())}
		for i := 0; i < s.Len() && i < 64; i++ {
			n := s.SampleLen(i)
			require.GreaterOrEqual(t, n, 0)
			require.LessOrEqual(t, n, int(maxLen))
			o := s.Offset(0, i)
			require.GreaterOrEqual(t, o, int64(0))
			require.LessOrEqual(t, int(o)+n*tsize, len(tokens))
			require.NoError(t, s.ReadSample(i, dst))
			require.Equal(t, tokens[o:int(o)+n*tsize], dst[0][:n*tsize], "sample %d", i)
			require.Equal(t, make([]byte, len(dst[0])-n*tsize), dst[0][n*tsize:], "sample %d's padding", i)
		}
		require.Equal(t, -1, s.SampleLen(s.Len()))
	})
}

// FuzzParseDType parses arbitrary text as a dtype. An accepted type is valid and parses again from its
// name and from its numpy string; a refusal is an ErrInvalidArgument error.
func FuzzParseDType(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDType(s)
		if err != nil {
			testutil.RequireWraps(t, err, engine.ErrInvalidArgument)
			require.Equal(t, DTypeInvalid, d)
			return
		}
		require.True(t, d.Valid(), "%q parsed to %v", s, d)
		require.Positive(t, d.Size())
		back, err := ParseDType(d.String())
		require.NoError(t, err)
		require.Equal(t, d, back)
		if np := d.NumpyDescr(); np != "" {
			back, err := ParseDType(np)
			require.NoError(t, err)
			require.Equal(t, d, back)
			back, err = npyDType(np)
			require.NoError(t, err)
			require.Equal(t, d, back)
		}
	})
}

// FuzzFieldValidate validates fields of arbitrary name, dtype and shape. A valid field has a name, a
// valid dtype, positive dimensions and at most 2 GiB per sample, and its Elems and Bytes are the exact
// products; a refusal is an ErrInvalidArgument error.
func FuzzFieldValidate(f *testing.F) {
	f.Fuzz(func(t *testing.T, name string, dtype uint8, shape []byte) {
		fd := Field{Name: name, DType: DType(dtype), Shape: fuzzDims(shape, 8)}
		err := fd.Validate()
		elems, ok := fuzzProduct(fd.Shape)
		size := 0
		if ok && fd.DType.Valid() {
			hi, lo := bits.Mul64(uint64(elems), uint64(fd.DType.Size()))
			if hi != 0 || lo > math.MaxInt {
				ok = false
			}
			size = int(lo)
		}
		positive := true
		for _, d := range fd.Shape {
			positive = positive && d > 0
		}
		valid := name != "" && fd.DType.Valid() && positive && ok && size <= 1<<31
		if !valid {
			require.Error(t, err, "field %q %v %v (%d bytes) was accepted", name, fd.DType, fd.Shape, size)
			testutil.RequireWraps(t, err, engine.ErrInvalidArgument)
			return
		}
		require.NoError(t, err)
		require.Equal(t, elems, fd.Elems())
		require.Equal(t, size, fd.Bytes())
		require.NoError(t, validateFields([]Field{fd}))
		testutil.RequireWraps(t, validateFields([]Field{fd, fd}), engine.ErrInvalidArgument)
	})
}

// FuzzParseOptionNames parses arbitrary text as an image layout and as a staging strategy. An accepted
// value is a defined one and parses again from its own name; a refusal is an ErrInvalidArgument error.
func FuzzParseOptionNames(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseImageLayout(s)
		if err != nil {
			testutil.RequireWraps(t, err, engine.ErrInvalidArgument)
		} else {
			require.Contains(t, []ImageLayout{LayoutCHW, LayoutHWC}, l)
			back, err := ParseImageLayout(l.String())
			require.NoError(t, err)
			require.Equal(t, l, back)
		}
		st, err := ParseStaging(s)
		if err != nil {
			testutil.RequireWraps(t, err, engine.ErrInvalidArgument)
		} else {
			require.Contains(t, []Staging{StagingAuto, StagingGather, StagingDMA, StagingMapped}, st)
			back, err := ParseStaging(st.String())
			require.NoError(t, err)
			require.Equal(t, st, back)
		}
	})
}

// fuzzFloats32 decodes up to 5 little-endian float32 from b, 4 bytes each: enough for a channel count
// of 0 to 4 and one too many.
func fuzzFloats32(b []byte) []float32 {
	var out []float32
	for len(b) >= 4 && len(out) < 5 {
		out = append(out, math.Float32frombits(binary.LittleEndian.Uint32(b)))
		b = b[4:]
	}
	return out
}

// fuzzRequireOutputs checks a transform's outputs for a valid input field: named, unique, of valid types
// and positive dimensions.
func fuzzRequireOutputs(t *testing.T, outs []Field) {
	t.Helper()
	require.NotEmpty(t, outs)
	seen := map[string]bool{}
	for _, o := range outs {
		require.NotEmpty(t, o.Name)
		require.False(t, seen[o.Name], "two outputs are named %q", o.Name)
		seen[o.Name] = true
		require.True(t, o.DType.Valid())
		for _, d := range o.Shape {
			require.Positive(t, d, "output %q has shape %v", o.Name, o.Shape)
		}
	}
}

// FuzzTransformOutputs asks Normalize, ShiftTokens and PadSequences for their outputs on fields of
// arbitrary type, shape and name with arbitrary options. A refusal is an ErrInvalidArgument error; for a
// valid input field, the outputs follow each transform's documented shapes and types.
func FuzzTransformOutputs(f *testing.F) {
	f.Fuzz(func(t *testing.T, dtype uint8, shape []byte, name string, mean, std []byte, scale float32,
		layout int8, outType uint8, flip float64, x, y, mask, lengths string, pad int64, fixed bool) {
		in := Field{Name: name, DType: DType(dtype), Shape: fuzzDims(shape, 4)}
		valid := in.Validate() == nil

		n := Normalize{Mean: fuzzFloats32(mean), Std: fuzzFloats32(std), Scale: scale, Layout: ImageLayout(layout),
			DType: DType(outType), Flip: flip}
		require.NotEmpty(t, n.String())
		if outs, err := n.Outputs(in); err != nil {
			testutil.RequireWraps(t, err, engine.ErrInvalidArgument)
		} else {
			require.Equal(t, Uint8, in.DType)
			require.Len(t, outs, 1)
			o := outs[0]
			require.Equal(t, in.Name, o.Name)
			require.Contains(t, []DType{Float32, Float16, BFloat16}, o.DType)
			h, w, c := in.Shape[0], in.Shape[1], in.Shape[2]
			require.LessOrEqual(t, c, maxChannels)
			want := []int{c, h, w}
			if n.Layout == LayoutHWC {
				want = []int{h, w, c}
			}
			require.Equal(t, want, o.Shape)
			require.True(t, flip >= 0 && flip <= 1, "flip %g", flip)
			if valid {
				fuzzRequireOutputs(t, outs)
				_, _, err := n.coefficients(c)
				require.NoError(t, err)
			}
		}

		s := ShiftTokens{X: x, Y: y}
		require.NotEmpty(t, s.String())
		if outs, err := s.Outputs(in); err != nil {
			testutil.RequireWraps(t, err, engine.ErrInvalidArgument)
		} else {
			require.Contains(t, []DType{Uint16, Uint32}, in.DType)
			require.Len(t, outs, 2)
			for _, o := range outs {
				require.Equal(t, Int64, o.DType)
				require.Equal(t, []int{in.Shape[0] - 1}, o.Shape)
			}
			if valid {
				fuzzRequireOutputs(t, outs)
			}
		}

		p := PadSequences{PadValue: pad, Fixed: fixed, Mask: mask, Lengths: lengths}
		require.NotEmpty(t, p.String())
		if outs, err := p.Outputs(in); err != nil {
			testutil.RequireWraps(t, err, engine.ErrInvalidArgument)
		} else {
			require.Contains(t, []DType{Uint16, Uint32}, in.DType)
			require.Len(t, outs, 3)
			require.Equal(t, Field{Name: in.Name, DType: Int64, Shape: in.Shape}, outs[0])
			require.Equal(t, Bool, outs[1].DType)
			require.Equal(t, in.Shape, outs[1].Shape)
			require.Equal(t, Int64, outs[2].DType)
			require.Empty(t, outs[2].Shape)
			if valid {
				fuzzRequireOutputs(t, outs)
			}
		}
	})
}

// TestFieldValidateRefusesOverflowingShapes is the regression test of a bug FuzzFieldValidate's seed
// showed: Validate multiplied the shape without an overflow check, so [2⁶², 4] of uint8 wrapped around
// to 0 bytes per sample and was accepted, and an .npy file of that shape made NewNpySource divide by
// zero (the FuzzNpySource seed "overflow-shape"). Such shapes are now an ErrInvalidArgument error.
func TestFieldValidateRefusesOverflowingShapes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		dtype DType
		shape []int
	}{
		{"wraps to zero", Uint8, []int{1 << 62, 4}},
		{"wraps to a small size", Uint8, []int{1<<62 + 1, 4}},
		{"wraps negative", Uint8, []int{1 << 62, 2}},
		{"dtype size overflows", Float64, []int{math.MaxInt / 4}},
		{"one dimension at the limit", Int16, []int{math.MaxInt}},
		{"just over 2 GiB", Uint8, []int{1 << 16, 1<<15 + 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Field{Name: "x", DType: tc.dtype, Shape: tc.shape}.Validate()
			require.ErrorIs(t, err, engine.ErrInvalidArgument)
			require.ErrorContains(t, err, "more than 2 GiB")
		})
	}
	require.NoError(t, Field{Name: "x", DType: Uint8, Shape: []int{1 << 16, 1 << 15}}.Validate(), "exactly 2 GiB")

	dir := t.TempDir()
	header := "{'descr': '|u1', 'fortran_order': False, 'shape': (1, 4611686018427387904, 4), }"
	p := testutil.WriteFile(t, dir, "overflow.npy", npyFileBytes(1, header, []byte{1, 2, 3}))
	_, err := NewNpySource(map[string]string{"x": p})
	require.ErrorIs(t, err, engine.ErrFormat)
	require.ErrorContains(t, err, "more than 2 GiB")

	tokens := testutil.WriteFile(t, dir, "tokens.bin", make([]byte, 8))
	offsets := filepath.Join(dir, "offsets.npy")
	require.NoError(t, WriteNpy(offsets, Int64, []int{2}, make([]byte, 16)))
	_, err = NewRaggedTokenSource(tokens, offsets, RaggedConfig{Format: TokensUint16, MaxLen: math.MaxInt})
	require.ErrorIs(t, err, engine.ErrInvalidArgument)
	require.ErrorContains(t, err, "more than 2 GiB")
}
