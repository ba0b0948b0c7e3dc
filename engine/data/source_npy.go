package data

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/fileio"
)

// npyMagic starts every .npy file; the format version (major, minor) follows it.
const npyMagic = "\x93NUMPY"

// npyAlign is the alignment numpy gives the start of the data.
const npyAlign = 64

// NpySource serves samples from .npy files, one per field, memory-mapped. The first dimension of every
// array is the sample; the rest is the field's per-sample shape. Fields are ordered by name.
type NpySource struct {
	n      int
	fields []Field
	files  []npyFile // in fields order
	guard  closeGuard
}

type npyFile struct {
	path string
	mf   *mappedFile
	off  int // where the data starts
}

var (
	_ Source       = (*NpySource)(nil)
	_ MemoryBacked = (*NpySource)(nil)
)

// npyHeader is what a .npy header says.
type npyHeader struct {
	dtype   DType
	shape   []int
	dataOff int
}

// NewNpySource maps one .npy file per field (field name → path). Every array must be C-ordered, of a
// little-endian or byte-order-free type ferry knows, with at least one dimension, and all must agree on
// the first dimension, the sample count.
func NewNpySource(paths map[string]string) (*NpySource, error) {
	if len(paths) == 0 {
		return nil, fmt.Errorf("%w: npy source: no files given", engine.ErrInvalidArgument)
	}
	names := make([]string, 0, len(paths))
	for name := range paths {
		names = append(names, name)
	}
	sort.Strings(names)

	s := &NpySource{n: -1}
	fail := func(err error) (*NpySource, error) {
		for _, f := range s.files {
			_ = f.mf.unmap()
		}
		return nil, err
	}
	firstPath := ""
	for _, name := range names {
		path := paths[name]
		if name == "" {
			return fail(fmt.Errorf("%w: npy source: the file %s has an empty field name", engine.ErrInvalidArgument, path))
		}
		mf, err := mapFile(path)
		if err != nil {
			return fail(fmt.Errorf("npy source: field %q: %w", name, err))
		}
		s.files = append(s.files, npyFile{path: path, mf: mf})
		if err := mf.ensure(0, min(len(mf.data), 1<<20)); err != nil { // the header, of an object read in ranges
			return fail(fmt.Errorf("npy source: field %q: %w", name, err))
		}
		h, err := parseNpyHeader(mf.data)
		if err != nil {
			return fail(fmt.Errorf("%w: npy source: field %q: %s: %w", engine.ErrFormat, name, path, err))
		}
		s.files[len(s.files)-1].off = h.dataOff
		if len(h.shape) == 0 {
			return fail(fmt.Errorf("%w: npy source: field %q: %s holds a 0-dimensional array; the first dimension must be the sample",
				engine.ErrFormat, name, path))
		}
		n := h.shape[0]
		if n == 0 {
			return fail(fmt.Errorf("%w: npy source: field %q: %s holds no samples (shape %v)", engine.ErrFormat, name, path, h.shape))
		}
		f := Field{Name: name, DType: h.dtype, Shape: append([]int(nil), h.shape[1:]...)}
		if err := f.Validate(); err != nil {
			return fail(fmt.Errorf("%w: npy source: %s (shape %v): %w", engine.ErrFormat, path, h.shape, err))
		}
		if s.n >= 0 && n != s.n {
			return fail(fmt.Errorf("%w: npy source: %s holds %d samples but %s holds %d; every file needs the same first dimension",
				engine.ErrFormat, path, n, firstPath, s.n))
		}
		s.n, firstPath = n, path
		if b := f.Bytes(); n > (math.MaxInt-h.dataOff)/b || len(mf.data) < h.dataOff+n*b {
			return fail(fmt.Errorf("%w: npy source: field %q: %s is %d bytes, shorter than its %d-byte header and %d samples × %d bytes of data (truncated?)",
				engine.ErrFormat, name, path, len(mf.data), h.dataOff, n, b))
		}
		s.fields = append(s.fields, f)
	}
	return s, nil
}

// Len is the number of samples.
func (s *NpySource) Len() int { return s.n }

// Fields is the layout of one sample, ordered by name; do not modify it.
func (s *NpySource) Fields() []Field { return s.fields }

// ReadSample copies sample i of every file into dst. It is safe for concurrent use. A file truncated
// while mapped gives an ErrIO error rather than a crash.
func (s *NpySource) ReadSample(i int, dst [][]byte) error {
	for _, f := range s.files {
		if f.mf.sparse != nil { // an object read in ranges: fetch the sample's bytes first
			if err := ensureSamples(s, s.fields, []int{i}); err != nil {
				return err
			}
			break
		}
	}
	return s.guard.read(s, s.n, s.fields, i, dst, func() {
		for k, f := range s.files {
			b := len(dst[k])
			start := f.off + i*b
			copy(dst[k], f.mf.data[start:start+b])
		}
	})
}

