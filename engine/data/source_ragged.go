package data

import (
	"encoding/binary"
	"fmt"

	"github.com/ferry-ml/ferry/engine"
)

// RaggedConfig configures a RaggedTokenSource.
type RaggedConfig struct {
	// Format is the token file's layout: TokensUint16 or TokensUint32.
	Format TokenFormat
	// MaxLen is the field's length, required and positive. A longer sample is truncated to its first
	// MaxLen tokens.
	MaxLen int
	// FieldName names the one field; "tokens" when empty.
	FieldName string
}

// RaggedTokenSource serves variable-length token sequences, as in a ragged token file: a flat file of
// little-endian tokens and a .npy file of N+1 non-decreasing token offsets (int64 or uint64), so that
// sample i is tokens[off[i]:off[i+1]]. Its one field (RaggedConfig.FieldName) has the tokens' type and
// shape [MaxLen]; it implements Ragged, so the iterator's PadSequences can lay a batch out padded to its
// longest sample. The token file stays memory-mapped; the offsets are read once, at open.
type RaggedTokenSource struct {
	tokensPath  string
	offsetsPath string
	cfg         RaggedConfig
	tsize       int
	mf          *mappedFile
	tokens      []byte // the token file's mapping
	ntokens     int
	offs        []int64 // N+1 token offsets
	fields      []Field
	guard       closeGuard
}

var (
	_ Source       = (*RaggedTokenSource)(nil)
	_ Ragged       = (*RaggedTokenSource)(nil)
	_ MemoryBacked = (*RaggedTokenSource)(nil)
)

// NewRaggedTokenSource maps the token file and reads the offsets file. The token file must be a whole
// number of tokens. The offsets must be a 1-D .npy array of int64 or uint64 with at least two entries,
// the first at least 0, each no smaller than the one before and none past the token count.
func NewRaggedTokenSource(tokensPath, offsetsPath string, cfg RaggedConfig) (*RaggedTokenSource, error) {
	var dtype DType
	switch cfg.Format {
	case TokensUint16:
		dtype = Uint16
	case TokensUint32:
		dtype = Uint32
	default:
		return nil, fmt.Errorf("%w: ragged token source %s: format %v is not supported (use TokensUint16 or TokensUint32)",
			engine.ErrInvalidArgument, tokensPath, cfg.Format)
	}
	if cfg.MaxLen <= 0 {
		return nil, fmt.Errorf("%w: ragged token source %s: maximum length %d must be positive", engine.ErrInvalidArgument, tokensPath, cfg.MaxLen)
	}
	if cfg.FieldName == "" {
		cfg.FieldName = "tokens"
	}
	field := Field{Name: cfg.FieldName, DType: dtype, Shape: []int{cfg.MaxLen}}
	if err := field.Validate(); err != nil {
		return nil, fmt.Errorf("ragged token source %s: %w", tokensPath, err)
	}
	s := &RaggedTokenSource{tokensPath: tokensPath, offsetsPath: offsetsPath, cfg: cfg, tsize: dtype.Size(), fields: []Field{field}}

	mf, err := mapFile(tokensPath)
	if err != nil {
		return nil, fmt.Errorf("ragged token source: %w", err)
	}
	if err := mf.ensure(0, len(mf.data)); err != nil { // an object read in ranges is fetched whole here
		_ = mf.unmap()
		return nil, fmt.Errorf("ragged token source: %w", err)
	}
	if size := len(mf.data); size%s.tsize != 0 {
		_ = mf.unmap()
		return nil, fmt.Errorf("%w: ragged token source %s: %d bytes are not a whole number of %d-byte tokens (%d bytes left over)",
			engine.ErrFormat, tokensPath, size, s.tsize, size%s.tsize)
	}
	s.mf, s.tokens, s.ntokens = mf, mf.data, len(mf.data)/s.tsize
	if err := s.readOffsets(); err != nil {
		_ = mf.unmap()
		return nil, err
	}
	return s, nil
}

