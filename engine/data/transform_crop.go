package data

import (
	"fmt"
	"math"
	"sync"

	"github.com/ferry-ml/ferry/engine"
)

// RandomResizedCrop is torchvision's RandomResizedCrop(Size, Scale, Ratio) followed by an optional
// horizontal flip and Normalize, in one step: a box of a random area fraction (Scale) and aspect ratio
// (Ratio, drawn log-uniformly) is cut from the image and resized (bilinear, half-pixel centers, the edges
// of the box repeated) to [Size, Size], then normalized as Normalize does, in Layout and DType. The box
// follows torchvision's sampling rule (up to 10 draws, then the central crop of the clamped ratio), each
// draw a pure function of (the iterator's seed, the epoch, the sample's index): the same on every rank
// and after a resume. The flip is Normalize's.
//
// Its input is an encoded image (JPEG, PNG, WebP, BMP, TIFF, PPM/PGM: the image field of ImageFolderSource or
// WebDatasetSource), decoded to RGB first, or an already decoded uint8 [H, W, 3] field. On a GPU engine
// the images are decoded into a device arena of the ring (JPEGs by nvJPEG, in batches; other formats and
// JPEGs nvJPEG does not take on the gather workers) and one kernel crops, flips and normalizes them
// (image_device.go); on the CPU engine, and where the kernels do not load, the host does it all.
type RandomResizedCrop struct {
	Size  int
	Scale [2]float64 // {0.08, 1} when zero
	Ratio [2]float64 // {3/4, 4/3} when zero
	Flip  float64
	Mean  []float32
	Std   []float32
	// Layout and DType of the output, as Normalize's.
	Layout ImageLayout
	DType  DType
	// MaxPixels refuses larger images (DefaultMaxPixels when 0).
	MaxPixels int
	// Antialias widens the bilinear filter by the downscale factor (Pillow's resize, torchvision's
	// antialias=True) when the box is larger than the output.
	Antialias bool
}

// CenterCrop is the evaluation transform torchvision pairs with RandomResizedCrop: Resize(ResizeTo) (the
// shorter side to ResizeTo, the other in proportion, rounded down) then CenterCrop(Size), fused into one
// bilinear resample of the central box, then normalized. ResizeTo defaults to Size*256/224 (256 for 224).
type CenterCrop struct {
	Size      int
	ResizeTo  int
	Mean, Std []float32
	Layout    ImageLayout
	DType     DType
	MaxPixels int
	// Antialias is RandomResizedCrop's.
	Antialias bool
}

// cropSpec is what both crops share.
type cropSpec struct {
	name      string
	size      int
	random    bool
	scale     [2]float64
	ratio     [2]float64
	resizeTo  int
	flip      float64
	norm      Normalize
	maxPixels int
	antialias bool
}

func (t RandomResizedCrop) spec() cropSpec {
	s := cropSpec{name: "RandomResizedCrop", size: t.Size, random: true, scale: t.Scale, ratio: t.Ratio, flip: t.Flip,
		norm: Normalize{Mean: t.Mean, Std: t.Std, Layout: t.Layout, DType: t.DType}, maxPixels: t.MaxPixels, antialias: t.Antialias}
	if s.scale == ([2]float64{}) {
		s.scale = [2]float64{0.08, 1}
	}
	if s.ratio == ([2]float64{}) {
		s.ratio = [2]float64{3.0 / 4, 4.0 / 3}
	}
	return s
}

func (t CenterCrop) spec() cropSpec {
	s := cropSpec{name: "CenterCrop", size: t.Size, resizeTo: t.ResizeTo, norm: Normalize{Mean: t.Mean, Std: t.Std, Layout: t.Layout, DType: t.DType},
		maxPixels: t.MaxPixels, antialias: t.Antialias}
	if s.resizeTo == 0 {
		s.resizeTo = t.Size * 256 / 224
	}
	return s
}

func (t RandomResizedCrop) String() string {
	s := t.spec()
	return fmt.Sprintf("RandomResizedCrop(size=%d, scale=%v, ratio=%v, flip=%g, antialias=%v, %v)", s.size, s.scale, s.ratio, s.flip, s.antialias, s.norm)
}

func (t CenterCrop) String() string {
	s := t.spec()
	return fmt.Sprintf("CenterCrop(size=%d, resize=%d, antialias=%v, %v)", s.size, s.resizeTo, s.antialias, s.norm)
}

// Outputs implements Transform: the field keeps its name and becomes [3, Size, Size] (or [Size, Size, 3]).
func (t RandomResizedCrop) Outputs(in Field) ([]Field, error) { return t.spec().outputs(in) }

