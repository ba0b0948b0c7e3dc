package engine

// Source gives samples by index. Every sample has the same fields, each of a fixed size.
//
// ReadSample may be called from many goroutines at once, for different or equal indices; it must not keep
// dst after it returns. Implementations live in source_*.go.
type Source interface {
	// Len is the number of samples.
	Len() int
	// Fields is the layout of one sample. The slice must not be modified.
	Fields() []Field
	// ReadSample copies sample i (0 <= i < Len) into dst: one slice per field, in Fields order, each
	// exactly Field.Bytes() long. Errors name the source, the sample and what went wrong, and wrap ErrIO,
	// ErrFormat or ErrInvalidArgument.
	ReadSample(i int, dst [][]byte) error
	// Close releases the source's resources (mappings, files). Calls after Close return ErrClosed.
	Close() error
}
