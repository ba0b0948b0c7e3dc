package data

import (
	"context"
	"encoding/binary"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/objstore"
)

// DefaultMaxImageBytes is the default largest encoded image a source of encoded images serves.
const DefaultMaxImageBytes = 8 << 20

// WebDatasetConfig configures a WebDatasetSource.
type WebDatasetConfig struct {
	// Image is the image member's extension, or several separated by ";" (the first present is taken):
	// "jpg;jpeg;png;webp" when empty.
	Image string
	// Label is the extension of an ASCII integer member ("cls" by default); "-" for none.
	Label string
	// MaxBytes is the image field's length: the largest encoded image served; DefaultMaxImageBytes when 0.
	// A larger image is an error naming it.
	MaxBytes int
	// CacheDir holds the shards' member indexes; empty means a "cache" directory beside the first shard.
	CacheDir string
	// NoCache indexes every shard at every open and writes nothing.
	NoCache bool
}

// WebDatasetSource serves the samples of WebDataset tar shards with random access: the shards' member
// indexes (see webdataset_index.go) number every sample, in shard order, so that the iterator's seeded
// order, exact and elastic resume and DistributedSampler-exact sharding work as they do for any source.
// Fields: "image", the encoded image's bytes (uint8 [MaxBytes], variable length: Ragged), and "label"
// (int64) unless Label is "-". The shards stay memory-mapped until Close.
type WebDatasetSource struct {
	cfg     WebDatasetConfig
	keys    wdsKeys
	shards  []*mappedFile
	members [][]wdsMember
	first   []int // the first sample of each shard
	n       int
	fields  []Field
	cached  int // shards whose index came from the cache
	notes   []string
	guard   closeGuard
}

var (
	_ Source = (*WebDatasetSource)(nil)
	_ Ragged = (*WebDatasetSource)(nil)
	_ Named  = (*WebDatasetSource)(nil)
)

// NewWebDatasetSource expands the shard patterns (brace ranges like "train-{0000..0147}.tar" and lists
// like "{a,b}"), indexes (or loads the cached index of) every shard and maps them. A malformed shard is an
// ErrFormat error naming the shard and the member or sample.
func NewWebDatasetSource(patterns []string, cfg WebDatasetConfig) (*WebDatasetSource, error) {
	if cfg.Image == "" {
		cfg.Image = "jpg;jpeg;png;webp"
	}
	if cfg.Label == "" {
		cfg.Label = "cls"
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = DefaultMaxImageBytes
	}
	if cfg.MaxBytes < 0 {
		return nil, fmt.Errorf("%w: WebDataset source: max bytes %d is negative", engine.ErrInvalidArgument, cfg.MaxBytes)
	}
	s := &WebDatasetSource{cfg: cfg}
	for _, e := range strings.Split(cfg.Image, ";") {
		if e = strings.ToLower(strings.TrimSpace(e)); e != "" {
			s.keys.image = append(s.keys.image, e)
		}
	}
	if len(s.keys.image) == 0 {
		return nil, fmt.Errorf("%w: WebDataset source: no image extension in %q", engine.ErrInvalidArgument, cfg.Image)
	}
	if cfg.Label != "-" {
		s.keys.label = strings.ToLower(cfg.Label)
	}
	var paths []string
	for _, p := range patterns {
		if objstore.IsURL(p) && strings.HasSuffix(p, "/") {
			// A prefix in an object store: its .tar objects, in key order.
			listed, err := listShards(p)
			if err != nil {
				return nil, err
			}
			paths = append(paths, listed...)
			continue
		}
		expanded, err := expandBraces(p)
		if err != nil {
			return nil, err
		}
		paths = append(paths, expanded...)
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("%w: WebDataset source: no shard given", engine.ErrInvalidArgument)
	}
	dir := ""
	if !cfg.NoCache {
		dir = cfg.CacheDir
		if dir == "" {
			dir = indexCacheDir(paths[0])
		}
	}
	for _, p := range paths {
		// A shard in an object store is fetched whole first (its tar headers run through it) and indexed
		// from its copy in the cache, whose name carries the object's ETag.
		var mf *mappedFile
		indexPath := p
		if objstore.IsURL(p) {
			var err error
			if mf, err = mapFile(p); err == nil {
				if err = mf.ensure(0, len(mf.data)); err != nil {
					_ = mf.unmap()
				}
			}
			if err != nil {
				_ = s.release()
				return nil, fmt.Errorf("WebDataset source: %w", err)
			}
			indexPath = mf.local
		}
		ms, cached, cacheErr, err := loadShardIndex(indexPath, s.keys, dir)
		if err != nil {
			_ = mf.unmap()
			_ = s.release()
			return nil, err
		}
		if cached {
			s.cached++
		}
		if cacheErr != nil {
			s.notes = append(s.notes, cacheErr.Error())
		}
		if mf == nil {
			if mf, err = mapFile(p); err != nil {
				_ = s.release()
				return nil, fmt.Errorf("WebDataset source: %w", err)
			}
		}
		s.shards = append(s.shards, mf)
		s.members = append(s.members, ms)
		s.first = append(s.first, s.n)
		s.n += len(ms)
	}
	if s.n == 0 {
		_ = s.release()
		return nil, fmt.Errorf("%w: WebDataset source: the %d shards hold no sample with a %s member", engine.ErrFormat, len(paths), cfg.Image)
	}
	s.fields = []Field{{Name: "image", DType: Uint8, Shape: []int{cfg.MaxBytes}}}
	if s.keys.label != "" {
		s.fields = append(s.fields, Field{Name: "label", DType: Int64})
	}
	if err := s.fields[0].Validate(); err != nil {
		_ = s.release()
		return nil, fmt.Errorf("WebDataset source: %w", err)
	}
	return s, nil
}

