package objstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-ml/ferry/engine/internal/cenv"
)

// Cache is a folder of fetched objects with a byte limit, shared by the processes of a node: an object is
// fetched once under a lock on its entry, so the ranks of a node that open it together download it once;
// entries are keyed by bucket, key and ETag, so a changed object is fetched again; the least recently used
// entries are removed beyond the limit (a removed entry stays readable to a process that has it mapped).
type Cache struct {
	Dir   string
	Limit int64 // bytes; 0: no limit
}

// Stats count a process's fetches: ranged GETs (Requests), their bytes, cache hits and misses, and the
// HTTP attempts that failed and were retried (Retries).
var Stats struct {
	Requests, BytesFetched, Hits, Misses, Retries atomic.Uint64
}

// latencies holds the durations of the latest ranged GETs, in seconds, until the monitor drains them.
var latencies struct {
	mu  sync.Mutex
	buf []float64
}

// maxLatencies bounds the latencies kept between two drains: the newest are kept.
const maxLatencies = 4096

func recordLatency(d time.Duration) {
	latencies.mu.Lock()
	if len(latencies.buf) >= maxLatencies {
		copy(latencies.buf, latencies.buf[1:])
		latencies.buf = latencies.buf[:maxLatencies-1]
	}
	latencies.buf = append(latencies.buf, d.Seconds())
	latencies.mu.Unlock()
}

// DrainLatencies hands each ranged GET's duration (seconds) recorded since the last drain to f.
func DrainLatencies(f func(seconds float64)) {
	latencies.mu.Lock()
	buf := latencies.buf
	latencies.buf = nil
	latencies.mu.Unlock()
	for _, v := range buf {
		f(v)
	}
}

// DefaultCache is FERRY_CACHE_DIR (default $XDG_CACHE_HOME/ferry/objects, else ~/.cache/ferry/objects)
// with the limit FERRY_CACHE_BYTES (default none).
func DefaultCache() (*Cache, error) {
	cenv.Sync()
	dir := os.Getenv("FERRY_CACHE_DIR")
	if dir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return nil, fmt.Errorf("no cache folder for objects: set FERRY_CACHE_DIR (%w)", err)
		}
		dir = filepath.Join(base, "ferry", "objects")
	}
	c := &Cache{Dir: dir}
	if s := os.Getenv("FERRY_CACHE_BYTES"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("FERRY_CACHE_BYTES=%q is not a byte count", s)
		}
		c.Limit = n
	}
	return c, nil
}

// partSize and parallel are how a fetch splits an object: ranged GETs of 16 MiB, 8 at a time.
const (
	partSize = 16 << 20
	parallel = 8
)

// entry is the file name of an object's version: a hash of bucket, key and ETag, then the key's base name
// (for people looking at the folder).
func entry(obj Object, etag string) string {
	h := sha256.Sum256([]byte(obj.Bucket + "\x00" + obj.Key + "\x00" + etag))
	base := strings.Map(func(r rune) rune {
		if r == '/' || r == 0 || r > 126 || r < 32 {
			return '_'
		}
		return r
	}, filepath.Base(obj.Key))
	if len(base) > 64 {
		base = base[len(base)-64:]
	}
	return hex.EncodeToString(h[:16]) + "-" + base
}

// Fetch returns the path of a local copy of obj, verified against the store's size and ETag: the cached
// entry when it is there, else a download (ranged GETs, each only while the ETag matches) into a temporary
// file renamed into place.
func (c *Cache) Fetch(ctx context.Context, cl *Client, obj Object) (string, error) {
	info, err := cl.Head(ctx, obj)
	if err != nil {
		return "", err
	}
	return c.FetchKnown(ctx, cl, obj, info)
}

// FetchKnown is Fetch of an object whose size and ETag are known (from a listing): a cached copy is found
// without a request.
func (c *Cache) FetchKnown(ctx context.Context, cl *Client, obj Object, info Info) (string, error) {
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return "", fmt.Errorf("the object cache folder: %w", err)
	}
	path := filepath.Join(c.Dir, entry(obj, info.ETag))
	if hit(path, info.Size) {
		Stats.Hits.Add(1)
		c.evict(path)
		return path, nil
	}
	// One process of the node downloads; the others wait on the entry's lock and then find it.
	unlock, err := lockFile(path + ".lock")
	if err != nil {
		return "", fmt.Errorf("locking the cache entry of %s: %w", obj, err)
	}
	defer unlock()
	if hit(path, info.Size) {
		Stats.Hits.Add(1)
		return path, nil
	}
	Stats.Misses.Add(1)
	if err := c.download(ctx, cl, obj, info, path); err != nil {
		return "", err
	}
	c.evict(path)
	return path, nil
}

// hit reports whether the entry is there with the object's size, and marks it used: its access time is
// the LRU's clock (its modification time stays, so that indexes keyed on the copy stay valid).
func hit(path string, size int64) bool {
	st, err := os.Stat(path)
	if err != nil || st.Size() != size {
		return false
	}
	_ = os.Chtimes(path, time.Now(), st.ModTime())
	return true
}

