package main

// #include <stdlib.h>
// #include "exports.h"
import "C"

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
	"unsafe"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/data"
)

const kindIterator = uint64(C.FERRY_CAPI_KIND_ITERATOR)

// maxIterators bounds the live iterators of a process.
const maxIterators = 4096

var iterators = newRegistry[*data.Iterator](kindIterator, "ferry_iterator", maxIterators)

// errEndOfEpoch maps to FERRY_END_OF_EPOCH.
var errEndOfEpoch = errors.New("end of epoch")

func defaultIteratorOptions() C.ferry_iterator_options {
	return C.ferry_iterator_options{size: C.uint32_t(unsafe.Sizeof(C.ferry_iterator_options{}))}
}

//export ferry_iterator_options_init
func ferry_iterator_options_init(opts *C.ferry_iterator_options) C.ferry_status {
	return call("ferry_iterator_options_init", func() error {
		if opts == nil {
			return errNull("opts")
		}
		*opts = defaultIteratorOptions()
		return nil
	})
}

//export ferry_iterator_create
func ferry_iterator_create(eh C.uintptr_t, sh C.uintptr_t, opts *C.ferry_iterator_options, out *C.uintptr_t) C.ferry_status {
	return call("ferry_iterator_create", func() error {
		if out == nil {
			return errNull("iterator")
		}
		*out = 0
		eng, err := engines.get(uint64(eh))
		if err != nil {
			return err
		}
		src, err := sources.get(uint64(sh))
		if err != nil {
			return err
		}
		if opts == nil {
			return errNull("opts (batch_size is required)")
		}
		if err := checkSize("ferry_iterator_options", opts.size, C.FERRY_CAPI_V1_ITERATOR_OPTIONS); err != nil {
			return err
		}
		const known = C.FERRY_ITERATOR_F_SHUFFLE | C.FERRY_ITERATOR_F_DROP_LAST
		if opts.flags&^known != 0 {
			return fmt.Errorf("%w: ferry_iterator_options.flags %#x has unknown bits", engine.ErrInvalidArgument, uint32(opts.flags))
		}
		if opts.batch_size <= 0 || opts.batch_size > 1<<24 {
			return fmt.Errorf("%w: batch_size is %d; it must be 1..%d", engine.ErrInvalidArgument, int64(opts.batch_size), 1<<24)
		}
		var transforms map[string]data.Transform
		var staging data.Staging
		var budget int64
		if opts.size >= C.FERRY_CAPI_V2_ITERATOR_OPTIONS {
			if transforms, err = transformsFromC(opts.transforms, opts.num_transforms); err != nil {
				return err
			}
			if opts.staging < C.FERRY_STAGING_AUTO || opts.staging > C.FERRY_STAGING_MAPPED {
				return fmt.Errorf("%w: ferry_iterator_options.staging %d is unknown", engine.ErrInvalidArgument, int32(opts.staging))
			}
			staging, budget = data.Staging(opts.staging), int64(opts.pinned_budget)
		}
		var onError data.OnError
		if opts.size >= C.FERRY_CAPI_V3_ITERATOR_OPTIONS {
			onError = data.OnError(opts.on_error)
		}
		it, err := data.NewIterator(eng, src.src, data.IteratorOptions{
			Transforms:   transforms,
			Staging:      staging,
			PinnedBudget: budget,
			OnError:      onError,
			BatchSize:    int(opts.batch_size),
			Shuffle:      opts.flags&C.FERRY_ITERATOR_F_SHUFFLE != 0,
			DropLast:     opts.flags&C.FERRY_ITERATOR_F_DROP_LAST != 0,
			Seed:         uint64(opts.seed),
			Workers:      int(opts.workers),
			Prefetch:     int(opts.prefetch),
			Rank:         int(opts.rank),
			WorldSize:    int(opts.world_size),
			Timeout:      time.Duration(opts.timeout_ms) * time.Millisecond,
		})
		if err != nil {
			return err
		}
		h, _, err := iterators.add(it)
		if err != nil {
			_ = it.Close()
			return err
		}
		names := make([]*C.char, len(it.Fields()))
		for i, f := range it.Fields() {
			names[i] = C.CString(f.Name)
		}
		iteratorNames.Store(h, names)
		if src.callback != 0 {
			iteratorCallbacks.Store(h, src.callback)
		}
		*out = C.uintptr_t(h)
		return nil
	})
}

// iteratorNames holds each iterator's batch field names as C strings, for ferry_iterator_field, from
// create to destroy.
var iteratorNames sync.Map // uint64 handle -> []*C.char

//export ferry_iterator_num_fields
func ferry_iterator_num_fields(h C.uintptr_t, n *C.int32_t) C.ferry_status {
	return call("ferry_iterator_num_fields", func() error {
		it, err := iterators.get(uint64(h))
		if err != nil {
			return err
		}
		if n == nil {
			return errNull("num_fields")
		}
		*n = C.int32_t(len(it.Fields()))
		return nil
	})
}

