package data

import (
	"fmt"

	"github.com/ferry-ml/ferry/engine"
)

// RecordField is a field of a fixed-size record and its byte offset inside the record.
type RecordField struct {
	Field
	Offset int
}

// RecordSpec describes a file of fixed-size records: HeaderSize bytes to skip, then records of
// RecordSize bytes each, every record one sample. Fields may overlap.
type RecordSpec struct {
	RecordSize int
	HeaderSize int
	Fields     []RecordField
}

// CIFAR10Spec is the CIFAR-10 binary format (data_batch_N.bin, test_batch.bin): records of 3073 bytes,
// a label byte then a 3×32×32 image, channels first (all red, then green, then blue, each row-major).
func CIFAR10Spec() RecordSpec {
	return RecordSpec{
		RecordSize: 1 + 3*32*32,
		Fields: []RecordField{
			{Field: Field{Name: "label", DType: Uint8}, Offset: 0},
			{Field: Field{Name: "image", DType: Uint8, Shape: []int{3, 32, 32}}, Offset: 1},
		},
	}
}

// CIFAR100Spec is the CIFAR-100 binary format (train.bin, test.bin): records of 3074 bytes, the coarse
// label byte, the fine label byte, then a 3×32×32 image, channels first.
func CIFAR100Spec() RecordSpec {
	return RecordSpec{
		RecordSize: 2 + 3*32*32,
		Fields: []RecordField{
			{Field: Field{Name: "coarse_label", DType: Uint8}, Offset: 0},
			{Field: Field{Name: "fine_label", DType: Uint8}, Offset: 1},
			{Field: Field{Name: "image", DType: Uint8, Shape: []int{3, 32, 32}}, Offset: 2},
		},
	}
}

// RecordSource serves the records of a memory-mapped file.
type RecordSource struct {
	path    string
	spec    RecordSpec
	fields  []Field
	offsets []int
	n       int
	mf      *mappedFile
	guard   closeGuard
}

var (
	_ Source       = (*RecordSource)(nil)
	_ MemoryBacked = (*RecordSource)(nil)
)

// NewRecordSource maps path and checks it against spec: the file must hold the header and a whole
// number of records (a partial record is an error, never dropped), and every field must lie inside the
// record.
func NewRecordSource(path string, spec RecordSpec) (*RecordSource, error) {
	if spec.RecordSize <= 0 {
		return nil, fmt.Errorf("%w: record source %s: record size %d must be positive", engine.ErrInvalidArgument, path, spec.RecordSize)
	}
	if spec.HeaderSize < 0 {
		return nil, fmt.Errorf("%w: record source %s: header size %d is negative", engine.ErrInvalidArgument, path, spec.HeaderSize)
	}
	fields := make([]Field, len(spec.Fields))
	offsets := make([]int, len(spec.Fields))
	for k, rf := range spec.Fields {
		fields[k] = rf.Field
		offsets[k] = rf.Offset
	}
	if err := validateFields(fields); err != nil {
		return nil, fmt.Errorf("record source %s: %w", path, err)
	}
	for k, f := range fields {
		if off := offsets[k]; off < 0 || off > spec.RecordSize-f.Bytes() {
			return nil, fmt.Errorf("%w: record source %s: field %q (%d bytes at offset %d) does not fit in a %d-byte record",
				engine.ErrInvalidArgument, path, f.Name, f.Bytes(), off, spec.RecordSize)
		}
	}
	mf, err := mapFile(path)
	if err != nil {
		return nil, fmt.Errorf("record source: %w", err)
	}
	size := len(mf.data)
	fail := func(err error) (*RecordSource, error) { _ = mf.unmap(); return nil, err }
	if size < spec.HeaderSize {
		return fail(fmt.Errorf("%w: record source %s: the file is %d bytes, shorter than the %d-byte header",
			engine.ErrFormat, path, size, spec.HeaderSize))
	}
	body := size - spec.HeaderSize
	if body%spec.RecordSize != 0 {
		return fail(fmt.Errorf("%w: record source %s: %d bytes after the %d-byte header are not a whole number of %d-byte records (%d records and %d bytes left over)",
			engine.ErrFormat, path, body, spec.HeaderSize, spec.RecordSize, body/spec.RecordSize, body%spec.RecordSize))
	}
	if body == 0 {
		return fail(fmt.Errorf("%w: record source %s: the file holds the %d-byte header and no records", engine.ErrFormat, path, spec.HeaderSize))
	}
	fields = cloneFields(fields)
	spec.Fields = make([]RecordField, len(fields))
	for k := range fields {
		spec.Fields[k] = RecordField{Field: fields[k], Offset: offsets[k]}
	}
	return &RecordSource{path: path, spec: spec, fields: fields, offsets: offsets, n: body / spec.RecordSize, mf: mf}, nil
}

// Len is the number of records.
func (s *RecordSource) Len() int { return s.n }

// Fields is the layout of one sample; do not modify it.
func (s *RecordSource) Fields() []Field { return s.fields }

// Path is the mapped file.
func (s *RecordSource) Path() string { return s.path }

// FieldOffset is the byte offset of field k inside a record, or -1 when k is out of range.
func (s *RecordSource) FieldOffset(k int) int {
	if k < 0 || k >= len(s.offsets) {
		return -1
	}
	return s.offsets[k]
}

// Spec is the record layout the source was opened with (a copy).
func (s *RecordSource) Spec() RecordSpec {
	spec := s.spec
	spec.Fields = make([]RecordField, len(s.fields))
	for k, f := range cloneFields(s.fields) {
		spec.Fields[k] = RecordField{Field: f, Offset: s.offsets[k]}
	}
	return spec
}

// ReadSample copies the fields of record i into dst. It is safe for concurrent use. A file truncated
// while mapped gives an ErrIO error rather than a crash.
func (s *RecordSource) ReadSample(i int, dst [][]byte) error {
	if err := ensureSample(s, s.fields, s.mf, i); err != nil {
		return err
	}
	return s.guard.read(s, s.n, s.fields, i, dst, func() {
		base := s.spec.HeaderSize + i*s.spec.RecordSize
		for k, off := range s.offsets {
			start := base + off
			copy(dst[k], s.mf.data[start:start+len(dst[k])])
		}
	})
}

// Region is the whole file's mapping, header included; every field shares it. It is nil when f is out of
// range or the source is closed.
func (s *RecordSource) Region(f int) []byte {
	if f < 0 || f >= len(s.fields) || !s.guard.enter() {
		return nil
	}
	defer s.guard.exit()
	return s.mf.data
}

// Offset is where field f of record i starts in Region(f): the header, i whole records, then the field's
// offset inside the record. It is -1 when f or i is out of range.
func (s *RecordSource) Offset(f, i int) int64 {
	if f < 0 || f >= len(s.fields) || i < 0 || i >= s.n {
		return -1
	}
	return int64(s.spec.HeaderSize) + int64(i)*int64(s.spec.RecordSize) + int64(s.offsets[f])
}

// Close unmaps the file once reads in flight have finished.
func (s *RecordSource) Close() error { return s.guard.close(s, s.mf.unmap) }

func (s *RecordSource) String() string {
	return fmt.Sprintf("records(%s, %d × %d B)", s.path, s.n, s.spec.RecordSize)
}