// Outputs implements Transform, as RandomResizedCrop's.
func (t CenterCrop) Outputs(in Field) ([]Field, error) { return t.spec().outputs(in) }

func (s cropSpec) outputs(in Field) ([]Field, error) {
	if s.size < 1 || s.size > 1<<14 {
		return nil, fmt.Errorf("%w: %s: size %d must be 1..16384", engine.ErrInvalidArgument, s.name, s.size)
	}
	if s.random && !(s.scale[0] > 0 && s.scale[0] <= s.scale[1] && s.scale[1] <= 1) {
		return nil, fmt.Errorf("%w: %s: scale %v must satisfy 0 < min <= max <= 1", engine.ErrInvalidArgument, s.name, s.scale)
	}
	if s.random && !(s.ratio[0] > 0 && s.ratio[0] <= s.ratio[1] && !math.IsInf(s.ratio[1], 0)) {
		return nil, fmt.Errorf("%w: %s: ratio %v must satisfy 0 < min <= max", engine.ErrInvalidArgument, s.name, s.ratio)
	}
	if !s.random && s.resizeTo < s.size {
		return nil, fmt.Errorf("%w: %s: resize %d is smaller than the crop %d", engine.ErrInvalidArgument, s.name, s.resizeTo, s.size)
	}
	if !(s.flip >= 0 && s.flip <= 1) {
		return nil, fmt.Errorf("%w: %s: flip probability %g is outside [0, 1]", engine.ErrInvalidArgument, s.name, s.flip)
	}
	if s.maxPixels < 0 {
		return nil, fmt.Errorf("%w: %s: max pixels %d is negative", engine.ErrInvalidArgument, s.name, s.maxPixels)
	}
	encoded := in.DType == Uint8 && len(in.Shape) == 1
	decoded := in.DType == Uint8 && len(in.Shape) == 3 && in.Shape[2] == 3
	if !encoded && !decoded {
		return nil, fmt.Errorf("%w: %s needs encoded image bytes (uint8 [N]) or a decoded uint8 [H, W, 3] image; %q is %v %v",
			engine.ErrInvalidArgument, s.name, in.Name, in.DType, in.Shape)
	}
	probe := Field{Name: in.Name, DType: Uint8, Shape: []int{s.size, s.size, 3}}
	outs, err := s.norm.Outputs(probe)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.name, err)
	}
	return outs, nil
}

func (t RandomResizedCrop) traits() traits { return traits{decodes: true} }
func (t CenterCrop) traits() traits        { return traits{decodes: true} }

func (t RandomResizedCrop) bind(in Field, ragged bool) (op, error) { return t.spec().bind(in, ragged) }
func (t CenterCrop) bind(in Field, ragged bool) (op, error)        { return t.spec().bind(in, ragged) }

// cropOp is a crop bound to an image field; its host form decodes (when encoded), crops and normalizes.
type cropOp struct {
	s           cropSpec
	encoded     bool
	h, w        int // a decoded input's size
	scale, bias [maxChannels]float32
	out         DType
}

func (s cropSpec) bind(in Field, _ bool) (op, error) {
	if _, err := s.outputs(in); err != nil {
		return nil, err
	}
	o := &cropOp{s: s, encoded: len(in.Shape) == 1, out: s.norm.outType()}
	if !o.encoded {
		o.h, o.w = in.Shape[0], in.Shape[1]
	}
	if s.maxPixels == 0 {
		o.s.maxPixels = DefaultMaxPixels
	}
	var err error
	if o.scale, o.bias, err = s.norm.coefficients(3); err != nil {
		return nil, err
	}
	return o, nil
}

// decoderPool holds decode buffers, reused across samples.
var decoderPool = sync.Pool{New: func() any { return new(decodedImage) }}

// host decodes, crops and normalizes one sample; a sample that does not decode is left as zeros (the
// iterator calls hostErr, which says why).
func (o *cropOp) host(out [][]byte, in []byte, r rowArgs) {
	if err := o.hostErr(out, in, r); err != nil {
		clear(out[0])
	}
}

// hostErr is host with the decode error: the iterator fails the batch with it.
func (o *cropOp) hostErr(outs [][]byte, in []byte, r rowArgs) error {
	out := outs[0]
	img, w, h := in, o.w, o.h
	if o.encoded {
		d := decoderPool.Get().(*decodedImage)
		defer decoderPool.Put(d)
		if err := decodeImage(in[:r.n], o.s.maxPixels, d); err != nil {
			return err
		}
		img, w, h = d.pix, d.w, d.h
	}
	box := o.s.box(w, h, r)
	flip := o.s.flip > 0 && flipSample(o.s.flip, r.seed, r.epoch, r.index)
	if o.s.antialias && (box.dy > 1 || box.dx > 1) {
		resampleAA(out, img, w, box, o.s.size, flip, o.scale, o.bias, o.out, o.s.norm.Layout)
	} else {
		resample(out, img, w, box, o.s.size, flip, o.scale, o.bias, o.out, o.s.norm.Layout)
	}
	return nil
}

