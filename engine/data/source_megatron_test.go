package data

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/enginetest"
	"github.com/ferry-ml/ferry/engine/internal/testutil"
)

// megatronIndex is an index as Megatron's writer lays it out: the header, then the int32 lengths, the
// int64 byte pointers (each sequence right after the one before) and the int64 document boundaries, and
// the modes when given.
func megatronIndex(code byte, size int, lengths []int32, docs []int64, modes []int8) []byte {
	b := append([]byte(nil), megatronMagic...)
	b = binary.LittleEndian.AppendUint64(b, 1)
	b = append(b, code)
	b = binary.LittleEndian.AppendUint64(b, uint64(len(lengths)))
	b = binary.LittleEndian.AppendUint64(b, uint64(len(docs)))
	for _, n := range lengths {
		b = binary.LittleEndian.AppendUint32(b, uint32(n))
	}
	p := int64(0)
	for _, n := range lengths {
		b = binary.LittleEndian.AppendUint64(b, uint64(p))
		p += int64(n) * int64(size)
	}
	for _, d := range docs {
		b = binary.LittleEndian.AppendUint64(b, uint64(d))
	}
	for _, m := range modes {
		b = append(b, byte(m))
	}
	return b
}

// megatronCorpus writes prefix.bin and prefix.idx of n random sequences of random lengths (0..maxLen) of
// the dtype with the code, grouped into documents of 1..3 sequences; it returns the prefix, the sequences'
// bytes and the boundaries.
func megatronCorpus(t *testing.T, r *rand.Rand, code byte, n, maxLen int) (string, [][]byte, []int64) {
	t.Helper()
	dt := megatronDTypes[code]
	lengths := make([]int32, n)
	var bin []byte
	seqs := make([][]byte, n)
	for i := range lengths {
		lengths[i] = int32(r.IntN(maxLen + 1))
		seqs[i] = make([]byte, int(lengths[i])*dt.Size())
		for k := range seqs[i] {
			seqs[i][k] = byte(r.Uint32())
		}
		bin = append(bin, seqs[i]...)
	}
	docs := []int64{0}
	for last := int64(0); last < int64(n); {
		last = min(int64(n), last+1+int64(r.IntN(3)))
		docs = append(docs, last)
	}
	dir := t.TempDir()
	prefix := filepath.Join(dir, "corpus_text_document")
	testutil.WriteFile(t, dir, "corpus_text_document.bin", bin)
	testutil.WriteFile(t, dir, "corpus_text_document.idx", megatronIndex(code, dt.Size(), lengths, docs, nil))
	return prefix, seqs, docs
}

func TestMegatronSourceReadsSequences(t *testing.T) {
	r := srcRand(t)
	for _, code := range []byte{8, 4, 1, 5} { // uint16 and int32 as corpora hold them, and others
		dt := megatronDTypes[code]
		prefix, seqs, docs := megatronCorpus(t, r, code, 200, 90)
		s, err := NewMegatronSource(prefix, MegatronConfig{MaxLen: 64})
		require.NoError(t, err)
		require.Equal(t, 200, s.Len())
		require.Equal(t, dt, s.DType())
		require.Equal(t, []Field{{Name: "tokens", DType: dt, Shape: []int{64}}}, s.Fields())
		require.Equal(t, len(docs), s.Documents())
		for d, v := range docs {
			require.Equal(t, int(v), s.DocumentBoundary(d))
		}
		_, ok := s.Mode(0)
		require.False(t, ok)
		requireMemoryBacked(t, s)
		dst := srcDst(s.Fields())
		for i, seq := range seqs {
			require.Equal(t, len(seq)/dt.Size(), s.SequenceLen(i))
			n := min(len(seq)/dt.Size(), 64)
			require.Equal(t, n, s.SampleLen(i))
			require.NoError(t, s.ReadSample(i, dst))
			require.Equal(t, seq[:n*dt.Size()], dst[0][:n*dt.Size()], "sequence %d", i)
			require.Equal(t, make([]byte, len(dst[0])-n*dt.Size()), dst[0][n*dt.Size():], "sequence %d's padding", i)
		}
		require.Equal(t, -1, s.SampleLen(200))
		require.NoError(t, s.Close())
		require.Equal(t, -1, s.SampleLen(0), "a closed source has no lengths")
		require.Equal(t, int64(-1), s.Offset(0, 0))
		require.ErrorIs(t, s.ReadSample(0, dst), engine.ErrClosed)
	}
}

