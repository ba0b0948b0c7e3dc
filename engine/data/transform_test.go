package data

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/ferry-ml/ferry/engine/internal/enginetest"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/testutil"

	"github.com/stretchr/testify/require"
	"github.com/x448/float16"

	"github.com/ferry-ml/ferry/kernels"
)

// refNormalize is Normalize written out element by element, independent of the iterator's table.
func refNormalize(n Normalize, in Field, src []byte, flip bool) []byte {
	h, w, c := in.Shape[0], in.Shape[1], in.Shape[2]
	at := func(y, x, ch int) byte { return src[(y*w+x)*c+ch] }
	if n.InputCHW {
		c, h, w = in.Shape[0], in.Shape[1], in.Shape[2]
		at = func(y, x, ch int) byte { return src[(ch*h+y)*w+x] }
	}
	scale, bias, err := n.coefficients(c)
	if err != nil {
		panic(err)
	}
	osize := n.outType().Size()
	out := make([]byte, h*w*c*osize)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			sx := x
			if flip {
				sx = w - 1 - x
			}
			for ch := 0; ch < c; ch++ {
				v := float32(math.FMA(float64(at(y, sx, ch)), float64(scale[ch]), float64(bias[ch])))
				i := (y*w+x)*c + ch
				if n.Layout == LayoutCHW {
					i = (ch*h+y)*w + x
				}
				switch n.outType() {
				case Float32:
					binary.LittleEndian.PutUint32(out[i*4:], math.Float32bits(v))
				case Float16:
					binary.LittleEndian.PutUint16(out[i*2:], float16.Fromfloat32(v).Bits())
				case BFloat16:
					binary.LittleEndian.PutUint16(out[i*2:], toBFloat16(v))
				}
			}
		}
	}
	return out
}

// decode reads element i of a little-endian array of type d as a float64.
func decode(d DType, b []byte, i int) float64 {
	switch d {
	case Float32:
		return float64(math.Float32frombits(binary.LittleEndian.Uint32(b[i*4:])))
	case Float16:
		return float64(float16.Frombits(binary.LittleEndian.Uint16(b[i*2:])).Float32())
	case BFloat16:
		return float64(math.Float32frombits(uint32(binary.LittleEndian.Uint16(b[i*2:])) << 16))
	}
	panic(d)
}

// requireClose checks got against want, arrays of type d: integers exactly; float32 within 1e-6
// relative; float16 and bfloat16 within one unit of their last place.
func requireClose(t testing.TB, d DType, want, got []byte, msg string) {
	t.Helper()
	require.Len(t, got, len(want), msg)
	var eps float64
	switch d {
	case Float32:
		eps = 1e-6
	case Float16:
		eps = 1.0 / 1024
	case BFloat16:
		eps = 1.0 / 128
	default:
		require.True(t, bytes.Equal(want, got), "%s: integer data differ", msg)
		return
	}
	for i := 0; i < len(want)/d.Size(); i++ {
		w, g := decode(d, want, i), decode(d, got, i)
		if math.Abs(w-g) > eps*math.Max(math.Abs(w), 1e-3) {
			require.Failf(t, "values differ", "%s: element %d: want %v, got %v (%v)", msg, i, w, g, d)
		}
	}
}

func TestToBFloat16(t *testing.T) {
	for _, c := range []struct {
		in   float32
		want uint16
	}{
		{1, 0x3f80}, {-2, 0xc000}, {0, 0}, {float32(math.Inf(1)), 0x7f80},
		{math.Float32frombits(0x3f808000), 0x3f80}, // a tie rounds to even (down)
		{math.Float32frombits(0x3f818000), 0x3f82}, // a tie rounds to even (up)
		{math.Float32frombits(0x3f808001), 0x3f81}, // above the tie rounds up
		{math.Float32frombits(0x7f7fffff), 0x7f80}, // the largest float rounds to infinity
	} {
		require.Equal(t, c.want, toBFloat16(c.in), "%g (%#x)", c.in, math.Float32bits(c.in))
	}
	nan := toBFloat16(float32(math.NaN()))
	require.Equal(t, uint16(0x7f80), nan&0x7f80)
	require.NotZero(t, nan&0x7f, "NaN stays NaN")
}

