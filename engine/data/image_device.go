package data

import (
	"encoding/binary"
	"fmt"
	"math"

	"sync/atomic"
	"unsafe"

	"github.com/ferry-ml/ferry/engine"

	"github.com/ferry-ml/ferry/engine/internal/cuda"
)

// The GPU image path. A crop (RandomResizedCrop, CenterCrop) on a GPU engine whose kernels load runs as
// one kernel over images already decoded in device memory:
//
//   - The gather workers read each sample's encoded bytes into their own buffer and parse the JPEG header.
//     A JPEG that nvJPEG decodes as the CPU path does (jpegInfo.nvjpegFits) is kept for nvJPEG; any other
//     image (PNG, WebP, progressive or CMYK JPEG, ...) is decoded on the worker, into the slot's page-locked
//     host arena. The worker also draws the sample's box and flip: (seed, epoch, index) and the image's size.
//   - The copier then lays the batch's images out in the slot's device arena, copies the host-decoded ones
//     there in one DMA, decodes the JPEGs there with nvJPEG's batched decode (the hardware decoder where
//     the GPU has one, else the CUDA backend), and launches the crop kernel, which reads each image from the
//     arena and writes the batch's [B, 3, S, S] (or [B, S, S, 3]) output.
//
// The arenas are allocated once per slot and grow only when a batch needs more than any before it, never
// per batch. A batch that nvJPEG refuses is decoded on the host instead, image by image, so that a bad file
// is named; with OnErrorSkip it is replaced by the next sample that decodes.

// imageOp is what the GPU image path needs of a transform that decodes: the crops, and DecodeImage,
// whose images nvJPEG and the host write straight into the batch ("direct", no arena and no kernel).
type imageOp interface {
	maxPixels() int
	// input is a decoded input's size, or ok false for encoded bytes.
	input() (w, h int, ok bool)
	// place sets the row's box and flip (the crops) or checks its size (DecodeImage).
	place(row *imgRow, seed, epoch uint64, idx int) error
	direct() bool
}

func (o *cropOp) maxPixels() int                                { return o.s.maxPixels }
func (o *cropOp) input() (int, int, bool)                       { return o.w, o.h, !o.encoded }
func (o *cropOp) direct() bool                                  { return false }
func (o *decodeOp) maxPixels() int                              { return o.t.MaxPixels }
func (o *decodeOp) input() (int, int, bool)                     { return 0, 0, false }
func (o *decodeOp) direct() bool                                { return true }
func (o *decodeOp) place(row *imgRow, _, _ uint64, _ int) error { return o.checkSize(row.w, row.h) }

func (o *cropOp) place(row *imgRow, seed, epoch uint64, idx int) error {
	row.box = o.s.box(row.w, row.h, rowArgs{seed: seed, epoch: epoch, index: idx})
	row.flip = o.s.flip > 0 && flipSample(o.s.flip, seed, epoch, idx)
	return nil
}

// imgRow is one sample of a batch on the GPU image path.
type imgRow struct {
	jpeg    bool   // decoded by nvJPEG from enc
	enc     []byte // the encoded JPEG (a reused buffer)
	dec     []byte // a host-decoded image that did not fit the host arena (a reused buffer)
	hostOff int    // the host-decoded image's offset in the host arena, or -1
	w, h    int
	box     cropBox
	flip    bool
	devOff  int  // the image's offset in the device arena
	spilled bool // replaced after the layout: its image goes to the spill buffer
	// A JPEG for nvJPEG: its luma samples per chroma sample (across, down), gray, and where nvJPEG writes
	// its planes in the arena (the color kernel then writes the RGB image at devOff).
	hs, vs         int
	gray           bool
	yOff, cOff     int
	yPitch, cPitch int
	cw, ch         int
}

// slotImages is one slot's state for one crop field.
type slotImages struct {
	rows       []imgRow
	host       *engine.HostBuffer   // host-decoded images, page-locked; nil until one is needed
	hostUsed   atomic.Int64         // bytes the workers reserved in host (may exceed its size)
	dev        *engine.DeviceBuffer // the batch's decoded images
	desc       *engine.HostBuffer   // ferry_crop_sample[rows]
	descDev    *engine.DeviceBuffer
	yccDesc    *engine.HostBuffer // ferry_ycc_image[rows]
	yccDescDev *engine.DeviceBuffer
	spill      *engine.DeviceBuffer // replacements of samples that failed after the layout (OnErrorSkip)
	states     [2]*cuda.NVJPEGState // per backend: hardware, CUDA
	forceOwn   bool                 // the copier re-reads rows: decode on the host into each row's own buffer
	direct     bool                 // DecodeImage: the images go straight into the batch
	base       engine.DevicePtr     // where the rows' device offsets are from: the arena, or the batch
}