//export ferry_iterator_field
func ferry_iterator_field(h C.uintptr_t, index C.int32_t, out *C.ferry_field) C.ferry_status {
	return call("ferry_iterator_field", func() error {
		it, err := iterators.get(uint64(h))
		if err != nil {
			return err
		}
		if out == nil {
			return errNull("field")
		}
		fs := it.Fields()
		if index < 0 || int(index) >= len(fs) {
			return fmt.Errorf("%w: field index %d; the iterator's batches have %d fields", engine.ErrInvalidArgument, int32(index), len(fs))
		}
		v, ok := iteratorNames.Load(uint64(h))
		if !ok {
			return fmt.Errorf("%w: ferry_iterator", errInvalidHandle)
		}
		f := fs[index]
		c := C.ferry_field{name: v.([]*C.char)[index], dtype: C.int32_t(f.DType), ndim: C.int32_t(len(f.Shape))}
		for d, s := range f.Shape {
			c.shape[d] = C.int64_t(s)
		}
		*out = c
		return nil
	})
}

//export ferry_iterator_next
func ferry_iterator_next(h C.uintptr_t, stream C.uintptr_t, out *C.uintptr_t) C.ferry_status {
	return call("ferry_iterator_next", func() error { return iteratorNext(h, stream, 0, out) })
}

//export ferry_iterator_next_wait
func ferry_iterator_next_wait(h C.uintptr_t, stream C.uintptr_t, waitMs C.uint32_t, out *C.uintptr_t) C.ferry_status {
	return call("ferry_iterator_next_wait", func() error {
		if waitMs == 0 {
			return fmt.Errorf("%w: wait_ms is 0; it must be at least 1 (ferry_iterator_next waits without slices)", engine.ErrInvalidArgument)
		}
		return iteratorNext(h, stream, time.Duration(waitMs)*time.Millisecond, out)
	})
}

//export ferry_iterator_next_tensors
func ferry_iterator_next_tensors(h C.uintptr_t, stream C.uintptr_t, waitMs C.uint32_t, tensors **C.DLManagedTensorVersioned,
	capacity C.int32_t, info *C.ferry_batch_properties) C.ferry_status {
	return call("ferry_iterator_next_tensors", func() error {
		it, err := iterators.get(uint64(h))
		if err != nil {
			return err
		}
		if err := checkBatchProperties(info); err != nil {
			return err
		}
		info.num_fields = 0
		if tensors == nil {
			return errNull("tensors")
		}
		n := len(it.Fields())
		if int(capacity) < n {
			return fmt.Errorf("%w: capacity %d is less than the batch's %d fields", engine.ErrInvalidArgument, int32(capacity), n)
		}
		var bh C.uintptr_t
		if err := iteratorNext(h, stream, time.Duration(waitMs)*time.Millisecond, &bh); err != nil || bh == 0 {
			return err
		}
		e, err := batches.get(uint64(bh))
		if err != nil {
			return err
		}
		out := unsafe.Slice(tensors, n)
		for i := range n {
			if err := exportField(bh, e, &e.b.Fields[i], &out[i]); err != nil {
				for _, t := range out[:i] {
					C.ferry_capi_tensor_delete(t)
				}
				_ = ferry_batch_release(bh, 0)
				return err
			}
		}
		writeBatchProperties(info, e.b)
		// The tensors hold the batch now; the handle's own reference goes.
		e.dropped.Store(true)
		return unref(uint64(bh), e)
	})
}

// iteratorNext is ferry_iterator_next, waiting at most wait (0: the iterator's timeout) in this call; no
// batch within wait writes a NULL batch and returns nil.
func iteratorNext(h C.uintptr_t, stream C.uintptr_t, wait time.Duration, out *C.uintptr_t) error {
	it, err := iterators.get(uint64(h))
	if err != nil {
		return err
	}
	if out == nil {
		return errNull("batch")
	}
	*out = 0
	if err := checkNotOwnCallback(h); err != nil {
		return err
	}
	consumer := data.Stream(stream)
	b, err := it.NextWithin(context.Background(), consumer, wait)
	if errors.Is(err, data.ErrNotReady) {
		return nil
	}
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%w of %d", errEndOfEpoch, it.State().Epoch-1)
	}
	if err != nil {
		return err
	}
	bh, err := addBatch(b, consumer)
	if err != nil {
		_ = b.Release(consumer)
		return err
	}
	*out = C.uintptr_t(bh)
	return nil
}

//export ferry_iterator_len
func ferry_iterator_len(h C.uintptr_t, n *C.int64_t) C.ferry_status {
	return call("ferry_iterator_len", func() error {
		it, err := iterators.get(uint64(h))
		if err != nil {
			return err
		}
		if n == nil {
			return errNull("batches")
		}
		*n = C.int64_t(it.BatchesPerEpoch())
		return nil
	})
}

// checkPosition validates a ferry_iterator_position argument.
func checkPosition(st *C.ferry_iterator_position) error {
	if st == nil {
		return errNull("state")
	}
	return checkSize("ferry_iterator_position", st.size, C.FERRY_CAPI_V1_ITERATOR_POSITION)
}

