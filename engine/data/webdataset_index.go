package data

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/ferry-ml/ferry/engine"
)

// The member index of a WebDataset shard: a POSIX tar file whose members are grouped into samples by key,
// as the webdataset package groups them (tariterators.py): only regular members count; names like
// "__meta__" are skipped; a member's key is its path up to the first dot of its base name and its
// extension the rest, lower-cased ("a/b.seg.PNG" is key "a/b", extension "seg.png"); consecutive members
// with one key make a sample, and a key repeated within a sample is an error. The index records, for each
// sample, where the image member's bytes lie in the shard and the label, parsed at indexing; a sample
// without an image member or (when asked for) a label is an error naming the shard and the key. Built by
// reading the tar headers (archive/tar, seeking past the data), it is cached in a small file keyed by the
// shard's path, size and modification time and the keys asked for.

// wdsMember is one sample of a shard's index.
type wdsMember struct {
	key    string
	ext    string // the image member's extension
	offset int64  // the image bytes in the shard
	size   int64
	label  int64
}

// wdsKeys are the members a WebDatasetSource takes from each sample: the image (the first present of
// ";"-separated extensions, like webdataset's to_tuple("jpg;png")) and the label (an ASCII integer member
// such as "cls"; empty for none).
type wdsKeys struct {
	image []string
	label string
}

var wdsKeyPattern = regexp.MustCompile(`^((?:.*/|)[^.]+)[.]([^/]*)$`)

// wdsSplit is webdataset's base_plus_ext with the extension lower-cased; ok is false for a name without
// an extension, which webdataset skips.
func wdsSplit(name string) (key, ext string, ok bool) {
	m := wdsKeyPattern.FindStringSubmatch(name)
	if m == nil {
		return "", "", false
	}
	return m[1], strings.ToLower(m[2]), true
}

// wdsMeta is webdataset's metadata rule: "__x__" at the top level, and paths that start with "__x__/".
var wdsMeta = regexp.MustCompile(`^__[^/]*__($|/)`)

// indexShard reads a shard's tar headers and groups its members into samples.
func indexShard(path string, keys wdsKeys) ([]wdsMember, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: WebDataset shard: %w", engine.ErrIO, err)
	}
	defer func() { _ = f.Close() }()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: WebDataset shard %s: %w", engine.ErrIO, path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: WebDataset shard %s is not a regular file", engine.ErrInvalidArgument, path)
	}
	return indexTar(f, st.Size(), path, keys)
}