func TestNormalizeHostMatchesReference(t *testing.T) {
	for _, shape := range [][]int{{5, 7, 3}, {4, 32, 4}, {3, 16, 1}, {2, 3, 2}} {
		in := Field{Name: "image", DType: Uint8, Shape: shape}
		src := make([]byte, in.Bytes())
		_, err := rand.Read(src)
		require.NoError(t, err)
		for _, d := range []DType{Float32, Float16, BFloat16} {
			for _, layout := range []ImageLayout{LayoutCHW, LayoutHWC} {
				n := Normalize{Mean: []float32{0.485}, Std: []float32{0.229}, DType: d, Layout: layout}
				if shape[2] == 3 {
					n.Mean, n.Std = []float32{0.485, 0.456, 0.406}, []float32{0.229, 0.224, 0.225}
				}
				outs, err := n.Outputs(in)
				require.NoError(t, err)
				lut, err := newImageLUT(n, in)
				require.NoError(t, err)
				for _, flip := range []bool{false, true} {
					got := bytes.Repeat([]byte{0xEE}, outs[0].Bytes())
					lut.apply(got, src, flip)
					name := fmt.Sprintf("%v %v %v flip=%v", shape, d, layout, flip)
					require.Equal(t, refNormalize(n, in, src, flip), got, name)
				}
				// The folded coefficients give torchvision's (x/255 - mean)/std.
				if d == Float32 && layout == LayoutCHW {
					got := make([]byte, outs[0].Bytes())
					lut.apply(got, src, false)
					h, w, c := shape[0], shape[1], shape[2]
					for ch := 0; ch < c; ch++ {
						mean, std := float64(n.Mean[min(ch, len(n.Mean)-1)]), float64(n.Std[min(ch, len(n.Std)-1)])
						for p := 0; p < h*w; p++ {
							want := (float64(src[p*c+ch])/255 - mean) / std
							require.InDelta(t, want, decode(Float32, got, ch*h*w+p), 1e-6*math.Max(1, math.Abs(want)))
						}
					}
				}
			}
		}
	}
}

func TestTokensAndPadHost(t *testing.T) {
	src := []byte{1, 0, 2, 0, 0xff, 0xff, 4, 0}
	x, y := make([]byte, 24), make([]byte, 24)
	shiftTokensHost(x, y, src, Uint16, 3)
	le := binary.LittleEndian
	require.Equal(t, []uint64{1, 2, 65535}, []uint64{le.Uint64(x), le.Uint64(x[8:]), le.Uint64(x[16:])})
	require.Equal(t, []uint64{2, 65535, 4}, []uint64{le.Uint64(y), le.Uint64(y[8:]), le.Uint64(y[16:])})

	src32 := []byte{7, 0, 0, 0, 0, 0, 1, 0}
	tok, mask, n := make([]byte, 32), make([]byte, 4), make([]byte, 8)
	padHost(tok, mask, n, src32, 4, 2, 4, -100)
	require.Equal(t, int64(7), int64(le.Uint64(tok)))
	require.Equal(t, int64(65536), int64(le.Uint64(tok[8:])))
	require.Equal(t, int64(-100), int64(le.Uint64(tok[16:])))
	require.Equal(t, int64(-100), int64(le.Uint64(tok[24:])))
	require.Equal(t, []byte{1, 1, 0, 0}, mask)
	require.Equal(t, uint64(2), le.Uint64(n))
}

func TestTransformsRejectBadInput(t *testing.T) {
	img := Field{Name: "image", DType: Uint8, Shape: []int{8, 8, 3}}
	tok := Field{Name: "tokens", DType: Uint16, Shape: []int{9}}
	for _, c := range []struct {
		t    Transform
		in   Field
		want string
	}{
		{Normalize{}, Field{Name: "image", DType: Float32, Shape: []int{8, 8, 3}}, "needs a uint8 [H, W, C] image"},
		{Normalize{}, Field{Name: "image", DType: Uint8, Shape: []int{3, 8, 8, 1}}, "needs a uint8 [H, W, C] image"},
		{Normalize{}, Field{Name: "image", DType: Uint8, Shape: []int{3, 8, 8}}, "at most 4 channels"},
		{Normalize{Mean: []float32{1, 2}}, img, "2 mean values for 3 channels"},
		{Normalize{Std: []float32{1, 0, 1}}, img, "std[1] is 0"},
		{Normalize{Mean: []float32{float32(math.NaN())}}, img, "not finite"},
		{Normalize{DType: Int8}, img, "outputs float32, float16 or bfloat16"},
		{Normalize{Layout: 7}, img, "unknown layout"},
		{Normalize{Flip: 1.5}, img, "outside [0, 1]"},
		{ShiftTokens{}, Field{Name: "tokens", DType: Int64, Shape: []int{9}}, "uint16, uint32 or int32 window"},
		{ShiftTokens{}, Field{Name: "tokens", DType: Uint16, Shape: []int{1}}, "SeqLen >= 1"},
		{ShiftTokens{X: "a", Y: "a"}, tok, "both named"},
		{ShiftTokens{LossMask: "x"}, tok, "two outputs are named \"x\""},
		{ShiftTokens{LossMask: "m", PositionIDs: "m"}, tok, "two outputs are named \"m\""},
		{ShiftTokens{MaskEOD: true}, tok, "MaskEOD needs a LossMask"},
		{ShiftTokens{ResetPositions: true, LossMask: "m"}, tok, "ResetPositions needs a PositionIDs"},
		{PadSequences{}, Field{Name: "tokens", DType: Uint8, Shape: []int{9}}, "uint16 or uint32 sequence"},
		{PadSequences{Mask: "tokens"}, tok, "must differ"},
	} {
		_, err := c.t.Outputs(c.in)
		require.ErrorIs(t, err, engine.ErrInvalidArgument, "%v on %v", c.t, c.in)
		require.Contains(t, err.Error(), c.want)
	}
	for _, s := range []string{"chw", "NCHW", "hwc", "channels_last"} {
		_, err := ParseImageLayout(s)
		require.NoError(t, err, s)
	}
	_, err := ParseImageLayout("WHC")
	require.ErrorIs(t, err, engine.ErrInvalidArgument)
	for _, s := range []string{"auto", "gather", "DMA", "mapped"} {
		_, err := ParseStaging(s)
		require.NoError(t, err, s)
	}
	_, err = ParseStaging("zero")
	require.ErrorIs(t, err, engine.ErrInvalidArgument)
}

