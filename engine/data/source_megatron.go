package data

import (
	"encoding/binary"
	"fmt"

	"github.com/ferry-ml/ferry/engine"
)

// megatronMagic opens every Megatron index file (prefix.idx).
var megatronMagic = []byte("MMIDIDX\x00\x00")

// megatronHeader is the index's fixed header: the magic (9 bytes), the version (u64), the dtype code (u8),
// the sequence count (u64) and the document count (u64).
const megatronHeader = 9 + 8 + 1 + 8 + 8

// megatronDTypes maps an index's dtype code to its element type.
var megatronDTypes = map[byte]DType{1: Uint8, 2: Int8, 3: Int16, 4: Int32, 5: Int64, 6: Float64, 7: Float32, 8: Uint16}

// MegatronConfig configures a MegatronSource.
type MegatronConfig struct {
	// MaxLen is the field's length, required and positive: a longer sequence is truncated to its first
	// MaxLen tokens (a GPT sampler reads windows across sequences instead).
	MaxLen int
	// FieldName names the one field; "tokens" when empty.
	FieldName string
}

// MegatronSource serves the sequences of a Megatron indexed dataset, the corpus format of Megatron-LM and
// NeMo: prefix.bin holds the tokens of every sequence one after another, and prefix.idx their lengths (int32),
// byte pointers into the .bin (int64) and the document boundaries (int64 sequence indices, from 0 to the
// sequence count), after a header with the magic, the version (1), the token type's code and both counts; a
// multimodal index adds a mode (int8) per sequence. Sample i is sequence i; its one field has the token
// type and shape [MaxLen], and the source implements Ragged (PadSequences lays a batch out to its longest).
// Both files stay memory-mapped; every field of the index is checked at open, so that no read goes out of
// bounds later.
type MegatronSource struct {
	prefix   string
	cfg      MegatronConfig
	dtype    DType
	idx, bin *mappedFile
	nseq     int
	ndoc     int
	lengths  []byte // int32 per sequence, in the index's mapping
	pointers []byte // int64 per sequence
	docs     []byte // int64 per document boundary
	modes    []byte // int8 per sequence, or nil
	fields   []Field
	guard    closeGuard
}

var (
	_ Source       = (*MegatronSource)(nil)
	_ Ragged       = (*MegatronSource)(nil)
	_ MemoryBacked = (*MegatronSource)(nil)
)

// NewMegatronSource maps prefix.idx and prefix.bin and checks the index. A malformed index (a bad magic or
// version, an unknown dtype code, counts that run past the file, a sequence past the end of the .bin or a
// negative length, boundaries that decrease or leave the sequence range) is an ErrFormat error naming the
// file and the field.
func NewMegatronSource(prefix string, cfg MegatronConfig) (*MegatronSource, error) {
	if cfg.MaxLen <= 0 {
		return nil, fmt.Errorf("%w: Megatron source %s: maximum length %d must be positive", engine.ErrInvalidArgument, prefix, cfg.MaxLen)
	}
	if cfg.FieldName == "" {
		cfg.FieldName = "tokens"
	}
	s := &MegatronSource{prefix: prefix, cfg: cfg}
	idx, err := mapFile(prefix + ".idx")
	if err != nil {
		return nil, fmt.Errorf("megatron source: %w", err)
	}
	s.idx = idx
	bin, err := mapFile(prefix + ".bin")
	if err != nil {
		_ = idx.unmap()
		return nil, fmt.Errorf("megatron source: %w", err)
	}
	s.bin = bin
	if err := s.parse(); err != nil {
		_ = idx.unmap()
		_ = bin.unmap()
		return nil, err
	}
	field := Field{Name: cfg.FieldName, DType: s.dtype, Shape: []int{cfg.MaxLen}}
	if err := field.Validate(); err != nil {
		_ = idx.unmap()
		_ = bin.unmap()
		return nil, fmt.Errorf("megatron source %s: %w", prefix, err)
	}
	s.fields = []Field{field}
	return s, nil
}

