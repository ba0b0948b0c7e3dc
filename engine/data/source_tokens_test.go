package data

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"testing"

	"github.com/ferry-ml/ferry/engine"

	"github.com/stretchr/testify/require"
)

// tokenFile encodes tokens as a flat file of size-byte tokens, after header when it is not nil.
func tokenFile(header []int32, size int, tokens []uint32) []byte {
	var b []byte
	if header != nil {
		h := make([]int32, 256)
		copy(h, header)
		for _, v := range h {
			b = binary.LittleEndian.AppendUint32(b, uint32(v))
		}
	}
	for _, tok := range tokens {
		if size == 2 {
			b = binary.LittleEndian.AppendUint16(b, uint16(tok))
		} else {
			b = binary.LittleEndian.AppendUint32(b, tok)
		}
	}
	return b
}

func randTokens(r *rand.Rand, n int, size int) []uint32 {
	toks := make([]uint32, n)
	for i := range toks {
		toks[i] = r.Uint32()
		if size == 2 {
			toks[i] &= 0xFFFF
		}
	}
	return toks
}

// decodeTokens reads a field of little-endian tokens back into integers.
func decodeTokens(b []byte, size int) []uint32 {
	out := make([]uint32, len(b)/size)
	for i := range out {
		if size == 2 {
			out[i] = uint32(binary.LittleEndian.Uint16(b[2*i:]))
		} else {
			out[i] = binary.LittleEndian.Uint32(b[4*i:])
		}
	}
	return out
}

// referenceOffset is the documented random offset, computed independently: draw i+1 outputs of the
// stateful splitmix64 generator seeded with seed, scale the last into [0, ntokens-seqLen).
func referenceOffset(seed uint64, i, ntokens, seqLen int) int {
	state := seed
	var z uint64
	for range i + 1 {
		state += 0x9e3779b97f4a7c15
		z = state
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		z ^= z >> 31
	}
	hi, _ := bits.Mul64(z, uint64(ntokens-seqLen))
	return int(hi)
}

type tokenCase struct {
	name   string
	format TokenFormat
	header []int32 // llm.c header, without the count (filled in)
	size   int
	dtype  DType
	kind   string
}

var tokenCases = []tokenCase{
	{"nanoGPT uint16", TokensUint16, nil, 2, Uint16, "uint16"},
	{"flat uint32", TokensUint32, nil, 4, Uint32, "uint32"},
	{"llm.c GPT-2", TokensLLMC, []int32{20240520, 1}, 2, Uint16, "llm.c GPT-2 uint16"},
	{"llm.c Llama 3", TokensLLMC, []int32{20240801, 7}, 4, Uint32, "llm.c Llama 3 uint32"},
}

func (tc tokenCase) write(t *testing.T, tokens []uint32) string {
	t.Helper()
	var header []int32
	if tc.header != nil {
		header = []int32{tc.header[0], tc.header[1], int32(len(tokens))}
	}
	return srcWriteFile(t, "tokens.bin", tokenFile(header, tc.size, tokens))
}

// requireWindows checks every sample's x and y against the token array at the source's offsets.
func requireWindows(t *testing.T, src *TokenSource, tokens []uint32, size, seqLen int) {
	t.Helper()
	dst := srcDst(src.Fields())
	for i := range src.Len() {
		off := src.WindowStart(i)
		require.GreaterOrEqual(t, off, 0)
		require.LessOrEqual(t, off+seqLen, len(tokens)-1, "sample %d's y window ends inside the file", i)
		require.NoError(t, src.ReadSample(i, dst))
		require.Equal(t, tokens[off:off+seqLen], decodeTokens(dst[0], size), "sample %d x", i)
		require.Equal(t, tokens[off+1:off+seqLen+1], decodeTokens(dst[1], size), "sample %d y", i)
	}
}

