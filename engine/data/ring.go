package data

import (
	"fmt"
	"sync"
	"time"

	"github.com/ferry-ml/ferry/engine"
)

// lane is one position of the ring. Batch q of the pipeline's sequence goes through lane q % depth: the
// lane's free, filled and ready channels (capacity 1, written without blocking) pass its slot from stage
// to stage. When the caller holds the slot of the lane that Next needs, ring.grow gives the lane another
// slot; the held one leaves the ring and becomes a spare at its release.
type lane struct {
	free, filled, ready chan struct{}
	// s is the lane's slot. A stage reads it after receiving from one of the lane's channels; grow replaces
	// it under ring.mu only while the caller holds it, when the producer waits on free.
	s *slot
}

// ring is the set of slots a pipeline fills and a caller holds: depth lanes, each with a slot, plus the
// slots grown when the caller kept batches (held out of their lanes, or spare once released). Its slots
// are freed at close, except those the caller still holds, which are freed at their release.
type ring struct {
	e       *engine.Engine
	lanes   []*lane
	timeout time.Duration // the longest wait for a consumer's work on a slot freed after close
	// newSlot allocates one more slot, of slotBytes bytes (host and device memory); budget is how much
	// memory the ring may take beyond its first depth slots (negative: none).
	newSlot   func() (*slot, error)
	slotBytes int64
	budget    int64

	mu      sync.Mutex
	all     []*slot // every slot the ring owns
	spares  []*slot // released slots out of every lane, for the next growth
	grown   int64   // bytes of the slots beyond the first depth
	orphans int     // slots held at close, freed at their release
	holding bool    // the ring holds its engine (engine.Hold) until its last slot is freed
}

// addLane adds a lane whose slot is s, free to be filled.
func (r *ring) addLane(s *slot) {
	l := &lane{free: make(chan struct{}, 1), filled: make(chan struct{}, 1), ready: make(chan struct{}, 1), s: s}
	s.lane = l
	r.lanes = append(r.lanes, l)
	r.all = append(r.all, s)
	l.free <- struct{}{}
}

// lane is the lane of sequence number q.
func (r *ring) lane(q uint64) *lane { return r.lanes[q%uint64(len(r.lanes))] }

// heldLocked counts the slots the caller holds; r.mu is held.
func (r *ring) heldLocked() int {
	n := 0
	for _, s := range r.all {
		if s.held.Load() {
			n++
		}
	}
	return n
}