func TestFlipIsAPureFunction(t *testing.T) {
	flips := 0
	for i := 0; i < 10000; i++ {
		a := flipSample(0.5, 3, 1, i)
		require.Equal(t, a, flipSample(0.5, 3, 1, i))
		if a {
			flips++
		}
	}
	require.InDelta(t, 5000, flips, 300, "about half flip")
	differ := 0
	for i := 0; i < 1000; i++ {
		if flipSample(0.5, 3, 1, i) != flipSample(0.5, 3, 2, i) {
			differ++
		}
	}
	require.Greater(t, differ, 300, "another epoch flips other samples")
	require.False(t, flipSample(0, 1, 1, 1))
	require.True(t, flipSample(1, 1, 1, 1))
}

// TestFatbinHasEveryKernel checks that the embedded fatbin is one, is current, and holds every kernel
// the engine looks up (for each architecture's SASS and the PTX).
func TestFatbinHasEveryKernel(t *testing.T) {
	require.GreaterOrEqual(t, len(kernels.Fatbin), 16)
	require.Equal(t, uint32(0xBA55ED50), binary.LittleEndian.Uint32(kernels.Fatbin), "fatbin magic")
	for _, name := range kernelNames {
		// The name is in the symbol and string tables of each architecture's cubin (the PTX is compressed).
		n := bytes.Count(kernels.Fatbin, []byte(name+"\x00"))
		require.GreaterOrEqual(t, n, 6, "kernel %s is not in every architecture's cubin of the fatbin", name)
	}
	if out, err := exec.Command("sh", "../../kernels/stamp.sh").Output(); err == nil {
		require.Equal(t, string(bytes.TrimSpace(out)), string(bytes.TrimSpace([]byte(kernels.Stamp))),
			"the kernel sources changed since the fatbin was built: run make kernels")
	}
}