// Region is the data part of field f's file mapping, after the .npy header: every sample's field f back
// to back. It is nil when f is out of range or the source is closed.
func (s *NpySource) Region(f int) []byte {
	if f < 0 || f >= len(s.files) || !s.guard.enter() {
		return nil
	}
	defer s.guard.exit()
	file := s.files[f]
	return file.mf.data[file.off : file.off+s.n*s.fields[f].Bytes()]
}

// Offset is where field f of sample i starts in Region(f): i times the field's size. It is -1 when f or
// i is out of range.
func (s *NpySource) Offset(f, i int) int64 {
	if f < 0 || f >= len(s.fields) || i < 0 || i >= s.n {
		return -1
	}
	return int64(i) * int64(s.fields[f].Bytes())
}

// Close unmaps the files once reads in flight have finished.
func (s *NpySource) Close() error {
	return s.guard.close(s, func() error {
		var first error
		for _, f := range s.files {
			if err := f.mf.unmap(); err != nil && first == nil {
				first = err
			}
		}
		return first
	})
}

func (s *NpySource) String() string {
	var b strings.Builder
	b.WriteString("npy(")
	for k, f := range s.fields {
		if k > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s=%s", f.Name, s.files[k].path)
	}
	fmt.Fprintf(&b, "; %d × %d B)", s.n, sampleBytes(s.fields))
	return b.String()
}

// parseNpyHeader reads the magic, version and header dictionary at the start of a .npy file.
func parseNpyHeader(data []byte) (npyHeader, error) {
	var h npyHeader
	if len(data) < len(npyMagic)+2 || string(data[:len(npyMagic)]) != npyMagic {
		n := min(len(data), len(npyMagic))
		return h, fmt.Errorf("not a .npy file: it starts with %q, expected %q", data[:n], npyMagic)
	}
	major, minor := data[6], data[7]
	var hlen, start int
	switch major {
	case 1:
		if len(data) < 10 {
			return h, fmt.Errorf("truncated in the header length")
		}
		hlen, start = int(binary.LittleEndian.Uint16(data[8:10])), 10
	case 2, 3:
		if len(data) < 12 {
			return h, fmt.Errorf("truncated in the header length")
		}
		hlen, start = int(binary.LittleEndian.Uint32(data[8:12])), 12
	default:
		return h, fmt.Errorf("format version %d.%d is not supported (1.0, 2.0 and 3.0 are)", major, minor)
	}
	if minor != 0 {
		return h, fmt.Errorf("format version %d.%d is not supported (1.0, 2.0 and 3.0 are)", major, minor)
	}
	if hlen > len(data)-start {
		return h, fmt.Errorf("the header says it is %d bytes but the file has %d after the %d-byte prefix (truncated)",
			hlen, len(data)-start, start)
	}
	h.dataOff = start + hlen
	text := string(data[start:h.dataOff])
	d, err := parsePyDict(text)
	if err != nil {
		return h, fmt.Errorf("header %q: %w", strings.TrimSpace(text), err)
	}
	for key := range d {
		if key != "descr" && key != "fortran_order" && key != "shape" {
			return h, fmt.Errorf("header %q has an unexpected key %q", strings.TrimSpace(text), key)
		}
	}
	for _, key := range []string{"descr", "fortran_order", "shape"} {
		if _, ok := d[key]; !ok {
			return h, fmt.Errorf("header %q has no %q", strings.TrimSpace(text), key)
		}
	}
	switch descr := d["descr"].(type) {
	case string:
		if h.dtype, err = npyDType(descr); err != nil {
			return h, err
		}
	case pyList:
		return h, fmt.Errorf("structured dtype %v is not supported; save one file per field", descr)
	default:
		return h, fmt.Errorf("'descr' is %v, expected a type string", descr)
	}
	switch fo := d["fortran_order"].(type) {
	case bool:
		if fo {
			return h, fmt.Errorf("the array is in Fortran order; save it C-ordered (numpy.ascontiguousarray)")
		}
	default:
		return h, fmt.Errorf("'fortran_order' is %v, expected True or False", fo)
	}
	tup, ok := d["shape"].(pyTuple)
	if !ok {
		return h, fmt.Errorf("'shape' is %v, expected a tuple of integers", d["shape"])
	}
	h.shape = make([]int, len(tup))
	for k, v := range tup {
		x, ok := v.(int64)
		if !ok || x < 0 || int64(int(x)) != x {
			return h, fmt.Errorf("'shape' %v: dimension %d is %v, expected a non-negative integer", tup, k, v)
		}
		h.shape[k] = int(x)
	}
	return h, nil
}

