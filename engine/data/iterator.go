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
	Workers         int // gather goroutines; default min(GOMAXPROCS, 16)
	// Prefetch is the number of batches in flight (the ring depth), >= 2; default 4. When the caller
	// holds the batch of the slot Next needs, the ring grows by a slot instead of waiting (see PinnedBudget).
	Prefetch int
	Timeout  time.Duration // the longest one Next waits for data; default 5 min
	// Transforms lays fields out on the device right after the copy (on the host on the CPU engine), by
	// source field name: Normalize, ShiftTokens, PadSequences. The batch's fields are their outputs.
	Transforms map[string]Transform
	// Staging picks how samples cross to the device; StagingAuto picks the fastest that applies.
	Staging Staging
	// PinnedBudget bounds what the iterator page-locks beyond its ring of Prefetch batches: the source
	// memory it registers with the driver for StagingMapped or StagingDMA, and, separately, the slots the
	// ring grows by (host and device memory) when the caller keeps batches. 0 means a quarter of physical
	// memory; negative means neither: no registration, and Next fails at once when every slot is held.
	PinnedBudget int64
	// OnError is what a sample that cannot be read or laid out (a corrupt image, a vanished file) does:
	// OnErrorRaise (the default) fails its batch with an error naming it; OnErrorSkip puts the next
	// readable sample in its place (the batch's Indices say which) and counts it in Stats.Skipped.
	OnError OnError
}

// OnError is an iterator's policy for samples that fail.
type OnError int

// Sample error policies.
const (
	OnErrorRaise OnError = iota
	OnErrorSkip
)

// skipTries bounds how many following samples OnErrorSkip tries in place of a failed one.
const skipTries = 64

