package data

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"

	"github.com/x448/float16"

	"github.com/ferry-ml/ferry/engine"
)

// ImageLayout is the order of an image's dimensions after Normalize.
type ImageLayout int

// Image layouts.
const (
	// LayoutCHW is channels first, [C, H, W] per sample: what torchvision models take.
	LayoutCHW ImageLayout = iota
	// LayoutHWC keeps channels last, [H, W, C] per sample (torch.channels_last).
	LayoutHWC
)

func (l ImageLayout) String() string {
	switch l {
	case LayoutCHW:
		return "CHW"
	case LayoutHWC:
		return "HWC"
	}
	return fmt.Sprintf("ImageLayout(%d)", int(l))
}

// ParseImageLayout accepts "CHW", "NCHW", "HWC", "NHWC" and "channels_last", in any case.
func ParseImageLayout(s string) (ImageLayout, error) {
	switch strings.ToUpper(strings.TrimSpace(s)) {
	case "CHW", "NCHW", "":
		return LayoutCHW, nil
	case "HWC", "NHWC", "CHANNELS_LAST":
		return LayoutHWC, nil
	}
	return 0, fmt.Errorf("%w: unknown image layout %q (CHW or HWC)", engine.ErrInvalidArgument, s)
}

// maxChannels is the most channels Normalize takes (gray, gray+alpha, RGB, RGBA).
const maxChannels = 4

// Normalize turns u8 images [H, W, C] (C <= 4, as decoded) into floating point, normalized per channel:
// out = (x*Scale - Mean[c]) / Std[c], in CHW or HWC order, with an optional random horizontal flip. As
// torchvision's ToTensor then Normalize(mean, std): Scale defaults to 1/255 and Mean and Std are in [0, 1]
// units. Empty Mean and Std leave x*Scale; a single value applies to every channel.
type Normalize struct {
	Mean, Std []float32
	Scale     float32     // 0 means 1/255
	Layout    ImageLayout // LayoutCHW (the default) or LayoutHWC
	DType     DType       // Float32 (the default when 0), Float16 or BFloat16
	// Flip is the probability that a sample is flipped left-right. Whether a sample flips is a pure
	// function of (the iterator's Seed, the epoch, the sample's index): reproducible, identical on every
	// rank and after a resume.
	Flip float64
	// InputCHW reads the u8 input as channel planes, [C, H, W] per sample (CIFAR's binary records), instead
	// of the decoded [H, W, C].
	InputCHW bool
}

// dims returns the input image's height, width and channels, by its input layout.
func (n Normalize) dims(in Field) (h, w, c int) {
	if n.InputCHW {
		return in.Shape[1], in.Shape[2], in.Shape[0]
	}
	return in.Shape[0], in.Shape[1], in.Shape[2]
}

func (n Normalize) String() string {
	in := LayoutHWC
	if n.InputCHW {
		in = LayoutCHW
	}
	return fmt.Sprintf("Normalize(mean=%v, std=%v, input=%v, layout=%v, dtype=%v, flip=%g)", n.Mean, n.Std, in, n.Layout, n.outType(), n.Flip)
}

func (n Normalize) outType() DType {
	if n.DType == DTypeInvalid {
		return Float32
	}
	return n.DType
}

// Outputs implements Transform: the field keeps its name and becomes [C, H, W] or [H, W, C] of DType.
func (n Normalize) Outputs(in Field) ([]Field, error) {
	want := "[H, W, C]"
	if n.InputCHW {
		want = "[C, H, W]"
	}
	if in.DType != Uint8 || len(in.Shape) != 3 {
		return nil, fmt.Errorf("%w: Normalize needs a uint8 %s image field; %q is %v %v", engine.ErrInvalidArgument, want, in.Name, in.DType, in.Shape)
	}
	h, w, c := n.dims(in)
	if c > maxChannels {
		hint := "is it [C, H, W]? then set the input layout to CHW"
		if n.InputCHW {
			hint = "is it [H, W, C]? then set the input layout to HWC"
		}
		return nil, fmt.Errorf("%w: Normalize takes at most %d channels; %q read as %s has %d (%s)", engine.ErrInvalidArgument, maxChannels, in.Name, want, c, hint)
	}
	if _, _, err := n.coefficients(c); err != nil {
		return nil, fmt.Errorf("field %q: %w", in.Name, err)
	}
	switch n.outType() {
	case Float32, Float16, BFloat16:
	default:
		return nil, fmt.Errorf("%w: Normalize outputs float32, float16 or bfloat16, not %v", engine.ErrInvalidArgument, n.DType)
	}
	if n.Layout != LayoutCHW && n.Layout != LayoutHWC {
		return nil, fmt.Errorf("%w: Normalize: unknown layout %v", engine.ErrInvalidArgument, n.Layout)
	}
	if !(n.Flip >= 0 && n.Flip <= 1) {
		return nil, fmt.Errorf("%w: Normalize: flip probability %g is outside [0, 1]", engine.ErrInvalidArgument, n.Flip)
	}
	shape := []int{c, h, w}
	if n.Layout == LayoutHWC {
		shape = []int{h, w, c}
	}
	return []Field{{Name: in.Name, DType: n.outType(), Shape: shape}}, nil
}