// cropSampleSize is sizeof(ferry_crop_sample) (kernels/params.h).
const cropSampleSize = 72

// imageArenaAlign aligns each image in the arenas.
const imageArenaAlign = 256

func alignArena(n int) int { return (n + imageArenaAlign - 1) &^ (imageArenaAlign - 1) }

// newSlotImages allocates a new slot's descriptors for each crop field; the arenas come with the first batch.
func (it *Iterator) newSlotImages(s *slot) error {
	s.imgs = make([]*slotImages, len(it.plans))
	for f, p := range it.plans {
		if p.t == nil || !p.tr.decodes {
			continue
		}
		si := &slotImages{rows: make([]imgRow, it.rows), direct: p.op.(imageOp).direct()}
		s.imgs[f] = si
		var err error
		if si.yccDesc, err = it.e.HostPool().Alloc(it.rows * yccImageSize); err != nil {
			return err
		}
		if si.yccDescDev, err = it.e.DevicePool().Alloc(it.rows * yccImageSize); err != nil {
			return err
		}
		if si.direct {
			continue
		}
		if si.desc, err = it.e.HostPool().Alloc(it.rows * cropSampleSize); err != nil {
			return err
		}
		if si.descDev, err = it.e.DevicePool().Alloc(it.rows * cropSampleSize); err != nil {
			return err
		}
	}
	return nil
}

// free returns the slot's image memory and decode states; nothing on the device uses them any more.
func (si *slotImages) free(e *engine.Engine) {
	if si == nil {
		return
	}
	if si.host != nil {
		e.HostPool().Free(si.host)
	}
	for _, h := range []*engine.HostBuffer{si.desc, si.yccDesc} {
		if h != nil {
			e.HostPool().Free(h)
		}
	}
	for _, d := range []*engine.DeviceBuffer{si.dev, si.descDev, si.yccDescDev, si.spill} {
		if d != nil {
			e.DevicePool().Free(d)
		}
	}
	for i, st := range si.states {
		if st != nil {
			_ = st.Close()
			si.states[i] = nil
		}
	}
	*si = slotImages{}
}

// prepareImages readies the slot's image state for a batch, before the workers fill it (the slot's last
// copies have completed): the host arena grows to the most any batch of the field has needed.
func (it *Iterator) prepareImages(s *slot) error {
	for f, si := range s.imgs {
		if si == nil {
			continue
		}
		need := int(si.hostUsed.Load())
		si.hostUsed.Store(0)
		si.forceOwn = false
		if si.spill != nil {
			it.e.DevicePool().Free(si.spill)
			si.spill = nil
		}
		if need > 0 && (si.host == nil || si.host.Len() < need) {
			if si.host != nil {
				it.e.HostPool().Free(si.host)
				si.host = nil
			}
			var err error
			if si.host, err = it.e.HostPool().Alloc(need + need/4); err != nil {
				return fmt.Errorf("the host image arena of field %q (%d bytes): %w", it.fields[f].Name, need+need/4, err)
			}
		}
	}
	return nil
}

// stageImages is the worker's part for row r, whose fields were just read into in: for each crop field,
// the JPEG kept for nvJPEG or the image decoded on the host, and the sample's box and flip.
func (it *Iterator) stageImages(s *slot, r int, in [][]byte) error {
	for f, si := range s.imgs {
		if si == nil {
			continue
		}
		p := &it.plans[f]
		o := p.op.(imageOp)
		idx := s.indices[r]
		row := &si.rows[r]
		row.jpeg, row.hostOff = false, -1
		data := in[f]
		if p.ragged {
			data = data[:min(it.ragged.SampleLen(idx), len(data))]
		}
		var pix []byte
		if w, h, decoded := o.input(); decoded {
			pix, row.w, row.h = data[:3*w*h], w, h
		} else {
			ok, err := it.stageJPEG(o, row, data, si.forceOwn)
			if err != nil {
				return fmt.Errorf("%v on %s: %w", p.t, sampleName(it.src, idx), err)
			}
			if !ok {
				d := decoderPool.Get().(*decodedImage)
				defer decoderPool.Put(d)
				if err := decodeImage(data, o.maxPixels(), d); err != nil {
					return fmt.Errorf("%v on %s: %w", p.t, sampleName(it.src, idx), err)
				}
				pix, row.w, row.h = d.pix, d.w, d.h
			}
		}
		if err := o.place(row, it.opts.Seed, s.epoch, idx); err != nil {
			return fmt.Errorf("%v on %s: %w", p.t, sampleName(it.src, idx), err)
		}
		if pix != nil {
			n := len(pix)
			end := int(si.hostUsed.Add(int64(alignArena(n))))
			if off := end - alignArena(n); !si.forceOwn && si.host != nil && end <= si.host.Len() {
				copy(si.host.Bytes()[off:], pix)
				row.hostOff = off
			} else {
				row.dec = append(row.dec[:0], pix...)
			}
		}
	}
	return nil
}