func (o *cropOp) launch(*kernelSet, *engine.Engine, launchArgs, []byte) ([]byte, error) {
	return nil, fmt.Errorf("%w: %s runs on the host", engine.ErrUnsupported, o.s.name)
}

// cropBox is the source region a crop resamples: output pixel (oy, ox) reads source row
// y0 + (oy+0.5)*dy - 0.5 (clamped to [ylo, yhi]), and likewise for columns.
type cropBox struct {
	y0, x0, dy, dx float64
	ylo, yhi       int
	xlo, xhi       int
}

// box is the crop of an h x w image for the sample.
func (s cropSpec) box(w, h int, r rowArgs) cropBox {
	size := float64(s.size)
	if !s.random {
		// Resize the shorter side to resizeTo (the other rounded down, as torchvision's int()), then
		// take the central size x size, its offset rounded half to even (Python's round).
		rh, rw := s.resizeTo, s.resizeTo
		if w < h {
			rh = int(float64(s.resizeTo) * float64(h) / float64(w))
		} else {
			rw = int(float64(s.resizeTo) * float64(w) / float64(h))
		}
		top := math.RoundToEven(float64(rh-s.size) / 2)
		left := math.RoundToEven(float64(rw-s.size) / 2)
		sy, sx := float64(h)/float64(rh), float64(w)/float64(rw)
		return cropBox{y0: top * sy, x0: left * sx, dy: sy, dx: sx, ylo: 0, yhi: h - 1, xlo: 0, xhi: w - 1}
	}
	i, j, ch, cw := randomCropBox(w, h, s.scale, s.ratio, r.seed, r.epoch, r.index)
	return cropBox{y0: float64(i), x0: float64(j), dy: float64(ch) / size, dx: float64(cw) / size,
		ylo: i, yhi: i + ch - 1, xlo: j, xhi: j + cw - 1}
}

// randomCropBox is torchvision's RandomResizedCrop.get_params with ferry's draws: up to 10 tries of an
// area fraction uniform in scale and a log-uniform aspect ratio, each kept when its box (w and h rounded
// half to even) fits; else the whole image's central crop at the ratio clamped to the range.
func randomCropBox(w, h int, scale, ratio [2]float64, seed, epoch uint64, idx int) (top, left, ch, cw int) {
	st := mix64(mix64(seed^0x9b05688c2b3e6c1f) ^ mix64(epoch+0x1f83d9abfb41bd6b) ^ uint64(idx)*0x5be0cd19137e2179)
	uniform := func() float64 { return float64(splitmix64(&st)>>11) / (1 << 53) }
	area := float64(w) * float64(h)
	lo, hi := math.Log(ratio[0]), math.Log(ratio[1])
	for range 10 {
		target := area * (scale[0] + (scale[1]-scale[0])*uniform())
		aspect := math.Exp(lo + (hi-lo)*uniform())
		cw = int(math.RoundToEven(math.Sqrt(target * aspect)))
		ch = int(math.RoundToEven(math.Sqrt(target / aspect)))
		if cw > 0 && cw <= w && ch > 0 && ch <= h {
			top = int(uniform() * float64(h-ch+1))
			left = int(uniform() * float64(w-cw+1))
			return top, left, ch, cw
		}
	}
	in := float64(w) / float64(h)
	switch {
	case in < ratio[0]:
		cw, ch = w, int(math.RoundToEven(float64(w)/ratio[0]))
	case in > ratio[1]:
		ch, cw = h, int(math.RoundToEven(float64(h)*ratio[1]))
	default:
		cw, ch = w, h
	}
	return (h - ch) / 2, (w - cw) / 2, ch, cw
}

