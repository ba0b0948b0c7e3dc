package data

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-ml/ferry/engine"

	"github.com/ferry-ml/ferry/engine/internal/cuda"
)

// slot is one buffer set of the ring (see ring and lane) and the batch it holds.
type slot struct {
	lane    *lane                  // the lane the slot is in; nil once it left it (ring.grow), under ring.mu
	host    []*engine.HostBuffer   // per source field: host staging (StagingGather); else nil
	hostOut []*engine.HostBuffer   // per batch field made on the host by a transform; else nil
	devIn   []*engine.DeviceBuffer // per source field that a kernel transforms after a DMA; else nil
	dev     []*engine.DeviceBuffer // per batch field: the batch on the device
	// meta is the batch's metadata (see metaLayout), page-locked: the kernels read it in place across
	// PCIe (under unified addressing its host address is its device address). nil when not needed.
	meta   *engine.HostBuffer
	params []byte        // the copier's scratch for kernel parameters
	imgs   []*slotImages // per source field a crop decodes on the device (imageDevice); else nil

	copied       cuda.Event // recorded on the iterator's stream after the batch's copies
	released     cuda.Event // recorded on the consumer's stream at release
	mustWaitRels bool       // released was recorded since the last refill: the next copy waits for it

	held   atomic.Bool // a batch over the slot is out (changes under ring.mu)
	orphan bool        // held at Close: the release frees the slot's memory (under ring.mu)

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
	l          *lane
	s          *slot
	start, end int
}

