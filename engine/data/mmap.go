package data

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"sync"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/fileio"
	"github.com/ferry-ml/ferry/engine/internal/objstore"

	"golang.org/x/sys/unix"
)

// This file holds what the sources share: a read-only file mapping, the guard that lets Close wait for
// readers, and the argument checks of ReadSample.

// mappedFile is a whole file mapped read-only and shared, so the page cache backs it and nothing is
// copied at open. The kernel's default read-ahead is kept: samples are often larger than a page, and
// MADV_RANDOM would make every page of a random sample a separate fault and a separate disk read.
type mappedFile struct {
	path  string
	local string // the file mapped: path, or an object's copy in the cache
	data  []byte
	// sparse is set for an object read in ranges (s3://, larger than the whole-fetch size): data maps its
	// partial file, and ensure must fetch a range before it is read.
	sparse *objstore.Sparse
}

// ensure makes data[off:off+n] present: a no-op for a local file or a fetched object; for an object read
// in ranges, the missing blocks are fetched.
func (m *mappedFile) ensure(off, n int) error {
	if m.sparse == nil || n <= 0 {
		return nil
	}
	if err := m.sparse.Ensure(context.Background(), [2]int64{int64(off), int64(n)}); err != nil {
		return fmt.Errorf("%w: %w", engine.ErrIO, err)
	}
	return nil
}

// wholeFetchBytes is the largest object fetched whole at open (FERRY_S3_RANGED_BYTES overrides it): larger
// ones are read in ranges, as the samples that need them come.
func wholeFetchBytes() int64 {
	if v, err := strconv.ParseInt(os.Getenv("FERRY_S3_RANGED_BYTES"), 10, 64); err == nil && v >= 0 {
		return v
	}
	return 256 << 20
}

// mapObject maps an s3:// object: its cached copy, fetched whole when it is at most wholeFetchBytes, else
// its partial file, read in ranges.
func mapObject(path string) (*mappedFile, error) {
	obj, err := objstore.Parse(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", engine.ErrInvalidArgument, err)
	}
	local, sp, err := objstore.Open(context.Background(), obj, wholeFetchBytes())
	if err != nil {
		return nil, fmt.Errorf("%w: %w", engine.ErrIO, err)
	}
	m, err := mapLocal(path, local)
	if sp != nil {
		if m == nil {
			_ = sp.Close()
		} else {
			m.sparse = sp // closed with the mapping
		}
	}
	return m, err
}

// mapFile maps path. An empty file cannot be mapped and is an ErrFormat error; anything but a regular
// file (a named pipe, a directory, a device) is an ErrInvalidArgument error, found without blocking on a
// pipe that has no writer; a missing or unreadable file is an ErrIO error that also wraps the operating
// system's error (errors.Is(err, fs.ErrNotExist)).
//
// An s3://bucket/key path goes through the local object cache (objstore: the credential chain,
// FERRY_S3_ENDPOINT, FERRY_CACHE_DIR), verified by size and ETag: fetched whole and mapped when it is at
// most wholeFetchBytes, else mapped as a partial file whose ranges are fetched before they are read
// (mappedFile.ensure, and the iterator's prefetch in the sampler's order).
func mapFile(path string) (*mappedFile, error) {
	if objstore.IsURL(path) {
		return mapObject(path)
	}
	return mapLocal(path, path)
}

// mapLocal maps the local file local; errors name path.
func mapLocal(path, local string) (*mappedFile, error) {
	f, st, err := fileio.OpenRegular(local)
	var notRegular *fileio.NotRegularError
	if errors.As(err, &notRegular) {
		return nil, fmt.Errorf("%w: %w", engine.ErrInvalidArgument, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", engine.ErrIO, err)
	}
	defer func() { _ = f.Close() }() // the mapping outlives the descriptor
	size := st.Size()
	if size == 0 {
		return nil, fmt.Errorf("%w: %s is empty", engine.ErrFormat, path)
	}
	if uint64(size) > math.MaxInt {
		return nil, fmt.Errorf("%w: %s is %d bytes, too large to map", engine.ErrInvalidArgument, path, size)
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("%w: mapping %s (%d bytes): %w", engine.ErrIO, path, size, err)
	}
	return &mappedFile{path: path, local: local, data: data}, nil
}

// unmap releases the mapping; it is a no-op on a nil or already released mapping.
func (m *mappedFile) unmap() error {
	if m == nil || m.data == nil {
		return nil
	}
	err := unix.Munmap(m.data)
	m.data = nil
	if m.sparse != nil {
		_ = m.sparse.Close()
	}
	if err != nil {
		return fmt.Errorf("%w: unmapping %s: %w", engine.ErrIO, m.path, err)
	}
	return nil
}

// closeGuard makes Close wait for ReadSample calls in flight and turns reads after Close into ErrClosed.
// Readers hold the read lock while they touch the source's memory; Close takes the write lock.
type closeGuard struct {
	mu     sync.RWMutex
	closed bool
}

// enter starts a read. It returns false, holding nothing, when the source is closed.
func (g *closeGuard) enter() bool {
	g.mu.RLock()
	if g.closed {
		g.mu.RUnlock()
		return false
	}
	return true
}

// exit ends a read started by a successful enter.
func (g *closeGuard) exit() { g.mu.RUnlock() }

// close marks the source closed once readers have left and runs release. A second call returns an error
// wrapping ErrClosed that names the source.
func (g *closeGuard) close(src fmt.Stringer, release func() error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return fmt.Errorf("%w: %v is already closed", engine.ErrClosed, src)
	}
	g.closed = true
	if release == nil {
		return nil
	}
	return release()
}