// TestKernelParamsLayout compiles kernels/params.h and checks that the Go packing puts every field where
// the C struct has it.
func TestKernelParamsLayout(t *testing.T) {
	cc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("no C compiler")
	}
	if _, err := os.Stat("../../kernels/params.h"); err != nil {
		t.Skip("the kernel sources are not here (a test binary run outside the repository)")
	}
	dir := t.TempDir()
	prog := `#include <stddef.h>
#include <stdio.h>
#include "params.h"
#define F(s, f) printf(#s "." #f " %zu\n", offsetof(s, f))
int main(void) {
    printf("image %zu\ntokens %zu\ngather %zu\npad %zu\npositions %zu\ncrop %zu\ncropsample %zu\n", sizeof(ferry_image_params), sizeof(ferry_tokens_params),
           sizeof(ferry_gather_params), sizeof(ferry_pad_params), sizeof(ferry_positions_params), sizeof(ferry_crop_params),
           sizeof(ferry_crop_sample));
    printf("ycc %zu\nyccimage %zu\n", sizeof(ferry_ycc_params), sizeof(ferry_ycc_image));
    F(ferry_ycc_image, y); F(ferry_ycc_image, cb); F(ferry_ycc_image, cr); F(ferry_ycc_image, dst);
    F(ferry_ycc_image, w); F(ferry_ycc_image, h); F(ferry_ycc_image, cw); F(ferry_ycc_image, ch);
    F(ferry_ycc_image, y_pitch); F(ferry_ycc_image, c_pitch); F(ferry_ycc_image, hs); F(ferry_ycc_image, vs);
    F(ferry_ycc_image, gray); F(ferry_ycc_params, images); F(ferry_ycc_params, batch);
    F(ferry_crop_params, samples); F(ferry_crop_params, src); F(ferry_crop_params, dst); F(ferry_crop_params, batch);
    F(ferry_crop_params, size); F(ferry_crop_params, antialias); F(ferry_crop_params, scale); F(ferry_crop_params, bias);
    F(ferry_crop_sample, offset); F(ferry_crop_sample, w); F(ferry_crop_sample, h); F(ferry_crop_sample, y0);
    F(ferry_crop_sample, x0); F(ferry_crop_sample, dy); F(ferry_crop_sample, dx); F(ferry_crop_sample, ylo);
    F(ferry_crop_sample, yhi); F(ferry_crop_sample, xlo); F(ferry_crop_sample, xhi); F(ferry_crop_sample, flip);
    F(ferry_image_params, src); F(ferry_image_params, offsets); F(ferry_image_params, flip); F(ferry_image_params, dst);
    F(ferry_image_params, batch); F(ferry_image_params, h); F(ferry_image_params, w); F(ferry_image_params, c);
    F(ferry_image_params, planar); F(ferry_image_params, rows); F(ferry_image_params, scale); F(ferry_image_params, bias);
    F(ferry_tokens_params, src); F(ferry_tokens_params, offsets); F(ferry_tokens_params, x); F(ferry_tokens_params, y);
    F(ferry_tokens_params, batch); F(ferry_tokens_params, seq); F(ferry_tokens_params, stride);
    F(ferry_tokens_params, flags); F(ferry_tokens_params, mask); F(ferry_tokens_params, pos); F(ferry_tokens_params, eod);
    F(ferry_positions_params, x); F(ferry_positions_params, pos); F(ferry_positions_params, eod);
    F(ferry_positions_params, batch); F(ferry_positions_params, seq);
    F(ferry_gather_params, src); F(ferry_gather_params, offsets); F(ferry_gather_params, dst); F(ferry_gather_params, bytes);
    F(ferry_gather_params, batch); F(ferry_gather_params, vec);
    F(ferry_pad_params, src); F(ferry_pad_params, offsets); F(ferry_pad_params, lengths); F(ferry_pad_params, tokens);
    F(ferry_pad_params, mask); F(ferry_pad_params, lengths_out); F(ferry_pad_params, pad_value);
    F(ferry_pad_params, batch); F(ferry_pad_params, maxlen);
    return 0;
}`
	require.NoError(t, os.WriteFile(filepath.Join(dir, "p.c"), []byte(prog), 0o644))
	bin := filepath.Join(dir, "p")
	out, err := exec.Command(cc, "-std=c99", "-I../../kernels", "-o", bin, filepath.Join(dir, "p.c")).CombinedOutput()
	require.NoError(t, err, "%s", out)
	out, err = exec.Command(bin).Output()
	require.NoError(t, err)
	c := map[string]int{}
	for _, m := range regexp.MustCompile(`(?m)^(\S+) (\d+)$`).FindAllStringSubmatch(string(out), -1) {
		c[m[1]], _ = strconv.Atoi(m[2])
	}
	require.Equal(t, imageParamsSize, c["image"])
	require.Equal(t, tokensParamsSize, c["tokens"])
	require.Equal(t, gatherParamsSize, c["gather"])
	require.Equal(t, padParamsSize, c["pad"])
	require.Equal(t, positionsParamsSize, c["positions"])
	require.Equal(t, cropParamsSize, c["crop"])
	require.Equal(t, cropSampleSize, c["cropsample"])
	require.Equal(t, yccParamsSize, c["ycc"])
	require.Equal(t, yccImageSize, c["yccimage"])
	// launchColor's packing order: four addresses, then ten uint32s from w.
	for k, name := range []string{"y", "cb", "cr", "dst"} {
		require.Equal(t, 8*k, c["ferry_ycc_image."+name], name)
	}
	for k, name := range []string{"w", "h", "cw", "ch", "y_pitch", "c_pitch", "hs", "vs", "gray"} {
		require.Equal(t, 32+4*k, c["ferry_ycc_image."+name], name)
	}
	require.Equal(t, 0, c["ferry_ycc_params.images"])
	require.Equal(t, 8, c["ferry_ycc_params.batch"])

	crp := cropParams{samples: 1, src: 2, dst: 3, batch: 4, size: 5, antialias: 6, scale: [4]float32{7, 8, 9, 10}, bias: [4]float32{11, 12, 13, 14}}
	cb := crp.pack(nil)
	require.Len(t, cb, cropParamsSize)
	for name, want := range map[string]uint64{"samples": 1, "src": 2, "dst": 3} {
		require.Equal(t, want, binary.LittleEndian.Uint64(cb[c["ferry_crop_params."+name]:]), name)
	}
	for name, want := range map[string]uint32{"batch": 4, "size": 5, "antialias": 6} {
		require.Equal(t, want, binary.LittleEndian.Uint32(cb[c["ferry_crop_params."+name]:]), name)
	}
	require.Equal(t, float32(7), math.Float32frombits(binary.LittleEndian.Uint32(cb[c["ferry_crop_params.scale"]:])))
	require.Equal(t, float32(14), math.Float32frombits(binary.LittleEndian.Uint32(cb[c["ferry_crop_params.bias"]+12:])))
	row := imgRow{devOff: 1, w: 2, h: 3, box: cropBox{y0: 4, x0: 5, dy: 6, dx: 7, ylo: 8, yhi: 9, xlo: 10, xhi: -11}, flip: true}
	sb := make([]byte, cropSampleSize)
	packCropSample(sb, &row)
	require.Equal(t, uint64(1), binary.LittleEndian.Uint64(sb[c["ferry_crop_sample.offset"]:]))
	for name, want := range map[string]uint32{"w": 2, "h": 3, "ylo": 8, "yhi": 9, "xlo": 10, "xhi": uint32(1<<32 - 11), "flip": 1} {
		require.Equal(t, want, binary.LittleEndian.Uint32(sb[c["ferry_crop_sample."+name]:]), name)
	}
	for name, want := range map[string]float64{"y0": 4, "x0": 5, "dy": 6, "dx": 7} {
		require.Equal(t, want, math.Float64frombits(binary.LittleEndian.Uint64(sb[c["ferry_crop_sample."+name]:])), name)
	}

	// Pack distinct values and read each back at the C offset.
	le := binary.LittleEndian
	ip := imageParams{src: 1, offsets: 2, flip: 3, dst: 4, batch: 5, h: 6, w: 7, c: 8, rows: 9, planar: 18,
		scale: [4]float32{10, 11, 12, 13}, bias: [4]float32{14, 15, 16, 17}}
	b := ip.pack(nil)
	require.Len(t, b, imageParamsSize)
	for name, want := range map[string]uint64{"src": 1, "offsets": 2, "flip": 3, "dst": 4} {
		require.Equal(t, want, le.Uint64(b[c["ferry_image_params."+name]:]), name)
	}
	for name, want := range map[string]uint32{"batch": 5, "h": 6, "w": 7, "c": 8, "rows": 9, "planar": 18} {
		require.Equal(t, want, le.Uint32(b[c["ferry_image_params."+name]:]), name)
	}
	require.Equal(t, float32(10), math.Float32frombits(le.Uint32(b[c["ferry_image_params.scale"]:])))
	require.Equal(t, float32(17), math.Float32frombits(le.Uint32(b[c["ferry_image_params.bias"]+12:])))

	tp := tokensParams{src: 1, offsets: 2, x: 3, y: 4, batch: 5, seq: 6, stride: 7, flags: 8, mask: 9, pos: 10, eod: -11}
	b = tp.pack(nil)
	require.Len(t, b, tokensParamsSize)
	for name, want := range map[string]uint64{"src": 1, "offsets": 2, "x": 3, "y": 4, "mask": 9, "pos": 10, "eod": uint64(1<<64 - 11)} {
		require.Equal(t, want, le.Uint64(b[c["ferry_tokens_params."+name]:]), name)
	}
	for name, want := range map[string]uint32{"batch": 5, "seq": 6, "stride": 7, "flags": 8} {
		require.Equal(t, want, le.Uint32(b[c["ferry_tokens_params."+name]:]), name)
	}
	qp := positionsParams{x: 1, pos: 2, eod: -3, batch: 4, seq: 5}
	b = qp.pack(nil)
	require.Len(t, b, positionsParamsSize)
	for name, want := range map[string]uint64{"x": 1, "pos": 2, "eod": uint64(1<<64 - 3)} {
		require.Equal(t, want, le.Uint64(b[c["ferry_positions_params."+name]:]), name)
	}
	for name, want := range map[string]uint32{"batch": 4, "seq": 5} {
		require.Equal(t, want, le.Uint32(b[c["ferry_positions_params."+name]:]), name)
	}

	gp := gatherParams{src: 1, offsets: 2, dst: 3, bytes: 4, batch: 5, vec: 6}
	b = gp.pack(nil)
	require.Len(t, b, gatherParamsSize)
	for name, want := range map[string]uint64{"src": 1, "offsets": 2, "dst": 3, "bytes": 4} {
		require.Equal(t, want, le.Uint64(b[c["ferry_gather_params."+name]:]), name)
	}
	require.Equal(t, uint32(5), le.Uint32(b[c["ferry_gather_params.batch"]:]))
	require.Equal(t, uint32(6), le.Uint32(b[c["ferry_gather_params.vec"]:]))

	pp := padParams{src: 1, offsets: 2, lengths: 3, tokens: 4, mask: 5, lengthsOut: 6, padValue: -7, batch: 8, maxlen: 9}
	b = pp.pack(nil)
	require.Len(t, b, padParamsSize)
	for name, want := range map[string]uint64{"src": 1, "offsets": 2, "lengths": 3, "tokens": 4, "mask": 5, "lengths_out": 6} {
		require.Equal(t, want, le.Uint64(b[c["ferry_pad_params."+name]:]), name)
	}
	require.Equal(t, int64(-7), int64(le.Uint64(b[c["ferry_pad_params.pad_value"]:])))
	require.Equal(t, uint32(8), le.Uint32(b[c["ferry_pad_params.batch"]:]))
	require.Equal(t, uint32(9), le.Uint32(b[c["ferry_pad_params.maxlen"]:]))
}