// readOffsets reads and checks the .npy file of token offsets into s.offs.
func (s *RaggedTokenSource) readOffsets() (err error) {
	path := s.offsetsPath
	mf, err := mapFile(path)
	if err != nil {
		return fmt.Errorf("ragged token source %s: offsets: %w", s.tokensPath, err)
	}
	if err := mf.ensure(0, len(mf.data)); err != nil {
		_ = mf.unmap()
		return fmt.Errorf("ragged token source %s: offsets: %w", s.tokensPath, err)
	}
	defer func() {
		if uerr := mf.unmap(); uerr != nil && err == nil {
			err = fmt.Errorf("ragged token source %s: offsets: %w", s.tokensPath, uerr)
		}
	}()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: ragged token source %s: offsets %s: %s", engine.ErrFormat, s.tokensPath, path, fmt.Sprintf(format, args...))
	}
	h, err := parseNpyHeader(mf.data)
	if err != nil {
		return bad("%v", err)
	}
	if len(h.shape) != 1 {
		return bad("the array has shape %v; offsets must be 1-D", h.shape)
	}
	if h.dtype != Int64 && h.dtype != Uint64 {
		return bad("dtype %v; offsets must be int64 or uint64", h.dtype)
	}
	n := h.shape[0]
	if n < 2 {
		return bad("%d offsets; a source needs at least 2 (one sample)", n)
	}
	if n > (len(mf.data)-h.dataOff)/8 {
		return bad("the file is %d bytes, shorter than its %d-byte header and %d offsets × 8 bytes (truncated?)", len(mf.data), h.dataOff, n)
	}
	data := mf.data[h.dataOff:]
	offs := make([]int64, n)
	prev := uint64(0)
	for i := range offs {
		v := binary.LittleEndian.Uint64(data[8*i:])
		switch {
		case h.dtype == Int64 && int64(v) < 0:
			return bad("offset %d is %d, negative", i, int64(v))
		case v > uint64(s.ntokens):
			return bad("offset %d is %d, beyond the token file's %d tokens", i, v, s.ntokens)
		case v < prev:
			return bad("offset %d is %d, smaller than offset %d (%d); offsets must not decrease", i, v, i-1, prev)
		}
		offs[i], prev = int64(v), v
	}
	s.offs = offs
	return nil
}

// Len is the number of samples: one less than the number of offsets.
func (s *RaggedTokenSource) Len() int { return len(s.offs) - 1 }

// Fields is the one field, [MaxLen] tokens; do not modify it.
func (s *RaggedTokenSource) Fields() []Field { return s.fields }

// Tokens is the number of tokens in the token file.
func (s *RaggedTokenSource) Tokens() int { return s.ntokens }

// RaggedField is 0, the only field.
func (s *RaggedTokenSource) RaggedField() int { return 0 }

// SampleLen is the number of tokens ReadSample writes for sample i: its length, at most MaxLen. It is -1
// when i is out of range.
func (s *RaggedTokenSource) SampleLen(i int) int {
	if i < 0 || i >= s.Len() {
		return -1
	}
	return int(min(s.offs[i+1]-s.offs[i], int64(s.cfg.MaxLen)))
}

// ReadSample copies sample i's first SampleLen(i) tokens into the field and zeros the rest. It is safe
// for concurrent use. A file truncated while mapped gives an ErrIO error rather than a crash.
func (s *RaggedTokenSource) ReadSample(i int, dst [][]byte) error {
	return s.guard.read(s, s.Len(), s.fields, i, dst, func() {
		start := int(s.offs[i]) * s.tsize
		n := copy(dst[0], s.tokens[start:start+s.SampleLen(i)*s.tsize])
		clear(dst[0][n:])
	})
}

// Region is the token file's mapping. It is nil when f is not 0 or the source is closed.
func (s *RaggedTokenSource) Region(f int) []byte {
	if f != 0 || !s.guard.enter() {
		return nil
	}
	defer s.guard.exit()
	return s.tokens
}

// Offset is the byte offset in Region(0) where sample i's tokens start. It is -1 when f is not 0 or i
// is out of range.
func (s *RaggedTokenSource) Offset(f, i int) int64 {
	if f != 0 || i < 0 || i >= s.Len() {
		return -1
	}
	return s.offs[i] * int64(s.tsize)
}

// Close unmaps the token file once reads in flight have finished.
func (s *RaggedTokenSource) Close() error {
	return s.guard.close(s, func() error { s.tokens = nil; return s.mf.unmap() })
}

func (s *RaggedTokenSource) String() string {
	return fmt.Sprintf("ragged(%s, offsets %s, %v, %d tokens, %d samples, max %d)",
		s.tokensPath, s.offsetsPath, s.cfg.Format, s.ntokens, s.Len(), s.cfg.MaxLen)
}
