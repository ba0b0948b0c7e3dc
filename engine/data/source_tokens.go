package data

import (
	"encoding/binary"
	"fmt"
	"math/bits"

	"github.com/ferry-ml/ferry/engine"
)

// TokenFormat is the layout of a token file.
type TokenFormat int

// Token file formats.
const (
	// TokensUint16 is a flat file of little-endian uint16 tokens with no header: nanoGPT's train.bin and
	// val.bin (prepare.py writes them with numpy's tofile).
	TokensUint16 TokenFormat = iota + 1
	// TokensUint32 is a flat file of little-endian uint32 tokens with no header, for vocabularies larger
	// than 65536.
	TokensUint32
	// TokensLLMC is an llm.c shard: a header of 256 little-endian int32 (magic, version, token count,
	// then zeros) followed by the tokens. The magic and version give the token type: 20240520 version 1
	// is GPT-2 with uint16 tokens; 20240801 version 7 is Llama 3 with uint32 tokens (llm.c's
	// dev/data/data_common.py). Anything else is refused.
	TokensLLMC
)

func (f TokenFormat) String() string {
	switch f {
	case TokensUint16:
		return "uint16"
	case TokensUint32:
		return "uint32"
	case TokensLLMC:
		return "llm.c"
	}
	return fmt.Sprintf("TokenFormat(%d)", int(f))
}

// The llm.c shard header.
const (
	llmcHeaderBytes   = 256 * 4
	llmcMagicGPT2     = 20240520
	llmcVersionGPT2   = 1
	llmcMagicLlama3   = 20240801
	llmcVersionLlama3 = 7
)

// TokenConfig configures a TokenSource.
type TokenConfig struct {
	// Format is the file's layout.
	Format TokenFormat
	// SeqLen is the length of the x and y fields; each sample reads SeqLen+1 tokens.
	SeqLen int
	// Random places sample i at a pseudo-random token offset, a pure function of (Seed, i), as
	// nanoGPT's get_batch does; otherwise sample i starts at token i*SeqLen.
	Random bool
	// Seed picks the random offsets. Change it between epochs for fresh windows.
	Seed uint64
	// Window gives each sample as one field, "tokens", of SeqLen+1 tokens (the x window followed by its
	// last target) instead of the fields "x" and "y". The samples and their windows are the same. Each
	// token then crosses PCIe once; the iterator's ShiftTokens transform makes x and y on the device.
	Window bool
}

// TokenSource serves windows of a memory-mapped token file as language-model samples: field "x" holds
// SeqLen tokens and field "y" the same window shifted by one token (the targets), both of the file's
// token type with shape [SeqLen]. In window mode (TokenConfig.Window) the one field "tokens" holds the
// whole window of SeqLen+1 tokens instead. There are (ntokens-1)/SeqLen samples in every mode.
type TokenSource struct {
	path    string
	cfg     TokenConfig
	kind    string // the format as found, for messages
	tsize   int
	mf      *mappedFile
	tokens  []byte // the token part of the mapping
	ntokens int
	n       int
	fields  []Field
	guard   closeGuard
}

var (
	_ Source       = (*TokenSource)(nil)
	_ MemoryBacked = (*TokenSource)(nil)
)