//export ferry_iterator_state
func ferry_iterator_state(h C.uintptr_t, st *C.ferry_iterator_position) C.ferry_status {
	return call("ferry_iterator_state", func() error {
		it, err := iterators.get(uint64(h))
		if err != nil {
			return err
		}
		if err := checkNotOwnCallback(h); err != nil {
			return err
		}
		if err := checkPosition(st); err != nil {
			return err
		}
		pos := it.State()
		st.reserved, st.epoch, st.batch = 0, C.uint64_t(pos.Epoch), C.int64_t(pos.Batch)
		if st.size >= C.FERRY_CAPI_V2_ITERATOR_POSITION {
			g := it.ElasticState()
			consumed := int64(g.Consumed)
			if g.Epoch != pos.Epoch { // at the epoch's end: all of it consumed
				consumed = int64(it.Len())
			}
			st.offset, st.consumed, st.world_size = C.int64_t(pos.Offset), C.int64_t(consumed), C.int64_t(it.WorldSize())
		}
		return nil
	})
}

//export ferry_iterator_restore
func ferry_iterator_restore(h C.uintptr_t, st *C.ferry_iterator_position) C.ferry_status {
	return call("ferry_iterator_restore", func() error {
		it, err := iterators.get(uint64(h))
		if err != nil {
			return err
		}
		if err := checkNotOwnCallback(h); err != nil {
			return err
		}
		if err := checkPosition(st); err != nil {
			return err
		}
		pos := data.IteratorState{Epoch: uint64(st.epoch), Batch: int(st.batch)}
		if st.size >= C.FERRY_CAPI_V2_ITERATOR_POSITION {
			if w := int64(st.world_size); w != 0 && w != int64(it.WorldSize()) {
				return fmt.Errorf("%w: the position was taken under world size %d, this iterator has %d: use ferry_iterator_restore_elastic",
					engine.ErrInvalidArgument, w, it.WorldSize())
			}
			pos.Offset = int(st.offset)
		}
		return it.Restore(pos)
	})
}

//export ferry_iterator_restore_elastic
func ferry_iterator_restore_elastic(h C.uintptr_t, epoch C.uint64_t, consumed C.int64_t) C.ferry_status {
	return call("ferry_iterator_restore_elastic", func() error {
		it, err := iterators.get(uint64(h))
		if err != nil {
			return err
		}
		if err := checkNotOwnCallback(h); err != nil {
			return err
		}
		if consumed < 0 || int64(consumed) > int64(it.Len()) {
			return fmt.Errorf("%w: consumed %d is outside 0..%d (the source's samples)", engine.ErrInvalidArgument, int64(consumed), it.Len())
		}
		return it.RestoreElastic(data.ElasticState{Epoch: uint64(epoch), Consumed: int(consumed)})
	})
}

//export ferry_iterator_set_epoch
func ferry_iterator_set_epoch(h C.uintptr_t, epoch C.uint64_t) C.ferry_status {
	return call("ferry_iterator_set_epoch", func() error {
		it, err := iterators.get(uint64(h))
		if err != nil {
			return err
		}
		if err := checkNotOwnCallback(h); err != nil {
			return err
		}
		return it.SetEpoch(uint64(epoch))
	})
}

//export ferry_iterator_destroy
func ferry_iterator_destroy(h C.uintptr_t) C.ferry_status {
	return call("ferry_iterator_destroy", func() error {
		if h == 0 {
			return nil
		}
		it, idx, err := iterators.take(uint64(h))
		if err != nil {
			return err
		}
		iteratorCallbacks.Delete(uint64(h))
		// From inside a sample callback (Python's garbage collector finalizing a loader on one of its own
		// workers), Close would join the worker that runs the caller: it is deferred instead.
		return closeOrDefer(func() error {
			err := it.Close()
			if v, ok := iteratorNames.LoadAndDelete(uint64(h)); ok {
				for _, p := range v.([]*C.char) {
					C.free(unsafe.Pointer(p))
				}
			}
			iterators.release(idx)
			if errors.Is(err, engine.ErrClosed) {
				return nil // its engine was destroyed first, which closed it
			}
			return err
		})
	})
}

//export ferry_iterator_stats
func ferry_iterator_stats(h C.uintptr_t, out *C.ferry_pipeline_stats) C.ferry_status {
	return call("ferry_iterator_stats", func() error {
		it, err := iterators.get(uint64(h))
		if err != nil {
			return err
		}
		return writeStats(out, it.Stats())
	})
}

//export ferry_iterator_staging
func ferry_iterator_staging(h C.uintptr_t, staging *C.int32_t, why *C.char, whyLen C.uint32_t) C.ferry_status {
	return call("ferry_iterator_staging", func() error {
		if staging == nil {
			return errNull("staging")
		}
		it, err := iterators.get(uint64(h))
		if err != nil {
			return err
		}
		s, reason := it.Staging()
		*staging = C.int32_t(s)
		if why != nil && whyLen > 0 {
			setString(unsafe.Slice(why, int(min(uint32(whyLen), 1<<16))), reason)
		}
		return nil
	})
}