// pipeline is one run of the producer, workers and copier, from a start position until stopped.
type pipeline struct {
	stop chan struct{}
	wg   sync.WaitGroup
}

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
		l := it.ring.lane(q)
		select {
		case <-l.free:
		case <-p.stop:
			return
		}
		s := l.s
		s.epoch, s.batch = pos.Epoch, pos.Batch
		s.err, s.errOnce = nil, sync.Once{}
		s.failed.Store(false)
		if err := it.waitCopied(p, s); err != nil {
			if errors.Is(err, errStopped) {
				signal(l.free)
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
		if it.remote != nil && s.err == nil {
			// An object read in ranges: this batch's bytes, fetched now, in the sampler's order, while the
			// batches before it are read and consumed.
			if err := ensureSamples(it.remote, it.fields, s.indices); err != nil {
				s.fail(fmt.Errorf("batch %d of epoch %d: %w", s.batch, s.epoch, err))
			}
		}
		it.prepare(s)
		if inline {
			if s.err == nil {
				if err := it.copyToDevice(s); err != nil {
					s.fail(err)
				}
			}
			signal(l.ready)
			continue
		}
		chunk := max(1, (rows+2*it.opts.Workers-1)/(2*it.opts.Workers))
		n := (rows + chunk - 1) / chunk
		if n == 0 || s.failed.Load() {
			signal(l.filled)
			continue
		}
		s.remaining.Store(int32(n))
		for start := 0; start < rows; start += chunk {
			select {
			case tasks <- task{l: l, s: s, start: start, end: min(rows, start+chunk)}:
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

// testHookNewSlot, when set by a test, runs on each slot allocated, initial or grown.
var testHookNewSlot func(*Iterator, *slot)

// errStopped is returned by waits that a pipeline stop interrupted.
var errStopped = errors.New("pipeline stopped")

// waitCopied waits until the slot's last host-to-device copy has completed, so that its staging buffer
// may be overwritten. It usually has long completed.
func (it *Iterator) waitCopied(p *pipeline, s *slot) error {
	if !it.e.GPU() {
		return nil
	}
	return it.poll(func() error { return it.e.Context().EventQuery(s.copied) }, p.stop, "a host-to-device copy")
}

// poll is the function poll with the Timeout option.
func (it *Iterator) poll(query func() error, stop <-chan struct{}, what string) error {
	return poll(it.opts.Timeout, query, stop, what)
}

// poll calls query until it returns anything but cuda.ErrNotReady, sleeping between calls from 20 µs
// up to 1 ms. It gives up with ErrTimeout, naming what it waited for, after timeout, and with
// errStopped when stop is closed (nil: never).
func poll(timeout time.Duration, query func() error, stop <-chan struct{}, what string) error {
	deadline := time.Now().Add(timeout)
	sleep := 20 * time.Microsecond
	for {
		err := query()
		if !errors.Is(err, cuda.ErrNotReady) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %s did not complete within %v", engine.ErrTimeout, what, timeout)
		}
		select {
		case <-stop:
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
	scratch := make([][]byte, len(it.outs))
	own := make([][]byte, len(it.fields)) // the worker's buffers of workerInput fields
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
			it.rowDst(s, r, own, dst)
			err := it.readRow(s, r, dst, scratch)
			if err != nil && it.opts.OnError == OnErrorSkip {
				err = it.skipRow(s, r, dst, scratch, err)
			}
			if err != nil {
				s.fail(fmt.Errorf("batch %d of epoch %d: %w", s.batch, s.epoch, err))
			}
		}
		if s.remaining.Add(-1) == 0 {
			signal(t.l.filled)
		}
	}
}

// rowDst points dst at where row r's source fields are read: the slot's host staging, or, for a
// workerInput field, the reader's own buffer own[f] (made on first use).
func (it *Iterator) rowDst(s *slot, r int, own, dst [][]byte) {
	for f, p := range it.plans {
		fb := it.fields[f].Bytes()
		if it.workerInput(p) {
			if own[f] == nil {
				own[f] = make([]byte, fb)
			}
			dst[f] = own[f]
			continue
		}
		dst[f] = s.host[f].Bytes()[r*fb : (r+1)*fb]
	}
}

// readRow reads row r's sample into dst and, on the host path, lays it out.
func (it *Iterator) readRow(s *slot, r int, dst, scratch [][]byte) error {
	var err error
	if it.epochal != nil {
		err = it.epochal.ReadSampleEpoch(s.epoch, s.indices[r], dst)
	} else {
		err = it.src.ReadSample(s.indices[r], dst)
	}
	switch {
	case err == nil && it.hostXform:
		err = it.transformRow(s, r, dst, scratch)
	case err == nil && it.imageDevice:
		err = it.stageImages(s, r, dst)
	}
	return err
}

// skipRow is OnErrorSkip: row r's sample failed with first; the following samples (in index order,
// wrapping) are tried in its place until one reads, and the row's index becomes that sample's. Each
// failure is counted and logged. It returns an error only when skipTries samples in a row fail.
func (it *Iterator) skipRow(s *slot, r int, dst, scratch [][]byte, first error) error {
	failed, n := s.indices[r], it.src.Len()
	err := first
	for k := 1; k <= skipTries && err != nil; k++ {
		if count := it.skipped.Add(1); count <= 10 || count%1000 == 0 {
			it.e.Logger().Warn().Err(err).Uint64("skipped", count).Msg("sample skipped")
		}
		s.indices[r] = (failed + k) % n
		err = it.readRow(s, r, dst, scratch)
	}
	if err != nil {
		return fmt.Errorf("%d samples from sample %d on failed (on-error skip gives up): %w", skipTries+1, failed, err)
	}
	return nil
}

// copyLoop takes filled slots in sequence order and, on a GPU, copies them to the device on the
// iterator's stream from a locked OS thread with the context current, then marks them ready.
func (it *Iterator) copyLoop(p *pipeline, seq uint64) {
	defer p.wg.Done()
	if it.e.GPU() {
		defer it.lockContext()()
	}
	for q := seq; ; q++ {
		l := it.ring.lane(q)
		select {
		case <-l.filled:
		case <-p.stop:
			return
		}
		s := l.s
		if it.e.GPU() && s.err == nil {
			if err := it.copyToDevice(s); err != nil {
				s.fail(err)
			}
		}
		signal(l.ready)
	}
}

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
	for _, l := range it.ring.lanes {
		drain(l.filled)
		drain(l.ready)
		if !l.s.held.Load() {
			signal(l.free)
		}
	}
	return err
}

// waitStream waits for the iterator's stream to drain, for at most the Timeout option.
func (it *Iterator) waitStream() error {
	return it.poll(func() error { return it.e.Context().StreamQuery(it.stream) }, nil, "copies in flight")
}