// stageJPEG keeps data for nvJPEG when it is a JPEG nvJPEG decodes as the host does; it refuses a JPEG
// whose header is broken or whose image is over the limit.
func (it *Iterator) stageJPEG(o imageOp, row *imgRow, data []byte, forceHost bool) (bool, error) {
	if forceHost || !it.images.nvjpeg() || len(data) < 3 || data[0] != 0xFF || data[1] != 0xD8 {
		return false, nil
	}
	info, err := parseJPEGHeader(data)
	if err != nil {
		return false, err
	}
	if int64(info.w)*int64(info.h) > int64(o.maxPixels()) {
		return false, fmt.Errorf("%w: the image is %d x %d pixels, more than the %d allowed (max pixels)", engine.ErrLimit, info.w, info.h, o.maxPixels())
	}
	// A file that does not end in its end-of-image marker (truncated, or with trailing bytes) goes to the
	// host decoder, which names what is wrong with it; nvJPEG may decode a truncated scan without a word.
	if !info.nvjpegFits() || data[len(data)-2] != 0xFF || data[len(data)-1] != 0xD9 {
		return false, nil
	}
	row.jpeg, row.w, row.h = true, info.w, info.h
	row.hs, row.vs, row.gray = info.sampling[0][0], info.sampling[0][1], info.comps == 1
	if row.gray {
		row.hs, row.vs = 1, 1
	}
	row.enc = append(row.enc[:0], data...)
	return true, nil
}

// decodeImages is the copier's part, before the batch's other copies: for each crop field, the images
// laid out in the device arena, copied and decoded there, then the crop kernel.
func (it *Iterator) decodeImages(s *slot) error {
	for f, si := range s.imgs {
		if si == nil || len(s.indices) == 0 {
			continue
		}
		if err := it.decodeField(s, f, si); err != nil {
			return err
		}
	}
	return it.uploadSpills(s)
}

func (it *Iterator) decodeField(s *slot, f int, si *slotImages) error {
	ctx := it.e.Context()
	rows := si.rows[:len(s.indices)]
	if it.plans[f].op.(imageOp).direct() {
		// DecodeImage: every image goes to its row of the batch; the arena holds nvJPEG's planes only.
		g := it.plans[f].outs[0]
		si.base = s.dev[g].Ptr()
		rb := it.outs[g].Bytes()
		if err := it.ensureArena(si, layoutPlanes(rows, 0)); err != nil {
			return fmt.Errorf("the device image arena of field %q: %w", it.fields[f].Name, err)
		}
		for r := range rows {
			rows[r].devOff = r * rb
			if rows[r].hostOff >= 0 {
				src := unsafe.Add(si.host.Pointer(), rows[r].hostOff)
				if err := ctx.MemcpyHtoDAsync(si.base+engine.DevicePtr(r*rb), src, rb, it.stream); err != nil {
					return err
				}
			}
		}
	} else {
		// The crops: the host arena's images keep their offsets in the device arena; the others follow.
		hostBytes := 0
		if si.host != nil {
			hostBytes = min(int(si.hostUsed.Load()), si.host.Len())
		}
		end := alignArena(hostBytes)
		for r := range rows {
			if rows[r].hostOff >= 0 {
				rows[r].devOff = rows[r].hostOff
				continue
			}
			rows[r].devOff = end
			end += alignArena(3 * rows[r].w * rows[r].h)
		}
		if err := it.ensureArena(si, layoutPlanes(rows, end)); err != nil {
			return fmt.Errorf("the device image arena of field %q: %w", it.fields[f].Name, err)
		}
		si.base = si.dev.Ptr()
		if hostBytes > 0 {
			if err := ctx.MemcpyHtoDAsync(si.base, si.host.Pointer(), hostBytes, it.stream); err != nil {
				return err
			}
		}
	}
	for r := range rows {
		if !rows[r].jpeg && rows[r].hostOff < 0 {
			if err := it.uploadOwn(&rows[r], si.base); err != nil {
				return err
			}
		}
	}
	return it.nvjpegRows(s, f, si, rows)
}

