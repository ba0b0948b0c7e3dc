package main

// #include "exports.h"
import "C"

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/data"
)

const kindBatch = uint64(C.FERRY_CAPI_KIND_BATCH)

// maxBatches bounds the batches (and the tensors over them) alive at once in a process.
const maxBatches = 1 << 16

// batchEntry is what a batch handle refers to. The handle and every DLPack tensor handed out each hold a
// reference; the batch goes back to its iterator when the last one is dropped.
type batchEntry struct {
	b        *data.Batch
	consumer data.Stream    // the stream given to ferry_iterator_next
	release  atomic.Uintptr // the stream given to ferry_batch_release (0: consumer)
	refs     atomic.Int32
	dropped  atomic.Bool // ferry_batch_release was called: the handle is no longer usable
}

var batches = newRegistry[*batchEntry](kindBatch, "ferry_batch", maxBatches)

func addBatch(b *data.Batch, consumer data.Stream) (uint64, error) {
	e := &batchEntry{b: b, consumer: consumer}
	e.refs.Store(1)
	h, _, err := batches.add(e)
	return h, err
}

// lookupBatch resolves a handle the caller still holds (not yet released).
func lookupBatch(h C.uintptr_t) (*batchEntry, error) {
	e, err := batches.get(uint64(h))
	if err != nil {
		return nil, err
	}
	if e.dropped.Load() {
		return nil, fmt.Errorf("%w: ferry_batch %#x was released", errInvalidHandle, uint64(h))
	}
	if e.b.IteratorClosed() {
		return nil, fmt.Errorf("%w: ferry_batch %#x belongs to a destroyed iterator", errInvalidHandle, uint64(h))
	}
	return e, nil
}

// unref drops one reference; the last one gives the batch back and frees its handle.
func unref(h uint64, e *batchEntry) error {
	if e.refs.Add(-1) != 0 {
		return nil
	}
	stream := e.consumer
	if s := e.release.Load(); s != 0 {
		stream = data.Stream(s)
	}
	err := e.b.Release(stream)
	if _, idx, terr := batches.take(h); terr == nil {
		batches.release(idx)
	}
	return err
}

//export ferryTensorDeleted
func ferryTensorDeleted(h C.uint64_t) {
	// A deleter may run on any thread, at any time: it must never panic into C.
	defer func() { _ = recover() }()
	e, err := batches.get(uint64(h))
	if err != nil {
		return
	}
	_ = unref(uint64(h), e)
}

// checkBatchProperties checks a caller's ferry_batch_properties.
func checkBatchProperties(info *C.ferry_batch_properties) error {
	if info == nil {
		return errNull("info")
	}
	return checkSize("ferry_batch_properties", info.size, C.FERRY_CAPI_V1_BATCH_PROPERTIES)
}

// writeBatchProperties fills a checked ferry_batch_properties with b's.
func writeBatchProperties(info *C.ferry_batch_properties, b *data.Batch) {
	*info = C.ferry_batch_properties{
		size: info.size, num_fields: C.int32_t(len(b.Fields)), epoch: C.uint64_t(b.Epoch),
		index: C.int64_t(b.Index), num_samples: C.int64_t(b.Size()),
	}
}

//export ferry_batch_info
func ferry_batch_info(h C.uintptr_t, info *C.ferry_batch_properties) C.ferry_status {
	return call("ferry_batch_info", func() error {
		e, err := lookupBatch(h)
		if err != nil {
			return err
		}
		if err := checkBatchProperties(info); err != nil {
			return err
		}
		writeBatchProperties(info, e.b)
		return nil
	})
}

//export ferry_batch_indices
func ferry_batch_indices(h C.uintptr_t, indices *C.int64_t, capacity C.int64_t) C.ferry_status {
	return call("ferry_batch_indices", func() error {
		e, err := lookupBatch(h)
		if err != nil {
			return err
		}
		if indices == nil {
			return errNull("indices")
		}
		n := e.b.Size()
		if e.b.Indices == nil {
			return fmt.Errorf("%w: ferry_batch %#x was staged by a feed, whose batches have no source indices", engine.ErrUnsupported, uint64(h))
		}
		if int64(capacity) < int64(n) {
			return fmt.Errorf("%w: capacity %d is less than the batch's %d samples", engine.ErrInvalidArgument, int64(capacity), n)
		}
		dst := unsafe.Slice(indices, n)
		for i, v := range e.b.Indices {
			dst[i] = C.int64_t(v)
		}
		return nil
	})
}

// dlpackType is a dtype's DLPack code and bits.
func dlpackType(d data.DType) (code, bits C.uint8_t) {
	bits = C.uint8_t(8 * d.Size())
	switch d {
	case data.Bool:
		return C.kDLBool, bits
	case data.Uint8, data.Uint16, data.Uint32, data.Uint64:
		return C.kDLUInt, bits
	case data.Int8, data.Int16, data.Int32, data.Int64:
		return C.kDLInt, bits
	case data.BFloat16:
		return C.kDLBfloat, bits
	}
	return C.kDLFloat, bits
}

