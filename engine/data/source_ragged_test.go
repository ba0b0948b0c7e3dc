package data

import (
	"encoding/binary"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-ml/ferry/engine"

	"github.com/stretchr/testify/require"
)

// offsetsNpy writes offsets as a 1-D .npy array of dtype (Int64 or Uint64) under dir.
func offsetsNpy(t *testing.T, dir string, dtype DType, offs []uint64) string {
	t.Helper()
	var b []byte
	for _, v := range offs {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	path := filepath.Join(dir, "offsets.npy")
	require.NoError(t, WriteNpy(path, dtype, []int{len(offs)}, b))
	return path
}

// raggedWant is what ReadSample writes for sample i: its first maxLen tokens, then zeros.
func raggedWant(tokens []uint32, offs []uint64, size, maxLen int) func(i int) [][]byte {
	return func(i int) [][]byte {
		seq := tokens[offs[i]:offs[i+1]]
		seq = seq[:min(len(seq), maxLen)]
		b := tokenFile(nil, size, seq)
		return [][]byte{append(b, make([]byte, maxLen*size-len(b))...)}
	}
}

func TestRaggedTokenSourceReadsEverySample(t *testing.T) {
	r := srcRand(t)
	for _, tc := range []struct {
		name     string
		format   TokenFormat
		size     int
		dtype    DType
		offDType DType
		field    string
		maxLen   int
		lens     []int // sample lengths, laid out from first
		first    int   // tokens before the first sample
		tail     int   // tokens after the last sample
	}{
		{"uint16 int64 offsets", TokensUint16, 2, Uint16, Int64, "", 8, []int{3, 8, 0, 12, 1, 8, 9, 0}, 0, 0},
		{"uint32 uint64 offsets", TokensUint32, 4, Uint32, Uint64, "", 5, []int{5, 4, 6, 0, 100, 1}, 0, 0},
		{"unused tokens around", TokensUint16, 2, Uint16, Int64, "input_ids", 16, []int{7, 16, 17, 2}, 11, 5},
		{"one sample", TokensUint32, 4, Uint32, Int64, "", 3, []int{10}, 2, 1},
		{"all empty but one", TokensUint16, 2, Uint16, Uint64, "", 4, []int{0, 0, 1, 0}, 0, 3},
		{"max length 1", TokensUint16, 2, Uint16, Int64, "", 1, []int{1, 2, 0, 3}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			offs := []uint64{uint64(tc.first)}
			for _, n := range tc.lens {
				offs = append(offs, offs[len(offs)-1]+uint64(n))
			}
			ntokens := int(offs[len(offs)-1]) + tc.tail
			tokens := randTokens(r, ntokens, tc.size)
			tokPath := srcWriteFile(t, "tokens.bin", tokenFile(nil, tc.size, tokens))
			offPath := offsetsNpy(t, filepath.Dir(tokPath), tc.offDType, offs)

			src, err := NewRaggedTokenSource(tokPath, offPath, RaggedConfig{Format: tc.format, MaxLen: tc.maxLen, FieldName: tc.field})
			require.NoError(t, err)
			name := tc.field
			if name == "" {
				name = "tokens"
			}
			require.Equal(t, len(tc.lens), src.Len())
			require.Equal(t, ntokens, src.Tokens())
			require.Equal(t, []Field{{Name: name, DType: tc.dtype, Shape: []int{tc.maxLen}}}, src.Fields())
			require.Equal(t, 0, src.RaggedField())
			require.Equal(t, fmt.Sprintf("ragged(%s, offsets %s, %v, %d tokens, %d samples, max %d)",
				tokPath, offPath, tc.format, ntokens, len(tc.lens), tc.maxLen), src.String())
			for i, n := range tc.lens {
				require.Equal(t, min(n, tc.maxLen), src.SampleLen(i), "sample %d", i)
			}
			require.Equal(t, -1, src.SampleLen(-1))
			require.Equal(t, -1, src.SampleLen(src.Len()))

			want := raggedWant(tokens, offs, tc.size, tc.maxLen)
			requireSourceSamples(t, src, want)
			requireMemoryBacked(t, src)
			requireSourceContract(t, src)

			src, err = NewRaggedTokenSource(tokPath, offPath, RaggedConfig{Format: tc.format, MaxLen: tc.maxLen, FieldName: tc.field})
			require.NoError(t, err)
			requireSourceConcurrent(t, src, want)
		})
	}
}

