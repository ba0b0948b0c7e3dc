package main

// #include "exports.h"
import "C"

import (
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/data"
)

const kindFeed = uint64(C.FERRY_CAPI_KIND_FEED)

// maxFeeds bounds the live feeds of a process.
const maxFeeds = 4096

var feeds = newRegistry[*data.Feed](kindFeed, "ferry_feed", maxFeeds)

//export ferry_feed_options_init
func ferry_feed_options_init(opts *C.ferry_feed_options) C.ferry_status {
	return call("ferry_feed_options_init", func() error {
		if opts == nil {
			return errNull("opts")
		}
		*opts = C.ferry_feed_options{size: C.uint32_t(unsafe.Sizeof(C.ferry_feed_options{}))}
		return nil
	})
}

//export ferry_feed_create
func ferry_feed_create(eh C.uintptr_t, opts *C.ferry_feed_options, out *C.uintptr_t) C.ferry_status {
	return call("ferry_feed_create", func() error {
		if out == nil {
			return errNull("feed")
		}
		*out = 0
		eng, err := engines.get(uint64(eh))
		if err != nil {
			return err
		}
		if opts == nil {
			return errNull("opts")
		}
		if err := checkSize("ferry_feed_options", opts.size, C.FERRY_CAPI_V1_FEED_OPTIONS); err != nil {
			return err
		}
		transforms, err := transformsFromC(opts.transforms, opts.num_transforms)
		if err != nil {
			return err
		}
		f, err := data.NewFeed(eng, data.FeedOptions{
			Slots:        int(opts.slots),
			Workers:      int(opts.workers),
			Transforms:   transforms,
			PinnedBudget: int64(opts.pinned_budget),
			Timeout:      time.Duration(opts.timeout_ms) * time.Millisecond,
		})
		if err != nil {
			return err
		}
		h, _, err := feeds.add(f)
		if err != nil {
			_ = f.Close()
			return err
		}
		*out = C.uintptr_t(h)
		return nil
	})
}

//export ferry_feed_push
func ferry_feed_push(h C.uintptr_t, tensors *C.ferry_host_tensor, n C.int32_t, out *C.uintptr_t) C.ferry_status {
	return call("ferry_feed_push", func() error {
		f, err := feeds.get(uint64(h))
		if err != nil {
			return err
		}
		if out == nil {
			return errNull("batch")
		}
		*out = 0
		if n <= 0 || n > 64 {
			return fmt.Errorf("%w: num_tensors is %d; it must be 1..64", engine.ErrInvalidArgument, int32(n))
		}
		if tensors == nil {
			return errNull("tensors")
		}
		ts, err := hostTensors(unsafe.Slice(tensors, int(n)))
		if err != nil {
			return err
		}
		b, err := f.Push(ts)
		if err != nil {
			return err
		}
		bh, err := addBatch(b, 0)
		if err != nil {
			_ = b.Release(0)
			return err
		}
		*out = C.uintptr_t(bh)
		return nil
	})
}

// hostTensors converts the caller's tensor descriptions; the data stays the caller's memory.
func hostTensors(cs []C.ferry_host_tensor) ([]data.FeedTensor, error) {
	out := make([]data.FeedTensor, len(cs))
	for k := range cs {
		c := &cs[k]
		if c.name == nil {
			return nil, fmt.Errorf("%w: tensors[%d].name is NULL", engine.ErrInvalidArgument, k)
		}
		name := C.GoString(c.name)
		if c.ndim < 1 || c.ndim > C.FERRY_MAX_DIMS+1 {
			return nil, fmt.Errorf("%w: tensor %q has ndim %d; it must be 1..%d", engine.ErrInvalidArgument, name, int32(c.ndim), C.FERRY_MAX_DIMS+1)
		}
		shape := make([]int, int(c.ndim))
		for d := range shape {
			if c.shape[d] < 0 || c.shape[d] > 1<<40 {
				return nil, fmt.Errorf("%w: tensor %q has shape[%d] = %d", engine.ErrInvalidArgument, name, d, int64(c.shape[d]))
			}
			shape[d] = int(c.shape[d])
		}
		if c.bytes < 0 || c.bytes > 1<<46 {
			return nil, fmt.Errorf("%w: tensor %q has bytes = %d", engine.ErrInvalidArgument, name, int64(c.bytes))
		}
		if c.data == nil && c.bytes > 0 {
			return nil, fmt.Errorf("%w: tensor %q has NULL data", engine.ErrInvalidArgument, name)
		}
		var buf []byte
		if c.bytes > 0 {
			buf = unsafe.Slice((*byte)(c.data), int(c.bytes))
		}
		out[k] = data.FeedTensor{Name: name, DType: data.DType(c.dtype), Shape: shape, Data: buf}
	}
	return out, nil
}

//export ferry_feed_add_stall
func ferry_feed_add_stall(h C.uintptr_t, ns C.uint64_t) C.ferry_status {
	return call("ferry_feed_add_stall", func() error {
		f, err := feeds.get(uint64(h))
		if err != nil {
			return err
		}
		if ns > 1<<62 {
			return fmt.Errorf("%w: stall_ns %d", engine.ErrInvalidArgument, uint64(ns))
		}
		f.AddStall(time.Duration(ns))
		return nil
	})
}

//export ferry_feed_stats
func ferry_feed_stats(h C.uintptr_t, out *C.ferry_pipeline_stats) C.ferry_status {
	return call("ferry_feed_stats", func() error {
		f, err := feeds.get(uint64(h))
		if err != nil {
			return err
		}
		return writeStats(out, f.Stats())
	})
}

// writeStats fills a ferry_pipeline_stats.
func writeStats(out *C.ferry_pipeline_stats, st data.IteratorStats) error {
	if out == nil {
		return errNull("stats")
	}
	if err := checkSize("ferry_pipeline_stats", out.size, C.FERRY_CAPI_V1_PIPELINE_STATS); err != nil {
		return err
	}
	// Only the fields the caller's size covers are written: an older caller's struct is shorter.
	out.batches, out.samples = C.uint64_t(st.Batches), C.uint64_t(st.Samples)
	out.bytes, out.stall_ns = C.uint64_t(st.Bytes), C.uint64_t(st.Stall)
	if out.size >= C.FERRY_CAPI_V2_PIPELINE_STATS {
		out.skipped = C.uint64_t(st.Skipped)
	}
	return nil
}

//export ferry_feed_destroy
func ferry_feed_destroy(h C.uintptr_t) C.ferry_status {
	return call("ferry_feed_destroy", func() error {
		if h == 0 {
			return nil
		}
		f, idx, err := feeds.take(uint64(h))
		if err != nil {
			return err
		}
		err = f.Close()
		feeds.release(idx)
		if errors.Is(err, engine.ErrClosed) {
			return nil // its engine was destroyed first, which closed it
		}
		return err
	})
}
