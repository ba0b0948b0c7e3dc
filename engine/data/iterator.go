package data

import (
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-ml/ferry/engine"

	"github.com/ferry-ml/ferry/engine/internal/cuda"
)

// Stream is a CUDA stream handle as the caller's framework gives it (e.g. torch.cuda.current_stream().
// cuda_stream). The zero Stream is the legacy default stream.
type Stream = cuda.Stream

// Defaults of IteratorOptions.
const (
	DefaultPrefetch    = 4
	DefaultNextTimeout = 5 * time.Minute
	maxWorkers         = 64
)

// IteratorOptions configures NewIterator. The zero value of each field selects its default.
type IteratorOptions struct {
	BatchSize int    // samples per batch; required
	Shuffle   bool   // a seeded permutation per epoch; else sequential
	Seed      uint64 // the permutation's seed
	DropLast  bool   // drop the last incomplete batch (and cut the tail when sharding; see Sampler)
	// Rank and WorldSize shard the data as torch's DistributedSampler does. WorldSize 0 reads RANK and
	// WORLD_SIZE from the environment when they are set (torchrun sets them), else a single rank.
	Rank, WorldSize int
	Workers         int           // gather goroutines; default min(GOMAXPROCS, 16)
	Prefetch        int           // batches in flight (the ring depth), >= 2; default 4
	Timeout         time.Duration // the longest one Next waits for data; default 5 min
	// Transforms lays fields out on the device right after the copy (on the host on the CPU engine), by
	// source field name: Normalize, ShiftTokens, PadSequences. The batch's fields are their outputs.
	Transforms map[string]Transform
	// Staging picks how samples cross to the device; StagingAuto picks the fastest that applies.
	Staging Staging
	// PinnedBudget is the most source memory (bytes) the iterator registers with the driver for
	// StagingMapped or StagingDMA; 0 means a quarter of physical memory, negative never registers.
	PinnedBudget int64
}

// IteratorStats counts what the iterator delivered.
type IteratorStats struct {
	Batches uint64        // batches returned by Next
	Samples uint64        // samples in them
	Bytes   uint64        // bytes of source data in them: what crossed to the device on a GPU
	Stall   time.Duration // time Next spent waiting for data: the input-bound share of a training loop
}

// Iterator prefetches batches from a Source: a sampler picks the samples, gather workers (goroutines)
// copy them into a ring of page-locked staging buffers, and a copier on a locked OS thread issues the
// host-to-device copies on the iterator's own stream and records an event per batch. Next makes the
// consumer's stream wait on that event, so the host never blocks on a copy. On the CPU engine the same
// pipeline delivers batches in host memory.
//
// Next, State, Restore and SetEpoch must be called from one goroutine at a time (the training loop);
// Release and Stats may be called from any goroutine. Close may be called from any goroutine.
type Iterator struct {
	e          *engine.Engine
	src        Source
	fields     []Field // the source's
	outs       []Field // the batch's, after the transforms
	outSrc     []int   // per batch field, the source field it comes from
	plans      []fieldPlan
	metaLayout metaLayout
	rows       int      // the most samples a batch holds (Sampler.MaxBatchLen): what each slot is sized for
	sampler    *Sampler // swapped (elastic resume) only while the pipeline is stopped, under mu
	base       *Sampler // the sampler without a resumed epoch
	nbatch     atomic.Int64
	opts       IteratorOptions
	stream     cuda.Stream
	slots      []*slot

	staging       Staging
	stagingWhy    string
	hostXform     bool       // transforms run on the host (CPU engine, or the kernels did not load)
	kern          *kernelSet // nil when the kernels are not used
	backed        MemoryBacked
	regions       []*registration // per source field, for StagingDMA and StagingMapped
	registrations *registrations  // the engine's, which regions belong to
	regionMem     [][]byte
	ragged        Ragged
	raggedField   int

	mu sync.Mutex // Next, Restore, Close
	// ringMu orders a batch's release against Close freeing the ring; orphans counts the slots whose
	// batches were held at Close (their memory is freed when the last reference goes), and holding is
	// whether the iterator holds its engine (engine.Hold), from NewIterator until its last slot is freed.
	ringMu  sync.Mutex
	orphans int
	holding bool
	pos     IteratorState
	seq     uint64 // the pipeline sequence number Next takes next
	// waitBegan is when the wait for the next batch began, while NextWithin calls continue it; else zero.
	waitBegan time.Time
	run       *pipeline
	closed    atomic.Bool
	closing   chan struct{} // closed by Close before it waits for it.mu: wakes a Next that waits for data
	failures  atomic.Uint64

	batches, samples, bytes, stallNs atomic.Uint64
}