func TestRaggedTokenSourceRejects(t *testing.T) {
	r := srcRand(t)
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		path := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(path, data, 0o644))
		return path
	}
	tokens := write("tokens.bin", tokenFile(nil, 2, randTokens(r, 100, 2))) // 100 uint16 tokens, 50 uint32
	npy := func(name string, dtype DType, shape []int, vals ...uint64) string {
		var b []byte
		for _, v := range vals {
			switch dtype.Size() {
			case 8:
				b = binary.LittleEndian.AppendUint64(b, v)
			case 4:
				b = binary.LittleEndian.AppendUint32(b, uint32(v))
			}
		}
		path := filepath.Join(dir, name)
		require.NoError(t, WriteNpy(path, dtype, shape, b))
		return path
	}
	good := npy("good.npy", Int64, []int{3}, 0, 40, 100)
	truncated := filepath.Join(dir, "truncated.npy")
	{
		b := npyFileBytes(1, "{'descr': '<i8', 'fortran_order': False, 'shape': (5,), }", make([]byte, 3*8))
		require.NoError(t, os.WriteFile(truncated, b, 0o644))
	}
	missing := filepath.Join(dir, "missing.bin")
	for _, tc := range []struct {
		name    string
		tokens  string
		offsets string
		cfg     RaggedConfig
		err     error
		want    []string
	}{
		{"format zero", tokens, good, RaggedConfig{MaxLen: 8}, engine.ErrInvalidArgument, []string{"format TokenFormat(0) is not supported"}},
		{"format llm.c", tokens, good, RaggedConfig{Format: TokensLLMC, MaxLen: 8}, engine.ErrInvalidArgument, []string{"format llm.c is not supported"}},
		{"max length zero", tokens, good, RaggedConfig{Format: TokensUint16}, engine.ErrInvalidArgument, []string{"maximum length 0 must be positive"}},
		{"max length negative", tokens, good, RaggedConfig{Format: TokensUint16, MaxLen: -3}, engine.ErrInvalidArgument, []string{"maximum length -3"}},
		{"max length over 2 GiB", tokens, good, RaggedConfig{Format: TokensUint32, MaxLen: 1 << 30}, engine.ErrInvalidArgument, []string{"more than 2 GiB"}},
		{"odd token file", write("odd.bin", make([]byte, 201)), good, RaggedConfig{Format: TokensUint16, MaxLen: 8}, engine.ErrFormat,
			[]string{"201 bytes are not a whole number of 2-byte tokens (1 bytes left over)"}},
		{"uint32 token file of 2-byte tokens", write("six.bin", make([]byte, 6)), good, RaggedConfig{Format: TokensUint32, MaxLen: 8}, engine.ErrFormat,
			[]string{"6 bytes are not a whole number of 4-byte tokens"}},
		{"empty token file", write("empty.bin", nil), good, RaggedConfig{Format: TokensUint16, MaxLen: 8}, engine.ErrFormat, []string{"is empty"}},
		{"missing token file", missing, good, RaggedConfig{Format: TokensUint16, MaxLen: 8}, engine.ErrIO, []string{missing}},
		{"missing offsets", tokens, missing, RaggedConfig{Format: TokensUint16, MaxLen: 8}, engine.ErrIO, []string{missing}},
		{"offsets not npy", tokens, tokens, RaggedConfig{Format: TokensUint16, MaxLen: 8}, engine.ErrFormat, []string{"not a .npy file"}},
		{"offsets 2-D", tokens, npy("2d.npy", Int64, []int{2, 2}, 0, 1, 2, 3), RaggedConfig{Format: TokensUint16, MaxLen: 8}, engine.ErrFormat,
			[]string{"shape [2 2]; offsets must be 1-D"}},
		{"offsets 0-D", tokens, npy("0d.npy", Int64, []int{}, 4), RaggedConfig{Format: TokensUint16, MaxLen: 8}, engine.ErrFormat, []string{"offsets must be 1-D"}},
		{"offsets int32", tokens, npy("i4.npy", Int32, []int{3}, 0, 1, 2), RaggedConfig{Format: TokensUint16, MaxLen: 8}, engine.ErrFormat,
			[]string{"dtype int32; offsets must be int64 or uint64"}},
		{"offsets float64", tokens, npy("f8.npy", Float64, []int{2}, 0, 0), RaggedConfig{Format: TokensUint16, MaxLen: 8}, engine.ErrFormat,
			[]string{"dtype float64"}},
		{"one offset", tokens, npy("one.npy", Int64, []int{1}, 0), RaggedConfig{Format: TokensUint16, MaxLen: 8}, engine.ErrFormat,
			[]string{"1 offsets; a source needs at least 2"}},
		{"no offsets", tokens, npy("none.npy", Uint64, []int{0}), RaggedConfig{Format: TokensUint16, MaxLen: 8}, engine.ErrFormat, []string{"0 offsets"}},
		{"decreasing", tokens, npy("dec.npy", Int64, []int{4}, 0, 30, 20, 100), RaggedConfig{Format: TokensUint16, MaxLen: 8}, engine.ErrFormat,
			[]string{"offset 2 is 20, smaller than offset 1 (30); offsets must not decrease"}},
		{"negative first", tokens, npy("neg.npy", Int64, []int{3}, ^uint64(4), 3, 4), RaggedConfig{Format: TokensUint16, MaxLen: 8}, engine.ErrFormat,
			[]string{"offset 0 is -5, negative"}},
		{"beyond the tokens", tokens, npy("beyond.npy", Int64, []int{3}, 0, 50, 101), RaggedConfig{Format: TokensUint16, MaxLen: 8}, engine.ErrFormat,
			[]string{"offset 2 is 101, beyond the token file's 100 tokens"}},
		{"beyond the uint32 tokens", tokens, good, RaggedConfig{Format: TokensUint32, MaxLen: 8}, engine.ErrFormat,
			[]string{"offset 2 is 100, beyond the token file's 50 tokens"}},
		{"huge uint64", tokens, npy("huge.npy", Uint64, []int{2}, 0, 1<<63+5), RaggedConfig{Format: TokensUint16, MaxLen: 8}, engine.ErrFormat,
			[]string{"offset 1 is 9223372036854775813, beyond"}},
		{"truncated offsets", tokens, truncated, RaggedConfig{Format: TokensUint16, MaxLen: 8}, engine.ErrFormat,
			[]string{"header and 5 offsets × 8 bytes (truncated?)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, err := NewRaggedTokenSource(tc.tokens, tc.offsets, tc.cfg)
			require.Nil(t, src)
			require.ErrorIs(t, err, tc.err)
			for _, w := range tc.want {
				require.Contains(t, err.Error(), w)
			}
			require.Contains(t, err.Error(), "ragged token source")
			require.Contains(t, err.Error(), tc.tokens, "the error names the token file")
			if strings.Contains(err.Error(), "offset") && !strings.Contains(err.Error(), "maximum") {
				require.Contains(t, err.Error(), tc.offsets, "an offsets error names the offsets file")
			}
		})
	}
	_, err := NewRaggedTokenSource(tokens, missing, RaggedConfig{Format: TokensUint16, MaxLen: 8})
	require.ErrorIs(t, err, fs.ErrNotExist)
}
