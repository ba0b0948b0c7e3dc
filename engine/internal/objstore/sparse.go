package objstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Sparse is an object read in ranges: a local file of the object's size (sparse until its blocks are
// fetched) that a source maps, and the blocks this process has fetched. Ensure fetches the blocks of
// given byte ranges that are not there yet, coalescing neighbours, before anyone reads them; once every
// block is there the file becomes the object's cache entry, and later opens read it whole from the cache.
// Processes of a node share the file and a map of the blocks fetched (a ".blocks" file beside it, one
// uint32 per block, mapped shared): a block one rank fetched is not fetched again by another. Two ranks
// that want a missing block at the same moment may both fetch it; they write the same bytes.
type Sparse struct {
	cl     *Client
	obj    Object
	info   Info
	f      *os.File
	shared []uint32 // the node's map of fetched blocks: 1 once a block's bytes are in the file
	smap   []byte   // its mapping
	Path   string   // the file to map
	whole  string   // the object's cache entry, once complete

	mu      sync.Mutex
	cond    *sync.Cond
	state   []uint8 // per block: blockMissing, blockFetching, blockPresent
	present int
}

const (
	blockMissing uint8 = iota
	blockFetching
	blockPresent
)

// SparseBlock is the unit a Sparse fetches: 1 MiB. A range fetch coalesces up to runMax bytes.
const (
	SparseBlock = 1 << 20
	runMax      = 16 << 20
)

// OpenSparse opens obj for ranged reads through the cache: the complete entry when it is cached (and then
// a nil *Sparse with that path), else the shared partial file, made the object's size.
func (c *Cache) OpenSparse(ctx context.Context, cl *Client, obj Object) (*Sparse, string, error) {
	info, err := cl.Head(ctx, obj)
	if err != nil {
		return nil, "", err
	}
	return c.openSparse(cl, obj, info)
}

// openSparse is OpenSparse of an object whose size and ETag are known.
func (c *Cache) openSparse(cl *Client, obj Object, info Info) (*Sparse, string, error) {
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, "", fmt.Errorf("the object cache folder: %w", err)
	}
	whole := filepath.Join(c.Dir, entry(obj, info.ETag))
	if hit(whole, info.Size) {
		Stats.Hits.Add(1)
		return nil, whole, nil
	}
	part := whole + ".part"
	f, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, "", fmt.Errorf("the object cache folder: %w", err)
	}
	n := int((info.Size + SparseBlock - 1) / SparseBlock)
	fresh := false
	st, err := f.Stat()
	if err == nil && st.Size() != info.Size {
		fresh = true // a new partial file: no block is in it
		err = f.Truncate(info.Size)
	}
	var smap []byte
	if err == nil {
		smap, err = mapBlocks(part+".blocks", n, fresh)
	}
	if err != nil {
		_ = f.Close()
		return nil, "", fmt.Errorf("the object cache folder: %w", err)
	}
	s := &Sparse{cl: cl, obj: obj, info: info, f: f, Path: part, whole: whole, state: make([]uint8, n), smap: smap,
		shared: unsafe.Slice((*uint32)(unsafe.Pointer(&smap[0])), n)}
	s.cond = sync.NewCond(&s.mu)
	Stats.Misses.Add(1)
	return s, part, nil
}

// mapBlocks maps the node's map of fetched blocks, n uint32s, cleared when fresh.
func mapBlocks(path string, n int, fresh bool) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }() // the mapping outlives the descriptor
	if st, err := f.Stat(); err != nil {
		return nil, err
	} else if fresh || st.Size() != int64(4*n) {
		if err := f.Truncate(0); err != nil {
			return nil, err
		}
		if err := f.Truncate(int64(4 * n)); err != nil {
			return nil, err
		}
	}
	return unix.Mmap(int(f.Fd()), 0, 4*n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
}

// Close closes the partial file and the block map; a mapping of the file stays valid.
func (s *Sparse) Close() error {
	if s.smap != nil {
		_ = unix.Munmap(s.smap)
		s.smap, s.shared = nil, nil
	}
	return s.f.Close()
}