// NewIterator builds an iterator over src on the engine and starts prefetching. It allocates the ring
// once, from the engine's pools: Prefetch × B × (bytes per sample) of host memory (page-locked on a GPU)
// and as much device memory, where B is the largest batch the sampler gives this rank: BatchSize, or the
// rank's samples per epoch when fewer (a batch size beyond the data set allocates for the data set). The iterator does not own src; close src after the iterator.
func NewIterator(e *engine.Engine, src Source, opts IteratorOptions) (*Iterator, error) {
	if e.Closed() {
		return nil, fmt.Errorf("%w: engine on device %d", engine.ErrClosed, e.Device())
	}
	if src == nil {
		return nil, fmt.Errorf("%w: source is nil", engine.ErrInvalidArgument)
	}
	fields := src.Fields()
	if err := validateFields(fields); err != nil {
		return nil, err
	}
	if opts.WorldSize == 0 && opts.Rank == 0 {
		rank, world, ok, err := engine.RankFromEnv()
		if err != nil {
			return nil, err
		}
		if ok {
			opts.Rank, opts.WorldSize = rank, world
		}
	}
	if opts.Workers < 0 || opts.Workers > maxWorkers {
		return nil, fmt.Errorf("%w: workers %d (0 picks a default; at most %d)", engine.ErrInvalidArgument, opts.Workers, maxWorkers)
	}
	if opts.Workers == 0 {
		opts.Workers = min(runtime.GOMAXPROCS(0), 16)
	}
	if opts.Prefetch == 0 {
		opts.Prefetch = DefaultPrefetch
	}
	if opts.Prefetch < 2 || opts.Prefetch > 64 {
		return nil, fmt.Errorf("%w: prefetch %d must be 2..64", engine.ErrInvalidArgument, opts.Prefetch)
	}
	if opts.Timeout < 0 {
		return nil, fmt.Errorf("%w: timeout %v is negative", engine.ErrInvalidArgument, opts.Timeout)
	}
	if opts.Timeout == 0 {
		opts.Timeout = DefaultNextTimeout
	}
	sampler, err := NewSampler(SamplerConfig{
		Len: src.Len(), BatchSize: opts.BatchSize, Shuffle: opts.Shuffle, Seed: opts.Seed,
		DropLast: opts.DropLast, Rank: opts.Rank, WorldSize: opts.WorldSize,
	})
	if err != nil {
		return nil, err
	}
	if opts.Staging < StagingAuto || opts.Staging > StagingMapped {
		return nil, fmt.Errorf("%w: unknown staging %v", engine.ErrInvalidArgument, opts.Staging)
	}
	it := &Iterator{e: e, src: src, fields: fields, sampler: sampler, base: sampler, opts: opts,
		closing: make(chan struct{})}
	it.nbatch.Store(int64(sampler.BatchesPerEpoch()))
	it.rows = sampler.MaxBatchLen()
	it.metaLayout = newMetaLayout(len(fields), it.rows)
	if err := it.planFields(opts.Transforms); err != nil {
		return nil, err
	}
	if err := e.Hold(); err != nil {
		return nil, err
	}
	it.holding = true
	it.chooseStaging()
	if err := it.allocate(); err != nil {
		it.free()
		return nil, fmt.Errorf("the iterator's ring of %d batches of %d samples: %w", opts.Prefetch, it.rows, err)
	}
	if err := e.Adopt(it); err != nil {
		it.free()
		return nil, err
	}
	it.start(it.settle(it.pos))
	return it, nil
}

