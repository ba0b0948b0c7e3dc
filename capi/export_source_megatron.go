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

// cPrefixes converts a caller's array of count prefixes.
func cPrefixes(prefixes **C.char, count C.int32_t) ([]string, error) {
	if prefixes == nil {
		return nil, errNull("prefixes")
	}
	if count <= 0 || count > 1<<16 {
		return nil, fmt.Errorf("%w: count is %d; it must be 1..65536", engine.ErrInvalidArgument, int32(count))
	}
	var out []string
	for i, p := range unsafe.Slice(prefixes, int(count)) {
		if p == nil {
			return nil, fmt.Errorf("%w: prefixes[%d] is NULL", engine.ErrInvalidArgument, i)
		}
		out = append(out, C.GoString(p))
	}
	return out, nil
}

// prefixSource checks what every prefix-reading source gets: the out parameter (cleared), the prefixes,
// and the options struct (not NULL, its size at least v1).
func prefixSource(out *C.uintptr_t, prefixes **C.char, count C.int32_t, optsNull bool, name string, size C.uint32_t, v1 uint32) ([]string, error) {
	if out == nil {
		return nil, errNull("source")
	}
	*out = 0
	ps, err := cPrefixes(prefixes, count)
	if err != nil {
		return nil, err
	}
	if optsNull {
		return nil, errNull("opts")
	}
	if err := checkSize(name, size, v1); err != nil {
		return nil, err
	}
	return ps, nil
}

// optString is a caller's optional string: def when NULL, an error when empty.
func optString(s *C.char, what, def string) (string, error) {
	if s == nil {
		return def, nil
	}
	v := C.GoString(s)
	if v == "" {
		return "", fmt.Errorf("%w: %s is empty; pass NULL for the default", engine.ErrInvalidArgument, what)
	}
	return v, nil
}

//export ferry_megatron_options_init
func ferry_megatron_options_init(opts *C.ferry_megatron_options) C.ferry_status {
	return call("ferry_megatron_options_init", func() error {
		if opts == nil {
			return errNull("opts")
		}
		*opts = C.ferry_megatron_options{size: C.uint32_t(unsafe.Sizeof(C.ferry_megatron_options{}))}
		return nil
	})
}

//export ferry_source_megatron
func ferry_source_megatron(prefixes **C.char, count C.int32_t, opts *C.ferry_megatron_options, out *C.uintptr_t) C.ferry_status {
	return call("ferry_source_megatron", func() error {
		var size C.uint32_t
		if opts != nil {
			size = opts.size
		}
		ps, err := prefixSource(out, prefixes, count, opts == nil, "ferry_megatron_options", size, C.FERRY_CAPI_V1_MEGATRON_OPTIONS)
		if err != nil {
			return err
		}
		name, err := optString(opts.field_name, "ferry_megatron_options.field_name", "tokens")
		if err != nil {
			return err
		}
		src, err := ferrydata.NewMegatronCorpus(ps, ferrydata.MegatronConfig{MaxLen: int(opts.max_len), FieldName: name})
		if err != nil {
			return err
		}
		return addSource(src, nil, out)
	})
}

//export ferry_gpt_options_init
func ferry_gpt_options_init(opts *C.ferry_gpt_options) C.ferry_status {
	return call("ferry_gpt_options_init", func() error {
		if opts == nil {
			return errNull("opts")
		}
		*opts = C.ferry_gpt_options{size: C.uint32_t(unsafe.Sizeof(C.ferry_gpt_options{})), order: C.FERRY_GPT_ORDER_FERRY}
		return nil
	})
}

//export ferry_source_gpt
func ferry_source_gpt(prefixes **C.char, count C.int32_t, opts *C.ferry_gpt_options, out *C.uintptr_t) C.ferry_status {
	return call("ferry_source_gpt", func() error {
		var size C.uint32_t
		if opts != nil {
			size = opts.size
		}
		ps, err := prefixSource(out, prefixes, count, opts == nil, "ferry_gpt_options", size, C.FERRY_CAPI_V1_GPT_OPTIONS)
		if err != nil {
			return err
		}
		if opts.flags&^C.FERRY_GPT_F_NO_CACHE != 0 {
			return fmt.Errorf("%w: ferry_gpt_options.flags %#x has unknown bits", engine.ErrInvalidArgument, uint32(opts.flags))
		}
		if opts.seed > 1<<32-1 {
			return fmt.Errorf("%w: ferry_gpt_options.seed %d is above 2^32-1 (Megatron seeds numpy's RandomState with it)", engine.ErrInvalidArgument, uint64(opts.seed))
		}
		cfg := ferrydata.GPTConfig{SeqLen: int(opts.seq_len), Order: ferrydata.GPTOrder(opts.order), Seed: uint32(opts.seed),
			Which: ferrydata.MegatronSplit(opts.which), NumSamples: int(opts.num_samples), NoCache: opts.flags&C.FERRY_GPT_F_NO_CACHE != 0}
		if cfg.FieldName, err = optString(opts.field_name, "ferry_gpt_options.field_name", "tokens"); err != nil {
			return err
		}
		if cfg.Split, err = optString(opts.split, "ferry_gpt_options.split", ""); err != nil {
			return err
		}
		if cfg.CacheDir, err = optString(opts.cache_dir, "ferry_gpt_options.cache_dir", ""); err != nil {
			return err
		}
		src, err := ferrydata.NewGPTSource(ps, cfg)
		if err != nil {
			return err
		}
		return addSource(src, nil, out)
	})
}