// Ensure makes the bytes of every range [off, off+n) present in the file, fetching the missing blocks
// (contiguous ones in one ranged GET of up to 16 MiB, eight GETs at a time) and waiting for blocks another
// reader of this process is fetching. An error names the object, the range and the last HTTP status.
func (s *Sparse) Ensure(ctx context.Context, ranges ...[2]int64) error {
	for {
		mine, waiting := s.claim(ranges)
		if len(mine) > 0 {
			if err := s.fetch(ctx, mine); err != nil {
				return err
			}
		}
		if !waiting {
			return nil
		}
		s.mu.Lock()
		for s.anyFetching(ranges) {
			s.cond.Wait()
		}
		s.mu.Unlock()
		// A block another reader failed to fetch is missing again: the next round claims it.
	}
}

// blocksOf calls f with each block index of the ranges.
func (s *Sparse) blocksOf(ranges [][2]int64, f func(b int) bool) {
	for _, r := range ranges {
		if r[1] <= 0 {
			continue
		}
		first, last := int(r[0]/SparseBlock), int((r[0]+r[1]-1)/SparseBlock)
		for b := max(first, 0); b <= last && b < len(s.state); b++ {
			if !f(b) {
				return
			}
		}
	}
}

func (s *Sparse) anyFetching(ranges [][2]int64) bool {
	found := false
	s.blocksOf(ranges, func(b int) bool {
		found = s.state[b] == blockFetching
		return !found
	})
	return found
}

// claim marks the missing blocks of the ranges as fetched by the caller and returns them in order, and
// whether some are being fetched by another reader.
func (s *Sparse) claim(ranges [][2]int64) (mine []int, waiting bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.blocksOf(ranges, func(b int) bool {
		if s.state[b] == blockMissing && s.shared != nil && atomic.LoadUint32(&s.shared[b]) == 1 {
			s.state[b] = blockPresent // another rank of the node fetched it
			s.present++
		}
		switch s.state[b] {
		case blockMissing:
			s.state[b] = blockFetching
			mine = append(mine, b)
		case blockFetching:
			waiting = true
		}
		return true
	})
	// The ranges come in any order (a block is claimed once: its state changes on the first): fetch runs
	// of neighbours.
	slices.Sort(mine)
	return mine, waiting
}

// fetch reads the claimed blocks, in runs of contiguous blocks, and marks them present (or missing again
// on an error).
func (s *Sparse) fetch(ctx context.Context, blocks []int) error {
	type run struct{ first, n int }
	var runs []run
	for _, b := range blocks {
		if k := len(runs) - 1; k >= 0 && runs[k].first+runs[k].n == b && (runs[k].n+1)*SparseBlock <= runMax {
			runs[k].n++
			continue
		}
		runs = append(runs, run{b, 1})
	}
	errs := make([]error, len(runs))
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i, r := range runs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			off := int64(r.first) * SparseBlock
			n := min(int64(r.n)*SparseBlock, s.info.Size-off)
			buf := make([]byte, n)
			err := s.cl.ReadRange(ctx, s.obj, s.info.ETag, off, buf)
			Stats.Requests.Add(1)
			if err == nil {
				Stats.BytesFetched.Add(uint64(n))
				_, err = s.f.WriteAt(buf, off)
				if errors.Is(err, syscall.ENOSPC) {
					err = fmt.Errorf("the object cache folder %s is full writing %s: %w", filepath.Dir(s.Path), s.obj, err)
				}
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	s.mu.Lock()
	var first error
	for i, r := range runs {
		st := blockPresent
		if errs[i] != nil {
			st = blockMissing
			if first == nil {
				first = errs[i]
			}
		}
		for b := r.first; b < r.first+r.n; b++ {
			s.state[b] = st
			if st == blockPresent {
				s.present++
				if s.shared != nil {
					atomic.StoreUint32(&s.shared[b], 1) // after its bytes were written
				}
			}
		}
	}
	complete := s.present == len(s.state)
	s.cond.Broadcast()
	s.mu.Unlock()
	if complete && first == nil {
		// Every byte is here: the partial file becomes the entry (a hard link, so the mapped path stays).
		if err := s.f.Sync(); err == nil {
			_ = os.Link(s.Path, s.whole)
		}
	}
	return first
}