func TestTokenSourceSequential(t *testing.T) {
	r := srcRand(t)
	for _, tc := range tokenCases {
		t.Run(tc.name, func(t *testing.T) {
			for _, shape := range []struct{ ntokens, seqLen int }{{1000, 7}, {1001, 8}, {65, 64}, {200, 1}} {
				tokens := randTokens(r, shape.ntokens, tc.size)
				path := tc.write(t, tokens)
				src, err := NewTokenSource(path, TokenConfig{Format: tc.format, SeqLen: shape.seqLen})
				require.NoError(t, err)
				wantLen := (shape.ntokens - 1) / shape.seqLen
				require.Equal(t, wantLen, src.Len())
				require.Equal(t, shape.ntokens, src.Tokens())
				require.Equal(t, []Field{
					{Name: "x", DType: tc.dtype, Shape: []int{shape.seqLen}},
					{Name: "y", DType: tc.dtype, Shape: []int{shape.seqLen}},
				}, src.Fields())
				require.Equal(t, fmt.Sprintf("tokens(%s, %s, %d tokens, %d × %d+1, sequential)", path, tc.kind, shape.ntokens, wantLen, shape.seqLen), src.String())
				for i := range src.Len() {
					require.Equal(t, i*shape.seqLen, src.WindowStart(i))
				}
				require.Equal(t, -1, src.WindowStart(-1))
				require.Equal(t, -1, src.WindowStart(src.Len()))
				requireWindows(t, src, tokens, tc.size, shape.seqLen)
				requireSourceContract(t, src)
			}
		})
	}
}

func TestTokenSourceRandom(t *testing.T) {
	r := srcRand(t)
	for _, tc := range tokenCases {
		t.Run(tc.name, func(t *testing.T) {
			const ntokens, seqLen = 20000, 16
			tokens := randTokens(r, ntokens, tc.size)
			path := tc.write(t, tokens)
			seed := r.Uint64()
			cfg := TokenConfig{Format: tc.format, SeqLen: seqLen, Random: true, Seed: seed}
			src, err := NewTokenSource(path, cfg)
			require.NoError(t, err)
			require.Equal(t, (ntokens-1)/seqLen, src.Len())
			require.Contains(t, src.String(), fmt.Sprintf("random, seed %d", seed))

			offsets := make([]int, src.Len())
			lo, hi, sum := ntokens, -1, 0
			for i := range offsets {
				offsets[i] = src.WindowStart(i)
				require.Equal(t, referenceOffset(seed, i, ntokens, seqLen), offsets[i], "sample %d", i)
				lo, hi, sum = min(lo, offsets[i]), max(hi, offsets[i]), sum+offsets[i]
			}
			require.GreaterOrEqual(t, lo, 0)
			require.LessOrEqual(t, hi, ntokens-seqLen-1)
			require.Less(t, lo, 500, "offsets spread over the file")
			require.Greater(t, hi, ntokens-seqLen-500)
			mean := float64(sum) / float64(len(offsets))
			require.InDelta(t, float64(ntokens-seqLen)/2, mean, float64(ntokens)/20)
			require.NotEqual(t, offsets[:10], []int{0, 16, 32, 48, 64, 80, 96, 112, 128, 144})

			requireWindows(t, src, tokens, tc.size, seqLen)

			// The offsets are a pure function of (Seed, i): a second source agrees, another seed does not.
			again, err := NewTokenSource(path, cfg)
			require.NoError(t, err)
			defer again.Close()
			cfg.Seed++
			other, err := NewTokenSource(path, cfg)
			require.NoError(t, err)
			defer other.Close()
			same := 0
			for i := range offsets {
				require.Equal(t, offsets[i], again.WindowStart(i))
				if other.WindowStart(i) == offsets[i] {
					same++
				}
			}
			require.Less(t, same, 10, "a different seed gives different offsets")

			requireSourceConcurrent(t, src, func(i int) [][]byte {
				off := offsets[i]
				b := tokenFile(nil, tc.size, tokens[off:off+seqLen+1])
				return [][]byte{b[:seqLen*tc.size], b[tc.size:]}
			})
		})
	}
}

// A file of exactly SeqLen+1 tokens has one sample, at offset 0 in either mode.
func TestTokenSourceSmallestFile(t *testing.T) {
	r := srcRand(t)
	tokens := randTokens(r, 9, 2)
	path := srcWriteFile(t, "t.bin", tokenFile(nil, 2, tokens))
	for _, random := range []bool{false, true} {
		src, err := NewTokenSource(path, TokenConfig{Format: TokensUint16, SeqLen: 8, Random: random, Seed: r.Uint64()})
		require.NoError(t, err)
		require.Equal(t, 1, src.Len())
		require.Equal(t, 0, src.WindowStart(0))
		requireWindows(t, src, tokens, 2, 8)
		require.NoError(t, src.Close())
	}
	_, err := NewTokenSource(path, TokenConfig{Format: TokensUint16, SeqLen: 9})
	require.ErrorIs(t, err, engine.ErrFormat)
	require.Contains(t, err.Error(), "9 tokens are too few for one window of 9+1 tokens")
}

