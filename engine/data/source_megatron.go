package data

import (
	"encoding/binary"
	"fmt"
	"sort"

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
// Several prefixes make one corpus (NewMegatronCorpus): their sequences follow one another in the order
// given. Every file stays memory-mapped; every field of every index is checked at open, so that no read
// goes out of bounds later.
type MegatronSource struct {
	cfg    MegatronConfig
	dtype  DType
	files  []*megatronFile
	nseq   int
	ndoc   int
	fields []Field
	guard  closeGuard
}

// megatronFile is one prefix of a corpus: its two mappings and the index's arrays, sliced out of the
// .idx mapping.
type megatronFile struct {
	prefix   string
	idx, bin *mappedFile
	first    int // the corpus's index of its first sequence
	nseq     int
	ndoc     int
	lengths  []byte // int32 per sequence
	pointers []byte // int64 per sequence
	docs     []byte // int64 per document boundary
	modes    []byte // int8 per sequence, or nil
	tokens   int64  // the sum of the lengths
	// packed is true when the sequences lie back to back in index order from the .bin's first byte, as
	// Megatron's builder writes them: token t of the file's stream is then at byte t*size.
	packed bool
}

func (f *megatronFile) unmap() error {
	err := f.bin.unmap()
	if ierr := f.idx.unmap(); err == nil {
		err = ierr
	}
	return err
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
	return NewMegatronCorpus([]string{prefix}, cfg)
}

// NewMegatronCorpus opens several prefixes as one corpus, each checked as NewMegatronSource checks it. All
// must hold the same token type.
func NewMegatronCorpus(prefixes []string, cfg MegatronConfig) (*MegatronSource, error) {
	if len(prefixes) == 0 {
		return nil, fmt.Errorf("%w: Megatron source: no prefix given", engine.ErrInvalidArgument)
	}
	if cfg.MaxLen <= 0 {
		return nil, fmt.Errorf("%w: Megatron source %s: maximum length %d must be positive", engine.ErrInvalidArgument, prefixes[0], cfg.MaxLen)
	}
	if cfg.FieldName == "" {
		cfg.FieldName = "tokens"
	}
	s := &MegatronSource{cfg: cfg}
	fail := func(err error) (*MegatronSource, error) {
		for _, f := range s.files {
			_ = f.unmap()
		}
		return nil, err
	}
	for _, prefix := range prefixes {
		f, err := openMegatronFile(prefix)
		if err != nil {
			return fail(err)
		}
		f.first = s.nseq
		s.files = append(s.files, f)
		if len(s.files) == 1 {
			s.dtype = megatronDTypes[f.idx.data[17]]
		} else if dt := megatronDTypes[f.idx.data[17]]; dt != s.dtype {
			return fail(fmt.Errorf("%w: Megatron index %s holds %v tokens, but %s holds %v; one corpus has one token type",
				engine.ErrFormat, f.idx.path, dt, s.files[0].idx.path, s.dtype))
		}
		s.nseq += f.nseq
		s.ndoc += f.ndoc
	}
	field := Field{Name: cfg.FieldName, DType: s.dtype, Shape: []int{cfg.MaxLen}}
	if err := field.Validate(); err != nil {
		return fail(fmt.Errorf("megatron source %s: %w", prefixes[0], err))
	}
	s.fields = []Field{field}
	return s, nil
}

// openMegatronFile maps one prefix and checks its index.
func openMegatronFile(prefix string) (*megatronFile, error) {
	idx, err := mapFile(prefix + ".idx")
	if err != nil {
		return nil, fmt.Errorf("megatron source: %w", err)
	}
	bin, err := mapFile(prefix + ".bin")
	if err != nil {
		_ = idx.unmap()
		return nil, fmt.Errorf("megatron source: %w", err)
	}
	f := &megatronFile{prefix: prefix, idx: idx, bin: bin}
	// A corpus in an object store is fetched whole (in ranges, before it opens): its windows span documents.
	for _, m := range []*mappedFile{idx, bin} {
		if err := m.ensure(0, len(m.data)); err != nil {
			_ = f.unmap()
			return nil, fmt.Errorf("megatron source: %w", err)
		}
	}
	if err := f.parse(); err != nil {
		_ = f.unmap()
		return nil, err
	}
	return f, nil
}

// parse checks the index against the .bin and slices its arrays out of the mapping.
func (f *megatronFile) parse() error {
	data, path := f.idx.data, f.idx.path
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
	nseq, ndoc := binary.LittleEndian.Uint64(data[18:]), binary.LittleEndian.Uint64(data[26:])
	rest := uint64(len(data) - megatronHeader)
	if nseq > rest/12 || ndoc > (rest-12*nseq)/8 {
		return bad("sequence count %d and document count %d do not fit the %d bytes after the header (truncated, or the counts are wrong)",
			nseq, ndoc, rest)
	}
	body := data[megatronHeader:]
	f.nseq, f.ndoc = int(nseq), int(ndoc)
	f.lengths, body = body[:4*nseq], body[4*nseq:]
	f.pointers, body = body[:8*nseq], body[8*nseq:]
	f.docs, body = body[:8*ndoc], body[8*ndoc:]
	switch uint64(len(body)) {
	case 0:
	case nseq:
		f.modes = body // a multimodal index: a mode per sequence
	default:
		return bad("%d bytes after the document boundaries; only a mode per sequence (%d bytes) may follow", len(body), nseq)
	}
	if err := f.checkSequences(dt, bad); err != nil {
		return err
	}
	prev := int64(0)
	for d := range f.ndoc {
		v := int64(binary.LittleEndian.Uint64(f.docs[8*d:]))
		switch {
		case v < 0 || v > int64(nseq):
			return bad("document boundary %d is %d, outside the sequences 0..%d", d, v, nseq)
		case v < prev:
			return bad("document boundary %d is %d, smaller than boundary %d (%d); boundaries must not decrease", d, v, d-1, prev)
		}
		prev = v
	}
	if f.nseq == 0 {
		return bad("the index has no sequences")
	}
	return nil
}

// checkSequences checks every sequence's length and pointer against the .bin, in parallel chunks, and
// finds the token count and whether the sequences lie back to back from byte 0.
func (f *megatronFile) checkSequences(dt DType, bad func(string, ...any) error) error {
	size, binLen := uint64(dt.Size()), uint64(len(f.bin.data))
	const chunk = 1 << 18
	type part struct {
		tokens      int64
		first, next uint64 // the chunk's first pointer, and the byte after its last sequence
		packed      bool
	}
	parts := make([]part, (f.nseq+chunk-1)/chunk)
	errs := make([]error, len(parts))
	align := size - 1 // token sizes are powers of two
	parallelFor(f.nseq, chunk, func(lo, hi int) {
		// Locals in the loop, stored once: this runs over every sequence of the corpus at each open.
		packed, tokens := true, int64(0)
		first := binary.LittleEndian.Uint64(f.pointers[8*lo:])
		next := first
		lengths, pointers := f.lengths[4*lo:4*hi], f.pointers[8*lo:8*hi]
		for k := range hi - lo {
			n := int32(binary.LittleEndian.Uint32(lengths[4*k:]))
			p := int64(binary.LittleEndian.Uint64(pointers[8*k:]))
			if n < 0 || p < 0 || uint64(p)&align != 0 || uint64(p) > binLen || uint64(n)*size > binLen-uint64(p) {
				i := lo + k
				switch {
				case n < 0:
					errs[lo/chunk] = bad("sequence %d has length %d", i, n)
				case p < 0 || uint64(p)&align != 0:
					errs[lo/chunk] = bad("sequence %d has pointer %d, not a multiple of the %d-byte token at or after 0", i, p, size)
				default:
					errs[lo/chunk] = bad("sequence %d (pointer %d, %d tokens of %d bytes) runs past the end of %s (%d bytes)",
						i, p, n, size, f.bin.path, binLen)
				}
				return
			}
			packed = packed && uint64(p) == next
			next = uint64(p) + uint64(n)*size
			tokens += int64(n)
		}
		parts[lo/chunk] = part{tokens: tokens, first: first, next: next, packed: packed}
	})
	for _, err := range errs { // the first bad sequence's
		if err != nil {
			return err
		}
	}
	f.packed = true
	next := uint64(0)
	for _, pt := range parts {
		f.packed = f.packed && pt.packed && pt.first == next
		next = pt.next
		f.tokens += pt.tokens
	}
	return nil
}

// locate is the file that holds sequence i of the corpus and i's index within it.
func (s *MegatronSource) locate(i int) (*megatronFile, int) {
	if len(s.files) == 1 {
		return s.files[0], i - s.files[0].first
	}
	k := sort.Search(len(s.files), func(k int) bool { return s.files[k].first > i }) - 1
	f := s.files[k]
	return f, i - f.first
}

// Len is the number of sequences.
func (s *MegatronSource) Len() int { return s.nseq }

// Fields is the one field, [MaxLen] tokens; do not modify it.
func (s *MegatronSource) Fields() []Field { return s.fields }

// DType is the token type the index declares.
func (s *MegatronSource) DType() DType { return s.dtype }

// Documents is the number of document boundaries the indexes hold (one more than a file's documents when
// it starts at 0, as Megatron's builder writes it), over all files.
func (s *MegatronSource) Documents() int { return s.ndoc }

// DocumentBoundary is boundary d (0 <= d < Documents()) as a sequence of the corpus: the first sequence
// of a document, and the end of the one before. The boundaries of each file follow those of the file
// before, shifted by its first sequence, so a file's end and the next file's start appear both. It is -1
// when d is out of range or the source is closed.
func (s *MegatronSource) DocumentBoundary(d int) int {
	if d < 0 || d >= s.ndoc || !s.guard.enter() {
		return -1
	}
	defer s.guard.exit()
	for _, f := range s.files {
		if d < f.ndoc {
			return f.first + int(int64(binary.LittleEndian.Uint64(f.docs[8*d:])))
		}
		d -= f.ndoc
	}
	return -1
}

// Mode is sequence i's mode in a multimodal index, and whether its index has modes (false too when i is
// out of range or the source is closed).
func (s *MegatronSource) Mode(i int) (int8, bool) {
	if i < 0 || i >= s.nseq || !s.guard.enter() {
		return 0, false
	}
	defer s.guard.exit()
	f, j := s.locate(i)
	if f.modes == nil {
		return 0, false
	}
	return int8(f.modes[j]), true
}

// SequenceLen is sequence i's full length in tokens; -1 when i is out of range or the source is closed.
func (s *MegatronSource) SequenceLen(i int) int {
	if i < 0 || i >= s.nseq || !s.guard.enter() {
		return -1
	}
	defer s.guard.exit()
	return int(s.seqLen32(i))
}

// seqLen32 is sequence i's length as the index stores it; the caller holds the guard or the source is
// open.
func (s *MegatronSource) seqLen32(i int) int32 {
	f, j := s.locate(i)
	return int32(binary.LittleEndian.Uint32(f.lengths[4*j:]))
}

// tokensOf is the bytes of sequence i's tokens [off, off+n) in its .bin mapping (clipped to the sequence);
// the caller holds the guard.
func (s *MegatronSource) tokensOf(i int, off, n int64) []byte {
	f, j := s.locate(i)
	size := int64(s.dtype.Size())
	l := int64(int32(binary.LittleEndian.Uint32(f.lengths[4*j:])))
	off = min(max(off, 0), l)
	n = min(max(n, 0), l-off)
	p := int64(binary.LittleEndian.Uint64(f.pointers[8*j:])) + off*size
	return f.bin.data[p : p+n*size]
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
		n := copy(dst[0], s.tokensOf(i, 0, int64(s.cfg.MaxLen)))
		clear(dst[0][n:])
	})
}