// parse checks the index against the .bin and slices its arrays out of the mapping.
func (s *MegatronSource) parse() error {
	data, path := s.idx.data, s.idx.path
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: Megatron index %s: %s", engine.ErrFormat, path, fmt.Sprintf(format, args...))
	}
	if len(data) < megatronHeader {
		return bad("%d bytes, shorter than the %d-byte header (truncated?)", len(data), megatronHeader)
	}
	if string(data[:9]) != string(megatronMagic) {
		return bad("magic %q; a Megatron index starts with %q", data[:9], megatronMagic)
	}
	if v := binary.LittleEndian.Uint64(data[9:]); v != 1 {
		return bad("version %d; only version 1 exists", v)
	}
	dt, ok := megatronDTypes[data[17]]
	if !ok {
		return bad("dtype code %d is unknown (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16)", data[17])
	}
	s.dtype = dt
	nseq, ndoc := binary.LittleEndian.Uint64(data[18:]), binary.LittleEndian.Uint64(data[26:])
	rest := uint64(len(data) - megatronHeader)
	if nseq > rest/12 || ndoc > (rest-12*nseq)/8 {
		return bad("sequence count %d and document count %d do not fit the %d bytes after the header (truncated, or the counts are wrong)",
			nseq, ndoc, rest)
	}
	body := data[megatronHeader:]
	s.nseq, s.ndoc = int(nseq), int(ndoc)
	s.lengths, body = body[:4*nseq], body[4*nseq:]
	s.pointers, body = body[:8*nseq], body[8*nseq:]
	s.docs, body = body[:8*ndoc], body[8*ndoc:]
	switch uint64(len(body)) {
	case 0:
	case nseq:
		s.modes = body // a multimodal index: a mode per sequence
	default:
		return bad("%d bytes after the document boundaries; only a mode per sequence (%d bytes) may follow", len(body), nseq)
	}
	size, binLen := uint64(dt.Size()), uint64(len(s.bin.data))
	for i := range s.nseq {
		n := int32(binary.LittleEndian.Uint32(s.lengths[4*i:]))
		p := int64(binary.LittleEndian.Uint64(s.pointers[8*i:]))
		switch {
		case n < 0:
			return bad("sequence %d has length %d", i, n)
		case p < 0 || uint64(p)%size != 0:
			return bad("sequence %d has pointer %d, not a multiple of the %d-byte token at or after 0", i, p, size)
		case uint64(p) > binLen || uint64(n)*size > binLen-uint64(p):
			return bad("sequence %d (pointer %d, %d tokens of %d bytes) runs past the end of %s (%d bytes)",
				i, p, n, size, s.bin.path, binLen)
		}
	}
	prev := int64(0)
	for d := range s.ndoc {
		v := int64(binary.LittleEndian.Uint64(s.docs[8*d:]))
		switch {
		case v < 0 || v > int64(nseq):
			return bad("document boundary %d is %d, outside the sequences 0..%d", d, v, nseq)
		case v < prev:
			return bad("document boundary %d is %d, smaller than boundary %d (%d); boundaries must not decrease", d, v, d-1, prev)
		}
		prev = v
	}
	if s.nseq == 0 {
		return bad("the index has no sequences")
	}
	return nil
}

// Len is the number of sequences.
func (s *MegatronSource) Len() int { return s.nseq }

// Fields is the one field, [MaxLen] tokens; do not modify it.
func (s *MegatronSource) Fields() []Field { return s.fields }

// DType is the token type the index declares.
func (s *MegatronSource) DType() DType { return s.dtype }

// Documents is the number of document boundaries the index holds (one more than its documents when it
// starts at 0, as Megatron's builder writes it).
func (s *MegatronSource) Documents() int { return s.ndoc }