// putCString writes s into a fixed C char array, cut to fit, NUL-terminated.
func putCString(dst []C.char, s string) {
	n := min(len(s), len(dst)-1)
	for i := 0; i < n; i++ {
		dst[i] = C.char(s[i])
	}
	dst[n] = 0
}

//export ferry_source_gpt_index_info
func ferry_source_gpt_index_info(h C.uintptr_t, info *C.ferry_gpt_index_info) C.ferry_status {
	return call("ferry_source_gpt_index_info", func() error {
		e, err := sources.get(uint64(h))
		if err != nil {
			return err
		}
		if info == nil {
			return errNull("info")
		}
		if err := checkSize("ferry_gpt_index_info", info.size, C.FERRY_CAPI_V1_GPT_INDEX_INFO); err != nil {
			return err
		}
		g, ok := e.src.(*ferrydata.GPTSource)
		if !ok {
			return fmt.Errorf("%w: source %v is not a GPT source", engine.ErrInvalidArgument, e.src)
		}
		ii := g.IndexInfo()
		info.cached = 0
		if ii.Cached {
			info.cached = 1
		}
		info.epochs = C.int64_t(ii.Epochs)
		info.seconds = C.double(ii.Took.Seconds())
		putCString(info.path[:], ii.Path)
		putCString(info.cache_error[:], ii.CacheError)
		return nil
	})
}

//export ferry_blend_options_init
func ferry_blend_options_init(opts *C.ferry_blend_options) C.ferry_status {
	return call("ferry_blend_options_init", func() error {
		if opts == nil {
			return errNull("opts")
		}
		*opts = C.ferry_blend_options{size: C.uint32_t(unsafe.Sizeof(C.ferry_blend_options{})), order: C.FERRY_BLEND_ORDER_FERRY}
		return nil
	})
}

// cWeights converts count weights.
func cWeights(weights *C.double, count C.int32_t) ([]float64, error) {
	if weights == nil {
		return nil, errNull("weights")
	}
	if count <= 0 || count > 1<<15-1 {
		return nil, fmt.Errorf("%w: count is %d; it must be 1..32767", engine.ErrInvalidArgument, int32(count))
	}
	out := make([]float64, int(count))
	for i, w := range unsafe.Slice(weights, int(count)) {
		out[i] = float64(w)
	}
	return out, nil
}

//export ferry_source_blend
func ferry_source_blend(hs *C.uintptr_t, weights *C.double, count C.int32_t, opts *C.ferry_blend_options, out *C.uintptr_t) C.ferry_status {
	return call("ferry_source_blend", func() error {
		if out == nil {
			return errNull("source")
		}
		*out = 0
		ws, err := cWeights(weights, count)
		if err != nil {
			return err
		}
		if hs == nil {
			return errNull("sources")
		}
		if opts == nil {
			return errNull("opts")
		}
		if err := checkSize("ferry_blend_options", opts.size, C.FERRY_CAPI_V1_BLEND_OPTIONS); err != nil {
			return err
		}
		var parts []ferrydata.BlendPart
		for i, h := range unsafe.Slice(hs, int(count)) {
			e, err := sources.get(uint64(h))
			if err != nil {
				return fmt.Errorf("sources[%d]: %w", i, err)
			}
			parts = append(parts, ferrydata.BlendPart{Weight: ws[i], Source: e.src})
		}
		src, err := ferrydata.NewBlendSource(parts, ferrydata.BlendConfig{Size: int(opts.num_samples),
			Order: ferrydata.BlendOrder(opts.order), Seed: uint64(opts.seed)})
		if err != nil {
			return err
		}
		return addSource(src, nil, out)
	})
}

//export ferry_megatron_blend_sizes
func ferry_megatron_blend_sizes(weights *C.double, count C.int32_t, size C.int64_t, perSource *C.int64_t, blendSize *C.int64_t) C.ferry_status {
	return call("ferry_megatron_blend_sizes", func() error {
		ws, err := cWeights(weights, count)
		if err != nil {
			return err
		}
		if perSource == nil || blendSize == nil {
			return errNull("per_source or blend_size")
		}
		per, total, err := ferrydata.MegatronBlendSizes(ws, int(size))
		if err != nil {
			return err
		}
		dst := unsafe.Slice(perSource, len(per))
		for i, n := range per {
			dst[i] = C.int64_t(n)
		}
		*blendSize = C.int64_t(total)
		return nil
	})
}
