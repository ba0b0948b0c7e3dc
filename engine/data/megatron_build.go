package data

import (
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The Megatron-order build, made parallel without changing a single value.
//
// The shuffles. RandomState.shuffle's swap targets depend only on the random stream and the position, never
// on the array: draw j for position i is interval(i). So one goroutine draws the targets of every shuffle
// in stream order (the document index, then the shuffle index) while each shuffle's own goroutine applies
// its swaps as the draws arrive; the shuffle index is then permuted alongside the document index. The
// application loop, free of the generator, keeps many cache misses in flight.
//
// The sample index. build_sample_idx's walk cuts a window every SeqLen tokens of the documents laid end to
// end in document-index order: window k >= 1 starts at token k*SeqLen of that stream, in the document
// that holds it (the one whose tokens [cum[p], cum[p+1]) contain it, empty documents holding none), at
// offset k*SeqLen - cum[p]; window 0 starts at (0, 0). With the prefix sums cum computed in parallel,
// every window is found independently.

// shuffleJob is one RandomState.shuffle of a slice, by swap targets drawn elsewhere.
type shuffleJob struct {
	n     int
	draws chan []uint32
	apply func(hi int, draws []uint32) // swaps positions hi, hi-1, ... with draws[0], draws[1], ...
}

const drawChunk = 1 << 16

func newShuffleJob[T any](s []T) *shuffleJob {
	return &shuffleJob{
		n:     len(s),
		draws: make(chan []uint32, (len(s)+drawChunk-1)/drawChunk+1),
		apply: func(hi int, draws []uint32) {
			for k, j := range draws {
				i := hi - k
				s[i], s[j] = s[j], s[i]
			}
		},
	}
}

// parallelShuffles runs the shuffles as r.shuffle would run them one after another, and leaves r where
// they would. Every shuffle has at most 2^32 elements (its draws fit 32 bits; the caller checks).
func parallelShuffles(r *numpyRandomState, jobs ...*shuffleJob) {
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hi := j.n - 1
			for d := range j.draws {
				j.apply(hi, d)
				hi -= len(d)
			}
		}()
	}
	for _, j := range jobs {
		for hi := j.n - 1; hi >= 1; hi -= drawChunk {
			lo := max(hi-drawChunk+1, 1)
			d := make([]uint32, hi-lo+1)
			r.intervals(d, uint64(hi))
			j.draws <- d
		}
		close(j.draws)
	}
	wg.Wait()
}

// parallelFor runs fn over [0, n) in chunks on up to GOMAXPROCS goroutines.
func parallelFor(n, chunk int, fn func(lo, hi int)) {
	if n <= 0 {
		return
	}
	if n <= chunk {
		fn(0, n)
		return
	}
	var wg sync.WaitGroup
	next := make(chan int, (n+chunk-1)/chunk)
	for lo := 0; lo < n; lo += chunk {
		next <- lo
	}
	close(next)
	for range min(runtime.GOMAXPROCS(0), (n+chunk-1)/chunk) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for lo := range next {
				fn(lo, min(lo+chunk, n))
			}
		}()
	}
	wg.Wait()
}

// docLen is a document of the document index and its length.
type docLen struct{ doc, n int32 }

// megatronSampleIndexParallel is build_sample_idx for drop_last_partial_sequence (see above): windows of
// seq+1 tokens every seq tokens over `tokens` tokens of the documents (with their lengths) in
// document-index order.
func megatronSampleIndexParallel(docs []docLen, seq, tokens int64) []int64 {
	const chunk = 1 << 16
	nchunks := (len(docs) + chunk - 1) / chunk
	before := make([]int64, nchunks+1) // tokens before each chunk of documents
	parallelFor(len(docs), chunk, func(lo, hi int) {
		var sum int64
		for p := lo; p < hi; p++ {
			sum += int64(docs[p].n)
		}
		before[lo/chunk+1] = sum
	})
	for c := 1; c <= nchunks; c++ {
		before[c] += before[c-1]
	}
	n := (tokens - 1) / seq
	out := make([]int64, 2*(n+1)) // window 0 is (0, 0)
	// Each chunk of documents writes the windows that start in its tokens.
	parallelFor(len(docs), chunk, func(lo, hi int) {
		s := before[lo/chunk]
		k := max(1, (s+seq-1)/seq) // the first window at or after s
		t := k * seq
		for p := lo; p < hi && k <= n; p++ {
			end := s + int64(docs[p].n)
			for ; t < end && k <= n; k, t = k+1, t+seq {
				out[2*k], out[2*k+1] = int64(p), t-s
			}
			s = end
		}
	})
	return out
}

// scratchSlice is a slice of n values of T (which holds no pointers) in an anonymous private mapping, for
// the build's large temporaries, and the function that unmaps it: the kernel hands out zeroed pages as
// they are first written, so the parallel loops that fill it zero it in parallel too, where make would
// clear it on one core first. It falls back to make when the mapping fails.
func scratchSlice[T any](n int) ([]T, func()) {
	var zero T
	size := n * int(unsafe.Sizeof(zero))
	if size < 1<<20 {
		return make([]T, n), func() {}
	}
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return make([]T, n), func() {}
	}
	return unsafe.Slice((*T)(unsafe.Pointer(&mem[0])), n), func() { _ = unix.Munmap(mem) }
}
