package data

import (
	"context"
	"errors"
	"fmt"
	"io"
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

// IteratorState is the position of an iterator: the next batch Next returns. It is all an exact resume
// needs: restoring it is O(1), with no replay, and the batches that follow equal those that would have
// come, bit for bit.
type IteratorState = SamplerState

// IteratorStats counts what the iterator delivered.
type IteratorStats struct {
	Batches uint64        // batches returned by Next
	Samples uint64        // samples in them
	Bytes   uint64        // bytes of source data in them: what crossed to the device on a GPU
	Stall   time.Duration // time Next spent waiting for data: the input-bound share of a training loop
}

// BatchField is one field of a batch: Size samples of the source's field, laid out [Size, shape...].
type BatchField struct {
	Field
	Shape  []int            // [batch size, per-sample shape...]
	Bytes  int              // bytes of this field in this batch
	Host   []byte           // the staging buffer (page-locked on a GPU); on the CPU engine, the batch itself
	Device engine.DevicePtr // the batch on the device; 0 on the CPU engine
}

// Batch is one batch handed out by Next. It stays valid until Release; its memory is then reused.
type Batch struct {
	Epoch   uint64
	Index   int   // the batch's number within its epoch
	Indices []int // the source's sample indices, in batch order
	Fields  []BatchField
	OnGPU   bool

	it       *Iterator
	s        *slot
	released atomic.Bool
}

// Size is the number of samples in the batch.
func (b *Batch) Size() int { return len(b.Indices) }

// Field returns the named field, or nil.
func (b *Batch) Field(name string) *BatchField {
	for i := range b.Fields {
		if b.Fields[i].Name == name {
			return &b.Fields[i]
		}
	}
	return nil
}

// Wait makes stream wait for the batch's copy too, for consumers that use the batch on a stream other
// than the one given to Next. It does nothing on the CPU engine.
func (b *Batch) Wait(stream Stream) error {
	if b.released.Load() {
		return fmt.Errorf("%w: batch %d of epoch %d was released", engine.ErrInvalidArgument, b.Index, b.Epoch)
	}
	if b.it.closed.Load() {
		return fmt.Errorf("%w: the batch's iterator", engine.ErrClosed)
	}
	if !b.OnGPU {
		return nil
	}
	return b.it.e.Context().StreamWaitEvent(stream, b.s.copied)
}

// IteratorClosed reports whether the batch's iterator was closed, which made the batch invalid.
func (b *Batch) IteratorClosed() bool { return b.it.closed.Load() }

// Device is the CUDA ordinal of the batch's device memory, or CPU.
func (b *Batch) Device() int { return b.it.e.Device() }

// Release hands the batch's memory back for refilling. On a GPU it records an event on consumer, the
// stream whose work used the batch, and the slot is refilled only after that event: the host never waits.
// When the event cannot be recorded on consumer (a stream that is invalid or was destroyed), the batch is
// released all the same, without that ordering, and the driver's error is returned. A second Release
// returns ErrInvalidArgument.
func (b *Batch) Release(consumer Stream) error {
	if !b.released.CompareAndSwap(false, true) {
		return fmt.Errorf("%w: batch %d of epoch %d was already released", engine.ErrInvalidArgument, b.Index, b.Epoch)
	}
	if err := b.it.release(b.s, consumer); err != nil {
		return fmt.Errorf("releasing batch %d of epoch %d on stream %#x: %w", b.Index, b.Epoch, uintptr(consumer), err)
	}
	return nil
}

// slot is one buffer set of the ring. Batch q of the pipeline's sequence uses slot q % depth; the free,
// filled and ready channels (capacity 1, written without blocking) pass it from stage to stage.
type slot struct {
	id      int
	host    []*engine.HostBuffer   // per source field: host staging (StagingGather); else nil
	hostOut []*engine.HostBuffer   // per batch field made on the host by a transform; else nil
	devIn   []*engine.DeviceBuffer // per source field that a kernel transforms after a DMA; else nil
	dev     []*engine.DeviceBuffer // per batch field: the batch on the device
	// meta is the batch's metadata (see metaLayout), page-locked: the kernels read it in place across
	// PCIe (under unified addressing its host address is its device address). nil when not needed.
	meta   *engine.HostBuffer
	params []byte // the copier's scratch for kernel parameters

	copied       cuda.Event // recorded on the iterator's stream after the batch's copies
	released     cuda.Event // recorded on the consumer's stream at release
	mustWaitRels bool       // released was recorded since the last refill: the next copy waits for it

	free, filled, ready chan struct{}
	held                atomic.Bool

	// Set by the producer before the workers start, read by all after.
	epoch     uint64
	batch     int
	indices   []int
	width     int    // the padded length of a variable-length field in this batch
	staged    int    // bytes of source data in this batch
	aligned   []bool // per source field: every sample starts 16-byte aligned in its region
	remaining atomic.Int32
	errOnce   sync.Once
	err       error       // the batch's first error; read after the slot is signalled filled
	failed    atomic.Bool // err is set: workers skip the rest of the batch
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func drain(c chan struct{}) {
	select {
	case <-c:
	default:
	}
}

func (s *slot) fail(err error) {
	s.errOnce.Do(func() { s.err = err })
	s.failed.Store(true)
}

// task is a range of rows of one slot for a worker to fill.
type task struct {
	s          *slot
	start, end int
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
	e       *engine.Engine
	src     Source
	fields  []Field // the source's
	outs    []Field // the batch's, after the transforms
	outSrc  []int   // per batch field, the source field it comes from
	plans   []fieldPlan
	sampler *Sampler // swapped (elastic resume) only while the pipeline is stopped, under mu
	base    *Sampler // the sampler without a resumed epoch
	nbatch  atomic.Int64
	opts    IteratorOptions
	stream  cuda.Stream
	slots   []*slot

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

	mu       sync.Mutex // Next, Restore, Close
	pos      IteratorState
	seq      uint64 // the pipeline sequence number Next takes next
	run      *pipeline
	closed   atomic.Bool
	closing  chan struct{} // closed by Close before it waits for it.mu: wakes a Next that waits for data
	failures atomic.Uint64

	batches, samples, bytes, stallNs atomic.Uint64
}

// pipeline is one run of the producer, workers and copier, from a start position until stopped.
type pipeline struct {
	stop chan struct{}
	wg   sync.WaitGroup
}

// NewIterator builds an iterator over src on the engine and starts prefetching. It allocates the ring
// once, from the engine's pools: Prefetch × BatchSize × (bytes per sample) of host memory (page-locked on
// a GPU) and as much device memory. The iterator does not own src; close src after the iterator.
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
	if err := it.planFields(opts.Transforms); err != nil {
		return nil, err
	}
	it.chooseStaging()
	if err := it.allocate(); err != nil {
		it.free()
		return nil, fmt.Errorf("the iterator's ring of %d batches of %d samples: %w", opts.Prefetch, opts.BatchSize, err)
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
	b := it.opts.BatchSize
	_, _, _, metaSize := it.metaLayout()
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
			n := p.in.Bytes() * b
			var err error
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
				m := it.outs[g].Bytes() * b
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
			if s.meta, err = e.HostPool().Alloc(metaSize); err != nil {
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

// free returns everything allocate took and the source memory's registrations. The pipeline must be
// stopped.
func (it *Iterator) free() {
	e := it.e
	for _, s := range it.slots {
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
		}
		if s.released != 0 {
			_ = e.Context().EventDestroy(s.released)
		}
	}
	it.slots = nil
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

// start launches a pipeline whose first batch is from; it.mu is held or the iterator is not shared yet.
// The sequence numbering continues across restarts, so that the new pipeline begins at the slot after
// the last one handed out: a slot the caller still holds is reused last, not first.
func (it *Iterator) start(from IteratorState) {
	if testHookStart != nil {
		testHookStart(it)
	}
	p := &pipeline{stop: make(chan struct{})}
	it.run = p
	tasks := make(chan task, it.opts.Workers*4)
	if !it.needsHostStaging() {
		// StagingMapped and StagingDMA read the source in place: no gather workers, and the producer issues
		// each batch's device work itself, which saves a hand-off per batch.
		p.wg.Add(1)
		go it.produce(p, tasks, from, it.seq)
		return
	}
	p.wg.Add(2 + it.opts.Workers)
	go it.produce(p, tasks, from, it.seq)
	for i := 0; i < it.opts.Workers; i++ {
		go it.work(p, tasks)
	}
	go it.copyLoop(p, it.seq)
}

// advance returns the position after pos.
func (it *Iterator) advance(pos IteratorState) IteratorState {
	pos.Batch++
	return it.settle(pos)
}

// settle moves pos past the end of its epoch, and past epochs without a batch (a resumed epoch with
// nothing left for this rank), to the first batch that exists.
func (it *Iterator) settle(pos IteratorState) IteratorState {
	for pos.Batch >= it.sampler.BatchesIn(pos.Epoch) {
		pos = IteratorState{Epoch: pos.Epoch + 1}
	}
	pos.Offset = it.sampler.Offset(pos.Epoch)
	return pos
}

// produce assigns batch after batch to the ring's slots and splits each into tasks for the workers.
func (it *Iterator) produce(p *pipeline, tasks chan<- task, pos IteratorState, seq uint64) {
	defer p.wg.Done()
	defer close(tasks)
	inline := !it.needsHostStaging()
	if inline {
		defer it.lockContext()()
	}
	for q := seq; ; q++ {
		s := it.slots[q%uint64(len(it.slots))]
		select {
		case <-s.free:
		case <-p.stop:
			return
		}
		s.epoch, s.batch = pos.Epoch, pos.Batch
		s.err, s.errOnce = nil, sync.Once{}
		s.failed.Store(false)
		if err := it.waitCopied(p, s); err != nil {
			if errors.Is(err, errStopped) {
				signal(s.free)
				return
			}
			s.fail(err)
		}
		var err error
		s.indices, err = it.sampler.Batch(pos.Epoch, pos.Batch, s.indices)
		if err != nil {
			s.fail(err)
			s.indices = s.indices[:0]
		}
		pos = it.advance(pos)
		rows := len(s.indices)
		it.prepare(s)
		if inline {
			if s.err == nil {
				if err := it.copyToDevice(s); err != nil {
					s.fail(err)
				}
			}
			signal(s.ready)
			continue
		}
		chunk := max(1, (rows+2*it.opts.Workers-1)/(2*it.opts.Workers))
		n := (rows + chunk - 1) / chunk
		if n == 0 || s.failed.Load() {
			signal(s.filled)
			continue
		}
		s.remaining.Store(int32(n))
		for start := 0; start < rows; start += chunk {
			select {
			case tasks <- task{s: s, start: start, end: min(rows, start+chunk)}:
			case <-p.stop:
				return
			}
		}
	}
}

// lockContext locks the calling goroutine to its OS thread and makes the engine's context current there,
// for a loop of driver calls, and returns the function that undoes both. A failed push is logged; each
// driver call then makes the context current itself.
func (it *Iterator) lockContext() (unlock func()) {
	runtime.LockOSThread()
	if err := it.e.Context().Push(); err != nil {
		it.e.Logger().Error().Err(err).Msg("the iterator cannot make the context current on its thread")
		return runtime.UnlockOSThread
	}
	return func() {
		_ = it.e.Context().Pop()
		runtime.UnlockOSThread()
	}
}

// testHookStart, when set by a test, runs before each pipeline starts, with nothing in flight (tests
// poison the ring's device buffers there).
var testHookStart func(*Iterator)

// errStopped is returned by waits that a pipeline stop interrupted.
var errStopped = errors.New("pipeline stopped")

// waitCopied waits until the slot's last host-to-device copy has completed, so that its staging buffer
// may be overwritten. It usually has long completed; the wait polls, and is bounded.
func (it *Iterator) waitCopied(p *pipeline, s *slot) error {
	if !it.e.GPU() {
		return nil
	}
	deadline := time.Now().Add(it.opts.Timeout)
	sleep := 20 * time.Microsecond
	for {
		err := it.e.Context().EventQuery(s.copied)
		if !errors.Is(err, cuda.ErrNotReady) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: a host-to-device copy did not complete within %v", engine.ErrTimeout, it.opts.Timeout)
		}
		select {
		case <-p.stop:
			return errStopped
		case <-time.After(sleep):
		}
		sleep = min(2*sleep, time.Millisecond)
	}
}

// stopped reports whether the pipeline was asked to stop.
func stopped(p *pipeline) bool {
	select {
	case <-p.stop:
		return true
	default:
		return false
	}
}

// work fills rows: each sample is read by the source straight into the slot's staging buffers.
func (it *Iterator) work(p *pipeline, tasks <-chan task) {
	defer p.wg.Done()
	dst := make([][]byte, len(it.fields))
	for {
		var t task
		var ok bool
		select {
		case t, ok = <-tasks:
			if !ok {
				return
			}
		case <-p.stop:
			return
		}
		s := t.s
		for r := t.start; r < t.end && !s.failed.Load(); r++ {
			if stopped(p) {
				return // a stop discards the batch: Close waits for one sample per worker, not a whole task
			}
			for f := range it.fields {
				fb := it.fields[f].Bytes()
				dst[f] = s.host[f].Bytes()[r*fb : (r+1)*fb]
			}
			if err := it.src.ReadSample(s.indices[r], dst); err != nil {
				s.fail(fmt.Errorf("batch %d of epoch %d: %w", s.batch, s.epoch, err))
			} else if it.hostXform {
				it.transformRow(s, r, dst)
			}
		}
		if s.remaining.Add(-1) == 0 {
			signal(s.filled)
		}
	}
}

// copyLoop takes filled slots in sequence order and, on a GPU, copies them to the device on the
// iterator's stream from a locked OS thread with the context current, then marks them ready.
func (it *Iterator) copyLoop(p *pipeline, seq uint64) {
	defer p.wg.Done()
	if it.e.GPU() {
		defer it.lockContext()()
	}
	for q := seq; ; q++ {
		s := it.slots[q%uint64(len(it.slots))]
		select {
		case <-s.filled:
		case <-p.stop:
			return
		}
		if it.e.GPU() && s.err == nil {
			if err := it.copyToDevice(s); err != nil {
				s.fail(err)
			}
		}
		signal(s.ready)
	}
}

// Next returns the next batch. On a GPU it makes consumer (the stream that will use the batch) wait for
// the batch's copy; the host does not wait for the copy. At the end of each epoch Next returns io.EOF
// once; the call after that returns the first batch of the next epoch, which was already being
// prefetched. A batch whose samples could not be read returns the source's error; the iterator stays
// usable and the call after returns the following batch. When consumer cannot wait for the batch (a
// stream that is invalid or was destroyed), Next returns the driver's error and the batch stays the next
// one. Next waits at most the Timeout option (when every batch of the ring is held, the error says so),
// and returns early when ctx is done or Close is called (ErrClosed).
func (it *Iterator) Next(ctx context.Context, consumer Stream) (*Batch, error) {
	it.mu.Lock()
	defer it.mu.Unlock()
	if it.closed.Load() {
		return nil, fmt.Errorf("%w: iterator", engine.ErrClosed)
	}
	if it.pos.Batch >= it.sampler.BatchesIn(it.pos.Epoch) {
		it.pos = IteratorState{Epoch: it.pos.Epoch + 1, Offset: it.sampler.Offset(it.pos.Epoch + 1)}
		return nil, io.EOF
	}
	s := it.slots[it.seq%uint64(len(it.slots))]
	select {
	case <-s.ready: // prefetched: the common case, with no timer and no stall
	default:
		start := time.Now()
		timer := time.NewTimer(it.opts.Timeout)
		defer timer.Stop()
		select {
		case <-s.ready:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: waiting for batch %d of epoch %d: %v", engine.ErrTimeout, it.pos.Batch, it.pos.Epoch, ctx.Err())
		case <-timer.C:
			return nil, fmt.Errorf("%w: batch %d of epoch %d was not ready within %v%s", engine.ErrTimeout, it.pos.Batch, it.pos.Epoch,
				it.opts.Timeout, it.heldHint(s))
		case <-it.closing:
			return nil, fmt.Errorf("%w: iterator (closed while Next waited for batch %d of epoch %d)", engine.ErrClosed, it.pos.Batch, it.pos.Epoch)
		}
		it.stallNs.Add(uint64(time.Since(start)))
	}
	if s.err == nil && it.e.GPU() {
		if err := it.e.Context().StreamWaitEvent(consumer, s.copied); err != nil {
			// A bad consumer stream loses nothing: the batch stays next, for a call with a valid stream.
			signal(s.ready)
			return nil, fmt.Errorf("batch %d of epoch %d: making consumer stream %#x wait for its copy: %w",
				it.pos.Batch, it.pos.Epoch, uintptr(consumer), err)
		}
	}
	it.seq++
	it.pos.Batch++
	if s.err != nil {
		it.failures.Add(1)
		err := s.err
		signal(s.free)
		return nil, err
	}
	b := &Batch{Epoch: s.epoch, Index: s.batch, Indices: s.indices, OnGPU: it.e.GPU(), it: it, s: s}
	b.Fields = make([]BatchField, len(it.outs))
	for g, o := range it.outs {
		shape := it.batchShape(s, g)
		n := o.DType.Size()
		for _, d := range shape {
			n *= d
		}
		bf := BatchField{Field: o, Shape: shape, Bytes: n}
		if h := s.hostOut[g]; h != nil {
			bf.Host = h.Bytes()[:n]
		} else if f := it.outSrc[g]; it.plans[f].t == nil && s.host[f] != nil {
			bf.Host = s.host[f].Bytes()[:n]
		}
		if it.e.GPU() {
			bf.Device = s.dev[g].Ptr()
		}
		b.Fields[g] = bf
	}
	s.held.Store(true)
	it.batches.Add(1)
	it.samples.Add(uint64(len(s.indices)))
	it.bytes.Add(uint64(s.staged))
	return b, nil
}

// heldHint explains a Next that timed out waiting for slot s while the caller holds it: the iterator cannot
// refill a slot until its batch is released.
func (it *Iterator) heldHint(s *slot) string {
	if !s.held.Load() {
		return ""
	}
	held := 0
	for _, x := range it.slots {
		if x.held.Load() {
			held++
		}
	}
	return fmt.Sprintf(": the caller holds %d unreleased batches of the %d in flight (Prefetch), and the next one "+
		"needs a held batch's buffers; release batches when done with them", held, len(it.slots))
}

func (it *Iterator) release(s *slot, consumer Stream) error {
	if !s.held.CompareAndSwap(true, false) {
		return fmt.Errorf("%w: the batch's slot is not held (released twice, or the iterator was closed)", engine.ErrInvalidArgument)
	}
	var err error
	if it.e.GPU() && !it.closed.Load() {
		if err = it.e.Context().EventRecord(s.released, consumer); err == nil {
			s.mustWaitRels = true
		} else {
			// The slot goes back all the same (a caller cannot retry a release): its next copy is not
			// ordered after the consumer's work.
			err = fmt.Errorf("the release could not be ordered on the stream, so the batch's memory may be refilled "+
				"before work queued there completes: %w", err)
		}
	}
	signal(s.free)
	return err
}

// State is the position of the next batch Next returns.
func (it *Iterator) State() IteratorState {
	it.mu.Lock()
	defer it.mu.Unlock()
	st := it.pos
	st.Offset = it.sampler.Offset(st.Epoch)
	return st
}

// Restore moves the iterator to st: the batches that follow are those an uninterrupted iterator would
// have returned from st on, bit for bit. It discards the prefetched batches and costs O(1) otherwise.
// Batches the caller still holds stay valid until released. st is a State of an iterator with the same
// configuration (world size included); to move a job to another world size, use RestoreElastic. When the
// discarded batches' copies do not complete within the Timeout option, Restore returns ErrTimeout and the
// iterator goes on from where it was.
func (it *Iterator) Restore(st IteratorState) error {
	smp, err := it.base.WithResume(st.Epoch, st.Offset)
	if err != nil {
		return err
	}
	if n := smp.BatchesIn(st.Epoch); st.Batch < 0 || st.Batch > n {
		return fmt.Errorf("%w: state batch %d is outside 0..%d", engine.ErrInvalidArgument, st.Batch, n)
	}
	it.mu.Lock()
	defer it.mu.Unlock()
	if it.closed.Load() {
		return fmt.Errorf("%w: iterator", engine.ErrClosed)
	}
	if err := it.stop(); err != nil {
		// The copies of the discarded batches are still in flight: stay where the iterator was, running
		// (each slot waits, bounded, for its own copy before it is refilled).
		it.start(it.settle(it.pos))
		return fmt.Errorf("restore not done: %w", err)
	}
	it.sampler = smp
	it.pos = st
	from := st
	if st.Batch == smp.BatchesIn(st.Epoch) {
		// The end of an epoch: Next returns io.EOF first, as it would have, then the next epoch.
		from = IteratorState{Epoch: st.Epoch + 1}
	}
	it.start(it.settle(from))
	return nil
}

// ElasticState is the position of a data-parallel job as a whole: the epoch, and how many samples of
// the epoch's global order all ranks together have consumed. Ranks advance in lockstep, so every rank
// reports the same ElasticState, and any one of them can restore every rank, under any world size.
type ElasticState struct {
	Epoch    uint64
	Consumed int // 0..Len
}

// ElasticState returns the job's position (see ElasticState): after the batches this rank has taken
// (Next), assuming every rank took as many.
func (it *Iterator) ElasticState() ElasticState {
	it.mu.Lock()
	defer it.mu.Unlock()
	if it.pos.Batch >= it.sampler.BatchesIn(it.pos.Epoch) {
		return ElasticState{Epoch: it.pos.Epoch + 1}
	}
	return ElasticState{Epoch: it.pos.Epoch, Consumed: it.sampler.Consumed(it.pos.Epoch, it.pos.Batch)}
}

// RestoreElastic continues a job from st under this iterator's world size, which may differ from the
// one st was saved under: the rest of epoch st.Epoch (positions st.Consumed.. of its global order) is
// sharded among the current ranks, so that across them every remaining sample comes exactly once (with
// padding, as DistributedSampler pads, a few may come twice; with DropLast a few may be dropped), and
// later epochs are whole. What is not preserved: which rank sees which sample, and the order within a
// rank, differ from an uninterrupted run at the old world size.
func (it *Iterator) RestoreElastic(st ElasticState) error {
	n := it.base.Config().Len
	if st.Consumed < 0 || st.Consumed > n {
		return fmt.Errorf("%w: elastic state consumed %d samples of an epoch of %d", engine.ErrInvalidArgument, st.Consumed, n)
	}
	if st.Consumed == n {
		st = ElasticState{Epoch: st.Epoch + 1}
	}
	return it.Restore(IteratorState{Epoch: st.Epoch, Offset: st.Consumed})
}

// SetEpoch starts epoch e from its first batch, like DistributedSampler.set_epoch.
func (it *Iterator) SetEpoch(e uint64) error { return it.Restore(IteratorState{Epoch: e}) }

// stop ends the running pipeline, waits (bounded) for its copies, and returns every slot the caller
// does not hold to the free state. it.mu is held.
func (it *Iterator) stop() error {
	p := it.run
	if p == nil {
		return nil
	}
	close(p.stop)
	p.wg.Wait()
	it.run = nil
	var err error
	if it.e.GPU() {
		err = it.waitStream()
	}
	for _, s := range it.slots {
		drain(s.filled)
		drain(s.ready)
		if !s.held.Load() {
			signal(s.free)
		}
	}
	return err
}

// waitStream waits for the iterator's stream to drain, polling, for at most the Timeout option.
func (it *Iterator) waitStream() error {
	deadline := time.Now().Add(it.opts.Timeout)
	for {
		err := it.e.Context().StreamQuery(it.stream)
		if !errors.Is(err, cuda.ErrNotReady) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: copies in flight did not complete within %v", engine.ErrTimeout, it.opts.Timeout)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// Close stops the pipeline, waits (bounded) for copies in flight, and returns the ring to the engine's
// pools. A Next waiting for data returns ErrClosed; gather workers finish the sample they read and stop.
// When the copies do not complete within the Timeout option, Close frees the ring all the same and returns
// ErrTimeout. Batches still held become invalid: release them first. A second Close returns ErrClosed.
func (it *Iterator) Close() error {
	if !it.closed.CompareAndSwap(false, true) {
		return fmt.Errorf("%w: iterator was already closed", engine.ErrClosed)
	}
	close(it.closing)
	it.mu.Lock()
	defer it.mu.Unlock()
	err := it.stop()
	for _, s := range it.slots {
		s.held.Store(false)
	}
	it.free()
	it.e.Disown(it)
	return err
}
