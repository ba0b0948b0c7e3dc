package data

import (
	"context"
	"fmt"
	"unsafe"

	"github.com/ferry-ml/ferry/engine"
)

// Objects read in ranges. A mapped source over an s3:// object larger than the whole-fetch size maps a
// partial file (mappedFile.sparse) whose bytes must be fetched before they are read. The sources whose
// samples are byte ranges of their mappings (MemoryBacked: token files, records, .npy arrays) name their
// mappings here; the iterator fetches each batch's ranges when it assigns the batch, as far ahead as its
// ring allows and in the sampler's order, and ReadSample fetches what a direct read needs.

// rangedSource is a memory-backed source that names the mappings its regions lie in.
type rangedSource interface {
	MemoryBacked
	mappedFiles() []*mappedFile
}

// remoteSource reports whether src reads an object in ranges: its samples are fetched before they are read,
// and its memory is not registered with the driver (the iterator gathers).
func remoteSource(src Source) bool {
	r, ok := src.(rangedSource)
	if !ok {
		return false
	}
	for _, m := range r.mappedFiles() {
		if m != nil && m.sparse != nil {
			return true
		}
	}
	return false
}

// ensureSamples fetches the bytes that the samples indices of src need from its objects read in ranges:
// one Ensure per object, with every sample's field ranges (contiguous blocks coalesce into one GET).
func ensureSamples(src rangedSource, fields []Field, indices []int) error {
	mfs := src.mappedFiles()
	ranges := make([][][2]int64, len(mfs))
	for f := range fields {
		region := src.Region(f)
		if len(region) == 0 {
			continue
		}
		base := uintptr(unsafe.Pointer(&region[0]))
		k, shift := -1, int64(0)
		for j, m := range mfs {
			if m == nil || m.sparse == nil || len(m.data) == 0 {
				continue
			}
			if mb := uintptr(unsafe.Pointer(&m.data[0])); base >= mb && base < mb+uintptr(len(m.data)) {
				k, shift = j, int64(base-mb)
			}
		}
		if k < 0 {
			continue
		}
		n := int64(fields[f].Bytes())
		for _, i := range indices {
			if off := src.Offset(f, i); off >= 0 {
				ranges[k] = append(ranges[k], [2]int64{shift + off, n})
			}
		}
	}
	for k, rs := range ranges {
		if len(rs) == 0 {
			continue
		}
		if err := mfs[k].sparse.Ensure(context.Background(), rs...); err != nil {
			return fmt.Errorf("%w: %w", engine.ErrIO, err)
		}
	}
	return nil
}

// ensureSample is ensureSamples for one sample, for a source's ReadSample; a no-op for local files.
func ensureSample(src rangedSource, fields []Field, mf *mappedFile, i int) error {
	if mf == nil || mf.sparse == nil {
		return nil
	}
	return ensureSamples(src, fields, []int{i})
}

func (s *TokenSource) mappedFiles() []*mappedFile  { return []*mappedFile{s.mf} }
func (s *RecordSource) mappedFiles() []*mappedFile { return []*mappedFile{s.mf} }
func (s *NpySource) mappedFiles() []*mappedFile {
	out := make([]*mappedFile, len(s.files))
	for k, f := range s.files {
		out[k] = f.mf
	}
	return out
}