// npyDType maps a numpy type string to a DType. A byte-order character is required; big-endian is
// refused except for one-byte types, where byte order means nothing.
func npyDType(descr string) (DType, error) {
	if len(descr) < 2 || !strings.ContainsRune("<>|=", rune(descr[0])) {
		return DTypeInvalid, fmt.Errorf("dtype %q is not supported (expected a numpy type string such as '<f4' or '|u1')", descr)
	}
	rest := descr[1:]
	for d := Bool; d.Valid(); d++ {
		np := d.NumpyDescr()
		if np == "" || np[1:] != rest {
			continue
		}
		if descr[0] == '>' && d.Size() > 1 {
			return DTypeInvalid, fmt.Errorf("dtype %q is big-endian; convert the array to little-endian (arr.astype('<%s'))", descr, rest)
		}
		return d, nil
	}
	return DTypeInvalid, fmt.Errorf("dtype %q is not supported (bool, (u)int8..64, float16/32/64 are; object, string, complex and structured types are not)", descr)
}

// The header dictionary is a Python literal. These are the values it may hold.
type (
	pyTuple []any
	pyList  []any
)

// pyParser reads the small subset of Python literals numpy writes: a dict of string keys whose values
// are strings, True/False/None, integers, tuples and lists.
type pyParser struct {
	s   string
	pos int
}

func parsePyDict(s string) (map[string]any, error) {
	p := &pyParser{s: s}
	v, err := p.value(0)
	if err != nil {
		return nil, err
	}
	d, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("the header is not a dictionary")
	}
	p.space()
	if p.pos != len(p.s) {
		return nil, fmt.Errorf("unexpected %q after the dictionary", p.rest())
	}
	return d, nil
}

func (p *pyParser) space() {
	for p.pos < len(p.s) && strings.IndexByte(" \t\r\n", p.s[p.pos]) >= 0 {
		p.pos++
	}
}

func (p *pyParser) rest() string {
	r := p.s[p.pos:]
	if len(r) > 20 {
		r = r[:20] + "…"
	}
	return r
}

func (p *pyParser) errorf(format string, args ...any) error {
	return fmt.Errorf("at offset %d: %s", p.pos, fmt.Sprintf(format, args...))
}

func (p *pyParser) value(depth int) (any, error) {
	if depth > 16 {
		return nil, p.errorf("nested too deeply")
	}
	p.space()
	if p.pos >= len(p.s) {
		return nil, p.errorf("the header ends where a value was expected")
	}
	switch c := p.s[p.pos]; {
	case c == '{':
		return p.dict(depth)
	case c == '(' || c == '[':
		return p.sequence(depth)
	case c == '\'' || c == '"':
		return p.str()
	case c == '-' || c == '+' || (c >= '0' && c <= '9'):
		return p.integer()
	default:
		start := p.pos
		for p.pos < len(p.s) && (p.s[p.pos] == '_' || isAlnum(p.s[p.pos])) {
			p.pos++
		}
		switch word := p.s[start:p.pos]; word {
		case "True":
			return true, nil
		case "False":
			return false, nil
		case "None":
			return nil, nil
		default:
			p.pos = start
			return nil, p.errorf("unexpected %q where a value was expected", p.rest())
		}
	}
}

func isAlnum(c byte) bool {
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}

func (p *pyParser) dict(depth int) (any, error) {
	p.pos++ // '{'
	d := map[string]any{}
	for {
		p.space()
		if p.pos < len(p.s) && p.s[p.pos] == '}' {
			p.pos++
			return d, nil
		}
		k, err := p.value(depth + 1)
		if err != nil {
			return nil, err
		}
		key, ok := k.(string)
		if !ok {
			return nil, p.errorf("a dictionary key is %v, expected a string", k)
		}
		if _, dup := d[key]; dup {
			return nil, p.errorf("key %q appears twice", key)
		}
		p.space()
		if p.pos >= len(p.s) || p.s[p.pos] != ':' {
			return nil, p.errorf("expected ':' after key %q", key)
		}
		p.pos++
		v, err := p.value(depth + 1)
		if err != nil {
			return nil, err
		}
		d[key] = v
		p.space()
		if p.pos < len(p.s) && p.s[p.pos] == ',' {
			p.pos++
			continue
		}
		if p.pos < len(p.s) && p.s[p.pos] == '}' {
			p.pos++
			return d, nil
		}
		return nil, p.errorf("expected ',' or '}' in the dictionary")
	}
}

