package data

import (
	"fmt"
	"math"

	"github.com/ferry-ml/ferry/engine"
)

// MemorySource serves samples from memory the caller owns: one contiguous buffer per field holding all
// samples back to back, in C order with the sample as the first dimension (a numpy array of shape
// [n, shape...]). Nothing is copied at creation; the caller keeps the memory alive and unchanged until
// Close returns. Close waits for reads in flight, so the memory may be freed as soon as it returns.
type MemorySource struct {
	n      int
	fields []Field
	data   [][]byte
	guard  closeGuard
}

var (
	_ Source       = (*MemorySource)(nil)
	_ MemoryBacked = (*MemorySource)(nil)
)

// NewMemorySource wraps data: data[k] holds field k of all n samples, exactly n*fields[k].Bytes() bytes.
func NewMemorySource(n int, fields []Field, data [][]byte) (*MemorySource, error) {
	if n <= 0 {
		return nil, fmt.Errorf("%w: memory source: %d samples; a source needs at least one", engine.ErrInvalidArgument, n)
	}
	if err := validateFields(fields); err != nil {
		return nil, fmt.Errorf("memory source: %w", err)
	}
	if len(data) != len(fields) {
		return nil, fmt.Errorf("%w: memory source: %d buffers for %d fields", engine.ErrInvalidArgument, len(data), len(fields))
	}
	for k, f := range fields {
		b := f.Bytes()
		if n > math.MaxInt/b {
			return nil, fmt.Errorf("%w: memory source: field %q: %d samples of %d bytes overflow", engine.ErrInvalidArgument, f.Name, n, b)
		}
		if len(data[k]) != n*b {
			return nil, fmt.Errorf("%w: memory source: field %q: buffer is %d bytes, expected %d samples × %d bytes = %d",
				engine.ErrInvalidArgument, f.Name, len(data[k]), n, b, n*b)
		}
	}
	return &MemorySource{n: n, fields: cloneFields(fields), data: append([][]byte(nil), data...)}, nil
}

// Len is the number of samples.
func (s *MemorySource) Len() int { return s.n }

// Fields is the layout of one sample; do not modify it.
func (s *MemorySource) Fields() []Field { return s.fields }

// ReadSample copies sample i into dst, one slice per field. It is safe for concurrent use. The caller's
// memory may be a file mapping (numpy's mmap_mode): a read of pages the file lost by being truncated
// returns an ErrIO error instead of killing the process with SIGBUS.
func (s *MemorySource) ReadSample(i int, dst [][]byte) error {
	return s.guard.read(s, s.n, s.fields, i, dst, func() {
		for k := range s.fields {
			b := len(dst[k])
			copy(dst[k], s.data[k][i*b:(i+1)*b])
		}
	})
}

// Region is the caller's buffer of field f, all samples back to back; it is nil when f is out of range or
// the source is closed.
func (s *MemorySource) Region(f int) []byte {
	if f < 0 || f >= len(s.fields) || !s.guard.enter() {
		return nil
	}
	defer s.guard.exit()
	return s.data[f]
}

// Offset is where field f of sample i starts in Region(f): i times the field's size. It is -1 when f or
// i is out of range.
func (s *MemorySource) Offset(f, i int) int64 {
	if f < 0 || f >= len(s.fields) || i < 0 || i >= s.n {
		return -1
	}
	return int64(i) * int64(s.fields[f].Bytes())
}

// Close drops the references to the caller's memory once reads in flight have finished.
func (s *MemorySource) Close() error {
	return s.guard.close(s, func() error { s.data = nil; return nil })
}

func (s *MemorySource) String() string {
	return fmt.Sprintf("memory(%d × %d B)", s.n, sampleBytes(s.fields))
}