// resample writes the size x size bilinear resample of box from img (rows of w x 3 u8), flipped when asked,
// normalized (v*scale[c] + bias[c] in float32) and stored as out in layout.
func resample(dst, img []byte, w int, b cropBox, size int, flip bool, scale, bias [maxChannels]float32, out DType, layout ImageLayout) {
	ys, xs := make([]axisTap, size), make([]axisTap, size)
	for k := range size {
		ys[k] = tap(b.y0, b.dy, k, b.ylo, b.yhi)
		xs[k] = tap(b.x0, b.dx, k, b.xlo, b.xhi)
	}
	osize := out.Size()
	for oy, ty := range ys {
		r0, r1 := img[ty.i0*w*3:], img[ty.i1*w*3:]
		for ox := range size {
			tx := xs[ox]
			if flip {
				tx = xs[size-1-ox]
			}
			for c := range 3 {
				// Each product rounded on its own (float32(...)): no fused multiply-add, as the kernel.
				a := float32(r0[tx.i0*3+c]) + float32(tx.f*(float32(r0[tx.i1*3+c])-float32(r0[tx.i0*3+c])))
				bb := float32(r1[tx.i0*3+c]) + float32(tx.f*(float32(r1[tx.i1*3+c])-float32(r1[tx.i0*3+c])))
				v := a + float32(ty.f*(bb-a))
				v = float32(math.FMA(float64(v), float64(scale[c]), float64(bias[c])))
				at := (oy*size+ox)*3 + c
				if layout == LayoutCHW {
					at = (c*size+oy)*size + ox
				}
				putOut(dst[at*osize:], v, out)
			}
		}
	}
}

// axisTap is where one output row or column reads: rows i0 and i1, weight f of i1.
type axisTap struct {
	i0, i1 int
	f      float32
}

// tap is output index k's source position origin + (k+0.5)*step - 0.5, clamped to [lo, hi] (torch's
// bilinear with align_corners=False on the cropped image).
func tap(origin, step float64, k, lo, hi int) axisTap {
	p := origin + (float64(k)+0.5)*step - 0.5
	p = max(p, float64(lo))
	i0 := min(int(math.Floor(p)), hi)
	i1 := min(i0+1, hi)
	return axisTap{i0: i0, i1: i1, f: float32(p - float64(i0))}
}

// aaTaps are the antialiased filter taps of one axis: for output k, source rows start[k] .. start[k] +
// len(weights[k]) - 1 with those (normalized) weights.
type aaTaps struct {
	start   []int
	weights [][]float32
}

// antialiasTaps is the bilinear filter widened by the downscale factor, as Pillow's resample and torch's
// antialiased bilinear interpolation compute it: output k's center origin + (k+0.5)*step, a triangle of
// half-width max(step, 1) over the source positions within the clamp [lo, hi], normalized.
func antialiasTaps(origin, step float64, n, lo, hi int) aaTaps {
	support := max(step, 1)
	ss := 1 / support
	t := aaTaps{start: make([]int, n), weights: make([][]float32, n)}
	for k := range n {
		center := origin + (float64(k)+0.5)*step
		xmin := max(int(center-support+0.5), lo)
		xmax := min(int(center+support+0.5), hi+1)
		if xmax <= xmin { // a window outside the clamp: the nearest edge
			xmin = min(max(int(center), lo), hi)
			xmax = xmin + 1
		}
		ws := make([]float64, xmax-xmin)
		sum := 0.0
		for x := range ws {
			d := math.Abs((float64(x+xmin) - center + 0.5) * ss)
			if d < 1 {
				ws[x] = 1 - d
			}
			sum += ws[x]
		}
		t.start[k] = xmin
		t.weights[k] = make([]float32, len(ws))
		for x, v := range ws {
			if sum > 0 {
				t.weights[k][x] = float32(v / sum)
			}
		}
	}
	return t
}

// resampleAA is resample with the antialiased filter (see antialiasTaps): a horizontal pass over the
// rows the output reads, then a vertical one, in float32.
func resampleAA(dst, img []byte, w int, b cropBox, size int, flip bool, scale, bias [maxChannels]float32, out DType, layout ImageLayout) {
	ys := antialiasTaps(b.y0, b.dy, size, b.ylo, b.yhi)
	xs := antialiasTaps(b.x0, b.dx, size, b.xlo, b.xhi)
	rows := b.yhi - b.ylo + 1
	tmp := make([]float32, rows*size*3) // source row (from ylo), output column, channel
	for r := range rows {
		src := img[(b.ylo+r)*w*3:]
		for ox := range size {
			for c := range 3 {
				var acc float32
				for k, wgt := range xs.weights[ox] {
					acc += float32(wgt * float32(src[(xs.start[ox]+k)*3+c]))
				}
				tmp[(r*size+ox)*3+c] = acc
			}
		}
	}
	osize := out.Size()
	for oy := range size {
		for ox := range size {
			sx := ox
			if flip {
				sx = size - 1 - ox
			}
			for c := range 3 {
				var v float32
				for k, wgt := range ys.weights[oy] {
					v += float32(wgt * tmp[((ys.start[oy]+k-b.ylo)*size+sx)*3+c])
				}
				v = float32(math.FMA(float64(v), float64(scale[c]), float64(bias[c])))
				at := (oy*size+ox)*3 + c
				if layout == LayoutCHW {
					at = (c*size+oy)*size + ox
				}
				putOut(dst[at*osize:], v, out)
			}
		}
	}
}