// coefficients folds Scale, Mean and Std into out = x*scale[c] + bias[c].
func (n Normalize) coefficients(c int) (scale, bias [maxChannels]float32, err error) {
	s := n.Scale
	if s == 0 {
		s = 1.0 / 255
	}
	if math.IsNaN(float64(s)) || math.IsInf(float64(s), 0) {
		return scale, bias, fmt.Errorf("%w: Normalize: scale %g is not finite", engine.ErrInvalidArgument, s)
	}
	pick := func(v []float32, name string, def float32) ([maxChannels]float32, error) {
		var out [maxChannels]float32
		switch len(v) {
		case 0:
			for i := range out {
				out[i] = def
			}
		case 1:
			for i := range out {
				out[i] = v[0]
			}
		case c:
			copy(out[:], v)
		default:
			return out, fmt.Errorf("%w: Normalize: %d %s values for %d channels", engine.ErrInvalidArgument, len(v), name, c)
		}
		for i := 0; i < c; i++ {
			if math.IsNaN(float64(out[i])) || math.IsInf(float64(out[i]), 0) {
				return out, fmt.Errorf("%w: Normalize: %s[%d] = %g is not finite", engine.ErrInvalidArgument, name, i, out[i])
			}
		}
		return out, nil
	}
	mean, err := pick(n.Mean, "mean", 0)
	if err != nil {
		return scale, bias, err
	}
	std, err := pick(n.Std, "std", 1)
	if err != nil {
		return scale, bias, err
	}
	for i := 0; i < c; i++ {
		if std[i] == 0 {
			return scale, bias, fmt.Errorf("%w: Normalize: std[%d] is 0", engine.ErrInvalidArgument, i)
		}
		scale[i] = s / std[i]
		bias[i] = -mean[i] / std[i]
	}
	return scale, bias, nil
}

// normalizeOp is Normalize bound to an image field.
type normalizeOp struct {
	n           Normalize
	h, w, c     int
	lut         *imageLUT // the host form
	scale, bias [maxChannels]float32
	kernel      string
}

// imageKernel picks an image kernel by output type and layout.
type imageKernel struct {
	out    DType
	layout ImageLayout
}

// imageKernels are the image kernels (kernels/image.cu).
var imageKernels = kernelTable(map[imageKernel]string{
	{Float32, LayoutCHW}: "ferry_image_f32_chw", {Float32, LayoutHWC}: "ferry_image_f32_hwc",
	{Float16, LayoutCHW}: "ferry_image_f16_chw", {Float16, LayoutHWC}: "ferry_image_f16_hwc",
	{BFloat16, LayoutCHW}: "ferry_image_bf16_chw", {BFloat16, LayoutHWC}: "ferry_image_bf16_hwc",
})

func (n Normalize) traits() traits { return traits{flip: n.Flip} }

func (n Normalize) bind(in Field, _ bool) (op, error) {
	lut, err := newImageLUT(n, in)
	if err != nil {
		return nil, err
	}
	o := &normalizeOp{n: n, lut: lut, kernel: imageKernels[imageKernel{n.outType(), n.Layout}]}
	o.h, o.w, o.c = n.dims(in)
	o.scale, o.bias, _ = n.coefficients(o.c)
	return o, nil
}

func (o *normalizeOp) host(out [][]byte, in []byte, r rowArgs) { o.lut.apply(out[0], in, r.flip) }

func (o *normalizeOp) launch(k *kernelSet, e *engine.Engine, a launchArgs, buf []byte) ([]byte, error) {
	h, w, c := o.h, o.w, o.c
	ip := imageParams{src: a.src, offsets: a.offsets, flip: a.flips, dst: a.dst[0], batch: uint32(a.batch),
		h: uint32(h), w: uint32(w), c: uint32(c), scale: o.scale, bias: o.bias}
	perStore := 16 / o.lut.osize // outputs per 16-byte store
	// The tiled path loads whole 16-byte words of a tile's rows: of interleaved pixels, or of each
	// channel's plane, which needs every plane's rows to start 16-byte aligned too.
	rowsAligned := (w*c)%16 == 0
	if o.n.InputCHW {
		ip.planar = 1
		rowsAligned = w%16 == 0
	}
	if a.aligned && a.src%16 == 0 && rowsAligned && w%perStore == 0 && w*c <= imageTileBytes {
		ip.rows = uint32(min(h, imageTileBytes/(w*c)))
		buf = ip.pack(buf)
		tiles := uint64((h + int(ip.rows) - 1) / int(ip.rows))
		return buf, k.launchBlocks(e, o.kernel, tiles*uint64(a.batch), a.stream, buf)
	}
	buf = ip.pack(buf)
	return buf, k.launch1D(e, o.kernel, uint64(a.batch)*uint64(h*w), a.stream, buf)
}

