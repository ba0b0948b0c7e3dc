package main

// #include <stdlib.h>
// #include "exports.h"
import "C"

import (
	"fmt"
	"unsafe"

	"github.com/ferry-ml/ferry/engine"
	ferrydata "github.com/ferry-ml/ferry/engine/data"
)

const kindSource = uint64(C.FERRY_CAPI_KIND_SOURCE)

// maxSources bounds the live sources of a process.
const maxSources = 4096

// sourceEntry is what a source handle refers to: the source, the record offsets it was given, and C
// copies of its field names for ferry_source_field, freed with it.
type sourceEntry struct {
	src      ferrydata.Source
	offsets  []int
	names    []*C.char
	callback uint64 // the callback id of a ferry_source_callback source; else 0
}

var sources = newRegistry[*sourceEntry](kindSource, "ferry_source", maxSources)

// fieldsFromC converts and checks a caller's field array.
func fieldsFromC(fields *C.ferry_field, n C.int32_t) ([]ferrydata.Field, []int, error) {
	if fields == nil {
		return nil, nil, errNull("fields")
	}
	if n <= 0 || n > 1024 {
		return nil, nil, fmt.Errorf("%w: num_fields is %d; it must be 1..1024", engine.ErrInvalidArgument, int32(n))
	}
	cs := unsafe.Slice(fields, int(n))
	out := make([]ferrydata.Field, len(cs))
	offsets := make([]int, len(cs))
	for i, c := range cs {
		if c.name == nil {
			return nil, nil, fmt.Errorf("%w: fields[%d].name is NULL", engine.ErrInvalidArgument, i)
		}
		name := C.GoString(c.name)
		if c.ndim < 0 || c.ndim > C.FERRY_MAX_DIMS {
			return nil, nil, fmt.Errorf("%w: field %q has ndim %d; it must be 0..%d", engine.ErrInvalidArgument, name, int32(c.ndim), C.FERRY_MAX_DIMS)
		}
		shape := make([]int, int(c.ndim))
		for d := range shape {
			shape[d] = int(c.shape[d])
		}
		out[i] = ferrydata.Field{Name: name, DType: ferrydata.DType(c.dtype), Shape: shape}
		if err := out[i].Validate(); err != nil {
			return nil, nil, err
		}
		offsets[i] = int(c.offset)
	}
	return out, offsets, nil
}

// addSource registers a new source and writes its handle; it closes the source when that fails.
func addSource(src ferrydata.Source, offsets []int, out *C.uintptr_t) error {
	return addSourceEntry(&sourceEntry{src: src, offsets: offsets}, out)
}

func addSourceEntry(e *sourceEntry, out *C.uintptr_t) error {
	src := e.src
	for _, f := range src.Fields() {
		e.names = append(e.names, C.CString(f.Name))
	}
	h, _, err := sources.add(e)
	if err != nil {
		_ = e.close() // the constructor's error is the one to report
		return err
	}
	*out = C.uintptr_t(h)
	return nil
}

func (e *sourceEntry) close() error {
	for _, p := range e.names {
		C.free(unsafe.Pointer(p))
	}
	e.names = nil
	return e.src.Close()
}

func cPath(path *C.char) (string, error) {
	if path == nil {
		return "", errNull("path")
	}
	return C.GoString(path), nil
}

//export ferry_source_memory
func ferry_source_memory(n C.int64_t, fields *C.ferry_field, nfields C.int32_t, data *unsafe.Pointer, out *C.uintptr_t) C.ferry_status {
	return call("ferry_source_memory", func() error {
		if out == nil {
			return errNull("source")
		}
		*out = 0
		fs, _, err := fieldsFromC(fields, nfields)
		if err != nil {
			return err
		}
		if data == nil {
			return errNull("data")
		}
		if n <= 0 {
			return fmt.Errorf("%w: num_samples is %d", engine.ErrInvalidArgument, int64(n))
		}
		// Check the addresses as integers before any becomes a Go pointer: the garbage collector
		// rejects small made-up values in pointer slots.
		addrs := unsafe.Slice((*uintptr)(unsafe.Pointer(data)), len(fs))
		ptrs := unsafe.Slice(data, len(fs))
		bufs := make([][]byte, len(fs))
		for i, a := range addrs {
			if a == 0 {
				return fmt.Errorf("%w: data[%d] (field %q) is NULL", engine.ErrInvalidArgument, i, fs[i].Name)
			}
			if a < 4096 {
				return fmt.Errorf("%w: data[%d] (field %q) is %#x, not a valid address", engine.ErrInvalidArgument, i, fs[i].Name, a)
			}
			bufs[i] = unsafe.Slice((*byte)(ptrs[i]), int(n)*fs[i].Bytes())
		}
		src, err := ferrydata.NewMemorySource(int(n), fs, bufs)
		if err != nil {
			return err
		}
		return addSource(src, nil, out)
	})
}