// allocate takes the ring's buffers, events and stream.
func (it *Iterator) allocate() error {
	e := it.e
	if e.GPU() {
		s, err := e.Context().StreamCreate()
		if err != nil {
			return err
		}
		it.stream = s
	}
	b := it.rows
	for i := 0; i < it.opts.Prefetch; i++ {
		s := &slot{id: i, free: make(chan struct{}, 1), filled: make(chan struct{}, 1), ready: make(chan struct{}, 1),
			aligned: make([]bool, len(it.fields))}
		it.slots = append(it.slots, s)
		s.free <- struct{}{}
		s.host = make([]*engine.HostBuffer, len(it.fields))
		s.devIn = make([]*engine.DeviceBuffer, len(it.fields))
		s.hostOut = make([]*engine.HostBuffer, len(it.outs))
		s.dev = make([]*engine.DeviceBuffer, len(it.outs))
		for f, p := range it.plans {
			n, err := batchBytes(p.in, b)
			if err != nil {
				return err
			}
			if it.needsHostStaging() {
				if s.host[f], err = e.HostPool().Alloc(n); err != nil {
					return err
				}
			}
			if e.GPU() && p.t != nil && !it.hostXform && it.staging != StagingMapped {
				if s.devIn[f], err = e.DevicePool().Alloc(n); err != nil {
					return err
				}
			}
			for _, g := range p.outs {
				m, err := batchBytes(it.outs[g], b)
				if err != nil {
					return err
				}
				if p.t != nil && it.hostXform {
					if s.hostOut[g], err = e.HostPool().Alloc(m); err != nil {
						return err
					}
				}
				if e.GPU() {
					if s.dev[g], err = e.DevicePool().Alloc(m); err != nil {
						return err
					}
				}
			}
		}
		if it.needsMeta() {
			var err error
			if s.meta, err = e.HostPool().Alloc(it.metaLayout.size); err != nil {
				return err
			}
		}
		if e.GPU() {
			var err error
			if s.copied, err = e.Context().EventCreate(); err != nil {
				return err
			}
			if s.released, err = e.Context().EventCreate(); err != nil {
				return err
			}
		}
	}
	return nil
}

// batchBytes is the size of rows samples of field f, an ErrOutOfMemory error when that overflows.
func batchBytes(f Field, rows int) (int, error) {
	if per := f.Bytes(); per > 0 && rows > math.MaxInt/per {
		return 0, fmt.Errorf("%w: field %q: %d samples of %d bytes overflow", engine.ErrOutOfMemory, f.Name, rows, per)
	}
	return f.Bytes() * rows, nil
}

// free returns everything allocate took and the source memory's registrations. The pipeline must be
// stopped. A slot whose batch the caller still holds (a DLPack tensor over it may be alive) keeps its
// memory, and the engine stays held, until that batch's release (see release): memory handed out stays
// valid while anything points at it.
func (it *Iterator) free() {
	e := it.e
	it.ringMu.Lock()
	for _, s := range it.slots {
		if s.held.Load() {
			s.orphan = true
			it.orphans++
			continue
		}
		it.freeSlot(s)
	}
	it.slots = nil
	done := it.orphans == 0
	it.ringMu.Unlock()
	if it.stream != 0 {
		_ = e.Context().StreamDestroy(it.stream)
		it.stream = 0
	}
	for i, r := range it.regions {
		if slices.Contains(it.regions[:i], r) {
			continue // fields that share a registration hold one reference
		}
		if err := it.registrations.unregister(r); err != nil {
			e.Logger().Warn().Err(err).Msg("unregistering source memory")
		}
	}
	it.regions = nil
	if done {
		it.unhold()
	}
}

// freeSlot returns one slot's buffers and events to the engine.
func (it *Iterator) freeSlot(s *slot) {
	e := it.e
	for _, bufs := range [][]*engine.HostBuffer{s.host, s.hostOut, {s.meta}} {
		for _, h := range bufs {
			if h != nil {
				e.HostPool().Free(h)
			}
		}
	}
	for _, bufs := range [][]*engine.DeviceBuffer{s.devIn, s.dev} {
		for _, d := range bufs {
			if d != nil {
				e.DevicePool().Free(d)
			}
		}
	}
	if s.copied != 0 {
		_ = e.Context().EventDestroy(s.copied)
		s.copied = 0
	}
	if s.released != 0 {
		_ = e.Context().EventDestroy(s.released)
		s.released = 0
	}
}