// raggedMem is a variable-length source over one array of uint16 tokens, for the layout tests.
type raggedMem struct {
	tokens []byte
	ids    []byte // every sample's id, int32: field 1's region
	starts []int  // token offsets, len n+1
	max    int
	fields []Field
}

func newRaggedMem(t testing.TB, n, maxLen int) *raggedMem {
	r := &raggedMem{max: maxLen, fields: []Field{{Name: "seq", DType: Uint16, Shape: []int{maxLen}}, {Name: "id", DType: Int32}}}
	var lens = make([]byte, n)
	_, err := rand.Read(lens)
	require.NoError(t, err)
	r.starts = []int{0}
	for i := 0; i < n; i++ {
		l := int(lens[i]) % (maxLen + 3) // some longer than maxLen (truncated), some empty
		r.starts = append(r.starts, r.starts[i]+l)
	}
	r.tokens = make([]byte, 2*r.starts[n]+2)
	_, err = rand.Read(r.tokens)
	require.NoError(t, err)
	for i := 0; i < n; i++ {
		r.ids = binary.LittleEndian.AppendUint32(r.ids, uint32(i))
	}
	return r
}

func (r *raggedMem) Len() int         { return len(r.starts) - 1 }
func (r *raggedMem) Fields() []Field  { return r.fields }
func (r *raggedMem) Close() error     { return nil }
func (r *raggedMem) RaggedField() int { return 0 }
func (r *raggedMem) SampleLen(i int) int {
	return min(r.starts[i+1]-r.starts[i], r.max)
}
func (r *raggedMem) ReadSample(i int, dst [][]byte) error {
	n := r.SampleLen(i)
	clear(dst[0])
	copy(dst[0], r.tokens[2*r.starts[i]:2*(r.starts[i]+n)])
	binary.LittleEndian.PutUint32(dst[1], uint32(i))
	return nil
}