//export ferry_source_records
func ferry_source_records(path *C.char, recordSize, headerSize C.int64_t, fields *C.ferry_field, nfields C.int32_t, out *C.uintptr_t) C.ferry_status {
	return call("ferry_source_records", func() error {
		if out == nil {
			return errNull("source")
		}
		*out = 0
		p, err := cPath(path)
		if err != nil {
			return err
		}
		fs, offsets, err := fieldsFromC(fields, nfields)
		if err != nil {
			return err
		}
		spec := ferrydata.RecordSpec{RecordSize: int(recordSize), HeaderSize: int(headerSize)}
		for i, f := range fs {
			spec.Fields = append(spec.Fields, ferrydata.RecordField{Field: f, Offset: offsets[i]})
		}
		src, err := ferrydata.NewRecordSource(p, spec)
		if err != nil {
			return err
		}
		return addSource(src, offsets, out)
	})
}

//export ferry_source_cifar10
func ferry_source_cifar10(path *C.char, out *C.uintptr_t) C.ferry_status {
	return call("ferry_source_cifar10", func() error {
		if out == nil {
			return errNull("source")
		}
		*out = 0
		p, err := cPath(path)
		if err != nil {
			return err
		}
		spec := ferrydata.CIFAR10Spec()
		src, err := ferrydata.NewRecordSource(p, spec)
		if err != nil {
			return err
		}
		offsets := make([]int, len(spec.Fields))
		for i, f := range spec.Fields {
			offsets[i] = f.Offset
		}
		return addSource(src, offsets, out)
	})
}

//export ferry_source_npy
func ferry_source_npy(names **C.char, paths **C.char, count C.int32_t, out *C.uintptr_t) C.ferry_status {
	return call("ferry_source_npy", func() error {
		if out == nil {
			return errNull("source")
		}
		*out = 0
		if names == nil || paths == nil {
			return errNull("names or paths")
		}
		if count <= 0 || count > 1024 {
			return fmt.Errorf("%w: count is %d; it must be 1..1024", engine.ErrInvalidArgument, int32(count))
		}
		ns, ps := unsafe.Slice(names, int(count)), unsafe.Slice(paths, int(count))
		m := map[string]string{}
		for i := range ns {
			if ns[i] == nil || ps[i] == nil {
				return fmt.Errorf("%w: names[%d] or paths[%d] is NULL", engine.ErrInvalidArgument, i, i)
			}
			name := C.GoString(ns[i])
			if _, dup := m[name]; dup {
				return fmt.Errorf("%w: field name %q is given twice", engine.ErrInvalidArgument, name)
			}
			m[name] = C.GoString(ps[i])
		}
		src, err := ferrydata.NewNpySource(m)
		if err != nil {
			return err
		}
		return addSource(src, nil, out)
	})
}

func defaultTokenOptions() C.ferry_token_options {
	return C.ferry_token_options{size: C.uint32_t(unsafe.Sizeof(C.ferry_token_options{})), format: C.FERRY_TOKENS_UINT16}
}

//export ferry_token_options_init
func ferry_token_options_init(opts *C.ferry_token_options) C.ferry_status {
	return call("ferry_token_options_init", func() error {
		if opts == nil {
			return errNull("opts")
		}
		*opts = defaultTokenOptions()
		return nil
	})
}

//export ferry_source_tokens
func ferry_source_tokens(path *C.char, opts *C.ferry_token_options, out *C.uintptr_t) C.ferry_status {
	return call("ferry_source_tokens", func() error {
		if out == nil {
			return errNull("source")
		}
		*out = 0
		p, err := cPath(path)
		if err != nil {
			return err
		}
		if opts == nil {
			return errNull("opts")
		}
		if err := checkSize("ferry_token_options", opts.size, C.FERRY_CAPI_V1_TOKEN_OPTIONS); err != nil {
			return err
		}
		if opts.flags&^(C.FERRY_TOKENS_F_RANDOM|C.FERRY_TOKENS_F_WINDOW) != 0 {
			return fmt.Errorf("%w: ferry_token_options.flags %#x has unknown bits", engine.ErrInvalidArgument, uint32(opts.flags))
		}
		src, err := ferrydata.NewTokenSource(p, ferrydata.TokenConfig{
			Format: ferrydata.TokenFormat(opts.format), SeqLen: int(opts.seq_len),
			Random: opts.flags&C.FERRY_TOKENS_F_RANDOM != 0, Seed: uint64(opts.seed),
			Window: opts.flags&C.FERRY_TOKENS_F_WINDOW != 0,
		})
		if err != nil {
			return err
		}
		return addSource(src, nil, out)
	})
}

func defaultRaggedOptions() C.ferry_ragged_options {
	return C.ferry_ragged_options{size: C.uint32_t(unsafe.Sizeof(C.ferry_ragged_options{})), format: C.FERRY_TOKENS_UINT16}
}

//export ferry_ragged_options_init
func ferry_ragged_options_init(opts *C.ferry_ragged_options) C.ferry_status {
	return call("ferry_ragged_options_init", func() error {
		if opts == nil {
			return errNull("opts")
		}
		*opts = defaultRaggedOptions()
		return nil
	})
}