// usedAt is when an entry was last used (its access time).
func usedAt(info fs.FileInfo) time.Time {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return time.Unix(st.Atim.Sec, st.Atim.Nsec)
	}
	return info.ModTime()
}

func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return func() {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		_ = f.Close()
	}, nil
}

func (c *Cache) download(ctx context.Context, cl *Client, obj Object, info Info, path string) error {
	tmp, err := os.CreateTemp(c.Dir, ".fetch-*")
	if err != nil {
		return fmt.Errorf("the object cache folder: %w", err)
	}
	defer func() { _ = os.Remove(tmp.Name()) }() // gone once renamed
	defer func() { _ = tmp.Close() }()
	if err := unix.Fallocate(int(tmp.Fd()), 0, 0, info.Size); err != nil && info.Size > 0 {
		if errors.Is(err, syscall.ENOSPC) {
			return fmt.Errorf("the object cache folder %s has no room for %s (%d bytes): free space or set FERRY_CACHE_DIR or FERRY_CACHE_BYTES", c.Dir, obj, info.Size)
		}
		if !errors.Is(err, syscall.EOPNOTSUPP) {
			return fmt.Errorf("the object cache folder: %w", err)
		}
	}
	parts := make(chan int64)
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, partSize)
			for off := range parts {
				n := min(int64(partSize), info.Size-off)
				err := cl.ReadRange(ctx, obj, info.ETag, off, buf[:n])
				Stats.Requests.Add(1)
				if err == nil {
					Stats.BytesFetched.Add(uint64(n))
					_, err = tmp.WriteAt(buf[:n], off)
					if errors.Is(err, syscall.ENOSPC) {
						err = fmt.Errorf("the object cache folder %s is full writing %s: %w", c.Dir, obj, err)
					}
				}
				if err != nil {
					once.Do(func() { first = err; cancel() })
				}
			}
		}()
	}
feed:
	for off := int64(0); off < info.Size; off += partSize {
		select {
		case parts <- off:
		case <-ctx.Done():
			break feed
		}
	}
	close(parts)
	wg.Wait()
	if first != nil {
		return first
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fetching %s: %w", obj, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("writing %s to the object cache: %w", obj, err)
	}
	if st, err := tmp.Stat(); err != nil || st.Size() != info.Size {
		return fmt.Errorf("fetching %s: the copy is not %d bytes", obj, info.Size)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("the object cache folder: %w", err)
	}
	return nil
}

// evict removes the least recently used entries beyond the limit, never keep.
func (c *Cache) evict(keep string) {
	if c.Limit <= 0 {
		return
	}
	ents, err := os.ReadDir(c.Dir)
	if err != nil {
		return
	}
	type file struct {
		path string
		size int64
		used time.Time
	}
	var files []file
	var total int64
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !e.Type().IsRegular() || strings.HasSuffix(name, ".lock") ||
			strings.HasSuffix(name, ".part") || strings.HasSuffix(name, ".blocks") { // in use by readers in ranges
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		files = append(files, file{filepath.Join(c.Dir, e.Name()), info.Size(), usedAt(info)})
		total += info.Size()
	}
	sort.Slice(files, func(i, j int) bool { return files[i].used.Before(files[j].used) })
	for _, f := range files {
		if total <= c.Limit {
			break
		}
		if f.path == keep {
			continue
		}
		if err := os.Remove(f.path); err == nil || errors.Is(err, fs.ErrNotExist) {
			total -= f.size
			_ = os.Remove(f.path + ".lock")
		}
	}
}

// defaults are the process's client and the default cache, as the environment names them now.
func defaults() (*Client, *Cache, error) {
	cl, err := Default()
	if err != nil {
		return nil, nil, err
	}
	c, err := DefaultCache()
	if err != nil {
		return nil, nil, err
	}
	return cl, c, nil
}

// Open is a local copy of obj through the process's client and the default cache, after one HEAD: the
// object fetched whole when it is at most wholeBelow bytes; else its partial file, read in ranges through
// the returned *Sparse (nil when the object is cached whole already).
func Open(ctx context.Context, obj Object, wholeBelow int64) (string, *Sparse, error) {
	cl, c, err := defaults()
	if err != nil {
		return "", nil, err
	}
	info, err := cl.Head(ctx, obj)
	if err != nil {
		return "", nil, err
	}
	if info.Size <= wholeBelow {
		path, err := c.FetchKnown(ctx, cl, obj, info)
		return path, nil, err
	}
	sp, path, err := c.openSparse(cl, obj, info)
	return path, sp, err
}

// FetchListed is FetchKnown through the process's client and the default cache, for an object whose size
// and ETag a listing gave: a cached copy is found without a request.
func FetchListed(ctx context.Context, obj Object, info Info) (string, error) {
	cl, c, err := defaults()
	if err != nil {
		return "", err
	}
	return c.FetchKnown(ctx, cl, obj, info)
}