func TestMegatronSourceThroughAnIterator(t *testing.T) {
	r := srcRand(t)
	prefix, seqs, _ := megatronCorpus(t, r, 8, 97, 40)
	s, err := NewMegatronSource(prefix, MegatronConfig{MaxLen: 32, FieldName: "text"})
	require.NoError(t, err)
	defer func() { require.NoError(t, s.Close()) }()
	e := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	it, err := NewIterator(e, s, IteratorOptions{BatchSize: 10, Shuffle: true, Seed: r.Uint64(),
		Transforms: map[string]Transform{"text": PadSequences{}}})
	require.NoError(t, err)
	defer func() { require.NoError(t, it.Close()) }()
	seen := 0
	for {
		b, err := it.Next(context.Background(), 0)
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		text, lengths := b.Field("text"), b.Field("lengths")
		width := text.Shape[1]
		require.Equal(t, Int64, text.DType, "PadSequences widens the tokens")
		for row, i := range b.Indices {
			n := min(len(seqs[i])/2, 32)
			require.Equal(t, Int64, lengths.DType)
			require.Equal(t, uint64(n), binary.LittleEndian.Uint64(lengths.Host[8*row:]))
			for k := range n {
				got := binary.LittleEndian.Uint64(text.Host[(row*width+k)*8:])
				require.Equal(t, uint64(binary.LittleEndian.Uint16(seqs[i][2*k:])), got, "sequence %d token %d", i, k)
			}
		}
		seen += b.Size()
		require.NoError(t, b.Release(0))
	}
	require.Equal(t, 97, seen)
}

func TestMegatronSourceModes(t *testing.T) {
	dir := t.TempDir()
	testutil.WriteFile(t, dir, "mm.bin", make([]byte, 6*2))
	testutil.WriteFile(t, dir, "mm.idx", megatronIndex(8, 2, []int32{2, 1, 3}, []int64{0, 2, 3}, []int8{0, 1, -1}))
	s, err := NewMegatronSource(filepath.Join(dir, "mm"), MegatronConfig{MaxLen: 4})
	require.NoError(t, err)
	defer func() { require.NoError(t, s.Close()) }()
	for i, want := range []int8{0, 1, -1} {
		m, ok := s.Mode(i)
		require.True(t, ok)
		require.Equal(t, want, m)
	}
}