// freeOrphan frees the memory of a slot whose batch was held at Close, now that its last reference is
// gone. On a GPU the consumer's work queued on consumer may still read the memory: it is freed once an
// event recorded there completes, waited for on a goroutine of its own (the caller, a DLPack deleter,
// does not block). The last orphan gives the engine's hold back.
func (it *Iterator) freeOrphan(s *slot, consumer Stream) {
	finish := func() {
		it.ringMu.Lock()
		it.freeSlot(s)
		it.orphans--
		done := it.orphans == 0
		it.ringMu.Unlock()
		if done {
			it.unhold()
		}
	}
	if !it.e.GPU() || s.released == 0 {
		finish()
		return
	}
	if err := it.e.Context().EventRecord(s.released, consumer); err != nil {
		finish() // no ordering to wait for (an invalid stream): as Release documents
		return
	}
	go func() {
		if err := it.poll(func() error { return it.e.Context().EventQuery(s.released) }, nil, "the consumer's work on a released batch"); err != nil {
			it.e.Logger().Warn().Err(err).Msg("freeing a batch released after its iterator was closed")
		}
		finish()
	}()
}

// unhold gives back the engine hold NewIterator took, once.
func (it *Iterator) unhold() {
	it.ringMu.Lock()
	h := it.holding
	it.holding = false
	it.ringMu.Unlock()
	if h {
		it.e.Unhold()
	}
}

// WorldSize is the number of ranks the iterator's samples are sharded among.
func (it *Iterator) WorldSize() int { return it.base.Config().WorldSize }

// Len is the number of samples in the source.
func (it *Iterator) Len() int { return it.base.Config().Len }

// Staging is the strategy the iterator uses and why it was picked (e.g. why it fell back to gather).
func (it *Iterator) Staging() (Staging, string) { return it.staging, it.stagingWhy }

// BatchesPerEpoch is the number of batches Next returns per epoch on this rank (for a whole epoch: an
// epoch resumed elastically part-way may have fewer; see ElasticState).
func (it *Iterator) BatchesPerEpoch() int { return int(it.nbatch.Load()) }

// Fields is the layout of one sample of the batches: the source's fields after the transforms.
func (it *Iterator) Fields() []Field { return it.outs }

// SourceFields is the layout of one sample of the source.
func (it *Iterator) SourceFields() []Field { return it.fields }

// Options returns the options in effect, defaults filled in.
func (it *Iterator) Options() IteratorOptions { return it.opts }

// QueueDepth is the number of batches prefetched and ready for Next.
func (it *Iterator) QueueDepth() int {
	n := 0
	for _, s := range it.slots {
		n += len(s.ready)
	}
	return n
}

// Stats returns what the iterator has delivered so far.
func (it *Iterator) Stats() IteratorStats {
	return IteratorStats{
		Batches: it.batches.Load(), Samples: it.samples.Load(), Bytes: it.bytes.Load(),
		Stall: time.Duration(it.stallNs.Load()),
	}
}

// Counters are the running totals of Stats, as the monitor reads a pipeline (monitor.Pipeline).
func (it *Iterator) Counters() (batches, samples, bytes uint64, stall time.Duration) {
	st := it.Stats()
	return st.Batches, st.Samples, st.Bytes, st.Stall
}

// Closed reports whether Close has been called.
func (it *Iterator) Closed() bool { return it.closed.Load() }

// Close stops the pipeline, waits (bounded) for copies in flight, and returns the ring to the engine's
// pools. A Next waiting for data returns ErrClosed; gather workers finish the sample they read and stop.
// When the copies do not complete within the Timeout option, Close frees the ring all the same and returns
// ErrTimeout. Batches still held stay readable (a DLPack tensor over one stays valid) but can no longer be
// used with the iterator; each one's memory is freed at its Release, and the engine's pools and context
// stay until the last such Release (engine.Hold). A second Close returns ErrClosed.
func (it *Iterator) Close() error {
	if !it.closed.CompareAndSwap(false, true) {
		return fmt.Errorf("%w: iterator was already closed", engine.ErrClosed)
	}
	close(it.closing)
	it.mu.Lock()
	defer it.mu.Unlock()
	err := it.stop()
	it.free()
	it.e.Disown(it)
	return err
}
