package main

// #include "exports.h"
import "C"

import (
	"fmt"
	"unsafe"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/data"
)

func defaultTransform(kind C.int32_t) C.ferry_transform {
	return C.ferry_transform{size: C.uint32_t(unsafe.Sizeof(C.ferry_transform{})), kind: kind,
		dtype: C.FERRY_DTYPE_FLOAT32, layout: C.FERRY_LAYOUT_CHW, input_layout: C.FERRY_LAYOUT_HWC}
}

//export ferry_transform_init
func ferry_transform_init(t *C.ferry_transform, kind C.int32_t, field *C.char) C.ferry_status {
	return call("ferry_transform_init", func() error {
		if t == nil {
			return errNull("t")
		}
		switch kind {
		case C.FERRY_TRANSFORM_NORMALIZE, C.FERRY_TRANSFORM_SHIFT_TOKENS, C.FERRY_TRANSFORM_PAD_SEQUENCES,
			C.FERRY_TRANSFORM_RANDOM_RESIZED_CROP, C.FERRY_TRANSFORM_CENTER_CROP, C.FERRY_TRANSFORM_DECODE_IMAGE:
		default:
			return fmt.Errorf("%w: unknown transform kind %d", engine.ErrInvalidArgument, int32(kind))
		}
		*t = defaultTransform(kind)
		t.field = field
		return nil
	})
}

// optName is a C string, or def when it is NULL.
func optName(s *C.char, def string) string {
	if s == nil {
		return def
	}
	return C.GoString(s)
}

// transformFromC converts one caller transform: the field it applies to, and the engine's transform.
func transformFromC(t *C.ferry_transform, i int) (string, data.Transform, error) {
	if err := checkSize(fmt.Sprintf("transforms[%d]", i), t.size, C.FERRY_CAPI_V1_TRANSFORM); err != nil {
		return "", nil, err
	}
	if t.field == nil {
		return "", nil, fmt.Errorf("%w: transforms[%d].field is NULL", engine.ErrInvalidArgument, i)
	}
	field := C.GoString(t.field)
	switch t.kind {
	case C.FERRY_TRANSFORM_NORMALIZE:
		if t.channels < 0 || t.channels > 4 {
			return "", nil, fmt.Errorf("%w: transforms[%d].channels is %d; it must be 0..4", engine.ErrInvalidArgument, i, int32(t.channels))
		}
		n := data.Normalize{Scale: float32(t.scale), Layout: data.ImageLayout(t.layout), DType: data.DType(t.dtype),
			Flip: float64(t.flip)}
		if t.size >= C.FERRY_CAPI_V2_TRANSFORM {
			switch t.input_layout {
			case C.FERRY_LAYOUT_HWC:
			case C.FERRY_LAYOUT_CHW:
				n.InputCHW = true
			default:
				return "", nil, fmt.Errorf("%w: transforms[%d].input_layout is %d; it must be FERRY_LAYOUT_HWC (%d) or FERRY_LAYOUT_CHW (%d)",
					engine.ErrInvalidArgument, i, int32(t.input_layout), int32(C.FERRY_LAYOUT_HWC), int32(C.FERRY_LAYOUT_CHW))
			}
		}
		for c := 0; c < int(t.channels); c++ {
			n.Mean = append(n.Mean, float32(t.mean[c]))
			n.Std = append(n.Std, float32(t.std[c]))
		}
		return field, n, nil
	case C.FERRY_TRANSFORM_SHIFT_TOKENS:
		st := data.ShiftTokens{X: optName(t.x_name, "x"), Y: optName(t.y_name, "y")}
		if t.size >= C.FERRY_CAPI_V3_TRANSFORM {
			if t.shift_flags&^(C.FERRY_SHIFT_F_MASK_EOD|C.FERRY_SHIFT_F_RESET_POSITIONS) != 0 {
				return "", nil, fmt.Errorf("%w: transforms[%d].shift_flags %#x has unknown bits", engine.ErrInvalidArgument, i, uint32(t.shift_flags))
			}
			st.LossMask, st.PositionIDs = optName(t.loss_mask_name, ""), optName(t.position_ids_name, "")
			st.EOD = int64(t.eod)
			st.MaskEOD = t.shift_flags&C.FERRY_SHIFT_F_MASK_EOD != 0
			st.ResetPositions = t.shift_flags&C.FERRY_SHIFT_F_RESET_POSITIONS != 0
		}
		return field, st, nil
	case C.FERRY_TRANSFORM_RANDOM_RESIZED_CROP, C.FERRY_TRANSFORM_CENTER_CROP:
		tr, err := cropFromC(t, i)
		return field, tr, err
	case C.FERRY_TRANSFORM_DECODE_IMAGE:
		if t.size < C.FERRY_CAPI_V5_TRANSFORM {
			return "", nil, fmt.Errorf("%w: transforms[%d]: FERRY_TRANSFORM_DECODE_IMAGE needs the ferry_transform of this header (size %d, not %d)",
				engine.ErrInvalidArgument, i, int(C.FERRY_CAPI_V5_TRANSFORM), uint32(t.size))
		}
		return field, data.DecodeImage{Height: int(t.height), Width: int(t.width), MaxPixels: int(t.max_pixels)}, nil
	case C.FERRY_TRANSFORM_PAD_SEQUENCES:
		return field, data.PadSequences{PadValue: int64(t.pad_value), Fixed: t.fixed_length != 0,
			Mask: optName(t.mask_name, "attention_mask"), Lengths: optName(t.lengths_name, "lengths")}, nil
	}
	return "", nil, fmt.Errorf("%w: transforms[%d].kind %d is unknown", engine.ErrInvalidArgument, i, int32(t.kind))
}

