package main

// #include "exports.h"
import "C"

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/ferry-ml/ferry/engine"
)

// Re-entry from a sample callback. A caller's ferry_sample_fn runs on an iterator's worker, and
// callback.c marks that thread with the id of the callback source for the duration of the call. A ferry
// call made from inside the function (Python's garbage collector finalizing a loader, a callback that
// closes its loader or asks for its position) runs on that same thread, and must not wait for the worker
// it runs on: calls that would are refused, and destroys are deferred to a goroutine of their own.

// callbackIDs numbers the callback sources, from 1.
var callbackIDs atomic.Uint64

// iteratorCallbacks maps an iterator handle to the callback id of its source, for iterators over a
// callback source.
var iteratorCallbacks sync.Map // uint64 handle -> uint64 id

// inSampleCallback reports whether the calling thread runs a sample callback.
func inSampleCallback() bool { return C.ferry_capi_running_source() != 0 }

// checkNotOwnCallback refuses a call on iterator h from inside a sample callback of h's own source: the
// call would wait for the worker that runs the callback, which waits for the call.
func checkNotOwnCallback(h C.uintptr_t) error {
	id, ok := iteratorCallbacks.Load(uint64(h))
	if !ok || uint64(C.ferry_capi_running_source()) != id.(uint64) {
		return nil
	}
	return fmt.Errorf("%w: called from inside the sample callback of this iterator's own source, on the worker "+
		"it would wait for; call it from the thread that iterates (the callback must only fill its sample)",
		engine.ErrInvalidArgument)
}

// deferredCloses runs destroys called from inside a sample callback, in the order they were called (an
// iterator before its engine and source), each once the callbacks it waits for have returned.
var deferredCloses closeQueue

type closeQueue struct {
	mu      sync.Mutex
	queue   []func()
	running bool
}

// add queues f and makes sure a goroutine runs the queue.
func (q *closeQueue) add(f func()) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.queue = append(q.queue, f)
	if !q.running {
		q.running = true
		go q.run()
	}
}

func (q *closeQueue) run() {
	for {
		q.mu.Lock()
		if len(q.queue) == 0 {
			q.running = false
			q.mu.Unlock()
			return
		}
		f := q.queue[0]
		q.queue = q.queue[1:]
		q.mu.Unlock()
		f()
	}
}

// closeOrDefer runs closeFn now, or, from inside a sample callback, queues it and returns nil: the
// handle is already invalid, and the object is closed on another goroutine once the callback returns.
func closeOrDefer(closeFn func() error) error {
	if !inSampleCallback() {
		return closeFn()
	}
	deferredCloses.add(func() { _ = closeFn() })
	return nil
}