// errClosedSource is the error of ReadSample on a closed source.
func errClosedSource(src fmt.Stringer, i int) error {
	return fmt.Errorf("%w: %v: reading sample %d after Close", engine.ErrClosed, src, i)
}

// checkRead validates ReadSample's arguments: 0 <= i < n, one destination per field, each exactly the
// field's size.
func checkRead(src fmt.Stringer, n int, fields []Field, i int, dst [][]byte) error {
	if i < 0 || i >= n {
		return fmt.Errorf("%w: %v: sample %d is out of range [0, %d)", engine.ErrInvalidArgument, src, i, n)
	}
	if len(dst) != len(fields) {
		return fmt.Errorf("%w: %v: sample %d: %d destination buffers for %d fields", engine.ErrInvalidArgument, src, i, len(dst), len(fields))
	}
	for k, f := range fields {
		if len(dst[k]) != f.Bytes() {
			return fmt.Errorf("%w: %v: sample %d: field %q needs a %d-byte destination, got %d bytes",
				engine.ErrInvalidArgument, src, i, f.Name, f.Bytes(), len(dst[k]))
		}
	}
	return nil
}

// guardFaults makes a fault on mapped memory in the calling goroutine a panic instead of a crash; pair it
// with a deferred recoverFault. A file truncated while mapped is the case this catches: reading its
// vanished pages raises SIGBUS.
func guardFaults() bool { return debug.SetPanicOnFault(true) }

// recoverFault, deferred after guardFaults, restores the goroutine's fault setting and turns a panic into
// an ErrIO error naming the source and the sample.
func recoverFault(err *error, old bool, src fmt.Stringer, i int) {
	debug.SetPanicOnFault(old)
	if r := recover(); r != nil {
		*err = fmt.Errorf("%w: %v: reading sample %d faulted (was the file truncated or changed while open?): %v",
			engine.ErrIO, src, i, r)
	}
}

// read checks a read of sample i of src (n samples of fields into dst), then runs copySample under the
// guard and the fault guard: a closed source gives an ErrClosed error, and a fault on mapped memory (a
// file truncated or changed while open) an ErrIO error naming the sample, never a crash. Every source's
// ReadSample goes through it.
func (g *closeGuard) read(src fmt.Stringer, n int, fields []Field, i int, dst [][]byte, copySample func()) (err error) {
	if err := checkRead(src, n, fields, i, dst); err != nil {
		return err
	}
	if !g.enter() {
		return errClosedSource(src, i)
	}
	defer g.exit()
	defer recoverFault(&err, guardFaults(), src, i)
	copySample()
	return nil
}

// cloneFields copies fields deeply, so that a caller changing its slices later changes nothing here.
func cloneFields(fields []Field) []Field {
	out := make([]Field, len(fields))
	for k, f := range fields {
		out[k] = f
		out[k].Shape = append([]int(nil), f.Shape...)
	}
	return out
}

// sampleBytes is the size of one sample over all fields.
func sampleBytes(fields []Field) int {
	n := 0
	for _, f := range fields {
		n += f.Bytes()
	}
	return n
}

// wrapsSentinel reports whether err already wraps one of the errors a Source documents.
func wrapsSentinel(err error) bool {
	for _, s := range []error{engine.ErrIO, engine.ErrFormat, engine.ErrInvalidArgument, engine.ErrClosed, engine.ErrOutOfMemory, engine.ErrUnsupported, engine.ErrTimeout, engine.ErrLimit} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// indexCacheDir is where indices built over the data at path are cached by default: a "cache" folder
// beside a local path; for an object (s3://), an "index" folder in the object cache.
func indexCacheDir(path string) string {
	if objstore.IsURL(path) {
		if c, err := objstore.DefaultCache(); err == nil {
			return filepath.Join(c.Dir, "index")
		}
	}
	return filepath.Join(filepath.Dir(path), "cache")
}
