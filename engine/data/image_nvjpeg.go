package data

import (
	"encoding/binary"
	"errors"

	"github.com/ferry-ml/ferry/engine"

	"github.com/ferry-ml/ferry/engine/internal/cuda"
)

// nvJPEG on the GPU image path (image_device.go): the engine's decoder handles, the planes each JPEG is
// decoded to in the slot's arena, the batched decode with its fallbacks, and the color kernel that turns
// the planes into RGB as libjpeg does.

// imageDecoders are the engine's nvJPEG handles, made on first use and kept on the engine.
type imageDecoders struct {
	hw, gpu *cuda.NVJPEG // the hardware and the CUDA backends; nil where unavailable
	why     string       // why nvJPEG is not used, when neither is
	lib     string
}

type imageDecodersKey struct{}

// imageDecodersOf returns the engine's decoders, creating them on first use.
func imageDecodersOf(e *engine.Engine) *imageDecoders {
	v, err := e.Attach(imageDecodersKey{}, func() (any, error) {
		d := &imageDecoders{}
		lib, err := cuda.LoadNVJPEG()
		if err != nil {
			d.why = err.Error()
			e.Logger().Info().Err(err).Msg("nvJPEG unavailable: images are decoded on the host")
			return d, nil
		}
		d.lib = lib
		if d.hw, err = cuda.NewNVJPEG(e.Context(), true); err != nil {
			e.Logger().Debug().Err(err).Msg("no hardware JPEG decoder: nvJPEG's CUDA backend decodes")
		}
		if d.gpu, err = cuda.NewNVJPEG(e.Context(), false); err != nil && d.hw == nil {
			d.why = err.Error()
			e.Logger().Warn().Err(err).Msg("nvJPEG does not start: images are decoded on the host")
		}
		return d, nil
	})
	if err != nil {
		return &imageDecoders{why: err.Error()}
	}
	return v.(*imageDecoders)
}

// describe says which decoders run.
func (d *imageDecoders) describe() string {
	switch {
	case d.hw != nil:
		return "JPEGs by nvJPEG's hardware decoder (" + d.lib + "), other images on the host"
	case d.gpu != nil:
		return "JPEGs by nvJPEG's CUDA backend (" + d.lib + "), other images on the host"
	}
	return "every image on the host (" + d.why + ")"
}

// nvjpeg reports whether any nvJPEG backend runs.
func (d *imageDecoders) nvjpeg() bool { return d.hw != nil || d.gpu != nil }

// Close destroys the handles when the engine closes.
func (d *imageDecoders) Close() error {
	return errors.Join(d.hw.Close(), d.gpu.Close())
}

// layoutPlanes places the planes nvJPEG decodes each JPEG row to, from offset end of the arena, and returns
// the arena's size. Pitches and heights have room for planes rounded up to whole chroma samples.
func layoutPlanes(rows []imgRow, end int) int {
	end = alignArena(end)
	for r := range rows {
		row := &rows[r]
		if !row.jpeg {
			continue
		}
		yw, yh := (row.w+row.hs-1)/row.hs*row.hs, (row.h+row.vs-1)/row.vs*row.vs
		row.cw, row.ch = yw/row.hs, yh/row.vs
		row.yPitch, row.cPitch = alignArena(yw), alignArena(row.cw)
		row.yOff = end
		end += alignArena(row.yPitch * yh)
		row.cOff = end
		// Chroma planes for a gray image too: nvJPEG is given three planes for every image of the batch,
		// and one it wrote by mistake must not land on the next image's.
		end += 2 * alignArena(row.cPitch*row.ch)
	}
	return max(end, imageArenaAlign)
}