// expandBraces expands shell-style braces as the braceexpand package does for shard names: "{0000..0147}"
// (a numeric range, zero padded to the wider bound), "{a,b}" (alternatives), nested and repeated.
func expandBraces(p string) ([]string, error) {
	open := strings.IndexByte(p, '{')
	if open < 0 {
		return []string{p}, nil
	}
	depth, closeAt := 0, -1
	for i := open; i < len(p) && closeAt < 0; i++ {
		switch p[i] {
		case '{':
			depth++
		case '}':
			if depth--; depth == 0 {
				closeAt = i
			}
		}
	}
	if closeAt < 0 {
		return nil, fmt.Errorf("%w: shard pattern %q has an unclosed brace", engine.ErrInvalidArgument, p)
	}
	body, head, tail := p[open+1:closeAt], p[:open], p[closeAt+1:]
	var alts []string
	if lo, hi, ok := strings.Cut(body, ".."); ok && !strings.ContainsAny(body, "{,") {
		a, errA := strconv.Atoi(lo)
		b, errB := strconv.Atoi(hi)
		if errA != nil || errB != nil || a > b || b-a > 10_000_000 {
			return nil, fmt.Errorf("%w: shard pattern %q: range {%s} is not ascending integers", engine.ErrInvalidArgument, p, body)
		}
		width := 0
		if len(lo) > 1 && lo[0] == '0' || len(hi) > 1 && hi[0] == '0' {
			width = max(len(lo), len(hi))
		}
		for v := a; v <= b; v++ {
			alts = append(alts, fmt.Sprintf("%0*d", width, v))
		}
	} else {
		depth, start := 0, 0
		for i := 0; i <= len(body); i++ {
			if i == len(body) || body[i] == ',' && depth == 0 {
				alts = append(alts, body[start:i])
				start = i + 1
				continue
			}
			switch body[i] {
			case '{':
				depth++
			case '}':
				depth--
			}
		}
	}
	var out []string
	for _, a := range alts {
		expanded, err := expandBraces(head + a + tail)
		if err != nil {
			return nil, err
		}
		out = append(out, expanded...)
	}
	return out, nil
}

// locate is the shard of sample i and i's index in it.
func (s *WebDatasetSource) locate(i int) (int, int) {
	k := sort.Search(len(s.first), func(k int) bool { return s.first[k] > i }) - 1
	return k, i - s.first[k]
}

// Len is the number of samples of every shard.
func (s *WebDatasetSource) Len() int { return s.n }

// Fields is the image (and label) field; do not modify it.
func (s *WebDatasetSource) Fields() []Field { return s.fields }

