package data

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/ferry-ml/ferry/engine"
)

// GPTOrder is how a GPTSource numbers its windows.
type GPTOrder int

// GPT window orders.
const (
	// GPTOrderFerry numbers the windows in corpus order: window i of a file starts at token i*SeqLen of
	// its token stream (its sequences back to back, in index order). It needs no index, so it opens in
	// the time it takes to check the index files; shuffle it with the iterator's seeded permutation, which
	// gives exact and elastic resume.
	GPTOrderFerry GPTOrder = iota
	// GPTOrderMegatron reproduces megatron-core's GPTDataset: the same windows in the same order, sample
	// for sample, for a given seed, sequence length, split and number of samples. Its indices are built
	// at open (or mapped from the cache) and the window order is the source's own: read it with the
	// iterator's Shuffle off.
	GPTOrderMegatron
)

func (o GPTOrder) String() string {
	switch o {
	case GPTOrderFerry:
		return "ferry"
	case GPTOrderMegatron:
		return "megatron"
	}
	return fmt.Sprintf("GPTOrder(%d)", int(o))
}

// GPTConfig configures a GPTSource.
type GPTConfig struct {
	// SeqLen is the number of inputs per sample; each window holds SeqLen+1 tokens.
	SeqLen int
	// Order numbers the windows (GPTOrderFerry by default).
	Order GPTOrder
	// FieldName names the window field; "tokens" when empty.
	FieldName string

	// The remaining fields are Megatron's and apply to GPTOrderMegatron only.

	// Seed is Megatron's random_seed.
	Seed uint32
	// Split is Megatron's split string, like "969,30,1"; empty means "1" (every sequence in train).
	Split string
	// Which is the split to read.
	Which MegatronSplit
	// NumSamples is the number of samples asked for (Megatron's num_samples: train_iters × global batch
	// for train); 0 builds one epoch. The source holds at least that many windows: whole epochs of the
	// split.
	NumSamples int
	// CacheDir holds built indices; empty means a "cache" directory beside the first prefix. A start with
	// the same files and parameters maps the cached index instead of building it.
	CacheDir string
	// NoCache builds the index at every open and writes nothing.
	NoCache bool
}

// GPTIndexInfo says how a Megatron-order source got its index.
type GPTIndexInfo struct {
	// Cached is true when the index was mapped from the cache.
	Cached bool
	// Path is the cache file, read or written; empty when none was.
	Path string
	// Took is the time to build or map it.
	Took time.Duration
	// Epochs is the number of passes over the split the windows make.
	Epochs int
	// CacheError is why the cache could not be read or written, if it could not; the source works
	// without it.
	CacheError string
}

// GPTSource serves the windows of a Megatron corpus as language-model samples, packed across document
// boundaries the way Megatron's GPTDataset packs them: one field ("tokens") of SeqLen+1 tokens of the
// corpus's token type, from which ShiftTokens makes the int64 inputs x and targets y on the device (and,
// with an EOD token, the loss mask and the position ids).
//
// With GPTOrderFerry a one-file corpus whose sequences lie back to back (as Megatron's builder writes
// them) is MemoryBacked: the iterator registers the .bin and a kernel reads the windows in place.
type GPTSource struct {
	corpus *MegatronSource
	cfg    GPTConfig
	fields []Field
	n      int
	size   int64 // bytes per token

	// GPTOrderFerry: windows per file, and the corpus's cumulative window counts.
	winFirst []int
	cum      [][]int64 // per unpacked file: token offset of each sequence in its stream

	// GPTOrderMegatron: the index, and the split's sequences [beg, end).
	index    *megatronGPTIndex
	beg, end int
	cache    *mappedFile
	info     GPTIndexInfo
	guard    closeGuard
}

var (
	_ Source       = (*GPTSource)(nil)
	_ MemoryBacked = (*GPTSource)(nil)
	_ SelfOrdered  = (*GPTSource)(nil)
)

