package data

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"

	"github.com/ferry-ml/ferry/engine"

	"github.com/x448/float16"
)

// Transform is a layout op on one field of a batch. On a GPU it runs as a kernel on the iterator's stream
// right after the batch crosses PCIe (fused with the gather when the source memory is mapped), so only the
// source's compact bytes cross; on the CPU engine, and wherever the kernels cannot load, the same op runs
// on the host. The host code is the reference the kernels are tested against. The implementations are
// Normalize, ShiftTokens and PadSequences.
type Transform interface {
	// Outputs are the fields the transform makes from the source field in, per sample. It returns an
	// error naming the problem when the transform does not apply to in.
	Outputs(in Field) ([]Field, error)
	String() string
}

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

// ShiftTokens turns a window of SeqLen+1 tokens (uint16 or uint32, [SeqLen+1] per sample) into the
// language-model pair: X, the first SeqLen tokens, and Y, the same shifted by one (the targets), both
// int64 [SeqLen]. Only the window's 2 or 4 bytes per token cross PCIe. X and Y default to "x" and "y".
type ShiftTokens struct {
	X, Y string
}

func (s ShiftTokens) String() string {
	x, y := s.names()
	return fmt.Sprintf("ShiftTokens(x=%q, y=%q)", x, y)
}

func (s ShiftTokens) names() (string, string) {
	x, y := s.X, s.Y
	if x == "" {
		x = "x"
	}
	if y == "" {
		y = "y"
	}
	return x, y
}

// Outputs implements Transform.
func (s ShiftTokens) Outputs(in Field) ([]Field, error) {
	if (in.DType != Uint16 && in.DType != Uint32) || len(in.Shape) != 1 || in.Shape[0] < 2 {
		return nil, fmt.Errorf("%w: ShiftTokens needs a uint16 or uint32 window [SeqLen+1] with SeqLen >= 1; %q is %v %v", engine.ErrInvalidArgument, in.Name, in.DType, in.Shape)
	}
	x, y := s.names()
	if x == y {
		return nil, fmt.Errorf("%w: ShiftTokens: x and y are both named %q", engine.ErrInvalidArgument, x)
	}
	n := in.Shape[0] - 1
	return []Field{{Name: x, DType: Int64, Shape: []int{n}}, {Name: y, DType: Int64, Shape: []int{n}}}, nil
}

// PadSequences lays out a variable-length field (a source implementing Ragged, such as RaggedTokenSource)
// as int64 tokens padded with PadValue, an attention mask (bool: true for a token) and the lengths
// (int64). By default the batch is padded to its longest sample ([B, longest]); with Fixed, to the field's
// full length. The outputs are the field's name, Mask ("attention_mask" by default) and Lengths
// ("lengths" by default).
type PadSequences struct {
	PadValue      int64
	Fixed         bool
	Mask, Lengths string
}

func (p PadSequences) String() string {
	m, l := p.names()
	return fmt.Sprintf("PadSequences(pad=%d, fixed=%v, mask=%q, lengths=%q)", p.PadValue, p.Fixed, m, l)
}

func (p PadSequences) names() (string, string) {
	m, l := p.Mask, p.Lengths
	if m == "" {
		m = "attention_mask"
	}
	if l == "" {
		l = "lengths"
	}
	return m, l
}

// Outputs implements Transform. The token and mask fields' length is the field's maximum; a batch padded
// to its longest sample has a shorter second dimension.
func (p PadSequences) Outputs(in Field) ([]Field, error) {
	if (in.DType != Uint16 && in.DType != Uint32) || len(in.Shape) != 1 {
		return nil, fmt.Errorf("%w: PadSequences needs a uint16 or uint32 sequence field [MaxLen]; %q is %v %v", engine.ErrInvalidArgument, in.Name, in.DType, in.Shape)
	}
	m, l := p.names()
	if m == l || m == in.Name || l == in.Name {
		return nil, fmt.Errorf("%w: PadSequences: the names %q, %q and %q must differ", engine.ErrInvalidArgument, in.Name, m, l)
	}
	n := in.Shape[0]
	return []Field{{Name: in.Name, DType: Int64, Shape: []int{n}}, {Name: m, DType: Bool, Shape: []int{n}}, {Name: l, DType: Int64}}, nil
}

// flipSample decides whether sample idx of epoch flips: a pure function of (seed, epoch, idx), so that a
// resumed or resharded run flips the same samples.
func flipSample(prob float64, seed, epoch uint64, idx int) bool {
	if prob <= 0 {
		return false
	}
	if prob >= 1 {
		return true
	}
	h := mix64(mix64(seed^0x6a09e667f3bcc909) ^ mix64(epoch+0x3c6ef372fe94f82b) ^ uint64(idx)*0x9e3779b97f4a7c15)
	return float64(h>>11)/(1<<53) < prob
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
			switch n.outType() {
			case Float32:
				binary.LittleEndian.PutUint32(e[:], math.Float32bits(v))
			case Float16:
				binary.LittleEndian.PutUint16(e[:], float16.Fromfloat32(v).Bits())
			case BFloat16:
				binary.LittleEndian.PutUint16(e[:], toBFloat16(v))
			}
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

// readToken reads token j of a little-endian uint16 or uint32 sequence.
func readToken(src []byte, size, j int) int64 {
	if size == 2 {
		return int64(binary.LittleEndian.Uint16(src[2*j:]))
	}
	return int64(binary.LittleEndian.Uint32(src[4*j:]))
}

// shiftTokensHost lays out one window: x[j] = src[j], y[j] = src[j+1].
func shiftTokensHost(x, y, src []byte, size, seq int) {
	for j := 0; j < seq; j++ {
		binary.LittleEndian.PutUint64(x[8*j:], uint64(readToken(src, size, j)))
		binary.LittleEndian.PutUint64(y[8*j:], uint64(readToken(src, size, j+1)))
	}
}

// padHost lays out one sequence of n tokens padded to width: tokens int64, mask bool, length int64.
func padHost(tokens, mask, length, src []byte, size, n, width int, pad int64) {
	for j := 0; j < width; j++ {
		v, m := pad, byte(0)
		if j < n {
			v, m = readToken(src, size, j), 1
		}
		binary.LittleEndian.PutUint64(tokens[8*j:], uint64(v))
		mask[j] = m
	}
	binary.LittleEndian.PutUint64(length, uint64(n))
}