func (r *raggedMem) Region(f int) []byte {
	if f == 0 {
		return r.tokens
	}
	return r.ids
}
func (r *raggedMem) Offset(f, i int) int64 {
	if f == 0 {
		return int64(2 * r.starts[i])
	}
	return int64(4 * i)
}

// transformSource is a memory source with a vector-friendly image, an image of an awkward width, a token
// window and a label, filled with fresh random bytes.
func transformSource(t testing.TB, n int) (*MemorySource, [][]byte) {
	return randomMemorySource(t, n,
		Field{Name: "image", DType: Uint8, Shape: []int{4, 32, 3}},
		Field{Name: "odd", DType: Uint8, Shape: []int{3, 5, 3}},
		Field{Name: "window", DType: Uint16, Shape: []int{9}},
		Field{Name: "label", DType: Int64})
}

// poisonRing fills the ring's device buffers with 0xFF before each pipeline starts, and those of each
// slot the ring grows by, so that a kernel that skips an element shows.
func poisonRing(t *testing.T) {
	poison := func(it *Iterator, s *slot) {
		if !it.e.GPU() {
			return
		}
		for _, bufs := range [][]*engine.DeviceBuffer{s.dev, s.devIn} {
			for _, d := range bufs {
				if d != nil {
					require.NoError(t, it.e.Context().MemsetD8(d.Ptr(), 0xFF, d.Len()))
				}
			}
		}
	}
	testHookStart = func(it *Iterator) {
		for _, l := range it.ring.lanes {
			poison(it, l.s)
		}
	}
	testHookNewSlot = poison
	t.Cleanup(func() { testHookStart, testHookNewSlot = nil, nil })
}