// NewTokenSource maps a token file. A flat file must be a whole number of tokens; an llm.c shard must
// carry a known magic and version and a token count that matches the file's size. The file needs at
// least SeqLen+1 tokens.
func NewTokenSource(path string, cfg TokenConfig) (*TokenSource, error) {
	s := &TokenSource{path: path, cfg: cfg}
	switch cfg.Format {
	case TokensUint16, TokensUint32, TokensLLMC:
	default:
		return nil, fmt.Errorf("%w: token source %s: unknown format %v (use TokensUint16, TokensUint32 or TokensLLMC)",
			engine.ErrInvalidArgument, path, cfg.Format)
	}
	if cfg.SeqLen <= 0 {
		return nil, fmt.Errorf("%w: token source %s: sequence length %d must be positive", engine.ErrInvalidArgument, path, cfg.SeqLen)
	}
	mf, err := mapFile(path)
	if err != nil {
		return nil, fmt.Errorf("token source: %w", err)
	}
	s.mf = mf
	fail := func(err error) (*TokenSource, error) { _ = mf.unmap(); return nil, err }

	dtype := Uint16
	switch cfg.Format {
	case TokensUint16:
		s.kind, s.tokens = "uint16", mf.data
	case TokensUint32:
		dtype = Uint32
		s.kind, s.tokens = "uint32", mf.data
	case TokensLLMC:
		if dtype, err = s.parseLLMC(); err != nil {
			return fail(err)
		}
	}
	s.tsize = dtype.Size()
	if len(s.tokens)%s.tsize != 0 {
		return fail(fmt.Errorf("%w: token source %s: %d bytes of tokens are not a whole number of %d-byte tokens (%d bytes left over)",
			engine.ErrFormat, path, len(s.tokens), s.tsize, len(s.tokens)%s.tsize))
	}
	s.ntokens = len(s.tokens) / s.tsize
	if cfg.SeqLen >= s.ntokens {
		return fail(fmt.Errorf("%w: token source %s: %d tokens are too few for one window of %d+1 tokens",
			engine.ErrFormat, path, s.ntokens, cfg.SeqLen))
	}
	s.n = (s.ntokens - 1) / cfg.SeqLen
	if cfg.Window {
		s.fields = []Field{{Name: "tokens", DType: dtype, Shape: []int{cfg.SeqLen + 1}}}
	} else {
		s.fields = []Field{
			{Name: "x", DType: dtype, Shape: []int{cfg.SeqLen}},
			{Name: "y", DType: dtype, Shape: []int{cfg.SeqLen}},
		}
	}
	if err := s.fields[0].Validate(); err != nil {
		return fail(fmt.Errorf("token source %s: %w", path, err))
	}
	return s, nil
}

// parseLLMC checks an llm.c shard's header and returns its token type, setting s.kind and s.tokens.
func (s *TokenSource) parseLLMC() (DType, error) {
	if err := s.mf.ensure(0, min(len(s.mf.data), llmcHeaderBytes)); err != nil {
		return DTypeInvalid, fmt.Errorf("token source %s: %w", s.path, err)
	}
	data := s.mf.data
	if len(data) < llmcHeaderBytes {
		return DTypeInvalid, fmt.Errorf("%w: token source %s: the file is %d bytes, shorter than llm.c's %d-byte header",
			engine.ErrFormat, s.path, len(data), llmcHeaderBytes)
	}
	magic := int32(binary.LittleEndian.Uint32(data[0:]))
	version := int32(binary.LittleEndian.Uint32(data[4:]))
	count := int32(binary.LittleEndian.Uint32(data[8:]))
	var dtype DType
	var want int32
	switch magic {
	case llmcMagicGPT2:
		dtype, want, s.kind = Uint16, llmcVersionGPT2, "llm.c GPT-2 uint16"
	case llmcMagicLlama3:
		dtype, want, s.kind = Uint32, llmcVersionLlama3, "llm.c Llama 3 uint32"
	default:
		return DTypeInvalid, fmt.Errorf("%w: token source %s: llm.c magic number is %d, expected %d (GPT-2, uint16 tokens) or %d (Llama 3, uint32 tokens)",
			engine.ErrFormat, s.path, magic, llmcMagicGPT2, llmcMagicLlama3)
	}
	if version != want {
		return DTypeInvalid, fmt.Errorf("%w: token source %s: llm.c magic %d has version %d, expected %d",
			engine.ErrFormat, s.path, magic, version, want)
	}
	body := len(data) - llmcHeaderBytes
	if count < 0 || int64(count)*int64(dtype.Size()) != int64(body) {
		return DTypeInvalid, fmt.Errorf("%w: token source %s: the llm.c header says %d tokens (%d bytes), but %d bytes follow the header",
			engine.ErrFormat, s.path, count, int64(count)*int64(dtype.Size()), body)
	}
	s.tokens = data[llmcHeaderBytes:]
	return dtype, nil
}