//export ferry_source_ragged_tokens
func ferry_source_ragged_tokens(tokensPath, offsetsPath *C.char, opts *C.ferry_ragged_options, out *C.uintptr_t) C.ferry_status {
	return call("ferry_source_ragged_tokens", func() error {
		if out == nil {
			return errNull("source")
		}
		*out = 0
		if tokensPath == nil {
			return errNull("tokens_path")
		}
		if offsetsPath == nil {
			return errNull("offsets_path")
		}
		if opts == nil {
			return errNull("opts")
		}
		if err := checkSize("ferry_ragged_options", opts.size, C.FERRY_CAPI_V1_RAGGED_OPTIONS); err != nil {
			return err
		}
		cfg := ferrydata.RaggedConfig{Format: ferrydata.TokenFormat(opts.format), MaxLen: int(opts.max_len)}
		if opts.field_name != nil {
			if cfg.FieldName = C.GoString(opts.field_name); cfg.FieldName == "" {
				return fmt.Errorf("%w: ferry_ragged_options.field_name is empty; pass NULL for \"tokens\"", engine.ErrInvalidArgument)
			}
		}
		src, err := ferrydata.NewRaggedTokenSource(C.GoString(tokensPath), C.GoString(offsetsPath), cfg)
		if err != nil {
			return err
		}
		return addSource(src, nil, out)
	})
}

//export ferry_source_callback
func ferry_source_callback(n C.int64_t, fields *C.ferry_field, nfields C.int32_t, fn C.uintptr_t, user C.uintptr_t, out *C.uintptr_t) C.ferry_status {
	return call("ferry_source_callback", func() error {
		if out == nil {
			return errNull("source")
		}
		*out = 0
		fs, _, err := fieldsFromC(fields, nfields)
		if err != nil {
			return err
		}
		if fn == 0 {
			return errNull("fn")
		}
		if n <= 0 {
			return fmt.Errorf("%w: num_samples is %d", engine.ErrInvalidArgument, int64(n))
		}
		sizes := make([]C.int64_t, len(fs))
		for i, f := range fs {
			sizes[i] = C.int64_t(f.Bytes())
		}
		id := callbackIDs.Add(1)
		src, err := ferrydata.NewFuncSource(int(n), fs, func(i int, dst [][]byte) error {
			// The buffers are the iterator's staging memory, never Go memory, so passing their addresses
			// in a Go array is allowed; C writes through them only during the call.
			ptrs := make([]unsafe.Pointer, len(dst))
			for k := range dst {
				ptrs[k] = unsafe.Pointer(unsafe.SliceData(dst[k]))
			}
			r := C.ferry_capi_call_sample(fn, user, C.uint64_t(id), C.int64_t(i), &ptrs[0], &sizes[0], C.int32_t(len(dst)))
			if r != 0 {
				return fmt.Errorf("%w: the sample callback returned %d for sample %d", engine.ErrIO, int32(r), i)
			}
			return nil
		})
		if err != nil {
			return err
		}
		return addSourceEntry(&sourceEntry{src: src, callback: id}, out)
	})
}

//export ferry_source_len
func ferry_source_len(h C.uintptr_t, n *C.int64_t) C.ferry_status {
	return call("ferry_source_len", func() error {
		e, err := sources.get(uint64(h))
		if err != nil {
			return err
		}
		if n == nil {
			return errNull("num_samples")
		}
		*n = C.int64_t(e.src.Len())
		return nil
	})
}

//export ferry_source_num_fields
func ferry_source_num_fields(h C.uintptr_t, n *C.int32_t) C.ferry_status {
	return call("ferry_source_num_fields", func() error {
		e, err := sources.get(uint64(h))
		if err != nil {
			return err
		}
		if n == nil {
			return errNull("num_fields")
		}
		*n = C.int32_t(len(e.src.Fields()))
		return nil
	})
}

//export ferry_source_field
func ferry_source_field(h C.uintptr_t, index C.int32_t, out *C.ferry_field) C.ferry_status {
	return call("ferry_source_field", func() error {
		e, err := sources.get(uint64(h))
		if err != nil {
			return err
		}
		if out == nil {
			return errNull("field")
		}
		fs := e.src.Fields()
		if index < 0 || int(index) >= len(fs) {
			return fmt.Errorf("%w: field index %d; the source has %d fields", engine.ErrInvalidArgument, int32(index), len(fs))
		}
		f := fs[index]
		c := C.ferry_field{name: e.names[index], dtype: C.int32_t(f.DType), ndim: C.int32_t(len(f.Shape))}
		for d, s := range f.Shape {
			c.shape[d] = C.int64_t(s)
		}
		if e.offsets != nil {
			c.offset = C.int64_t(e.offsets[index])
		}
		*out = c
		return nil
	})
}

//export ferry_source_destroy
func ferry_source_destroy(h C.uintptr_t) C.ferry_status {
	return call("ferry_source_destroy", func() error {
		if h == 0 {
			return nil
		}
		e, idx, err := sources.take(uint64(h))
		if err != nil {
			return err
		}
		// From inside a sample callback, closing a callback source would wait for that very call.
		return closeOrDefer(func() error {
			err := e.close()
			sources.release(idx)
			return err
		})
	})
}