// IteratorStats counts what the iterator delivered.
type IteratorStats struct {
	Batches uint64        // batches returned by Next
	Samples uint64        // samples in them
	Bytes   uint64        // bytes of source data in them: what crossed to the device on a GPU
	Stall   time.Duration // time Next spent waiting for data: the input-bound share of a training loop
	Skipped uint64        // samples that failed and were replaced (OnErrorSkip)
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
	epochal    Epochal // src, when its samples depend on the epoch; else nil
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
	ring       *ring

	staging       Staging
	stagingWhy    string
	hostXform     bool         // transforms run on the host (CPU engine, or the kernels did not load)
	imageDevice   bool         // crops decode into the slots' device arenas and run as kernels (image_device.go)
	remote        rangedSource // src, when it reads an object in ranges (source_remote.go); else nil
	images        *imageDecoders
	kern          *kernelSet // nil when the kernels are not used
	backed        MemoryBacked
	regions       []*registration // per source field, for StagingDMA and StagingMapped
	registrations *registrations  // the engine's, which regions belong to
	regionMem     [][]byte
	ragged        Ragged
	raggedField   int

	mu  sync.Mutex // Next, Restore, Close
	pos IteratorState
	seq uint64 // the pipeline sequence number Next takes next
	// waitBegan is when the wait for the next batch began, while NextWithin calls continue it; else zero.
	waitBegan time.Time
	run       *pipeline
	closed    atomic.Bool
	closing   chan struct{} // closed by Close before it waits for it.mu: wakes a Next that waits for data
	failures  atomic.Uint64

	batches, samples, bytes, stallNs, skipped atomic.Uint64
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
	if o, ok := src.(SelfOrdered); ok && opts.Shuffle {
		if why := o.OrdersItself(); why != "" {
			return nil, fmt.Errorf("%w: %v orders its samples itself (%s); iterate it without Shuffle", engine.ErrInvalidArgument, src, why)
		}
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
	if opts.OnError != OnErrorRaise && opts.OnError != OnErrorSkip {
		return nil, fmt.Errorf("%w: unknown on-error policy %d (raise or skip)", engine.ErrInvalidArgument, int(opts.OnError))
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
	epochal, _ := src.(Epochal)
	it := &Iterator{e: e, src: src, epochal: epochal, fields: fields, sampler: sampler, base: sampler, opts: opts,
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
	// The ring holds the engine until its last slot is freed (a batch held at Close keeps it).
	it.ring = &ring{e: e, timeout: opts.Timeout, newSlot: it.newSlot, budget: growthBudget(opts.PinnedBudget),
		holding: true}
	if remoteSource(src) {
		it.remote = src.(rangedSource)
	}
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
	if it.e.GPU() {
		s, err := it.e.Context().StreamCreate()
		if err != nil {
			return err
		}
		it.stream = s
	}
	for range it.opts.Prefetch {
		s, err := it.newSlot()
		if err != nil {
			if s != nil {
				it.ring.freeSlot(s)
			}
			return err
		}
		it.ring.slotBytes = s.bytes()
		it.ring.addLane(s)
	}
	return nil
}

// workerInput reports whether field plan p's samples are read into the reading worker's own buffer
// instead of the slot's staging: a crop's encoded images, decoded by the worker (on the host, or into the
// slot's image arena) or handed to nvJPEG, never cross as they are, and can be as large as the largest file.
func (it *Iterator) workerInput(p fieldPlan) bool { return p.t != nil && p.tr.decodes }

// newSlot allocates one slot of the ring: its buffers for the largest batch, and its events.
func (it *Iterator) newSlot() (*slot, error) {
	e, b := it.e, it.rows
	s := &slot{aligned: make([]bool, len(it.fields)), host: make([]*engine.HostBuffer, len(it.fields)),
		devIn: make([]*engine.DeviceBuffer, len(it.fields)), hostOut: make([]*engine.HostBuffer, len(it.outs)),
		dev: make([]*engine.DeviceBuffer, len(it.outs))}
	for f, p := range it.plans {
		n, err := batchBytes(p.in, b)
		if err != nil {
			return s, err
		}
		if it.needsHostStaging() && !it.workerInput(p) {
			if s.host[f], err = e.HostPool().Alloc(n); err != nil {
				return s, err
			}
		}
		if e.GPU() && p.t != nil && !it.hostXform && !p.tr.decodes && it.staging != StagingMapped {
			if s.devIn[f], err = e.DevicePool().Alloc(n); err != nil {
				return s, err
			}
		}
		for _, g := range p.outs {
			m, err := batchBytes(it.outs[g], b)
			if err != nil {
				return s, err
			}
			if p.t != nil && it.hostXform {
				if s.hostOut[g], err = e.HostPool().Alloc(m); err != nil {
					return s, err
				}
			}
			if e.GPU() {
				if s.dev[g], err = e.DevicePool().Alloc(m); err != nil {
					return s, err
				}
			}
		}
	}
	if it.imageDevice {
		if err := it.newSlotImages(s); err != nil {
			return s, err
		}
	}
	var err error
	if it.needsMeta() {
		if s.meta, err = e.HostPool().Alloc(it.metaLayout.size); err != nil {
			return s, err
		}
	}
	if e.GPU() {
		if s.copied, err = e.Context().EventCreate(); err != nil {
			return s, err
		}
		if s.released, err = e.Context().EventCreate(); err != nil {
			return s, err
		}
	}
	if testHookNewSlot != nil {
		testHookNewSlot(it, s)
	}
	return s, nil
}

// growthBudget is how much memory a ring may grow by when the caller keeps its batches: the pinned
// budget (0: the default, a quarter of physical memory; negative: none).
func growthBudget(pinned int64) int64 {
	if pinned == 0 {
		return defaultPinnedBudget()
	}
	return pinned
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
// memory, and the engine stays held, until that batch's release (see ring.release): memory handed out
// stays valid while anything points at it.
func (it *Iterator) free() {
	e := it.e
	done := it.ring.close()
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
		it.ring.unhold()
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
	for _, l := range it.ring.lanes {
		n += len(l.ready)
	}
	return n
}

// Stats returns what the iterator has delivered so far.
func (it *Iterator) Stats() IteratorStats {
	return IteratorStats{
		Batches: it.batches.Load(), Samples: it.samples.Load(), Bytes: it.bytes.Load(),
		Stall: time.Duration(it.stallNs.Load()), Skipped: it.skipped.Load(),
	}
}

// Skipped is the number of samples that failed and were replaced (OnErrorSkip), as the monitor reads it.
func (it *Iterator) Skipped() uint64 { return it.skipped.Load() }

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
