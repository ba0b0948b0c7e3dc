package tests

import (
	"encoding/binary"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

// raggedFiles is a ragged token file written by a test: the tokens and N+1 offsets into them.
type raggedFiles struct {
	tokenFile
	offsets     []int64
	offsetsPath string
}

// writeRagged writes samples of the given lengths back to back, after first unused tokens and before tail
// more, with the offsets as a .npy array of descr ('<i8' or '<u8').
func writeRagged(t *testing.T, r *rand.Rand, format int, lens []int, first, tail int, descr string) raggedFiles {
	t.Helper()
	offs := []int64{int64(first)}
	for _, n := range lens {
		offs = append(offs, offs[len(offs)-1]+int64(n))
	}
	rf := raggedFiles{tokenFile: writeTokens(t, r, "tokens.bin", format, int(offs[len(offs)-1])+tail), offsets: offs}
	var b []byte
	for _, v := range offs {
		b = binary.LittleEndian.AppendUint64(b, uint64(v))
	}
	rf.offsetsPath = tempFile(t, "offsets.npy", npyBytes(descr, false, []int64{int64(len(offs))}, b))
	return rf
}

// sample is what the source gives for sample i: its first maxLen tokens, then zeros.
func (rf raggedFiles) sample(i, maxLen int64) []byte {
	n := min(rf.offsets[i+1]-rf.offsets[i], maxLen)
	b := rf.window(rf.offsets[i], n)
	return append(b, make([]byte, int(maxLen-n)*rf.size)...)
}

func raggedOptionsFor(t *testing.T, format int32, maxLen int64, name *byte) raggedOptions {
	t.Helper()
	var o raggedOptions
	requireOK(t, func() int32 { return ferryRaggedOptionsInit(&o) })
	o.Format, o.MaxLen, o.FieldName = format, maxLen, name
	return o
}

// TestSourceRaggedTokens reads variable-length samples through ferry_source_ragged_tokens: each
// sample's tokens, cut at max_len, then zeros.
func TestSourceRaggedTokens(t *testing.T) {
	r := newRand(t)
	c := newCmem(t, 1<<16)
	tests := []struct {
		format int
		descr  string
		name   string
		maxLen int64
		first  int
		tail   int
	}{
		{tokensUint16, "<i8", "", 16, 0, 0},
		{tokensUint32, "<u8", "input_ids", 9, 5, 3},
		{tokensUint16, "<u8", "seq", 1, 2, 0},
	}
	for _, tt := range tests {
		t.Run("format="+strconv.Itoa(tt.format)+" "+tt.descr, func(t *testing.T) {
			lens := make([]int, 40+r.IntN(40))
			for i := range lens {
				lens[i] = r.IntN(int(2 * tt.maxLen)) // some empty, some longer than max_len
			}
			rf := writeRagged(t, r, tt.format, lens, tt.first, tt.tail, tt.descr)
			var name *byte
			want := "tokens"
			if tt.name != "" {
				name, want = c.cstring(tt.name), tt.name
			}
			o := raggedOptionsFor(t, int32(tt.format), tt.maxLen, name)
			var h sourceHandle
			requireOK(t, func() int32 { return ferrySourceRaggedTokens(c.cstring(rf.path), c.cstring(rf.offsetsPath), &o, &h) })
			destroyAtCleanup(t, h)
			require.Equal(t, int64(len(lens)), sourceLen(t, h))
			dt := dtypeUint16
			if tt.format == tokensUint32 {
				dt = dtypeUint32
			}
			specs := sourceSpecs(t, h)
			require.Equal(t, []fieldSpec{{name: want, dtype: dt, shape: []int64{tt.maxLen}}}, specs)
			iterateAll(t, h, specs, func(k int, i int64) []byte { return rf.sample(i, tt.maxLen) }, 6)
		})
	}
}

// TestSourceRaggedTokensInvalid covers files and options ferry_source_ragged_tokens must refuse.
func TestSourceRaggedTokensInvalid(t *testing.T) {
	r := newRand(t)
	c := newCmem(t, 1<<16)
	var o raggedOptions
	g := newGuardBuf(unsafe.Sizeof(o))
	requireOK(t, func() int32 { return ferryRaggedOptionsInit((*raggedOptions)(g.ptr())) })
	o = *(*raggedOptions)(g.ptr())
	require.Equal(t, raggedOptions{Size: 24, Format: tokensUint16}, o)
	g.requireUntouchedFrom(t, unsafe.Sizeof(o))
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryRaggedOptionsInit(nil) }, "NULL")

	good := writeRagged(t, r, tokensUint16, []int{3, 0, 7, 12}, 0, 0, "<i8") // 22 tokens
	offsets := func(name, descr string, shape []int64, vals ...int64) string {
		var b []byte
		for _, v := range vals {
			if descr == "<i4" {
				b = binary.LittleEndian.AppendUint32(b, uint32(v))
			} else {
				b = binary.LittleEndian.AppendUint64(b, uint64(v))
			}
		}
		return tempFile(t, name, npyBytes(descr, false, shape, b))
	}
	odd, _ := writeRandomFile(t, r, "odd.bin", 45)
	missing := filepath.Join(t.TempDir(), "missing.bin")
	decreasing := offsets("dec.npy", "<i8", []int64{4}, 0, 9, 8, 22)
	beyond := offsets("beyond.npy", "<i8", []int64{3}, 0, 10, 23)
	twoD := offsets("2d.npy", "<i8", []int64{2, 2}, 0, 1, 2, 3)
	int32s := offsets("i4.npy", "<i4", []int64{3}, 0, 1, 2)
	one := offsets("one.npy", "<u8", []int64{1}, 0)
	negative := offsets("neg.npy", "<i8", []int64{2}, -1, 5)
	tests := []struct {
		name    string
		tokens  string
		offsets string
		modify  func(o *raggedOptions)
		status  int32
		words   []string
	}{
		{"decreasing offsets", good.path, decreasing, func(o *raggedOptions) {}, ferryErrFormat, []string{decreasing, "offset 2 is 8", "must not decrease"}},
		{"offset beyond the tokens", good.path, beyond, func(o *raggedOptions) {}, ferryErrFormat, []string{beyond, "23", "beyond", "22 tokens"}},
		{"offsets 2-D", good.path, twoD, func(o *raggedOptions) {}, ferryErrFormat, []string{twoD, "1-D"}},
		{"offsets int32", good.path, int32s, func(o *raggedOptions) {}, ferryErrFormat, []string{int32s, "int32", "int64 or uint64"}},
		{"one offset", good.path, one, func(o *raggedOptions) {}, ferryErrFormat, []string{one, "at least 2"}},
		{"negative offset", good.path, negative, func(o *raggedOptions) {}, ferryErrFormat, []string{negative, "negative"}},
		{"offsets not npy", good.path, good.path, func(o *raggedOptions) {}, ferryErrFormat, []string{"not a .npy file"}},
		{"odd bytes of uint16", odd, good.offsetsPath, func(o *raggedOptions) {}, ferryErrFormat, []string{odd, "whole number"}},
		{"uint32 offsets past 11 tokens", good.path, good.offsetsPath, func(o *raggedOptions) { o.Format = tokensUint32 }, ferryErrFormat, []string{"beyond", "11 tokens"}},
		{"missing token file", missing, good.offsetsPath, func(o *raggedOptions) {}, ferryErrIO, []string{missing}},
		{"missing offsets", good.path, missing, func(o *raggedOptions) {}, ferryErrIO, []string{missing}},
		{"format=0", good.path, good.offsetsPath, func(o *raggedOptions) { o.Format = 0 }, ferryErrInvalidArgument, []string{"format"}},
		{"format=llm.c", good.path, good.offsetsPath, func(o *raggedOptions) { o.Format = tokensLLMC }, ferryErrInvalidArgument, []string{"format"}},
		{"max_len=0", good.path, good.offsetsPath, func(o *raggedOptions) { o.MaxLen = 0 }, ferryErrInvalidArgument, []string{"maximum length"}},
		{"max_len=-5", good.path, good.offsetsPath, func(o *raggedOptions) { o.MaxLen = -5 }, ferryErrInvalidArgument, []string{"-5"}},
		{"empty field name", good.path, good.offsetsPath, func(o *raggedOptions) { o.FieldName = c.cstring("") }, ferryErrInvalidArgument, []string{"field_name"}},
		{"size=0", good.path, good.offsetsPath, func(o *raggedOptions) { o.Size = 0 }, ferryErrInvalidArgument, []string{"size"}},
		{"size=23", good.path, good.offsetsPath, func(o *raggedOptions) { o.Size = 23 }, ferryErrInvalidArgument, []string{"size"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := raggedOptionsFor(t, tokensUint16, 8, nil)
			tt.modify(&o)
			h := sourceHandle(0x5a5a)
			requireStatus(t, tt.status, func() int32 {
				return ferrySourceRaggedTokens(c.cstring(tt.tokens), c.cstring(tt.offsets), &o, &h)
			}, tt.words...)
			require.Zero(t, h)
		})
	}
	o = raggedOptionsFor(t, tokensUint16, 8, nil)
	tok, off := c.cstring(good.path), c.cstring(good.offsetsPath)
	var h sourceHandle
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceRaggedTokens(nil, off, &o, &h) }, "tokens_path", "NULL")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceRaggedTokens(tok, nil, &o, &h) }, "offsets_path", "NULL")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceRaggedTokens(tok, off, nil, &h) }, "opts", "NULL")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceRaggedTokens(tok, off, &o, nil) }, "NULL")

	// A larger options size (a newer caller) is accepted; the source works after the refusals above.
	g = newGuardBuf(unsafe.Sizeof(o))
	*(*raggedOptions)(g.ptr()) = raggedOptions{Format: tokensUint16, MaxLen: 5}
	g.setSize(unsafe.Sizeof(o) + 16)
	requireOK(t, func() int32 { return ferrySourceRaggedTokens(tok, off, (*raggedOptions)(g.ptr()), &h) })
	require.Equal(t, int64(4), sourceLen(t, h))
	require.Equal(t, []fieldSpec{{name: "tokens", dtype: dtypeUint16, shape: []int64{5}}}, sourceSpecs(t, h))
	requireOK(t, func() int32 { return ferrySourceDestroy(h) })
}