// indexTar indexes a tar stream of size bytes (r's position is its data offsets' origin).
func indexTar(r io.ReadSeeker, size int64, path string, keys wdsKeys) ([]wdsMember, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: WebDataset shard %s: %s", engine.ErrFormat, path, fmt.Sprintf(format, args...))
	}
	tr := tar.NewReader(r)
	var out []wdsMember
	var lastEnd int64 // where the last member's 512-byte blocks end
	var cur struct {
		key          string
		exts         map[string]bool
		image        wdsMember
		imageRank    int // the position in keys.image of the image found so far; len(keys.image) when none
		label        int64
		hasLabel     bool
		open         bool
		firstMembers string
	}
	flush := func() error {
		if !cur.open {
			return nil
		}
		cur.open = false
		if cur.imageRank == len(keys.image) {
			return bad("sample %q has no %s member (it has %s)", cur.key, strings.Join(keys.image, " or "), cur.firstMembers)
		}
		if keys.label != "" && !cur.hasLabel {
			return bad("sample %q has no %s member (it has %s)", cur.key, keys.label, cur.firstMembers)
		}
		m := cur.image
		m.key, m.label = cur.key, cur.label
		out = append(out, m)
		return nil
	}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			// The end, or a file cut at a header: the last member's blocks must be whole.
			if lastEnd > size {
				return nil, bad("the file (%d bytes) ends inside the blocks of its last member, which run to byte %d: truncated", size, lastEnd)
			}
			break
		}
		if err != nil {
			return nil, bad("reading the tar headers after %d samples: %v (truncated or not a tar file?)", len(out), err)
		}
		if hdr.Typeflag != tar.TypeReg && hdr.Typeflag != tar.TypeRegA { //nolint:staticcheck // TypeRegA: old tars
			if hdr.Typeflag == tar.TypeGNUSparse {
				return nil, bad("member %q is a sparse file, which a shard cannot hold", hdr.Name)
			}
			continue
		}
		name := hdr.Name
		pos, err := r.Seek(0, io.SeekCurrent)
		if err != nil {
			return nil, fmt.Errorf("%w: WebDataset shard %s: %w", engine.ErrIO, path, err)
		}
		if hdr.Size < 0 || pos > size || hdr.Size > size-pos {
			return nil, bad("member %q (%d bytes at %d) runs past the end of the file (%d bytes): truncated", name, hdr.Size, pos, size)
		}
		lastEnd = pos + (hdr.Size+511)&^511
		if wdsMeta.MatchString(name) {
			continue
		}
		key, ext, ok := wdsSplit(name)
		if !ok {
			continue
		}
		if !cur.open || key != cur.key {
			if err := flush(); err != nil {
				return nil, err
			}
			cur.key, cur.exts, cur.open = key, map[string]bool{}, true
			cur.imageRank, cur.hasLabel, cur.firstMembers = len(keys.image), false, ""
		}
		if cur.exts[ext] {
			return nil, bad("sample %q has two %q members", key, ext)
		}
		cur.exts[ext] = true
		if len(cur.firstMembers) < 200 {
			if cur.firstMembers != "" {
				cur.firstMembers += ", "
			}
			cur.firstMembers += ext
		}
		for rank, want := range keys.image {
			if ext == want && rank < cur.imageRank {
				cur.image = wdsMember{ext: ext, offset: pos, size: hdr.Size}
				cur.imageRank = rank
			}
		}
		if keys.label != "" && ext == keys.label {
			if hdr.Size > 64 {
				return nil, bad("label member %q is %d bytes, not an integer", name, hdr.Size)
			}
			text, err := io.ReadAll(tr)
			if err != nil {
				return nil, bad("reading label member %q: %v", name, err)
			}
			v, err := strconv.ParseInt(string(bytes.TrimSpace(text)), 10, 64)
			if err != nil {
				return nil, bad("label member %q holds %q, not an integer", name, text)
			}
			cur.label, cur.hasLabel = v, true
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return out, nil
}

// The cache file: magic, version, the key's length and the key, the sample count, then per sample the
// offset, size and label (int64 each), the extension and the key (a length byte or uint16 and the bytes).
var wdsCacheMagic = []byte("FERRYWDS")

const wdsCacheVersion = 1

// wdsCacheKey names a shard's index: its absolute path, size and modification time, and the keys; size
// is the shard's.
func wdsCacheKey(path string, keys wdsKeys) (key []byte, name string, size int64, err error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, "", 0, err
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, "", 0, err
	}
	key = []byte(fmt.Sprintf("wds %d\n%s\n%d %d\n%s\n%s", wdsCacheVersion, abs, st.Size(), st.ModTime().UnixNano(),
		strings.Join(keys.image, ";"), keys.label))
	sum := sha256.Sum256(key)
	return key, strings.TrimSuffix(filepath.Base(path), filepath.Ext(path)) + "-" + hex.EncodeToString(sum[:8]) + ".wdsidx", st.Size(), nil
}

func encodeWDSIndex(key []byte, ms []wdsMember) []byte {
	b := append([]byte{}, wdsCacheMagic...)
	b = binary.LittleEndian.AppendUint32(b, wdsCacheVersion)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(key)))
	b = append(b, key...)
	b = binary.LittleEndian.AppendUint64(b, uint64(len(ms)))
	for _, m := range ms {
		b = binary.LittleEndian.AppendUint64(b, uint64(m.offset))
		b = binary.LittleEndian.AppendUint64(b, uint64(m.size))
		b = binary.LittleEndian.AppendUint64(b, uint64(m.label))
		b = append(b, byte(min(len(m.ext), 255)))
		b = append(b, m.ext[:min(len(m.ext), 255)]...)
		b = binary.LittleEndian.AppendUint16(b, uint16(min(len(m.key), 65535)))
		b = append(b, m.key[:min(len(m.key), 65535)]...)
	}
	return b
}