func (p *pyParser) sequence(depth int) (any, error) {
	open := p.s[p.pos]
	closing := byte(')')
	if open == '[' {
		closing = ']'
	}
	p.pos++
	var items []any
	commas := 0
	for {
		p.space()
		if p.pos < len(p.s) && p.s[p.pos] == closing {
			p.pos++
			break
		}
		v, err := p.value(depth + 1)
		if err != nil {
			return nil, err
		}
		items = append(items, v)
		p.space()
		if p.pos < len(p.s) && p.s[p.pos] == ',' {
			p.pos++
			commas++
			continue
		}
		if p.pos < len(p.s) && p.s[p.pos] == closing {
			p.pos++
			break
		}
		return nil, p.errorf("expected ',' or %q", closing)
	}
	if open == '[' {
		return pyList(items), nil
	}
	if len(items) == 1 && commas == 0 {
		return items[0], nil // (x) is x in Python, not a tuple
	}
	return pyTuple(items), nil
}

func (p *pyParser) str() (any, error) {
	q := p.s[p.pos]
	end := strings.IndexByte(p.s[p.pos+1:], q)
	if end < 0 {
		return nil, p.errorf("unterminated string")
	}
	s := p.s[p.pos+1 : p.pos+1+end]
	if strings.IndexByte(s, '\\') >= 0 {
		return nil, p.errorf("escapes in strings are not supported")
	}
	p.pos += end + 2
	return s, nil
}

func (p *pyParser) integer() (any, error) {
	start := p.pos
	if c := p.s[p.pos]; c == '-' || c == '+' {
		p.pos++
	}
	for p.pos < len(p.s) && p.s[p.pos] >= '0' && p.s[p.pos] <= '9' {
		p.pos++
	}
	text := p.s[start:p.pos]
	if p.pos < len(p.s) && (p.s[p.pos] == 'L' || p.s[p.pos] == 'l') {
		p.pos++ // Python 2's long suffix, found in old files
	}
	x, err := strconv.ParseInt(text, 10, 64)
	if err != nil {
		p.pos = start
		return nil, p.errorf("bad integer %q", text)
	}
	if p.pos < len(p.s) && (isAlnum(p.s[p.pos]) || p.s[p.pos] == '.') {
		p.pos = start
		return nil, p.errorf("bad number %q", p.rest())
	}
	return x, nil
}

// WriteNpy writes a C-ordered array to path as a version 1.0 .npy file whose data starts at a multiple
// of 64 bytes, as numpy writes it. data holds the elements in little-endian order, exactly
// prod(shape)*dtype.Size() bytes.
func WriteNpy(path string, dtype DType, shape []int, data []byte) error {
	descr := dtype.NumpyDescr()
	if descr == "" {
		return fmt.Errorf("%w: WriteNpy %s: numpy has no type for %v", engine.ErrInvalidArgument, path, dtype)
	}
	n := dtype.Size()
	for _, s := range shape {
		if s < 0 {
			return fmt.Errorf("%w: WriteNpy %s: shape %v has a negative dimension", engine.ErrInvalidArgument, path, shape)
		}
		if s > 0 && n > math.MaxInt/s {
			return fmt.Errorf("%w: WriteNpy %s: shape %v is too large", engine.ErrInvalidArgument, path, shape)
		}
		n *= s
	}
	if len(data) != n {
		return fmt.Errorf("%w: WriteNpy %s: %v %v needs %d bytes, got %d", engine.ErrInvalidArgument, path, dtype, shape, n, len(data))
	}
	dims := make([]string, len(shape))
	for k, s := range shape {
		dims[k] = strconv.Itoa(s)
	}
	tuple := "(" + strings.Join(dims, ", ") + ")"
	if len(shape) == 1 {
		tuple = "(" + dims[0] + ",)"
	}
	dict := fmt.Sprintf("{'descr': '%s', 'fortran_order': False, 'shape': %s, }", descr, tuple)

	var hdr bytes.Buffer
	hdr.WriteString(npyMagic)
	prefix := 10
	if len(dict)+1+npyAlign > math.MaxUint16 {
		prefix = 12 // version 2.0: a 4-byte header length
	}
	total := (prefix + len(dict) + 1 + npyAlign - 1) / npyAlign * npyAlign
	hlen := total - prefix
	if prefix == 10 {
		hdr.Write([]byte{1, 0})
		hdr.Write(binary.LittleEndian.AppendUint16(nil, uint16(hlen)))
	} else {
		hdr.Write([]byte{2, 0})
		hdr.Write(binary.LittleEndian.AppendUint32(nil, uint32(hlen)))
	}
	hdr.WriteString(dict)
	hdr.WriteString(strings.Repeat(" ", hlen-len(dict)-1))
	hdr.WriteByte('\n')

	f, err := fileio.OpenWrite(path, os.O_CREATE|os.O_TRUNC, 0o666) // as os.Create, less the hang on a pipe
	if err != nil {
		return fmt.Errorf("%w: WriteNpy: %w", engine.ErrIO, err)
	}
	_, err = f.Write(hdr.Bytes())
	if err == nil {
		_, err = f.Write(data)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%w: WriteNpy %s: %w", engine.ErrIO, path, err)
	}
	return nil
}