// Region is the .bin's mapping of a one-file corpus. It is nil when f is not 0, the corpus has several
// files (their sequences are not in one region; the iterator then gathers them on the host) or the source
// is closed.
func (s *MegatronSource) Region(f int) []byte {
	if f != 0 || len(s.files) != 1 || !s.guard.enter() {
		return nil
	}
	defer s.guard.exit()
	return s.files[0].bin.data
}

// Offset is the byte offset in Region(0) where sequence i starts; -1 when f is not 0, i is out of range,
// the corpus has several files or the source is closed.
func (s *MegatronSource) Offset(f, i int) int64 {
	if f != 0 || i < 0 || i >= s.nseq || len(s.files) != 1 || !s.guard.enter() {
		return -1
	}
	defer s.guard.exit()
	return int64(binary.LittleEndian.Uint64(s.files[0].pointers[8*i:]))
}

// Close unmaps every file once reads in flight have finished.
func (s *MegatronSource) Close() error {
	return s.guard.close(s, func() error {
		var err error
		for _, f := range s.files {
			if ferr := f.unmap(); err == nil {
				err = ferr
			}
		}
		return err
	})
}

func (s *MegatronSource) String() string {
	name := s.files[0].prefix
	if len(s.files) > 1 {
		name = fmt.Sprintf("%s and %d more", name, len(s.files)-1)
	}
	return fmt.Sprintf("megatron(%s, %v, %d sequences, %d document boundaries, max %d)", name, s.dtype, s.nseq, s.ndoc, s.cfg.MaxLen)
}