func TestTokenSourceRejects(t *testing.T) {
	r := srcRand(t)
	toks := randTokens(r, 100, 2)
	gpt2 := func(magic, version, count int32, n int) []byte {
		return tokenFile([]int32{magic, version, count}, 2, toks[:n])
	}
	llama := func(magic, version, count int32, n int) []byte {
		return tokenFile([]int32{magic, version, count}, 4, toks[:n])
	}
	for _, tc := range []struct {
		name   string
		file   []byte
		format TokenFormat
		seqLen int
		err    error
		want   string
	}{
		{"format zero", gpt2(20240520, 1, 100, 100), 0, 8, engine.ErrInvalidArgument, "unknown format TokenFormat(0)"},
		{"format unknown", gpt2(20240520, 1, 100, 100), 42, 8, engine.ErrInvalidArgument, "unknown format TokenFormat(42)"},
		{"zero seq len", gpt2(20240520, 1, 100, 100), TokensLLMC, 0, engine.ErrInvalidArgument, "sequence length 0 must be positive"},
		{"negative seq len", gpt2(20240520, 1, 100, 100), TokensLLMC, -4, engine.ErrInvalidArgument, "sequence length -4"},
		{"huge seq len", tokenFile(nil, 4, toks), TokensUint32, 1 << 30, engine.ErrFormat, "100 tokens are too few"},
		{"empty file", nil, TokensUint16, 8, engine.ErrFormat, "is empty"},
		{"odd uint16 file", append(tokenFile(nil, 2, toks), 7), TokensUint16, 8, engine.ErrFormat, "201 bytes of tokens are not a whole number of 2-byte tokens (1 bytes left over)"},
		{"ragged uint32 file", tokenFile(nil, 2, toks[:99]), TokensUint32, 8, engine.ErrFormat, "198 bytes of tokens are not a whole number of 4-byte tokens (2 bytes left over)"},
		{"too few tokens", tokenFile(nil, 2, toks[:8]), TokensUint16, 8, engine.ErrFormat, "8 tokens are too few for one window of 8+1 tokens"},
		{"short header", tokenFile(nil, 4, toks), TokensLLMC, 8, engine.ErrFormat, "the file is 400 bytes, shorter than llm.c's 1024-byte header"},
		{"wrong magic", gpt2(20240521, 1, 100, 100), TokensLLMC, 8, engine.ErrFormat, "llm.c magic number is 20240521, expected 20240520 (GPT-2, uint16 tokens) or 20240801 (Llama 3, uint32 tokens)"},
		{"eval file magic", gpt2(20240522, 1, 100, 100), TokensLLMC, 8, engine.ErrFormat, "magic number is 20240522"},
		{"flat file as llm.c", tokenFile(nil, 2, randTokens(r, 600, 2)), TokensLLMC, 8, engine.ErrFormat, "llm.c magic number is"},
		{"gpt-2 version 2", gpt2(20240520, 2, 100, 100), TokensLLMC, 8, engine.ErrFormat, "llm.c magic 20240520 has version 2, expected 1"},
		{"gpt-2 with llama version", gpt2(20240520, 7, 100, 100), TokensLLMC, 8, engine.ErrFormat, "has version 7, expected 1"},
		{"llama version 1", llama(20240801, 1, 100, 100), TokensLLMC, 8, engine.ErrFormat, "llm.c magic 20240801 has version 1, expected 7"},
		{"count too large", gpt2(20240520, 1, 101, 100), TokensLLMC, 8, engine.ErrFormat, "the llm.c header says 101 tokens (202 bytes), but 200 bytes follow the header"},
		{"count too small", gpt2(20240520, 1, 99, 100), TokensLLMC, 8, engine.ErrFormat, "says 99 tokens (198 bytes), but 200 bytes follow"},
		{"count negative", gpt2(20240520, 1, -5, 100), TokensLLMC, 8, engine.ErrFormat, "says -5 tokens"},
		{"llama count in uint16 units", llama(20240801, 7, 200, 100), TokensLLMC, 8, engine.ErrFormat, "says 200 tokens (800 bytes), but 400 bytes follow"},
		{"header only", gpt2(20240520, 1, 0, 0), TokensLLMC, 8, engine.ErrFormat, "0 tokens are too few"},
		{"llm.c too few tokens", gpt2(20240520, 1, 5, 5), TokensLLMC, 8, engine.ErrFormat, "5 tokens are too few"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := srcWriteFile(t, "tokens.bin", tc.file)
			src, err := NewTokenSource(path, TokenConfig{Format: tc.format, SeqLen: tc.seqLen})
			require.Nil(t, src)
			require.ErrorIs(t, err, tc.err)
			require.Contains(t, err.Error(), tc.want)
			require.Contains(t, err.Error(), path)
		})
	}
}

