package data

import (
	"fmt"
	"time"

	"github.com/ferry-ml/ferry/engine"
)

// IteratorState is the position of an iterator: the next batch Next returns. It is all an exact resume
// needs: restoring it is O(1), with no replay, and the batches that follow equal those that would have
// come, bit for bit.
type IteratorState = SamplerState

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
	it.waitBegan = time.Time{}
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
