package data

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

// MemoryBacked is implemented by sources whose samples lie at fixed places in memory that stays mapped
// while the source is open: memory-mapped files and caller memory. On a GPU the iterator can then register
// that memory with the driver (page-locked, mapped, read-only) and move samples with no host copy: by one
// DMA per sample, or by a kernel that reads the mapped memory directly (IteratorOptions.Staging).
type MemoryBacked interface {
	// Region is the memory that holds field f of every sample. It stays valid, and unchanged, until
	// Close. Fields may share a region (records interleaved in one file).
	Region(f int) []byte
	// Offset is the byte offset within Region(f) where field f of sample i starts. Its first
	// Field.Bytes() bytes (for a Ragged field, SampleLen(i) elements) are the sample's field.
	Offset(f, i int) int64
}

// Ragged is implemented by sources with one variable-length field: sample i holds SampleLen(i) elements
// of field RaggedField, at most the field's Elems(). ReadSample writes those elements first and zeros
// the rest of the field. PadSequences lays such a field out.
type Ragged interface {
	RaggedField() int
	SampleLen(i int) int
}

// SelfOrdered is implemented by sources whose sample numbering is already the order to read them in (a
// Megatron-order GPT source, a blend): OrdersItself says why, or is empty when this one does not; the
// iterator then refuses Shuffle, which would undo that order.
type SelfOrdered interface {
	OrdersItself() string
}

// Named is implemented by sources whose samples have names worth giving in errors: a file, a shard
// member. SampleName is empty for an index out of range.
type Named interface {
	SampleName(i int) string
}