// Len is the number of samples, (ntokens-1)/SeqLen.
func (s *TokenSource) Len() int { return s.n }

// Fields is x and y, each [SeqLen] tokens, or in window mode tokens, [SeqLen+1]; do not modify it.
func (s *TokenSource) Fields() []Field { return s.fields }

// Tokens is the number of tokens in the file.
func (s *TokenSource) Tokens() int { return s.ntokens }

// WindowStart is the token at which sample i starts, or -1 when i is out of range. Sequentially it is
// i*SeqLen. In random mode it is drawn from [0, ntokens-SeqLen-1]: the i-th output of a splitmix64
// generator seeded with Seed, scaled into the range by a 128-bit multiply.
func (s *TokenSource) WindowStart(i int) int {
	if i < 0 || i >= s.n {
		return -1
	}
	return s.offset(i)
}

func (s *TokenSource) offset(i int) int {
	if !s.cfg.Random {
		return i * s.cfg.SeqLen
	}
	r := windowRandom(s.cfg.Seed, uint64(i))
	hi, _ := bits.Mul64(r, uint64(s.ntokens-s.cfg.SeqLen))
	return int(hi)
}

// windowRandom is output i (from 0) of the splitmix64 generator seeded with seed: the state advanced
// i+1 times by the golden gamma, then splitmix64's finalizer.
func windowRandom(seed, i uint64) uint64 {
	z := seed + (i+1)*0x9e3779b97f4a7c15
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// ReadSample copies tokens [o, o+SeqLen) into x and [o+1, o+SeqLen+1) into y, where o is WindowStart(i);
// in window mode it copies [o, o+SeqLen+1) into tokens. It is safe for concurrent use. A file truncated
// while mapped gives an ErrIO error rather than a crash.
func (s *TokenSource) ReadSample(i int, dst [][]byte) error {
	if err := ensureSample(s, s.fields, s.mf, i); err != nil {
		return err
	}
	return s.guard.read(s, s.n, s.fields, i, dst, func() {
		start := s.offset(i) * s.tsize
		b := len(dst[0])
		copy(dst[0], s.tokens[start:start+b])
		if !s.cfg.Window {
			copy(dst[1], s.tokens[start+s.tsize:start+s.tsize+b])
		}
	})
}

// Region is the token part of the file's mapping (past an llm.c header), shared by every field. It is nil
// when f is out of range or the source is closed.
func (s *TokenSource) Region(f int) []byte {
	if f < 0 || f >= len(s.fields) || !s.guard.enter() {
		return nil
	}
	defer s.guard.exit()
	return s.tokens
}

// Offset is the byte offset in Region(f) where field f of sample i starts: WindowStart(i) tokens for x
// (and for the window-mode tokens field), one token more for y. It is -1 when f or i is out of range.
func (s *TokenSource) Offset(f, i int) int64 {
	if f < 0 || f >= len(s.fields) || i < 0 || i >= s.n {
		return -1
	}
	return int64(s.offset(i)+f) * int64(s.tsize)
}

// Close unmaps the file once reads in flight have finished.
func (s *TokenSource) Close() error {
	return s.guard.close(s, func() error { s.tokens = nil; return s.mf.unmap() })
}

func (s *TokenSource) String() string {
	mode := "sequential"
	if s.cfg.Random {
		mode = fmt.Sprintf("random, seed %d", s.cfg.Seed)
	}
	if s.cfg.Window {
		mode += ", window"
	}
	return fmt.Sprintf("tokens(%s, %s, %d tokens, %d × %d+1, %s)", s.path, s.kind, s.ntokens, s.n, s.cfg.SeqLen, mode)
}
