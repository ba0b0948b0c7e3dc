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

//export ferry_image_source_options_init
func ferry_image_source_options_init(opts *C.ferry_image_source_options) C.ferry_status {
	return call("ferry_image_source_options_init", func() error {
		if opts == nil {
			return errNull("opts")
		}
		*opts = C.ferry_image_source_options{size: C.uint32_t(unsafe.Sizeof(C.ferry_image_source_options{}))}
		return nil
	})
}

// imageOptions checks the options of an image source.
func imageOptions(opts *C.ferry_image_source_options) error {
	if opts == nil {
		return errNull("opts")
	}
	if err := checkSize("ferry_image_source_options", opts.size, C.FERRY_CAPI_V1_IMAGE_SOURCE_OPTIONS); err != nil {
		return err
	}
	if opts.flags&^(C.FERRY_IMAGES_F_ALLOW_EMPTY|C.FERRY_IMAGES_F_NO_CACHE) != 0 {
		return fmt.Errorf("%w: ferry_image_source_options.flags %#x has unknown bits", engine.ErrInvalidArgument, uint32(opts.flags))
	}
	if opts.max_bytes < 0 || opts.max_bytes > 1<<31 {
		return fmt.Errorf("%w: ferry_image_source_options.max_bytes %d must be 0..2^31", engine.ErrInvalidArgument, int64(opts.max_bytes))
	}
	return nil
}

//export ferry_source_image_folder
func ferry_source_image_folder(root *C.char, opts *C.ferry_image_source_options, out *C.uintptr_t) C.ferry_status {
	return call("ferry_source_image_folder", func() error {
		if out == nil {
			return errNull("source")
		}
		*out = 0
		p, err := cPath(root)
		if err != nil {
			return err
		}
		if err := imageOptions(opts); err != nil {
			return err
		}
		src, err := ferrydata.NewImageFolderSource(p, ferrydata.ImageFolderConfig{MaxBytes: int(opts.max_bytes),
			AllowEmpty: opts.flags&C.FERRY_IMAGES_F_ALLOW_EMPTY != 0})
		if err != nil {
			return err
		}
		return addSource(src, nil, out)
	})
}

//export ferry_source_webdataset
func ferry_source_webdataset(shards **C.char, count C.int32_t, opts *C.ferry_image_source_options, out *C.uintptr_t) C.ferry_status {
	return call("ferry_source_webdataset", func() error {
		if out == nil {
			return errNull("source")
		}
		*out = 0
		ps, err := cPrefixes(shards, count)
		if err != nil {
			return err
		}
		if err := imageOptions(opts); err != nil {
			return err
		}
		cfg := ferrydata.WebDatasetConfig{MaxBytes: int(opts.max_bytes), NoCache: opts.flags&C.FERRY_IMAGES_F_NO_CACHE != 0}
		if cfg.Image, err = optString(opts.image_keys, "ferry_image_source_options.image_keys", ""); err != nil {
			return err
		}
		if cfg.Label, err = optString(opts.label_key, "ferry_image_source_options.label_key", ""); err != nil {
			return err
		}
		if cfg.CacheDir, err = optString(opts.cache_dir, "ferry_image_source_options.cache_dir", ""); err != nil {
			return err
		}
		src, err := ferrydata.NewWebDatasetSource(ps, cfg)
		if err != nil {
			return err
		}
		return addSource(src, nil, out)
	})
}

//export ferry_source_sample_name
func ferry_source_sample_name(h C.uintptr_t, index C.int64_t, name *C.char, n C.uint32_t) C.ferry_status {
	return call("ferry_source_sample_name", func() error {
		e, err := sources.get(uint64(h))
		if err != nil {
			return err
		}
		if name == nil || n == 0 {
			return errNull("name (or len 0)")
		}
		if index < 0 || int64(index) >= int64(e.src.Len()) {
			return fmt.Errorf("%w: sample %d is out of range [0, %d)", engine.ErrInvalidArgument, int64(index), e.src.Len())
		}
		s := ""
		if named, ok := e.src.(ferrydata.Named); ok {
			s = named.SampleName(int(index))
		}
		putCString(unsafe.Slice(name, int(n)), s)
		return nil
	})
}