// decodeWDSIndex reads a cache file written for key, checking every entry against the shard's size.
func decodeWDSIndex(b, key []byte, shardSize int64) ([]wdsMember, error) {
	fail := errors.New("not a ferry WebDataset index for this shard")
	take := func(n int) ([]byte, bool) {
		if n < 0 || n > len(b) {
			return nil, false
		}
		v := b[:n]
		b = b[n:]
		return v, true
	}
	head, ok := take(16)
	if !ok || !bytes.Equal(head[:8], wdsCacheMagic) || binary.LittleEndian.Uint32(head[8:]) != wdsCacheVersion {
		return nil, fail
	}
	k, ok := take(int(binary.LittleEndian.Uint32(head[12:])))
	if !ok || !bytes.Equal(k, key) {
		return nil, fail
	}
	nb, ok := take(8)
	if !ok {
		return nil, fail
	}
	n := binary.LittleEndian.Uint64(nb)
	if n > uint64(len(b))/27 {
		return nil, fail
	}
	out := make([]wdsMember, 0, n)
	for range n {
		fix, ok := take(25)
		if !ok {
			return nil, fail
		}
		m := wdsMember{offset: int64(binary.LittleEndian.Uint64(fix)), size: int64(binary.LittleEndian.Uint64(fix[8:])),
			label: int64(binary.LittleEndian.Uint64(fix[16:]))}
		ext, ok := take(int(fix[24]))
		if !ok {
			return nil, fail
		}
		kl, ok := take(2)
		if !ok {
			return nil, fail
		}
		kb, ok := take(int(binary.LittleEndian.Uint16(kl)))
		if !ok {
			return nil, fail
		}
		m.ext, m.key = string(ext), string(kb)
		if m.offset < 0 || m.size < 0 || m.offset > shardSize || m.size > shardSize-m.offset {
			return nil, fail
		}
		out = append(out, m)
	}
	if len(b) != 0 {
		return nil, fail
	}
	return out, nil
}

// loadShardIndex returns a shard's index from the cache in dir (empty: no cache), or builds it and
// writes the cache. A cache file that does not fit is rebuilt. cacheErr says why the cache could not be
// used or written, if so.
func loadShardIndex(path string, keys wdsKeys, dir string) (ms []wdsMember, cached bool, cacheErr error, err error) {
	var key []byte
	var file string
	if dir != "" {
		var name string
		var size int64
		key, name, size, cacheErr = wdsCacheKey(path, keys)
		if cacheErr == nil {
			file = filepath.Join(dir, name)
			if b, rerr := os.ReadFile(file); rerr == nil {
				ms, derr := decodeWDSIndex(b, key, size)
				if derr == nil {
					return ms, true, nil, nil
				}
				cacheErr = fmt.Errorf("index cache %s: %w", file, derr)
			}
		}
	}
	ms, err = indexShard(path, keys)
	if err != nil {
		return nil, false, cacheErr, err
	}
	if file != "" {
		if werr := writeFileAtomic(file, encodeWDSIndex(key, ms)); werr != nil && cacheErr == nil {
			cacheErr = werr
		}
	}
	return ms, false, cacheErr, nil
}

// writeFileAtomic writes the parts, one after another, to path through a temporary file renamed into
// place, so that a reader never sees half a file.
func writeFileAtomic(path string, parts ...[]byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".ferry-*")
	if err != nil {
		return err
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	for _, part := range parts {
		if _, err := tmp.Write(part); err != nil {
			_ = tmp.Close()
			return err
		}
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