// ensureArena grows the slot's device arena to n bytes; the slot's last batch has completed on the device.
func (it *Iterator) ensureArena(si *slotImages, n int) error {
	if si.dev != nil && si.dev.Len() >= n {
		return nil
	}
	if si.dev != nil {
		it.e.DevicePool().Free(si.dev)
		si.dev = nil
	}
	var err error
	si.dev, err = it.e.DevicePool().Alloc(max(n+n/4, imageArenaAlign))
	return err
}

// uploadOwn copies a row's host-decoded image from its own buffer, pageable memory: the driver takes the
// bytes before the call returns.
func (it *Iterator) uploadOwn(row *imgRow, base engine.DevicePtr) error {
	if len(row.dec) == 0 {
		return nil
	}
	return it.e.Context().MemcpyHtoDAsync(base+engine.DevicePtr(row.devOff), unsafe.Pointer(&row.dec[0]), len(row.dec), it.stream)
}

// hostDecodeRow decodes row r on the host, after nvJPEG refused its batch, and uploads it to its place.
// A row that does not decode fails the batch with an error naming the sample, or, with OnErrorSkip, is
// replaced by the next sample that reads and decodes, which goes to the slot's spill buffer.
func (it *Iterator) hostDecodeRow(s *slot, f int, si *slotImages, r int) error {
	row := &si.rows[r]
	o := it.plans[f].op.(imageOp)
	d := decoderPool.Get().(*decodedImage)
	defer decoderPool.Put(d)
	err := decodeImage(row.enc, o.maxPixels(), d)
	if err == nil && (d.w != row.w || d.h != row.h) {
		err = fmt.Errorf("%w: the JPEG decodes to %d x %d pixels, its header says %d x %d", engine.ErrFormat, d.w, d.h, row.w, row.h)
	}
	if err == nil {
		row.jpeg = false
		row.dec = append(row.dec[:0], d.pix...)
		return it.uploadOwn(row, si.base)
	}
	err = fmt.Errorf("%v on %s: %w", it.plans[f].t, sampleName(it.src, s.indices[r]), err)
	if it.opts.OnError != OnErrorSkip {
		return fmt.Errorf("batch %d of epoch %d: %w", s.batch, s.epoch, err)
	}
	return it.replaceRow(s, f, r, err)
}

// replaceRow is OnErrorSkip for a row that failed in the copier: the row is read again from the following
// samples (skipRow), every image of it decoded on the host into the row's own buffer. The crop fields laid
// out already (f and those before it) take the new images from the slot's spill buffers (uploadSpills).
func (it *Iterator) replaceRow(s *slot, f int, r int, first error) error {
	dst := make([][]byte, len(it.fields))
	it.rowDst(s, r, make([][]byte, len(it.fields)), dst)
	setOwn := func(v bool) {
		for _, o := range s.imgs {
			if o != nil {
				o.forceOwn = v
			}
		}
	}
	setOwn(true)
	defer setOwn(false)
	if err := it.skipRow(s, r, dst, make([][]byte, len(it.outs)), first); err != nil {
		return fmt.Errorf("batch %d of epoch %d: %w", s.batch, s.epoch, err)
	}
	for g, o := range s.imgs {
		if o != nil && g <= f {
			o.rows[r].spilled = true
		}
	}
	return nil
}