// TestMegatronSourceMalformed breaks each field of the index in turn: each is an ErrFormat error naming
// the file and what is wrong, found at open.
func TestMegatronSourceMalformed(t *testing.T) {
	good := func() []byte { return megatronIndex(8, 2, []int32{3, 0, 5}, []int64{0, 1, 3}, nil) }
	bin := make([]byte, 8*2)
	put64 := func(b []byte, off int, v uint64) []byte { binary.LittleEndian.PutUint64(b[off:], v); return b }
	put32 := func(b []byte, off int, v uint32) []byte { binary.LittleEndian.PutUint32(b[off:], v); return b }
	const lens, ptrs, docs = megatronHeader, megatronHeader + 3*4, megatronHeader + 3*4 + 3*8
	cases := []struct {
		name  string
		idx   []byte
		bin   []byte
		words []string
	}{
		{"short", good()[:20], bin, []string{"shorter than the 34-byte header"}},
		{"magic", append([]byte("MMIDIDY"), good()[7:]...), bin, []string{"magic"}},
		{"version", put64(good(), 9, 2), bin, []string{"version 2"}},
		{"dtype 0", append(append(good()[:17:17], 0), good()[18:]...), bin, []string{"dtype code 0"}},
		{"dtype 9", append(append(good()[:17:17], 9), good()[18:]...), bin, []string{"dtype code 9"}},
		{"sequence count", put64(good(), 18, 1<<40), bin, []string{"sequence count 1099511627776"}},
		{"document count", put64(good(), 26, 7), bin, []string{"document count 7"}},
		{"truncated arrays", good()[:docs+8], bin, []string{"do not fit"}},
		{"trailing bytes", append(good(), 1, 2), bin, []string{"2 bytes after the document boundaries"}},
		{"negative length", put32(good(), lens+4, 0xffffffff), bin, []string{"sequence 1 has length -1"}},
		{"odd pointer", put64(good(), ptrs+8, 3), bin, []string{"sequence 1 has pointer 3"}},
		{"negative pointer", put64(good(), ptrs+16, 1<<63), bin, []string{"sequence 2 has pointer"}},
		{"pointer past the bin", put64(good(), ptrs+16, 64), bin, []string{"sequence 2", "runs past the end", "16 bytes"}},
		{"length past the bin", put32(good(), lens+8, 6), bin, []string{"sequence 2 (pointer 6, 6 tokens"}},
		{"boundaries decrease", put64(good(), docs+16, 0), bin, []string{"boundary 2 is 0, smaller than boundary 1"}},
		{"boundary past the sequences", put64(good(), docs+16, 4), bin, []string{"boundary 2 is 4, outside the sequences 0..3"}},
		{"no sequences", megatronIndex(8, 2, nil, []int64{0}, nil), bin, []string{"no sequences"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			testutil.WriteFile(t, dir, "c.idx", c.idx)
			testutil.WriteFile(t, dir, "c.bin", c.bin)
			s, err := NewMegatronSource(filepath.Join(dir, "c"), MegatronConfig{MaxLen: 8})
			require.Nil(t, s)
			require.ErrorIs(t, err, engine.ErrFormat)
			require.Contains(t, err.Error(), filepath.Join(dir, "c.idx"))
			for _, w := range c.words {
				require.Contains(t, err.Error(), w)
			}
		})
	}
	dir := t.TempDir()
	testutil.WriteFile(t, dir, "c.idx", good())
	_, err := NewMegatronSource(filepath.Join(dir, "c"), MegatronConfig{MaxLen: 8})
	require.ErrorIs(t, err, engine.ErrIO, "a missing .bin")
	require.Contains(t, err.Error(), "c.bin")
	testutil.WriteFile(t, dir, "c.bin", bin)
	_, err = NewMegatronSource(filepath.Join(dir, "c"), MegatronConfig{})
	require.ErrorIs(t, err, engine.ErrInvalidArgument, "no maximum length")
	s, err := NewMegatronSource(filepath.Join(dir, "c"), MegatronConfig{MaxLen: 8})
	require.NoError(t, err, "the unbroken index opens")
	require.NoError(t, s.Close())
}

// FuzzMegatronIndex opens arbitrary index bytes against a .bin of a given size: a refusal is a typed
// error, and an accepted index reads every sequence inside the .bin.
func FuzzMegatronIndex(f *testing.F) {
	f.Add(megatronIndex(8, 2, []int32{3, 0, 5}, []int64{0, 1, 3}, nil), uint16(16), uint8(8))
	f.Add(megatronIndex(4, 4, []int32{1, 2}, []int64{0, 2}, []int8{1, 0}), uint16(12), uint8(2))
	f.Add(megatronIndex(1, 1, []int32{7}, []int64{0, 1}, nil), uint16(7), uint8(7))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, idx []byte, binSize uint16, maxLen uint8) {
		testutil.WriteFile(t, dir, "f.idx", idx)
		bin := make([]byte, int(binSize))
		for i := range bin {
			bin[i] = byte(i)
		}
		testutil.WriteFile(t, dir, "f.bin", bin)
		s, err := NewMegatronSource(filepath.Join(dir, "f"), MegatronConfig{MaxLen: int(maxLen)})
		if err != nil {
			testutil.RequireWraps(t, err, engine.ErrFormat, engine.ErrInvalidArgument, engine.ErrIO)
			return
		}
		defer func() { require.NoError(t, s.Close()) }()
		require.Positive(t, s.Len())
		dst := srcDst(s.Fields())
		size := s.DType().Size()
		for i := 0; i < s.Len() && i < 64; i++ {
			n := s.SampleLen(i)
			o := s.Offset(0, i)
			require.GreaterOrEqual(t, n, 0)
			require.LessOrEqual(t, int(o)+n*size, len(bin))
			require.NoError(t, s.ReadSample(i, dst))
			require.Equal(t, bin[o:int(o)+n*size], dst[0][:n*size])
		}
	})
}