// NewGPTSource opens prefixes (each prefix.idx and prefix.bin, checked as NewMegatronSource checks them)
// as one corpus and lays windows over it. GPTOrderMegatron reads one prefix (blend several with
// BlendSource, as Megatron blends them).
func NewGPTSource(prefixes []string, cfg GPTConfig) (*GPTSource, error) {
	if cfg.SeqLen < 1 {
		return nil, fmt.Errorf("%w: GPT source: sequence length %d must be positive", engine.ErrInvalidArgument, cfg.SeqLen)
	}
	if cfg.Order != GPTOrderFerry && cfg.Order != GPTOrderMegatron {
		return nil, fmt.Errorf("%w: GPT source: unknown order %v (ferry or megatron)", engine.ErrInvalidArgument, cfg.Order)
	}
	if cfg.Order == GPTOrderMegatron && len(prefixes) != 1 {
		return nil, fmt.Errorf("%w: GPT source: order megatron reads one prefix, not %d; blend several with BlendSource", engine.ErrInvalidArgument, len(prefixes))
	}
	if cfg.FieldName == "" {
		cfg.FieldName = "tokens"
	}
	corpus, err := NewMegatronCorpus(prefixes, MegatronConfig{MaxLen: 1})
	if err != nil {
		return nil, err
	}
	s := &GPTSource{corpus: corpus, cfg: cfg, size: int64(corpus.dtype.Size())}
	s.fields = []Field{{Name: cfg.FieldName, DType: corpus.dtype, Shape: []int{cfg.SeqLen + 1}}}
	if err := s.fields[0].Validate(); err != nil {
		_ = corpus.Close()
		return nil, fmt.Errorf("GPT source %s: %w", prefixes[0], err)
	}
	if cfg.Order == GPTOrderFerry {
		err = s.openFerry()
	} else {
		err = s.openMegatron()
	}
	if err != nil {
		_ = s.release()
		return nil, err
	}
	return s, nil
}

// openFerry counts each file's windows; an unpacked file gets its sequences' stream offsets.
func (s *GPTSource) openFerry() error {
	seq := int64(s.cfg.SeqLen)
	for _, f := range s.corpus.files {
		s.winFirst = append(s.winFirst, s.n)
		if f.tokens > seq {
			s.n += int((f.tokens - 1) / seq)
		}
		var cum []int64
		if !f.packed {
			cum = make([]int64, f.nseq+1)
			for i := range f.nseq {
				cum[i+1] = cum[i] + int64(s.corpus.seqLen32(f.first+i))
			}
		}
		s.cum = append(s.cum, cum)
	}
	if s.n == 0 {
		return fmt.Errorf("%w: GPT source %v: no file holds the %d+1 tokens of one window", engine.ErrFormat, s.corpus, seq)
	}
	return nil
}

// openMegatron maps the cached index or builds (and caches) it.
func (s *GPTSource) openMegatron() error {
	split := s.cfg.Split
	if split == "" {
		split = "1"
	}
	beg, end, ok, err := megatronSplitRange(split, s.cfg.Which, s.corpus.nseq)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: GPT source: split %q gives the %s split no sequences", engine.ErrInvalidArgument, split, s.cfg.Which)
	}
	p := megatronGPTParams{seqLen: s.cfg.SeqLen, seed: s.cfg.Seed, split: split, which: s.cfg.Which, numSamples: s.cfg.NumSamples}
	start := time.Now()
	var key []byte
	path := ""
	if !s.cfg.NoCache {
		var name string
		key, name, err = megatronCacheKey(s.corpus, beg, end, p)
		if err == nil {
			dir := s.cfg.CacheDir
			if dir == "" {
				dir = indexCacheDir(s.corpus.files[0].prefix)
			}
			path = filepath.Join(dir, name)
			if _, serr := os.Stat(path); serr == nil {
				x, mf, rerr := readMegatronCache(path, key, s.corpus)
				if rerr == nil {
					s.index, s.cache, s.n, s.beg, s.end = x, mf, x.Len(), beg, end
					s.info = GPTIndexInfo{Cached: true, Path: path, Took: time.Since(start), Epochs: x.epochs}
					return nil
				}
				s.info.CacheError = rerr.Error()
			}
		} else {
			s.info.CacheError = err.Error()
		}
	}
	x, err := buildMegatronGPTIndex(s.corpus.seqLen32, beg, end, p)
	if err != nil {
		return fmt.Errorf("GPT source %v: %w", s.corpus, err)
	}
	s.index, s.n, s.beg, s.end = x, x.Len(), beg, end
	s.info.Epochs, s.info.Took = x.epochs, time.Since(start)
	if path != "" {
		if werr := writeMegatronCache(path, key, x); werr != nil {
			s.info.CacheError = werr.Error()
		} else {
			s.info.Path = path
		}
	}
	return nil
}

// Len is the number of windows.
func (s *GPTSource) Len() int { return s.n }

// Fields is the window field, [SeqLen+1] tokens; do not modify it.
func (s *GPTSource) Fields() []Field { return s.fields }

// Order is the source's window order.
func (s *GPTSource) Order() GPTOrder { return s.cfg.Order }

// OrdersItself is non-empty in Megatron's order: the windows are numbered in megatron-core's order.
func (s *GPTSource) OrdersItself() string {
	if s.cfg.Order == GPTOrderMegatron {
		return "its windows are in megatron-core's GPTDataset order"
	}
	return ""
}

// IndexInfo says how a Megatron-order source got its index (zero for GPTOrderFerry).
func (s *GPTSource) IndexInfo() GPTIndexInfo { return s.info }