func exportField(h C.uintptr_t, e *batchEntry, f *data.BatchField, out **C.DLManagedTensorVersioned) error {
	shape := make([]C.int64_t, len(f.Shape))
	for i, s := range f.Shape {
		shape[i] = C.int64_t(s)
	}
	code, bits := dlpackType(f.DType)
	// The address crosses as an integer (a device address must never sit in a Go pointer, where the
	// garbage collector would inspect it); C turns it into DLPack's void*.
	var data C.uint64_t
	devType, devID := C.int32_t(C.kDLCPU), C.int32_t(0)
	if e.b.OnGPU {
		data = C.uint64_t(f.Device)
		devType, devID = C.kDLCUDA, C.int32_t(e.b.Device())
	} else {
		data = C.uint64_t(uintptr(unsafe.Pointer(unsafe.SliceData(f.Host))))
	}
	e.refs.Add(1)
	t := C.ferry_capi_tensor_new(C.uint64_t(h), data, devType, devID, C.int32_t(len(shape)), &shape[0], code, bits)
	if t == nil {
		e.refs.Add(-1)
		return fmt.Errorf("%w: no memory for a DLPack tensor", engine.ErrOutOfMemory)
	}
	*out = t
	return nil
}

// fieldAt is the batch's field index, or an ErrInvalidArgument error naming the range.
func fieldAt(e *batchEntry, index C.int32_t) (*data.BatchField, error) {
	if index < 0 || int(index) >= len(e.b.Fields) {
		return nil, fmt.Errorf("%w: field index %d; the batch has %d fields", engine.ErrInvalidArgument, int32(index), len(e.b.Fields))
	}
	return &e.b.Fields[index], nil
}

//export ferry_batch_field
func ferry_batch_field(h C.uintptr_t, index C.int32_t, out **C.DLManagedTensorVersioned) C.ferry_status {
	return call("ferry_batch_field", func() error {
		e, err := lookupBatch(h)
		if err != nil {
			return err
		}
		if out == nil {
			return errNull("tensor")
		}
		*out = nil
		f, err := fieldAt(e, index)
		if err != nil {
			return err
		}
		return exportField(h, e, f, out)
	})
}

//export ferry_batch_field_name
func ferry_batch_field_name(h C.uintptr_t, index C.int32_t, name *C.char, n C.uint32_t) C.ferry_status {
	return call("ferry_batch_field_name", func() error {
		e, err := lookupBatch(h)
		if err != nil {
			return err
		}
		if name == nil {
			return errNull("name")
		}
		f, err := fieldAt(e, index)
		if err != nil {
			return err
		}
		s := f.Name
		if len(s)+1 > int(n) {
			return fmt.Errorf("%w: field %d's name needs %d bytes with its NUL; the buffer has %d", engine.ErrLimit, int32(index), len(s)+1, uint32(n))
		}
		dst := unsafe.Slice((*byte)(unsafe.Pointer(name)), len(s)+1)
		copy(dst, s)
		dst[len(s)] = 0
		return nil
	})
}

//export ferry_batch_field_origin
func ferry_batch_field_origin(h C.uintptr_t, index C.int32_t, origin *C.int32_t) C.ferry_status {
	return call("ferry_batch_field_origin", func() error {
		e, err := lookupBatch(h)
		if err != nil {
			return err
		}
		if origin == nil {
			return errNull("origin")
		}
		f, err := fieldAt(e, index)
		if err != nil {
			return err
		}
		*origin = C.int32_t(f.From)
		return nil
	})
}

//export ferry_batch_field_by_name
func ferry_batch_field_by_name(h C.uintptr_t, name *C.char, out **C.DLManagedTensorVersioned) C.ferry_status {
	return call("ferry_batch_field_by_name", func() error {
		e, err := lookupBatch(h)
		if err != nil {
			return err
		}
		if out == nil {
			return errNull("tensor")
		}
		*out = nil
		if name == nil {
			return errNull("name")
		}
		n := C.GoString(name)
		f := e.b.Field(n)
		if f == nil {
			names := make([]string, len(e.b.Fields))
			for i, bf := range e.b.Fields {
				names[i] = bf.Name
			}
			return fmt.Errorf("%w: the batch has no field %q (it has %v)", engine.ErrInvalidArgument, n, names)
		}
		return exportField(h, e, f, out)
	})
}

//export ferry_batch_wait
func ferry_batch_wait(h C.uintptr_t, stream C.uintptr_t) C.ferry_status {
	return call("ferry_batch_wait", func() error {
		e, err := lookupBatch(h)
		if err != nil {
			return err
		}
		return e.b.Wait(data.Stream(stream))
	})
}

//export ferry_tensor_wait
func ferry_tensor_wait(tensor *C.DLManagedTensorVersioned, stream C.uintptr_t) C.ferry_status {
	return call("ferry_tensor_wait", func() error {
		if tensor == nil {
			return errNull("tensor")
		}
		var h C.uint64_t
		if C.ferry_capi_tensor_batch(tensor, &h) == 0 {
			return fmt.Errorf("%w: the tensor was not made by ferry_batch_field", engine.ErrInvalidArgument)
		}
		e, err := batches.get(uint64(h))
		if err != nil {
			return err
		}
		return e.b.Wait(data.Stream(stream))
	})
}

//export ferry_batch_release
func ferry_batch_release(h C.uintptr_t, stream C.uintptr_t) C.ferry_status {
	return call("ferry_batch_release", func() error {
		e, err := batches.get(uint64(h))
		if err != nil {
			return err
		}
		if !e.dropped.CompareAndSwap(false, true) {
			return fmt.Errorf("%w: ferry_batch %#x was released", errInvalidHandle, uint64(h))
		}
		e.release.Store(uintptr(stream))
		err = unref(uint64(h), e) // dropped even when the iterator is gone, so the handle is freed
		if e.b.IteratorClosed() {
			return fmt.Errorf("%w: ferry_batch %#x belongs to a destroyed iterator", errInvalidHandle, uint64(h))
		}
		return err
	})
}