// cropFromC converts a crop transform; its normalization is NORMALIZE's fields.
func cropFromC(t *C.ferry_transform, i int) (data.Transform, error) {
	if t.size < C.FERRY_CAPI_V4_TRANSFORM {
		return nil, fmt.Errorf("%w: transforms[%d]: a crop needs the ferry_transform of this header (size %d, not %d)",
			engine.ErrInvalidArgument, i, int(C.FERRY_CAPI_V4_TRANSFORM), uint32(t.size))
	}
	if t.channels < 0 || t.channels > 3 {
		return nil, fmt.Errorf("%w: transforms[%d].channels is %d; a crop's image has 3 (give 0, 1 or 3 values)", engine.ErrInvalidArgument, i, int32(t.channels))
	}
	if t.crop_flags&^C.FERRY_CROP_F_ANTIALIAS != 0 {
		return nil, fmt.Errorf("%w: transforms[%d].crop_flags %#x has unknown bits", engine.ErrInvalidArgument, i, uint32(t.crop_flags))
	}
	aa := t.crop_flags&C.FERRY_CROP_F_ANTIALIAS != 0
	var mean, std []float32
	for c := 0; c < int(t.channels); c++ {
		mean = append(mean, float32(t.mean[c]))
		std = append(std, float32(t.std[c]))
	}
	if t.kind == C.FERRY_TRANSFORM_CENTER_CROP {
		return data.CenterCrop{Size: int(t.crop_size), ResizeTo: int(t.resize_to), Mean: mean, Std: std,
			Layout: data.ImageLayout(t.layout), DType: data.DType(t.dtype), MaxPixels: int(t.max_pixels), Antialias: aa}, nil
	}
	return data.RandomResizedCrop{Size: int(t.crop_size), Scale: [2]float64{float64(t.scale_min), float64(t.scale_max)},
		Ratio: [2]float64{float64(t.ratio_min), float64(t.ratio_max)}, Flip: float64(t.flip), Mean: mean, Std: std,
		Layout: data.ImageLayout(t.layout), DType: data.DType(t.dtype), MaxPixels: int(t.max_pixels), Antialias: aa}, nil
}

// transformsFromC converts the iterator options' transform array.
func transformsFromC(ts *C.ferry_transform, n C.int32_t) (map[string]data.Transform, error) {
	if n == 0 {
		return nil, nil
	}
	if n < 0 || n > 1024 {
		return nil, fmt.Errorf("%w: num_transforms is %d; it must be 0..1024", engine.ErrInvalidArgument, int32(n))
	}
	if ts == nil {
		return nil, errNull("transforms (num_transforms > 0)")
	}
	// The array's stride is the size its caller was built with: an older caller's elements are shorter.
	stride := uintptr(ts.size)
	if err := checkSize("transforms[0]", ts.size, C.FERRY_CAPI_V1_TRANSFORM); err != nil {
		return nil, err
	}
	if stride > unsafe.Sizeof(C.ferry_transform{}) {
		stride = unsafe.Sizeof(C.ferry_transform{}) // a newer caller: read the fields known here
	}
	out := map[string]data.Transform{}
	for i := 0; i < int(n); i++ {
		// Copy the element's first stride bytes into a whole struct; a shorter element leaves the rest zero,
		// and its size tells transformFromC which fields it has.
		var t C.ferry_transform
		src := unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(ts), uintptr(i)*uintptr(ts.size))), stride)
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&t)), stride), src)
		if t.size != ts.size {
			return nil, fmt.Errorf("%w: transforms[%d].size is %d but transforms[0].size is %d; fill every element with ferry_transform_init",
				engine.ErrInvalidArgument, i, uint32(t.size), uint32(ts.size))
		}
		field, tr, err := transformFromC(&t, i)
		if err != nil {
			return nil, err
		}
		if _, dup := out[field]; dup {
			return nil, fmt.Errorf("%w: two transforms for field %q", engine.ErrInvalidArgument, field)
		}
		out[field] = tr
	}
	return out, nil
}

//export ferry_transform_launch
func ferry_transform_launch(eh C.uintptr_t, t *C.ferry_transform, in *C.ferry_field, batch C.int64_t, src C.uint64_t,
	dst *C.uint64_t, ndst C.int32_t, stream C.uintptr_t) C.ferry_status {
	return call("ferry_transform_launch", func() error {
		eng, err := engines.get(uint64(eh))
		if err != nil {
			return err
		}
		if t == nil {
			return errNull("t")
		}
		_, tr, err := transformFromC(t, 0)
		if err != nil {
			return err
		}
		fields, _, err := fieldsFromC(in, 1)
		if err != nil {
			return err
		}
		if dst == nil {
			return errNull("dst")
		}
		if ndst <= 0 || ndst > 8 {
			return fmt.Errorf("%w: num_dst is %d; it must be 1..8", engine.ErrInvalidArgument, int32(ndst))
		}
		if batch <= 0 || batch > 1<<24 {
			return fmt.Errorf("%w: batch is %d; it must be 1..%d", engine.ErrInvalidArgument, int64(batch), 1<<24)
		}
		ds := make([]engine.DevicePtr, int(ndst))
		for i, d := range unsafe.Slice(dst, int(ndst)) {
			ds[i] = engine.DevicePtr(d)
		}
		return data.LaunchTransform(eng, tr, fields[0], int(batch), engine.DevicePtr(src), ds, data.Stream(stream))
	})
}