// imageParams is ferry_image_params (kernels/params.h), packed byte for byte (little-endian, natural
// alignment); TestKernelParamsLayout checks every size and offset.
const imageParamsSize = 88

// imageTileBytes is the shared-memory tile of the image kernels' tiled path (kTileBytes in image.cu).
const imageTileBytes = 16384

type imageParams struct {
	src, offsets, flip, dst uint64
	batch, h, w, c, rows    uint32
	planar                  uint32 // 1: the input is [C, H, W]
	scale, bias             [maxChannels]float32
}

func (p *imageParams) pack(b []byte) []byte {
	b = b[:0]
	le := binary.LittleEndian
	b = le.AppendUint64(b, p.src)
	b = le.AppendUint64(b, p.offsets)
	b = le.AppendUint64(b, p.flip)
	b = le.AppendUint64(b, p.dst)
	for _, v := range []uint32{p.batch, p.h, p.w, p.c, p.planar, p.rows} {
		b = le.AppendUint32(b, v)
	}
	return appendCoefficients(b, p.scale, p.bias)
}

// appendCoefficients appends a kernel parameter block's float scale[4] and bias[4].
func appendCoefficients(b []byte, scale, bias [maxChannels]float32) []byte {
	for _, v := range scale {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	for _, v := range bias {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

// putOut stores v as out's type (Float32, Float16 or BFloat16), little-endian, rounded to nearest even:
// the host form of every image output.
func putOut(dst []byte, v float32, out DType) {
	switch out {
	case Float32:
		binary.LittleEndian.PutUint32(dst, math.Float32bits(v))
	case Float16:
		binary.LittleEndian.PutUint16(dst, float16.Fromfloat32(v).Bits())
	case BFloat16:
		binary.LittleEndian.PutUint16(dst, toBFloat16(v))
	}
}

// toBFloat16 rounds f to bfloat16, to nearest with ties to even, as __float2bfloat16_rn does.
func toBFloat16(f float32) uint16 {
	b := math.Float32bits(f)
	if f != f {
		return uint16(b>>16) | 0x40 // a quiet NaN
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// imageLUT is Normalize's host form: the output bytes of every input value, per channel. The input is u8,
// so a table of 256 entries per channel gives exactly what out = fma(x, scale, bias) then rounding gives.
type imageLUT struct {
	h, w, c, osize int
	layout         ImageLayout
	planar         bool // the input is [C, H, W]
	table          [maxChannels][256][4]byte
}

func newImageLUT(n Normalize, in Field) (*imageLUT, error) {
	if _, err := n.Outputs(in); err != nil {
		return nil, err
	}
	h, w, c := n.dims(in)
	scale, bias, err := n.coefficients(c)
	if err != nil {
		return nil, err
	}
	l := &imageLUT{h: h, w: w, c: c, osize: n.outType().Size(), layout: n.Layout, planar: n.InputCHW}
	for ch := 0; ch < l.c; ch++ {
		for x := 0; x < 256; x++ {
			v := float32(math.FMA(float64(x), float64(scale[ch]), float64(bias[ch])))
			e := &l.table[ch][x]
			putOut(e[:], v, n.outType())
		}
	}
	return l, nil
}

// apply lays out one sample: src is [H, W, C] u8 ([C, H, W] when planar), dst the output sample.
func (l *imageLUT) apply(dst, src []byte, flip bool) {
	hw := l.h * l.w
	for y := 0; y < l.h; y++ {
		for x := 0; x < l.w; x++ {
			sx := x
			if flip {
				sx = l.w - 1 - x
			}
			pix := y*l.w + x
			for ch := 0; ch < l.c; ch++ {
				var v byte
				if l.planar {
					v = src[ch*hw+y*l.w+sx]
				} else {
					v = src[(y*l.w+sx)*l.c+ch]
				}
				var o int
				if l.layout == LayoutCHW {
					o = (ch*hw + pix) * l.osize
				} else {
					o = (pix*l.c + ch) * l.osize
				}
				copy(dst[o:o+l.osize], l.table[ch][v][:l.osize])
			}
		}
	}
}