// Shards is the number of shards; CachedShards how many of their indexes came from the cache.
func (s *WebDatasetSource) Shards() int { return len(s.shards) }

// CachedShards is how many shard indexes were read from the cache rather than built.
func (s *WebDatasetSource) CachedShards() int { return s.cached }

// CacheNotes says why some indexes could not be read from or written to the cache.
func (s *WebDatasetSource) CacheNotes() []string { return append([]string(nil), s.notes...) }

// SampleName is sample i's place, "shard.tar:key.ext", for messages; empty when out of range.
func (s *WebDatasetSource) SampleName(i int) string {
	if i < 0 || i >= s.n {
		return ""
	}
	k, j := s.locate(i)
	m := s.members[k][j]
	return s.shards[k].path + ":" + m.key + "." + m.ext
}

// Label is sample i's label (0 without a label member); ok is false out of range.
func (s *WebDatasetSource) Label(i int) (int64, bool) {
	if i < 0 || i >= s.n {
		return 0, false
	}
	k, j := s.locate(i)
	return s.members[k][j].label, true
}

// RaggedField is 0, the image.
func (s *WebDatasetSource) RaggedField() int { return 0 }

// SampleLen is sample i's encoded size in bytes (-1 out of range); it may exceed MaxBytes, which
// ReadSample then refuses.
func (s *WebDatasetSource) SampleLen(i int) int {
	if i < 0 || i >= s.n {
		return -1
	}
	k, j := s.locate(i)
	return int(min(s.members[k][j].size, int64(s.cfg.MaxBytes)))
}

// ReadSample copies sample i's encoded image (zeros after it) and label. It is safe for concurrent use.
func (s *WebDatasetSource) ReadSample(i int, dst [][]byte) error {
	if err := checkRead(s, s.n, s.fields, i, dst); err != nil {
		return err
	}
	k, j := s.locate(i)
	m := s.members[k][j]
	if m.size > int64(s.cfg.MaxBytes) {
		return fmt.Errorf("%w: %s: the image is %d bytes, more than the largest served (%d; raise max bytes)",
			engine.ErrLimit, s.SampleName(i), m.size, s.cfg.MaxBytes)
	}
	return s.guard.read(s, s.n, s.fields, i, dst, func() {
		n := copy(dst[0], s.shards[k].data[m.offset:m.offset+m.size])
		clear(dst[0][n:])
		if len(dst) > 1 {
			binary.LittleEndian.PutUint64(dst[1], uint64(m.label))
		}
	})
}

// Close unmaps the shards once reads in flight have finished.
func (s *WebDatasetSource) Close() error { return s.guard.close(s, s.release) }

func (s *WebDatasetSource) release() error {
	var err error
	for _, m := range s.shards {
		if uerr := m.unmap(); err == nil {
			err = uerr
		}
	}
	return err
}

func (s *WebDatasetSource) String() string {
	name := "no shard"
	if len(s.shards) > 0 {
		name = s.shards[0].path
		if len(s.shards) > 1 {
			name = fmt.Sprintf("%s and %d more shards", name, len(s.shards)-1)
		}
	}
	return fmt.Sprintf("webdataset(%s, %d samples)", name, s.n)
}

// listShards is the .tar objects under the prefix url (s3://bucket/prefix/), in key order.
func listShards(url string) ([]string, error) {
	bucket, prefix, err := objstore.ParsePrefix(url)
	if err != nil {
		return nil, fmt.Errorf("%w: WebDataset source: %w", engine.ErrInvalidArgument, err)
	}
	cl, err := objstore.Default()
	if err != nil {
		return nil, fmt.Errorf("%w: WebDataset source: %w", engine.ErrIO, err)
	}
	if prefix != "" {
		prefix += "/"
	}
	listed, err := cl.List(context.Background(), bucket, prefix)
	if err != nil {
		return nil, fmt.Errorf("%w: WebDataset source: %w", engine.ErrIO, err)
	}
	var out []string
	for _, o := range listed {
		if strings.HasSuffix(o.Key, ".tar") {
			out = append(out, objstore.Object{Bucket: bucket, Key: o.Key}.String())
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: WebDataset source: no .tar object under %s", engine.ErrFormat, url)
	}
	return out, nil
}
