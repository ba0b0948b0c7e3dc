package main

// #include "exports.h"
import "C"

import (
	"errors"
	"fmt"
	"sync"

	"github.com/ferry-ml/ferry/engine"
)

// Handles given to C are IDs, never Go pointers: kind in bits 56..63, generation in bits 32..55, slot
// index in bits 0..31. A destroyed handle's generation no longer matches its slot, so a stale handle is
// caught even after the slot is reused; a handle of another kind or a made-up value is caught by the kind
// and range checks. The layout and the kinds (FERRY_CAPI_KIND_*) are defined once, in capi.h; the C entry
// points that never enter Go (snapshot.c, metric_log.c) decode engine and monitor handles with them.
const (
	kindShift = C.FERRY_CAPI_HANDLE_KIND_SHIFT
	genShift  = C.FERRY_CAPI_HANDLE_GEN_SHIFT
	genMask   = uint64(C.FERRY_CAPI_HANDLE_GEN_MASK)
	indexMask = uint64(C.FERRY_CAPI_HANDLE_INDEX_MASK)

	kindEngine = uint64(C.FERRY_CAPI_KIND_ENGINE)
)

// errInvalidHandle is wrapped by every bad-handle error.
var errInvalidHandle = errors.New("invalid handle")

type entry[T any] struct {
	gen  uint64
	live bool // lookups succeed; false from take until the index is reused
	val  T
}

// registry maps handles of one kind to values. It is safe for concurrent use.
type registry[T any] struct {
	mu      sync.RWMutex
	kind    uint64
	name    string
	max     int
	entries []entry[T]
	free    []uint32
}

func newRegistry[T any](kind uint64, name string, limit int) *registry[T] {
	return &registry[T]{kind: kind, name: name, max: limit}
}

// add stores v and returns its handle and slot index.
func (r *registry[T]) add(v T) (uint64, uint32, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var idx uint32
	switch {
	case len(r.free) > 0:
		idx = r.free[len(r.free)-1]
		r.free = r.free[:len(r.free)-1]
	case len(r.entries) < r.max:
		idx = uint32(len(r.entries))
		r.entries = append(r.entries, entry[T]{gen: 1})
	default:
		return 0, 0, fmt.Errorf("%w: %d %ss are alive, the most allowed", engine.ErrLimit, r.max, r.name)
	}
	e := &r.entries[idx]
	e.live, e.val = true, v
	return r.kind<<kindShift | e.gen<<genShift | uint64(idx), idx, nil
}

// resolve checks h and returns its live entry; r.mu must be held.
func (r *registry[T]) resolve(h uint64) (*entry[T], uint32, error) {
	if h == 0 {
		return nil, 0, fmt.Errorf("%w: %s is NULL", errInvalidHandle, r.name)
	}
	idx := uint32(h & indexMask)
	if h>>kindShift != r.kind || int(idx) >= len(r.entries) {
		return nil, 0, fmt.Errorf("%w: %#x is not a %s handle", errInvalidHandle, h, r.name)
	}
	e := &r.entries[idx]
	if !e.live || e.gen != (h>>genShift)&genMask {
		return nil, 0, fmt.Errorf("%w: %s handle %#x is stale (already destroyed)", errInvalidHandle, r.name, h)
	}
	return e, idx, nil
}

// get returns the value of a live handle.
func (r *registry[T]) get(h uint64) (T, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, _, err := r.resolve(h)
	if err != nil {
		var zero T
		return zero, err
	}
	return e.val, nil
}

// take makes h invalid for lookups and returns its value and index. The index stays reserved until
// release, so that nothing reuses it while the value is being torn down.
func (r *registry[T]) take(h uint64) (T, uint32, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, idx, err := r.resolve(h)
	if err != nil {
		var zero T
		return zero, 0, err
	}
	v := e.val
	e.live = false
	var zero T
	e.val = zero
	return v, idx, nil
}

// release frees an index given by take, for reuse under a new generation.
func (r *registry[T]) release(idx uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := &r.entries[idx]
	e.gen = (e.gen + 1) & genMask
	if e.gen == 0 {
		e.gen = 1
	}
	r.free = append(r.free, idx)
}