// nvjpegRows decodes the rows kept for nvJPEG into the arena, the hardware decoder first; images of a
// batch that a backend refuses go to the next, and last to the host, one by one, which names a bad file.
func (it *Iterator) nvjpegRows(s *slot, f int, si *slotImages, rows []imgRow) error {
	var pending []int
	for r := range rows {
		if rows[r].jpeg {
			pending = append(pending, r)
		}
	}
	if len(pending) == 0 {
		return nil
	}
	data := make([][]byte, len(pending))
	planes := make([][3]engine.DevicePtr, len(pending))
	pitches := make([][3]int, len(pending))
	arena := si.dev.Ptr()
	for k, r := range pending {
		row := &rows[r]
		cb := arena + engine.DevicePtr(row.cOff)
		cr := cb + engine.DevicePtr(alignArena(row.cPitch*row.ch))
		data[k] = row.enc
		planes[k] = [3]engine.DevicePtr{arena + engine.DevicePtr(row.yOff), cb, cr}
		pitches[k] = [3]int{row.yPitch, row.cPitch, row.cPitch}
	}
	var lastErr error
	for b, dec := range []*cuda.NVJPEG{it.images.hw, it.images.gpu} {
		if dec == nil || testHookRefuseNVJPEG {
			continue
		}
		if si.states[b] == nil {
			st, err := dec.NewState()
			if err != nil {
				lastErr = err
				continue
			}
			si.states[b] = st
		}
		err := si.states[b].DecodeBatched(data, planes, pitches, cuda.NVJPEGOutputYUV, it.stream)
		if err == nil {
			return it.launchColor(si, rows, pending, planes, si.base)
		}
		lastErr = err
		it.e.Logger().Debug().Err(err).Int("images", len(pending)).Bool("hardware", dec.Hardware).Msg("nvJPEG refused a batch")
	}
	// The host decodes what nvJPEG did not, image by image.
	if lastErr != nil {
		it.e.Logger().Debug().Err(lastErr).Msg("decoding a batch's JPEGs on the host")
	}
	for _, r := range pending {
		if err := it.hostDecodeRow(s, f, si, r); err != nil {
			return err
		}
	}
	return nil
}

// launchColor runs the color kernel over the rows nvJPEG decoded to planes: each becomes RGB at its place.
func (it *Iterator) launchColor(si *slotImages, rows []imgRow, pending []int, planes [][3]engine.DevicePtr, base engine.DevicePtr) error {
	desc := si.yccDesc.Bytes()
	le := binary.LittleEndian
	for k, r := range pending {
		row := &rows[r]
		b := desc[k*yccImageSize:]
		for i, v := range []uint64{uint64(planes[k][0]), uint64(planes[k][1]), uint64(planes[k][2]), uint64(base) + uint64(row.devOff)} {
			le.PutUint64(b[8*i:], v)
		}
		gray := uint32(0)
		if row.gray {
			gray = 1
		}
		for i, v := range []uint32{uint32(row.w), uint32(row.h), uint32(row.cw), uint32(row.ch), uint32(row.yPitch),
			uint32(row.cPitch), uint32(row.hs), uint32(row.vs), gray, 0} {
			le.PutUint32(b[32+4*i:], v)
		}
	}
	ctx := it.e.Context()
	if err := ctx.MemcpyHtoDAsync(si.yccDescDev.Ptr(), si.yccDesc.Pointer(), len(pending)*yccImageSize, it.stream); err != nil {
		return err
	}
	params := le.AppendUint64(nil, uint64(si.yccDescDev.Ptr()))
	params = le.AppendUint32(params, uint32(len(pending)))
	params = le.AppendUint32(params, 0)
	return it.kern.launchPerSample(it.e, yccKernel, 64, len(pending), it.stream, params)
}

// yccKernel converts nvJPEG's planes to RGB as libjpeg does (kernels/ycc.cu).
var yccKernel = kernel("ferry_ycc_rgb")

// yccImageSize and yccParamsSize are sizeof(ferry_ycc_image) and sizeof(ferry_ycc_params) (kernels/params.h).
const (
	yccImageSize  = 72
	yccParamsSize = 16
)