// transformChecks runs on any engine: batches with transforms equal the element-by-element reference,
// for every staging strategy.
func transformChecks(t *testing.T, e *engine.Engine, wantStaging func(Staging) Staging) {
	poisonRing(t)
	norm := Normalize{Mean: []float32{0.485, 0.456, 0.406}, Std: []float32{0.229, 0.224, 0.225}, DType: Float16, Flip: 0.5}
	odd := Normalize{Mean: []float32{0.5}, Std: []float32{0.25}, DType: BFloat16, Layout: LayoutHWC, Flip: 0.5}
	for _, staging := range []Staging{StagingAuto, StagingGather, StagingDMA, StagingMapped} {
		for _, d := range []DType{Float32, Float16, BFloat16} {
			t.Run(fmt.Sprintf("%v %v", staging, d), func(t *testing.T) {
				src, data := transformSource(t, 203)
				n := norm
				n.DType = d
				it, err := NewIterator(e, src, IteratorOptions{BatchSize: 32, Shuffle: true, Seed: 11, Workers: 3, Prefetch: 3,
					Staging: staging, Transforms: map[string]Transform{"image": n, "odd": odd, "window": ShiftTokens{}}})
				require.NoError(t, err)
				defer it.Close()
				got, why := it.Staging()
				if wantStaging != nil {
					require.Equal(t, wantStaging(staging), got, "staging: %s", why)
				}
				names := []string{}
				for _, f := range it.Fields() {
					names = append(names, f.Name)
				}
				require.Equal(t, []string{"image", "odd", "x", "y", "label"}, names)
				fields := src.Fields()
				for epoch := 0; epoch < 2; epoch++ {
					for {
						b, err := it.Next(context.Background(), 0)
						if errors.Is(err, io.EOF) {
							break
						}
						require.NoError(t, err)
						out := batchContents(t, e, b)
						var wantImg, wantOdd, wantX, wantY, wantLabel []byte
						for _, i := range b.Indices {
							flip := flipSample(0.5, 11, b.Epoch, i)
							wantImg = append(wantImg, refNormalize(n, fields[0], data[0][i*fields[0].Bytes():(i+1)*fields[0].Bytes()], flip)...)
							wantOdd = append(wantOdd, refNormalize(odd, fields[1], data[1][i*fields[1].Bytes():(i+1)*fields[1].Bytes()], flip)...)
							w := data[2][i*18 : (i+1)*18]
							for j := 0; j < 8; j++ {
								wantX = binary.LittleEndian.AppendUint64(wantX, uint64(binary.LittleEndian.Uint16(w[2*j:])))
								wantY = binary.LittleEndian.AppendUint64(wantY, uint64(binary.LittleEndian.Uint16(w[2*j+2:])))
							}
							wantLabel = append(wantLabel, data[3][i*8:(i+1)*8]...)
						}
						msg := fmt.Sprintf("epoch %d batch %d", b.Epoch, b.Index)
						requireClose(t, d, wantImg, out[0], msg+" image")
						requireClose(t, BFloat16, wantOdd, out[1], msg+" odd")
						require.Equal(t, wantX, out[2], msg+" x")
						require.Equal(t, wantY, out[3], msg+" y")
						require.Equal(t, wantLabel, out[4], msg+" label")
						require.Equal(t, []int{b.Size(), 3, 4, 32}, b.Fields[0].Shape)
						require.Equal(t, []int{b.Size(), 3, 5, 3}, b.Fields[1].Shape)
						require.Equal(t, []int{b.Size(), 8}, b.Fields[2].Shape)
						require.NoError(t, b.Release(0))
					}
				}
				st := it.Stats()
				require.Equal(t, uint64(2*203*(fields[0].Bytes()+fields[1].Bytes()+fields[2].Bytes()+8)), st.Bytes,
					"Stats.Bytes counts the source bytes that crossed")
			})
		}
	}
	t.Run("variable length", func(t *testing.T) {
		for _, staging := range []Staging{StagingGather, StagingMapped} {
			for _, fixed := range []bool{false, true} {
				r := newRaggedMem(t, 150, 40)
				pad := PadSequences{PadValue: -1, Fixed: fixed}
				it, err := NewIterator(e, r, IteratorOptions{BatchSize: 16, Shuffle: true, Seed: 5, Staging: staging,
					Transforms: map[string]Transform{"seq": pad}})
				require.NoError(t, err)
				names := []string{}
				for _, f := range it.Fields() {
					names = append(names, f.Name)
				}
				require.Equal(t, []string{"seq", "attention_mask", "lengths", "id"}, names)
				batches := 0
				for {
					b, err := it.Next(context.Background(), 0)
					if errors.Is(err, io.EOF) {
						break
					}
					require.NoError(t, err)
					width := 0
					for _, i := range b.Indices {
						width = max(width, r.SampleLen(i))
					}
					if fixed {
						width = 40
					}
					require.Equal(t, []int{b.Size(), width}, b.Fields[0].Shape)
					require.Equal(t, []int{b.Size(), width}, b.Fields[1].Shape)
					require.Equal(t, []int{b.Size()}, b.Fields[2].Shape)
					out := batchContents(t, e, b)
					var wantTok, wantMask, wantLen, wantID []byte
					for _, i := range b.Indices {
						n := r.SampleLen(i)
						for j := 0; j < width; j++ {
							v, m := int64(-1), byte(0)
							if j < n {
								v, m = int64(binary.LittleEndian.Uint16(r.tokens[2*(r.starts[i]+j):])), 1
							}
							wantTok = binary.LittleEndian.AppendUint64(wantTok, uint64(v))
							wantMask = append(wantMask, m)
						}
						wantLen = binary.LittleEndian.AppendUint64(wantLen, uint64(n))
						wantID = binary.LittleEndian.AppendUint32(wantID, uint32(i))
					}
					require.Equal(t, wantTok, out[0], "tokens, batch %d", b.Index)
					require.Equal(t, wantMask, out[1], "mask, batch %d", b.Index)
					require.Equal(t, wantLen, out[2], "lengths, batch %d", b.Index)
					require.Equal(t, wantID, out[3], "ids, batch %d", b.Index)
					require.NoError(t, b.Release(0))
					batches++
				}
				require.Equal(t, 10, batches)
				require.NoError(t, it.Close())
			}
		}
	})
	t.Run("bad transforms", func(t *testing.T) {
		src, _ := transformSource(t, 10)
		for _, c := range []struct {
			tr   map[string]Transform
			want string
		}{
			{map[string]Transform{"nope": ShiftTokens{}}, "does not have"},
			{map[string]Transform{"image": nil}, "is nil"},
			{map[string]Transform{"image": ShiftTokens{}}, "uint16, uint32 or int32 window"},
			{map[string]Transform{"window": ShiftTokens{X: "label"}}, "named \"label\""},
			{map[string]Transform{"window": PadSequences{}}, "needs a source whose field"},
			{map[string]Transform{"image": Normalize{Flip: 0.5}, "odd": Normalize{Flip: 0.2}}, "different probabilities"},
		} {
			_, err := NewIterator(e, src, IteratorOptions{BatchSize: 4, Transforms: c.tr})
			require.ErrorIs(t, err, engine.ErrInvalidArgument)
			require.Contains(t, err.Error(), c.want)
		}
		_, err := NewIterator(e, src, IteratorOptions{BatchSize: 4, Staging: 9})
		require.ErrorIs(t, err, engine.ErrInvalidArgument)
		it, err := NewIterator(e, src, IteratorOptions{BatchSize: 4})
		require.NoError(t, err, "the engine stays usable")
		require.NoError(t, it.Close())
	})
}

