package data

import (
	"fmt"

	"github.com/ferry-ml/ferry/engine"
)

// FuncSource calls a function to fill each sample. The C API wraps a C function pointer in it and the
// Python binding a callable. The function may be called from many goroutines at once, for different or
// equal indices, and must not keep dst after it returns. It must not call Close on its own source: Close
// waits for calls in flight.
type FuncSource struct {
	n      int
	fields []Field
	fn     func(i int, dst [][]byte) error
	guard  closeGuard
}

var _ Source = (*FuncSource)(nil)

// NewFuncSource makes a source of n samples whose fields fn fills: dst holds one slice per field, in
// fields order, each exactly Field.Bytes() long.
func NewFuncSource(n int, fields []Field, fn func(i int, dst [][]byte) error) (*FuncSource, error) {
	if n <= 0 {
		return nil, fmt.Errorf("%w: func source: %d samples; a source needs at least one", engine.ErrInvalidArgument, n)
	}
	if err := validateFields(fields); err != nil {
		return nil, fmt.Errorf("func source: %w", err)
	}
	if fn == nil {
		return nil, fmt.Errorf("%w: func source: the function is nil", engine.ErrInvalidArgument)
	}
	return &FuncSource{n: n, fields: cloneFields(fields), fn: fn}, nil
}

// Len is the number of samples.
func (s *FuncSource) Len() int { return s.n }

// Fields is the layout of one sample; do not modify it.
func (s *FuncSource) Fields() []Field { return s.fields }

// ReadSample calls the function for sample i. An error from it comes back wrapped with the sample index
// (and wrapping ErrIO when it wraps none of the engine's errors); a panic in it is recovered and returned
// as an ErrIO error naming the sample.
func (s *FuncSource) ReadSample(i int, dst [][]byte) (err error) {
	if err := checkRead(s, s.n, s.fields, i, dst); err != nil {
		return err
	}
	if !s.guard.enter() {
		return errClosedSource(s, i)
	}
	defer s.guard.exit()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v: sample %d: the function panicked: %v", engine.ErrIO, s, i, r)
		}
	}()
	if err := s.fn(i, dst); err != nil {
		if wrapsSentinel(err) {
			return fmt.Errorf("%v: sample %d: %w", s, i, err)
		}
		return fmt.Errorf("%w: %v: sample %d: %w", engine.ErrIO, s, i, err)
	}
	return nil
}

// Close waits for calls in flight; afterwards the function is never called again.
func (s *FuncSource) Close() error {
	return s.guard.close(s, func() error { s.fn = nil; return nil })
}

func (s *FuncSource) String() string {
	return fmt.Sprintf("func(%d × %d B)", s.n, sampleBytes(s.fields))
}