// uploadSpills copies the replaced rows' images of each crop field into the field's spill buffer, sized for
// them (freed with the next batch), and points the rows there: a row's offset is from the arena's base, in
// modular 64-bit arithmetic as the kernel adds it.
func (it *Iterator) uploadSpills(s *slot) error {
	for _, si := range s.imgs {
		if si == nil {
			continue
		}
		rows := si.rows[:len(s.indices)]
		if si.direct {
			// DecodeImage: a replacement has the batch's image size and goes to its row.
			for r := range rows {
				if rows[r].spilled {
					rows[r].spilled = false
					if err := it.uploadOwn(&rows[r], si.base); err != nil {
						return err
					}
				}
			}
			continue
		}
		total := 0
		for r := range rows {
			if rows[r].spilled {
				total += alignArena(len(rows[r].dec))
			}
		}
		if total == 0 {
			continue
		}
		var err error
		if si.spill, err = it.e.DevicePool().Alloc(total); err != nil {
			return err
		}
		off := 0
		for r := range rows {
			if !rows[r].spilled {
				continue
			}
			rows[r].spilled = false
			rows[r].devOff = int(si.spill.Ptr() + engine.DevicePtr(off) - si.base)
			if err := it.uploadOwn(&rows[r], si.base); err != nil {
				return err
			}
			off += alignArena(len(rows[r].dec))
		}
	}
	return nil
}

// launchCrop writes the slot's crop descriptors and runs the crop kernel of field f.
func (it *Iterator) launchCrop(s *slot, f int) error {
	si := s.imgs[f]
	o := it.plans[f].op.(*cropOp)
	rows := si.rows[:len(s.indices)]
	desc := si.desc.Bytes()
	for r := range rows {
		packCropSample(desc[r*cropSampleSize:], &rows[r])
	}
	ctx := it.e.Context()
	if err := ctx.MemcpyHtoDAsync(si.descDev.Ptr(), si.desc.Pointer(), len(rows)*cropSampleSize, it.stream); err != nil {
		return err
	}
	cp := cropParams{samples: uint64(si.descDev.Ptr()), src: uint64(si.dev.Ptr()), dst: uint64(s.dev[it.plans[f].outs[0]].Ptr()),
		batch: uint32(len(rows)), size: uint32(o.s.size), scale: o.scale, bias: o.bias}
	if o.s.antialias {
		cp.antialias = 1
	}
	s.params = cp.pack(s.params)
	perSample := uint32(min(64, (o.s.size*o.s.size+kernelBlock-1)/kernelBlock))
	return it.kern.launchPerSample(it.e, cropKernels[imageKernel{o.out, o.s.norm.Layout}], perSample, len(rows), it.stream, s.params)
}

// testHookRefuseNVJPEG, when a test sets it, makes every batch go to the host decode as if nvJPEG had
// refused it.
var testHookRefuseNVJPEG bool

// cropKernels are the crop kernels (kernels/crop.cu).
var cropKernels = kernelTable(map[imageKernel]string{
	{Float32, LayoutCHW}: "ferry_crop_f32_chw", {Float32, LayoutHWC}: "ferry_crop_f32_hwc",
	{Float16, LayoutCHW}: "ferry_crop_f16_chw", {Float16, LayoutHWC}: "ferry_crop_f16_hwc",
	{BFloat16, LayoutCHW}: "ferry_crop_bf16_chw", {BFloat16, LayoutHWC}: "ferry_crop_bf16_hwc",
})

// packCropSample writes ferry_crop_sample (kernels/params.h) for a row.
func packCropSample(b []byte, row *imgRow) {
	le := binary.LittleEndian
	le.PutUint64(b[0:], uint64(row.devOff))
	le.PutUint32(b[8:], uint32(row.w))
	le.PutUint32(b[12:], uint32(row.h))
	for i, v := range []float64{row.box.y0, row.box.x0, row.box.dy, row.box.dx} {
		le.PutUint64(b[16+8*i:], math.Float64bits(v))
	}
	for i, v := range []int{row.box.ylo, row.box.yhi, row.box.xlo, row.box.xhi} {
		le.PutUint32(b[48+4*i:], uint32(int32(v)))
	}
	flip := uint32(0)
	if row.flip {
		flip = 1
	}
	le.PutUint32(b[64:], flip)
	le.PutUint32(b[68:], 0)
}

// cropParams is ferry_crop_params (kernels/params.h), packed byte for byte.
const cropParamsSize = 72

type cropParams struct {
	samples, src, dst          uint64
	batch, size, antialias, rs uint32
	scale, bias                [maxChannels]float32
}

func (p *cropParams) pack(b []byte) []byte {
	b = b[:0]
	le := binary.LittleEndian
	for _, v := range []uint64{p.samples, p.src, p.dst} {
		b = le.AppendUint64(b, v)
	}
	for _, v := range []uint32{p.batch, p.size, p.antialias, p.rs} {
		b = le.AppendUint32(b, v)
	}
	return appendCoefficients(b, p.scale, p.bias)
}