// Window mode: one field of SeqLen+1 tokens, the same samples and windows as x and y.
func TestTokenSourceWindow(t *testing.T) {
	r := srcRand(t)
	for _, tc := range tokenCases {
		for _, random := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s random=%v", tc.name, random), func(t *testing.T) {
				const ntokens, seqLen = 1001, 8
				tokens := randTokens(r, ntokens, tc.size)
				path := tc.write(t, tokens)
				cfg := TokenConfig{Format: tc.format, SeqLen: seqLen, Random: random, Seed: r.Uint64()}
				pair, err := NewTokenSource(path, cfg)
				require.NoError(t, err)
				defer pair.Close()
				cfg.Window = true
				src, err := NewTokenSource(path, cfg)
				require.NoError(t, err)

				require.Equal(t, []Field{{Name: "tokens", DType: tc.dtype, Shape: []int{seqLen + 1}}}, src.Fields())
				require.Equal(t, pair.Len(), src.Len())
				require.Equal(t, (ntokens-1)/seqLen, src.Len())
				require.Equal(t, ntokens, src.Tokens())
				require.Equal(t, pair.String()[:len(pair.String())-1]+", window)", src.String())
				require.Len(t, src.Region(0), ntokens*tc.size, "the region is the tokens, past any header")

				xy := srcDst(pair.Fields())
				want := func(i int) [][]byte {
					off := src.WindowStart(i)
					return [][]byte{tokenFile(nil, tc.size, tokens[off:off+seqLen+1])}
				}
				dst := srcDst(src.Fields())
				for i := range src.Len() {
					require.Equal(t, pair.WindowStart(i), src.WindowStart(i), "sample %d", i)
					if !random {
						require.Equal(t, i*seqLen, src.WindowStart(i))
					}
					require.Equal(t, int64(src.WindowStart(i)*tc.size), src.Offset(0, i))
					require.NoError(t, src.ReadSample(i, dst))
					require.NoError(t, pair.ReadSample(i, xy))
					require.Equal(t, want(i)[0], dst[0], "sample %d", i)
					require.Equal(t, xy[0], dst[0][:seqLen*tc.size], "sample %d: the window starts with x", i)
					require.Equal(t, xy[1], dst[0][tc.size:], "sample %d: the window ends with y", i)
				}
				requireMemoryBacked(t, src)
				requireSourceContract(t, src)

				src, err = NewTokenSource(path, cfg)
				require.NoError(t, err)
				requireSourceConcurrent(t, src, want)
			})
		}
	}
}

// A window-mode file of exactly SeqLen+1 tokens has one sample holding every token.
func TestTokenSourceWindowSmallestFile(t *testing.T) {
	r := srcRand(t)
	tokens := randTokens(r, 9, 4)
	path := srcWriteFile(t, "t.bin", tokenFile(nil, 4, tokens))
	src, err := NewTokenSource(path, TokenConfig{Format: TokensUint32, SeqLen: 8, Window: true})
	require.NoError(t, err)
	require.Equal(t, 1, src.Len())
	dst := srcDst(src.Fields())
	require.NoError(t, src.ReadSample(0, dst))
	require.Equal(t, tokens, decodeTokens(dst[0], 4))
	require.NoError(t, src.Close())
	_, err = NewTokenSource(path, TokenConfig{Format: TokensUint32, SeqLen: 9, Window: true})
	require.ErrorIs(t, err, engine.ErrFormat)
	_, err = NewTokenSource(path, TokenConfig{Format: TokensUint32, SeqLen: 1 << 29, Window: true})
	require.ErrorIs(t, err, engine.ErrFormat)
}