// DocumentBoundary is boundary d (0 <= d < Documents()): the first sequence of document d, and the end of
// document d-1; -1 when d is out of range or the source is closed.
func (s *MegatronSource) DocumentBoundary(d int) int {
	if d < 0 || d >= s.ndoc || !s.guard.enter() {
		return -1
	}
	defer s.guard.exit()
	return int(int64(binary.LittleEndian.Uint64(s.docs[8*d:])))
}

// Mode is sequence i's mode in a multimodal index, and whether the index has modes (false too when i is
// out of range or the source is closed).
func (s *MegatronSource) Mode(i int) (int8, bool) {
	if s.modes == nil || i < 0 || i >= s.nseq || !s.guard.enter() {
		return 0, false
	}
	defer s.guard.exit()
	return int8(s.modes[i]), true
}

// SequenceLen is sequence i's full length in tokens; -1 when i is out of range or the source is closed.
func (s *MegatronSource) SequenceLen(i int) int {
	if i < 0 || i >= s.nseq || !s.guard.enter() {
		return -1
	}
	defer s.guard.exit()
	return s.seqLen(i)
}

// seqLen and pointer read the index without the guard: the caller holds it, or the index is still open.
func (s *MegatronSource) seqLen(i int) int {
	return int(int32(binary.LittleEndian.Uint32(s.lengths[4*i:])))
}

func (s *MegatronSource) pointer(i int) int64 {
	return int64(binary.LittleEndian.Uint64(s.pointers[8*i:]))
}

// RaggedField is 0, the only field.
func (s *MegatronSource) RaggedField() int { return 0 }

// SampleLen is the number of tokens ReadSample writes for sample i: its length, at most MaxLen; -1 when i
// is out of range or the source is closed.
func (s *MegatronSource) SampleLen(i int) int {
	n := s.SequenceLen(i)
	if n < 0 {
		return -1
	}
	return min(n, s.cfg.MaxLen)
}

// ReadSample copies sequence i's first SampleLen(i) tokens into the field and zeros the rest. It is safe
// for concurrent use. A file truncated while mapped gives an ErrIO error rather than a crash.
func (s *MegatronSource) ReadSample(i int, dst [][]byte) error {
	return s.guard.read(s, s.nseq, s.fields, i, dst, func() {
		start := s.pointer(i)
		n := copy(dst[0], s.bin.data[start:start+int64(min(s.seqLen(i), s.cfg.MaxLen)*s.dtype.Size())])
		clear(dst[0][n:])
	})
}

// Region is the .bin's mapping. It is nil when f is not 0 or the source is closed.
func (s *MegatronSource) Region(f int) []byte {
	if f != 0 || !s.guard.enter() {
		return nil
	}
	defer s.guard.exit()
	return s.bin.data
}

// Offset is the byte offset in Region(0) where sequence i starts; -1 when f is not 0, i is out of range
// or the source is closed.
func (s *MegatronSource) Offset(f, i int) int64 {
	if f != 0 || i < 0 || i >= s.nseq || !s.guard.enter() {
		return -1
	}
	defer s.guard.exit()
	return s.pointer(i)
}

// Close unmaps both files once reads in flight have finished.
func (s *MegatronSource) Close() error {
	return s.guard.close(s, func() error {
		err := s.bin.unmap()
		if ierr := s.idx.unmap(); err == nil {
			err = ierr
		}
		return err
	})
}

func (s *MegatronSource) String() string {
	return fmt.Sprintf("megatron(%s, %v, %d sequences, %d document boundaries, max %d)", s.prefix, s.dtype, s.nseq, s.ndoc, s.cfg.MaxLen)
}

// seqLen32 is sequence i's length as the index stores it, for the index builders; the caller holds the
// guard or the source is open.
func (s *MegatronSource) seqLen32(i int) int32 {
	return int32(binary.LittleEndian.Uint32(s.lengths[4*i:]))
}