// grow makes sure lane l is not waiting on a slot the caller holds, which only the caller could give
// back: when it is, the lane gets a spare slot, or a new one within the budget, and the producer goes on.
// Next calls it before it waits for l. Beyond the budget it returns an ErrLimit error at once, naming the
// budget and the batches held.
func (r *ring) grow(l *lane) error {
	r.mu.Lock()
	if !l.s.held.Load() {
		r.mu.Unlock()
		return nil
	}
	var s *slot
	if n := len(r.spares); n > 0 {
		s, r.spares = r.spares[n-1], r.spares[:n-1]
	} else if r.budget < 0 || r.grown+r.slotBytes > r.budget {
		held := r.heldLocked()
		r.mu.Unlock()
		noun, verb := "batches", "are"
		if held == 1 {
			noun, verb = "batch", "is"
		}
		return fmt.Errorf("%w: %d %s of the ring %s still held by the caller, and another ring slot of %d bytes "+
			"(page-locked and device memory) would take the ring past its pinned budget (%d bytes beyond its %d slots): release batches when done "+
			"with them (a batch stays held until it is released and every tensor taken from it is freed), or raise "+
			"the pinned budget", engine.ErrLimit, held, noun, verb, r.slotBytes, max(r.budget, 0), len(r.lanes))
	}
	r.mu.Unlock()
	if s == nil {
		var err error
		if s, err = r.newSlot(); err != nil {
			if s != nil {
				r.freeSlot(s)
			}
			return fmt.Errorf("growing the ring by a slot, as the caller holds its batches: %w", err)
		}
		r.mu.Lock()
		r.all = append(r.all, s)
		r.grown += r.slotBytes
		r.mu.Unlock()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !l.s.held.Load() {
		// Released meanwhile: the lane goes on with its own slot, and s waits as a spare.
		r.spares = append(r.spares, s)
		return nil
	}
	l.s.lane = nil
	s.lane = l
	l.s = s
	signal(l.free)
	return nil
}

// release gives a slot the caller held back: to its lane, or to the spares when it left its lane. On a
// GPU it records the slot's released event on consumer first, which the slot's next copy waits for.
func (r *ring) release(s *slot, consumer Stream) error {
	r.mu.Lock()
	if !s.held.CompareAndSwap(true, false) {
		r.mu.Unlock()
		return fmt.Errorf("%w: the batch's slot is not held (released twice)", engine.ErrInvalidArgument)
	}
	if s.orphan {
		// Held at close: the ring is gone, and this was the last use of the slot's memory.
		s.orphan = false
		r.mu.Unlock()
		r.freeOrphan(s, consumer)
		return nil
	}
	defer r.mu.Unlock()
	var err error
	if r.e.GPU() {
		if err = r.e.Context().EventRecord(s.released, consumer); err == nil {
			s.mustWaitRels = true
		} else {
			// The slot goes back all the same (a caller cannot retry a release): its next copy is not
			// ordered after the consumer's work.
			err = fmt.Errorf("the release could not be ordered on the stream, so the batch's memory may be refilled "+
				"before work queued there completes: %w", err)
		}
	}
	if s.lane == nil {
		r.spares = append(r.spares, s)
	} else {
		signal(s.lane.free)
	}
	return err
}

// close frees every slot the caller does not hold and marks the others orphans, freed at their release.
// It reports whether none is held: the caller then gives the engine's hold back (unhold) once it has
// freed the rest of what it took from the engine. The pipeline must be stopped.
func (r *ring) close() (done bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.all {
		if s.held.Load() {
			s.orphan = true
			r.orphans++
			continue
		}
		r.freeSlot(s)
	}
	r.all, r.spares = nil, nil
	return r.orphans == 0
}

// freeSlot returns one slot's buffers and events to the engine.
func (r *ring) freeSlot(s *slot) {
	e := r.e
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
	for _, si := range s.imgs {
		si.free(e)
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

// freeOrphan frees the memory of a slot whose batch was held at close, now that its last reference is
// gone. On a GPU the consumer's work queued on consumer may still read the memory: it is freed once an
// event recorded there completes, waited for on a goroutine of its own (the caller, a DLPack deleter,
// does not block). The last orphan gives the engine's hold back.
func (r *ring) freeOrphan(s *slot, consumer Stream) {
	finish := func() {
		r.mu.Lock()
		r.freeSlot(s)
		r.orphans--
		done := r.orphans == 0
		r.mu.Unlock()
		if done {
			r.unhold()
		}
	}
	if !r.e.GPU() || s.released == 0 {
		finish()
		return
	}
	if err := r.e.Context().EventRecord(s.released, consumer); err != nil {
		finish() // no ordering to wait for (an invalid stream): as Release documents
		return
	}
	go func() {
		if err := poll(r.timeout, func() error { return r.e.Context().EventQuery(s.released) }, nil,
			"the consumer's work on a released batch"); err != nil {
			r.e.Logger().Warn().Err(err).Msg("freeing a batch released after its iterator was closed")
		}
		finish()
	}()
}

// unhold gives back the engine hold the ring's owner took, once.
func (r *ring) unhold() {
	r.mu.Lock()
	h := r.holding
	r.holding = false
	r.mu.Unlock()
	if h {
		r.e.Unhold()
	}
}

// bytes is the memory of a slot's buffers, host and device.
func (s *slot) bytes() int64 {
	n := 0
	for _, bufs := range [][]*engine.HostBuffer{s.host, s.hostOut, {s.meta}} {
		for _, h := range bufs {
			if h != nil {
				n += h.Len()
			}
		}
	}
	for _, bufs := range [][]*engine.DeviceBuffer{s.devIn, s.dev} {
		for _, d := range bufs {
			if d != nil {
				n += d.Len()
			}
		}
	}
	return int64(n)
}