// ReadSample copies window i into the field. It is safe for concurrent use. A Megatron-order index whose
// values are out of range (a damaged cache file) gives an ErrFormat error naming the file, never a read out
// of bounds; a file truncated while mapped gives ErrIO.
func (s *GPTSource) ReadSample(i int, dst [][]byte) (err error) {
	if err := checkRead(s, s.n, s.fields, i, dst); err != nil {
		return err
	}
	if !s.guard.enter() {
		return errClosedSource(s, i)
	}
	defer s.guard.exit()
	defer recoverFault(&err, guardFaults(), s, i)
	var n int
	if s.index != nil {
		if n, err = s.readMegatron(i, dst[0]); err != nil {
			return err
		}
	} else {
		n = s.readFerry(i, dst[0])
	}
	clear(dst[0][n:])
	return nil
}

// locateFerry is the file of window i and the token at which the window starts in the file's stream.
func (s *GPTSource) locateFerry(i int) (int, int64) {
	k := sort.Search(len(s.winFirst), func(k int) bool { return s.winFirst[k] > i }) - 1
	return k, int64(i-s.winFirst[k]) * int64(s.cfg.SeqLen)
}

func (s *GPTSource) readFerry(i int, dst []byte) int {
	k, start := s.locateFerry(i)
	f := s.corpus.files[k]
	want := int64(s.cfg.SeqLen + 1)
	if f.packed {
		return copy(dst, f.bin.data[start*s.size:(start+want)*s.size])
	}
	cum := s.cum[k]
	j := sort.Search(len(cum), func(j int) bool { return cum[j] > start }) - 1
	n := 0
	for off := start - cum[j]; int64(n) < want*s.size && j < f.nseq; j, off = j+1, 0 {
		n += copy(dst[n:], s.corpus.tokensOf(f.first+j, off, want-int64(n)/s.size))
	}
	return n
}

// readMegatron copies window i as GPTDataset's _query_document_sample_shuffle_indices assembles it,
// checking each index value it uses.
func (s *GPTSource) readMegatron(i int, dst []byte) (int, error) {
	x := s.index
	w := x.shuffle[i]
	ndocs := int64(len(x.docs))
	bad := func(what string, args ...any) (int, error) {
		where := "the built index"
		if s.cache != nil {
			where = "index cache " + s.cache.path
		}
		return 0, fmt.Errorf("%w: %v: window %d: %s holds %s (rebuild it: remove the file)", engine.ErrFormat, s, i, where, fmt.Sprintf(what, args...))
	}
	if w < 0 || w >= int64(len(x.shuffle)) {
		return bad("shuffle entry %d", w)
	}
	db, ob := x.samples[2*w], x.samples[2*w+1]
	de, oe := x.samples[2*w+2], x.samples[2*w+3]
	if db < 0 || de < db || de >= ndocs || ob < 0 || oe < 0 {
		return bad("window bounds (%d, %d)..(%d, %d)", db, ob, de, oe)
	}
	n := 0
	for d := db; d <= de && n < len(dst); d++ {
		doc := int(x.docs[d])
		if doc < s.beg || doc >= s.end {
			return bad("document %d at position %d, outside the split's sequences [%d, %d)", doc, d, s.beg, s.end)
		}
		off, length := int64(0), int64(1<<62)
		if d == db {
			off = ob
		}
		if d == de {
			length = oe + 1 - off
		}
		n += copy(dst[n:], s.corpus.tokensOf(doc, off, length))
	}
	return n, nil
}

// Region is the .bin mapping of a one-file, back-to-back corpus in ferry order; nil otherwise (the
// iterator then gathers windows on the host) or when the source is closed.
func (s *GPTSource) Region(f int) []byte {
	if f != 0 || s.index != nil || len(s.corpus.files) != 1 || !s.corpus.files[0].packed || !s.guard.enter() {
		return nil
	}
	defer s.guard.exit()
	return s.corpus.files[0].bin.data
}

// Offset is the byte offset of window i in Region(0); -1 when there is no region or i is out of range.
func (s *GPTSource) Offset(f, i int) int64 {
	if f != 0 || i < 0 || i >= s.n || s.index != nil || len(s.corpus.files) != 1 || !s.corpus.files[0].packed {
		return -1
	}
	_, start := s.locateFerry(i)
	return start * s.size
}

// Close unmaps the corpus and the cached index once reads in flight have finished.
func (s *GPTSource) Close() error { return s.guard.close(s, s.release) }

func (s *GPTSource) release() error {
	err := s.corpus.Close()
	if cerr := s.cache.unmap(); err == nil {
		err = cerr
	}
	return err
}

func (s *GPTSource) String() string {
	return fmt.Sprintf("gpt(%v, order %v, seq %d, %d windows)", s.corpus, s.cfg.Order, s.cfg.SeqLen, s.n)
}
