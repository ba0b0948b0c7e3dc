package data

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/ferry-ml/ferry/engine"
)

// BatchField is one field of a batch: Size samples of the source's field, laid out [Size, shape...].
type BatchField struct {
	Field
	From   int              // the source field (an Iterator's) or the pushed tensor (a Feed's) it comes from
	Shape  []int            // [batch size, per-sample shape...]
	Bytes  int              // bytes of this field in this batch
	Host   []byte           // the staging buffer (page-locked on a GPU); on the CPU engine, the batch itself
	Device engine.DevicePtr // the batch on the device; 0 on the CPU engine
}

// Batch is one batch handed out by an Iterator's Next or a Feed's Push. It stays valid until Release; its
// memory is then reused.
type Batch struct {
	Epoch   uint64
	Index   int   // the batch's number within its epoch
	Indices []int // the source's sample indices, in batch order; nil for a Feed's batch
	Fields  []BatchField
	OnGPU   bool

	owner    batchOwner
	s        *slot
	size     int
	released atomic.Bool
}

// batchOwner is what hands batches out: an Iterator or a Feed.
type batchOwner interface {
	engine() *engine.Engine
	isClosed() bool
	release(s *slot, consumer Stream) error
}

// Size is the number of samples in the batch.
func (b *Batch) Size() int { return b.size }

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
// than the one given to Next. It does nothing on the CPU engine. It works until Release, also after the
// iterator's Close: the slot, and its event, live until the batch is released.
func (b *Batch) Wait(stream Stream) error {
	if b.released.Load() {
		return fmt.Errorf("%w: batch %d of epoch %d was released", engine.ErrInvalidArgument, b.Index, b.Epoch)
	}
	if !b.OnGPU {
		return nil
	}
	return b.owner.engine().Context().StreamWaitEvent(stream, b.s.copied)
}

// IteratorClosed reports whether the batch's iterator (or feed) was closed, which made the batch invalid.
func (b *Batch) IteratorClosed() bool { return b.owner.isClosed() }

// Device is the CUDA ordinal of the batch's device memory, or CPU.
func (b *Batch) Device() int { return b.owner.engine().Device() }

// Release hands the batch's memory back for refilling. On a GPU it records an event on consumer, the
// stream whose work used the batch, and the slot is refilled only after that event: the host never waits.
// When the event cannot be recorded on consumer (a stream that is invalid or was destroyed), the batch is
// released all the same, without that ordering, and the driver's error is returned. A second Release
// returns ErrInvalidArgument.
func (b *Batch) Release(consumer Stream) error {
	if !b.released.CompareAndSwap(false, true) {
		return fmt.Errorf("%w: batch %d of epoch %d was already released", engine.ErrInvalidArgument, b.Index, b.Epoch)
	}
	if err := b.owner.release(b.s, consumer); err != nil {
		return fmt.Errorf("releasing batch %d of epoch %d on stream %#x: %w", b.Index, b.Epoch, uintptr(consumer), err)
	}
	return nil
}

// Next returns the next batch. On a GPU it makes consumer (the stream that will use the batch) wait for
// the batch's copy; the host does not wait for the copy. At the end of each epoch Next returns io.EOF
// once; the call after that returns the first batch of the next epoch, which was already being
// prefetched. A batch whose samples could not be read returns the source's error; the iterator stays
// usable and the call after returns the following batch. When consumer cannot wait for the batch (a
// stream that is invalid or was destroyed), Next returns the driver's error and the batch stays the next
// one. When the caller holds the batch whose slot the next batch needs, the ring grows by a slot instead of
// waiting for it, within the PinnedBudget option; beyond the budget Next returns an ErrLimit error at once,
// naming the budget and the batches held. Next waits at most the Timeout option, and returns early when
// ctx is done or Close is called (ErrClosed).
func (it *Iterator) Next(ctx context.Context, consumer Stream) (*Batch, error) {
	return it.next(ctx, consumer, 0)
}

// ErrNotReady is returned by NextWithin when no batch came within its wait; it is not a failure.
var ErrNotReady = errors.New("no batch yet")

