package data

import (
	"fmt"
	"strings"

	"github.com/ferry-ml/ferry/engine"
)

// DType is the element type of a field. The values are ferry's own (FERRY_DTYPE_* in ferry.h); DLPack
// codes are derived from them.
type DType uint8

// Element types.
const (
	DTypeInvalid DType = iota
	Bool
	Uint8
	Int8
	Uint16
	Int16
	Uint32
	Int32
	Uint64
	Int64
	Float16
	BFloat16
	Float32
	Float64
)

var dtypeInfo = [...]struct {
	name string
	size int
	npy  string // numpy's type string, little-endian
}{
	DTypeInvalid: {"invalid", 0, ""},
	Bool:         {"bool", 1, "|b1"},
	Uint8:        {"uint8", 1, "|u1"},
	Int8:         {"int8", 1, "|i1"},
	Uint16:       {"uint16", 2, "<u2"},
	Int16:        {"int16", 2, "<i2"},
	Uint32:       {"uint32", 4, "<u4"},
	Int32:        {"int32", 4, "<i4"},
	Uint64:       {"uint64", 8, "<u8"},
	Int64:        {"int64", 8, "<i8"},
	Float16:      {"float16", 2, "<f2"},
	BFloat16:     {"bfloat16", 2, ""},
	Float32:      {"float32", 4, "<f4"},
	Float64:      {"float64", 8, "<f8"},
}

// Valid reports whether d is one of the defined types.
func (d DType) Valid() bool { return d > DTypeInvalid && int(d) < len(dtypeInfo) }

// Size is the size of one element in bytes (0 for an invalid type).
func (d DType) Size() int {
	if !d.Valid() {
		return 0
	}
	return dtypeInfo[d].size
}

func (d DType) String() string {
	if !d.Valid() {
		return fmt.Sprintf("DType(%d)", uint8(d))
	}
	return dtypeInfo[d].name
}

// NumpyDescr is numpy's type string for d ("<u2"), or "" when numpy has none (bfloat16).
func (d DType) NumpyDescr() string {
	if !d.Valid() {
		return ""
	}
	return dtypeInfo[d].npy
}

// ParseDType accepts ferry's names ("uint8", "float32", "bfloat16"), short forms ("u8", "f32", "bf16")
// and numpy type strings ("<u2", "|u1", "f4").
func ParseDType(s string) (DType, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	short := map[string]DType{
		"b1": Bool, "u8": Uint8, "i8": Int8, "u16": Uint16, "i16": Int16, "u32": Uint32, "i32": Int32,
		"u64": Uint64, "i64": Int64, "f16": Float16, "bf16": BFloat16, "f32": Float32, "f64": Float64,
		"half": Float16, "float": Float32, "double": Float64, "byte": Uint8,
	}
	if d, ok := short[t]; ok {
		return d, nil
	}
	for d := Bool; int(d) < len(dtypeInfo); d++ {
		if t == dtypeInfo[d].name {
			return d, nil
		}
		if np := dtypeInfo[d].npy; np != "" && (t == np || t == np[1:] || t == "="+np[1:]) {
			return d, nil
		}
	}
	return DTypeInvalid, fmt.Errorf("%w: unknown dtype %q (big-endian data is not supported)", engine.ErrInvalidArgument, s)
}

// Field describes one named field of a sample: its element type and its per-sample shape. A batch of B
// samples holds the field as [B, shape...].
type Field struct {
	Name  string
	DType DType
	Shape []int // per-sample; empty for a scalar
}

// Elems is the number of elements of one sample's field.
func (f Field) Elems() int {
	n := 1
	for _, s := range f.Shape {
		n *= s
	}
	return n
}

// Bytes is the size of one sample's field.
func (f Field) Bytes() int { return f.Elems() * f.DType.Size() }

// Validate checks the name, type and shape.
func (f Field) Validate() error {
	if f.Name == "" {
		return fmt.Errorf("%w: a field has no name", engine.ErrInvalidArgument)
	}
	if !f.DType.Valid() {
		return fmt.Errorf("%w: field %q has an invalid dtype %v", engine.ErrInvalidArgument, f.Name, f.DType)
	}
	for _, s := range f.Shape {
		if s <= 0 {
			return fmt.Errorf("%w: field %q has shape %v; every dimension must be positive", engine.ErrInvalidArgument, f.Name, f.Shape)
		}
	}
	// The size is checked as it grows, so that a shape whose product overflows int is refused rather
	// than wrapping around to a small or negative size that Bytes would then report.
	const maxBytes = 1 << 31
	n := f.DType.Size()
	for _, s := range f.Shape {
		if n > maxBytes/s {
			return fmt.Errorf("%w: field %q of shape %v is more than 2 GiB per sample", engine.ErrInvalidArgument, f.Name, f.Shape)
		}
		n *= s
	}
	return nil
}

// validateFields checks each field and that names are unique.
func validateFields(fields []Field) error {
	if len(fields) == 0 {
		return fmt.Errorf("%w: a source needs at least one field", engine.ErrInvalidArgument)
	}
	seen := map[string]bool{}
	for _, f := range fields {
		if err := f.Validate(); err != nil {
			return err
		}
		if seen[f.Name] {
			return fmt.Errorf("%w: field name %q is used twice", engine.ErrInvalidArgument, f.Name)
		}
		seen[f.Name] = true
	}
	return nil
}