// planarChecks runs Normalize on channel-planar u8 input ([C, H, W], as CIFAR stores it) on any engine, for
// every staging strategy, output type and output layout: a CIFAR-sized field (the kernels' tiled path) and
// one of an awkward width (the per-pixel path), against the element-by-element reference.
func planarChecks(t *testing.T, e *engine.Engine) {
	poisonRing(t)
	src, data := randomMemorySource(t, 157,
		Field{Name: "image", DType: Uint8, Shape: []int{3, 32, 32}},
		Field{Name: "odd", DType: Uint8, Shape: []int{2, 5, 7}},
		Field{Name: "label", DType: Uint8})
	fields := src.Fields()
	for _, staging := range []Staging{StagingGather, StagingDMA, StagingMapped} {
		for _, d := range []DType{Float32, Float16, BFloat16} {
			for _, layout := range []ImageLayout{LayoutCHW, LayoutHWC} {
				t.Run(fmt.Sprintf("%v %v %v", staging, d, layout), func(t *testing.T) {
					img := Normalize{Mean: []float32{0.4914, 0.4822, 0.4465}, Std: []float32{0.2470, 0.2435, 0.2616}, DType: d,
						Layout: layout, Flip: 0.5, InputCHW: true}
					odd := Normalize{Mean: []float32{0.3, 0.6}, Std: []float32{0.5, 0.2}, DType: d, Layout: layout, Flip: 0.5, InputCHW: true}
					it, err := NewIterator(e, src, IteratorOptions{BatchSize: 40, Shuffle: true, Seed: 23, Staging: staging,
						Transforms: map[string]Transform{"image": img, "odd": odd}})
					require.NoError(t, err)
					defer it.Close()
					for {
						b, err := it.Next(context.Background(), 0)
						if errors.Is(err, io.EOF) {
							break
						}
						require.NoError(t, err)
						out := batchContents(t, e, b)
						var wantImg, wantOdd, wantLabel []byte
						for _, i := range b.Indices {
							flip := flipSample(0.5, 23, b.Epoch, i)
							wantImg = append(wantImg, refNormalize(img, fields[0], data[0][i*3072:(i+1)*3072], flip)...)
							wantOdd = append(wantOdd, refNormalize(odd, fields[1], data[1][i*70:(i+1)*70], flip)...)
							wantLabel = append(wantLabel, data[2][i])
						}
						msg := fmt.Sprintf("batch %d", b.Index)
						requireClose(t, d, wantImg, out[0], msg+" image")
						requireClose(t, d, wantOdd, out[1], msg+" odd")
						require.Equal(t, wantLabel, out[2], msg+" label")
						if layout == LayoutCHW {
							require.Equal(t, []int{b.Size(), 3, 32, 32}, b.Fields[0].Shape)
						} else {
							require.Equal(t, []int{b.Size(), 32, 32, 3}, b.Fields[0].Shape)
						}
						require.NoError(t, b.Release(0))
					}
				})
			}
		}
	}
	t.Run("read as the wrong layout", func(t *testing.T) {
		// [3, 32, 32] read as HWC has 32 channels: the error says which layout to set.
		_, err := NewIterator(e, src, IteratorOptions{BatchSize: 4, Transforms: map[string]Transform{"image": Normalize{}}})
		require.ErrorIs(t, err, engine.ErrInvalidArgument)
		require.Contains(t, err.Error(), "set the input layout to CHW")
	})
}

func TestIteratorTransformsCPU(t *testing.T) {
	e := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	transformChecks(t, e, func(Staging) Staging { return StagingGather })
	t.Run("planar input", func(t *testing.T) { planarChecks(t, e) })
}

func TestIteratorTransformsGPU(t *testing.T) {
	testutil.RequireGPU(t)
	e, err := engine.Open(0, engine.WithSampleInterval(0))
	require.NoError(t, err)
	defer e.Close()
	t.Run("dma", func(t *testing.T) { dmaChecks(t, e) })
	t.Run("planar input", func(t *testing.T) { planarChecks(t, e) })
	_, backed := any(&MemorySource{}).(MemoryBacked)
	transformChecks(t, e, func(s Staging) Staging {
		switch {
		case !backed || s == StagingGather:
			return StagingGather
		case s == StagingAuto:
			return StagingMapped
		}
		return s
	})
}

// dmaChecks runs on a GPU or the stand-in driver: per-sample DMA from registered caller memory, with the
// fields' buffers side by side in shared pages (registered as one range).
func dmaChecks(t *testing.T, e *engine.Engine) {
	poisonRing(t)
	const n = 301
	fields := []Field{{Name: "a", DType: Uint8, Shape: []int{5, 7}}, {Name: "b", DType: Int32, Shape: []int{3}}}
	buf := make([]byte, n*(35+12))
	_, err := rand.Read(buf)
	require.NoError(t, err)
	data := [][]byte{buf[:n*35], buf[n*35:]}
	src, err := NewMemorySource(n, fields, data)
	require.NoError(t, err)
	defer src.Close()
	for _, staging := range []Staging{StagingDMA, StagingAuto} {
		it, err := NewIterator(e, src, IteratorOptions{BatchSize: 40, Shuffle: true, Seed: 3, Staging: staging})
		require.NoError(t, err)
		got, why := it.Staging()
		if staging == StagingDMA {
			require.Equal(t, StagingDMA, got, why)
		}
		idx := collectEpoch(t, e, it, data)
		require.Len(t, idx, 8)
		// The caller's memory next to the source stays a valid destination while it is registered.
		dst := make([]byte, 64)
		b, err := it.Next(context.Background(), 0)
		require.NoError(t, err)
		require.NoError(t, e.Context().MemcpyDtoH(dst, b.Fields[0].Device))
		require.NoError(t, b.Release(0))
		require.NoError(t, it.Close())
	}
}