// NextWithin is Next that waits at most wait in this call, for a caller that must react to something
// between waits (Python checks for Ctrl-C): when no batch came within wait, it returns ErrNotReady and
// changes nothing, and the next NextWithin continues the same wait, so that the Timeout option bounds the
// whole wait across the calls and its error is the same as Next's. A
// call of Next, Restore or SetEpoch in between starts a new wait. wait <= 0 is Next.
func (it *Iterator) NextWithin(ctx context.Context, consumer Stream, wait time.Duration) (*Batch, error) {
	return it.next(ctx, consumer, max(wait, 0))
}

func (it *Iterator) next(ctx context.Context, consumer Stream, wait time.Duration) (*Batch, error) {
	it.mu.Lock()
	defer it.mu.Unlock()
	began := it.waitBegan // the start of a wait that NextWithin calls continue
	it.waitBegan = time.Time{}
	if it.closed.Load() {
		return nil, fmt.Errorf("%w: iterator", engine.ErrClosed)
	}
	if it.pos.Batch >= it.sampler.BatchesIn(it.pos.Epoch) {
		it.pos = IteratorState{Epoch: it.pos.Epoch + 1, Offset: it.sampler.Offset(it.pos.Epoch + 1)}
		return nil, io.EOF
	}
	l := it.ring.lane(it.seq)
	select {
	case <-l.ready: // prefetched: the common case, with no timer and no stall
	default:
		// The caller may hold the slot this batch needs: then the ring grows instead of waiting for a
		// release that may never come.
		if err := it.ring.grow(l); err != nil {
			return nil, fmt.Errorf("batch %d of epoch %d: %w", it.pos.Batch, it.pos.Epoch, err)
		}
		start := time.Now()
		if wait == 0 || began.IsZero() {
			began = start
		}
		d, slice := it.opts.Timeout-start.Sub(began), false
		if wait > 0 && wait < d {
			d, slice = wait, true
		}
		timer := time.NewTimer(max(d, 0))
		defer timer.Stop()
		select {
		case <-l.ready:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: waiting for batch %d of epoch %d: %v", engine.ErrTimeout, it.pos.Batch, it.pos.Epoch, ctx.Err())
		case <-timer.C:
			if slice {
				it.stallNs.Add(uint64(time.Since(start)))
				it.waitBegan = began
				return nil, ErrNotReady
			}
			return nil, fmt.Errorf("%w: batch %d of epoch %d was not ready within %v", engine.ErrTimeout, it.pos.Batch, it.pos.Epoch,
				it.opts.Timeout)
		case <-it.closing:
			return nil, fmt.Errorf("%w: iterator (closed while Next waited for batch %d of epoch %d)", engine.ErrClosed, it.pos.Batch, it.pos.Epoch)
		}
		it.stallNs.Add(uint64(time.Since(start)))
	}
	s := l.s
	if s.err == nil && it.e.GPU() {
		if err := it.e.Context().StreamWaitEvent(consumer, s.copied); err != nil {
			// A bad consumer stream loses nothing: the batch stays next, for a call with a valid stream.
			signal(l.ready)
			return nil, fmt.Errorf("batch %d of epoch %d: making consumer stream %#x wait for its copy: %w",
				it.pos.Batch, it.pos.Epoch, uintptr(consumer), err)
		}
	}
	it.seq++
	it.pos.Batch++
	if s.err != nil {
		it.failures.Add(1)
		err := s.err
		signal(l.free)
		return nil, err
	}
	b := &Batch{Epoch: s.epoch, Index: s.batch, Indices: s.indices, OnGPU: it.e.GPU(), owner: it, s: s, size: len(s.indices)}
	b.Fields = make([]BatchField, len(it.outs))
	for g, o := range it.outs {
		shape := it.batchShape(s, g)
		n := o.DType.Size()
		for _, d := range shape {
			n *= d
		}
		bf := BatchField{Field: o, From: it.outSrc[g], Shape: shape, Bytes: n}
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

func (it *Iterator) release(s *slot, consumer Stream) error { return it.ring.release(s, consumer) }

func (it *Iterator) engine() *engine.Engine { return it.e }

func (it *Iterator) isClosed() bool { return it.closed.Load() }
