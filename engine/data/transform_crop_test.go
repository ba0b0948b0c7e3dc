package data

import (
	"bytes"
	"context"
	"errors"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/cuda"
	"github.com/ferry-ml/ferry/engine/internal/enginetest"
)

// smoothImage is a w x h RGB image of random smooth gradients (JPEG-friendly) with some noise.
func smoothImage(r *rand.Rand, w, h int) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	var a, b, c [3]float64
	for k := range 3 {
		a[k], b[k], c[k] = r.Float64()*200, r.Float64()*3, r.Float64()*3
	}
	for y := range h {
		for x := range w {
			var px [3]uint8
			for k := range 3 {
				v := a[k] + b[k]*float64(x)*100/float64(w) + c[k]*float64(y)*100/float64(h) + r.Float64()*8
				px[k] = uint8(min(max(v, 0), 255))
			}
			img.SetNRGBA(x, y, color.NRGBA{px[0], px[1], px[2], 255})
		}
	}
	return img
}

func encodePNG(t testing.TB, img image.Image) []byte {
	var buf bytes.Buffer
	require.NoError(t, png.Encode(&buf, img))
	return buf.Bytes()
}

func TestDecodeImage(t *testing.T) {
	r := srcRand(t)
	rgb := smoothImage(r, 37, 23)
	gray := image.NewGray(image.Rect(0, 0, 9, 5))
	gray16 := image.NewGray16(image.Rect(0, 0, 4, 3))
	pal := image.NewPaletted(image.Rect(0, 0, 6, 4), color.Palette{color.RGBA{10, 20, 30, 255}, color.RGBA{200, 100, 50, 255}})
	for i := range gray.Pix {
		gray.Pix[i] = uint8(r.Uint32())
	}
	for i := range gray16.Pix {
		gray16.Pix[i] = uint8(r.Uint32())
	}
	for i := range pal.Pix {
		pal.Pix[i] = uint8(r.IntN(2))
	}
	var d decodedImage
	for name, img := range map[string]image.Image{"rgba": rgb, "gray": gray, "gray16": gray16, "palette": pal} {
		require.NoError(t, decodeImage(encodePNG(t, img), DefaultMaxPixels, &d), name)
		b := img.Bounds()
		require.Equal(t, [2]int{b.Dx(), b.Dy()}, [2]int{d.w, d.h}, name)
		for y := range d.h {
			for x := range d.w {
				c := color.NRGBA64Model.Convert(img.At(x, y)).(color.NRGBA64)
				want := []byte{uint8(c.R >> 8), uint8(c.G >> 8), uint8(c.B >> 8)}
				require.Equal(t, want, d.pix[3*(y*d.w+x):3*(y*d.w+x)+3], "%s pixel (%d, %d)", name, x, y)
			}
		}
	}

	// A JPEG: TurboJPEG against Go's decoder (their IDCTs and upsampling differ a little).
	if cuda.LoadTurboJPEG() != nil {
		t.Logf("no TurboJPEG here: the JPEG cases are skipped (%v)", cuda.LoadTurboJPEG())
		return
	}
	var buf bytes.Buffer
	require.NoError(t, jpeg.Encode(&buf, smoothImage(r, 64, 48), &jpeg.Options{Quality: 95}))
	jpg := buf.Bytes()
	require.NoError(t, decodeImage(jpg, DefaultMaxPixels, &d))
	ref, err := jpeg.Decode(bytes.NewReader(jpg))
	require.NoError(t, err)
	var sum, worst float64
	for y := range d.h {
		for x := range d.w {
			c := color.RGBAModel.Convert(ref.At(x, y)).(color.RGBA)
			for k, v := range []uint8{c.R, c.G, c.B} {
				diff := math.Abs(float64(v) - float64(d.pix[3*(y*d.w+x)+k]))
				sum += diff
				worst = max(worst, diff)
			}
		}
	}
	require.Less(t, sum/float64(3*d.w*d.h), 2.0, "mean difference from Go's decoder")
	require.LessOrEqual(t, worst, 32.0)

	for name, c := range map[string]struct {
		data []byte
		max  int
		want error
	}{
		"truncated":     {jpg[:len(jpg)/2], DefaultMaxPixels, engine.ErrFormat},
		"corrupt":       {append(append([]byte{}, jpg[:200]...), bytes.Repeat([]byte{0x55}, 400)...), DefaultMaxPixels, engine.ErrFormat},
		"not an image":  {[]byte("GIF89a...."), DefaultMaxPixels, engine.ErrFormat},
		"too large":     {jpg, 64*48 - 1, engine.ErrLimit},
		"png truncated": {encodePNG(t, rgb)[:100], DefaultMaxPixels, engine.ErrFormat},
	} {
		err := decodeImage(c.data, c.max, &d)
		require.ErrorIs(t, err, c.want, name)
	}
}

// TestRandomCropBox checks the boxes against torchvision's rule: inside the image, the area fraction in
// scale and the aspect in ratio (up to the rounding of the sides) whenever a draw fits, the central crop
// of the clamped ratio when none does; each a pure function of (seed, epoch, index).
func TestRandomCropBox(t *testing.T) {
	scale, ratio := [2]float64{0.08, 1}, [2]float64{3.0 / 4, 4.0 / 3}
	fallbacks := 0
	for idx := range 20000 {
		w, h := 500, 375
		top, left, ch, cw := randomCropBox(w, h, scale, ratio, 7, 2, idx)
		require.True(t, top >= 0 && left >= 0 && ch >= 1 && cw >= 1 && top+ch <= h && left+cw <= w)
		frac := float64(ch*cw) / float64(w*h)
		if ch == 375 && cw == 500 {
			fallbacks++
			continue
		}
		require.True(t, frac > 0.07 && frac <= 1.0, "area fraction %g", frac)
		ar := float64(cw) / float64(ch)
		require.True(t, ar > 0.7 && ar < 1.4, "aspect %g", ar)
		a2, b2, c2, d2 := randomCropBox(w, h, scale, ratio, 7, 2, idx)
		require.Equal(t, [4]int{top, left, ch, cw}, [4]int{a2, b2, c2, d2})
	}
	require.Less(t, fallbacks, 200, "the fallback is rare for a 4:3 image")
	// A strip no draw fits: the central crop at the ratio's bound.
	top, left, ch, cw := randomCropBox(1000, 10, scale, ratio, 1, 0, 0)
	require.Equal(t, [4]int{0, (1000 - 13) / 2, 10, 13}, [4]int{top, left, ch, cw})
	// Other epochs, other boxes.
	a := [4]int{}
	a[0], a[1], a[2], a[3] = randomCropBox(500, 375, scale, ratio, 7, 2, 5)
	b := [4]int{}
	b[0], b[1], b[2], b[3] = randomCropBox(500, 375, scale, ratio, 7, 3, 5)
	require.NotEqual(t, a, b)
}

// refResample is an independent bilinear reference in float64: the value at source position (py, px)
// of the box's resample, edges clamped to the box.
func refResample(img []byte, w int, b cropBox, size, oy, ox, c int) float64 {
	at := func(origin, step float64, k, lo, hi int) (int, int, float64) {
		p := math.Max(origin+(float64(k)+0.5)*step-0.5, float64(lo))
		i0 := int(math.Floor(p))
		if i0 > hi {
			i0 = hi
		}
		i1 := i0 + 1
		if i1 > hi {
			i1 = hi
		}
		return i0, i1, p - float64(i0)
	}
	y0, y1, fy := at(b.y0, b.dy, oy, b.ylo, b.yhi)
	x0, x1, fx := at(b.x0, b.dx, ox, b.xlo, b.xhi)
	v := func(y, x int) float64 { return float64(img[3*(y*w+x)+c]) }
	return (1-fy)*((1-fx)*v(y0, x0)+fx*v(y0, x1)) + fy*((1-fx)*v(y1, x0)+fx*v(y1, x1))
}

// TestCropsThroughIterator crops PNG and JPEG files of an image folder on the CPU engine and checks every
// output value against the float64 reference of the same box; a corrupt file fails its batch by name.
func TestCropsThroughIterator(t *testing.T) {
	r := srcRand(t)
	root := t.TempDir()
	imgs := map[string]*image.NRGBA{}
	for k := range 12 {
		img := smoothImage(r, 20+r.IntN(60), 20+r.IntN(60))
		name := filepath.Join(root, []string{"a", "b"}[k%2], string(rune('a'+k))+".png")
		require.NoError(t, os.MkdirAll(filepath.Dir(name), 0o755))
		require.NoError(t, os.WriteFile(name, encodePNG(t, img), 0o644))
		imgs[name] = img
	}
	src, err := NewImageFolderSource(root, ImageFolderConfig{MaxBytes: 1 << 16})
	require.NoError(t, err)
	defer src.Close()
	e := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	mean, std := []float32{0.485, 0.456, 0.406}, []float32{0.229, 0.224, 0.225}
	const size = 24
	for _, tr := range []Transform{
		RandomResizedCrop{Size: size, Flip: 0.5, Mean: mean, Std: std},
		CenterCrop{Size: size, ResizeTo: 28, Mean: mean, Std: std, Layout: LayoutHWC},
	} {
		it, err := NewIterator(e, src, IteratorOptions{BatchSize: 5, Shuffle: true, Seed: 9, Transforms: map[string]Transform{"image": tr}})
		require.NoError(t, err)
		spec := map[bool]cropSpec{true: RandomResizedCrop{Size: size, Flip: 0.5}.spec(), false: CenterCrop{Size: size, ResizeTo: 28}.spec()}
		_, random := tr.(RandomResizedCrop)
		s := spec[random]
		for {
			b, err := it.Next(context.Background(), 0)
			if errors.Is(err, io.EOF) {
				break
			}
			require.NoError(t, err)
			wantShape := []int{b.Size(), 3, size, size}
			if !random {
				wantShape = []int{b.Size(), size, size, 3}
			}
			require.Equal(t, wantShape, b.Fields[0].Shape)
			out := float32s(b.Fields[0].Host)
			for row, i := range b.Indices {
				img := imgs[src.Path(i)]
				w, h := img.Bounds().Dx(), img.Bounds().Dy()
				pix := make([]byte, 0, 3*w*h)
				for p := 0; p < len(img.Pix); p += 4 {
					pix = append(pix, img.Pix[p:p+3]...)
				}
				a := rowArgs{seed: 9, epoch: b.Epoch, index: i}
				box := s.box(w, h, a)
				flip := random && flipSample(0.5, 9, b.Epoch, i)
				for c := range 3 {
					for oy := range size {
						for ox := range size {
							sx := ox
							if flip {
								sx = size - 1 - ox
							}
							want := (refResample(pix, w, box, size, oy, sx, c)/255 - float64(mean[c])) / float64(std[c])
							at := (c*size+oy)*size + ox
							if !random {
								at = (oy*size+ox)*3 + c
							}
							got := out[row*3*size*size+at]
							require.InDelta(t, want, float64(got), 1e-4, "%v sample %d channel %d (%d, %d)", tr, i, c, oy, ox)
						}
					}
				}
			}
			require.NoError(t, b.Release(0))
		}
		require.NoError(t, it.Close())
	}

	// A corrupt file fails the batch that holds it, naming the file; the loader goes on.
	bad := filepath.Join(root, "a", "zz-bad.png")
	require.NoError(t, os.WriteFile(bad, []byte("\x89PNG\r\n\x1a\nbroken"), 0o644))
	src2, err := NewImageFolderSource(root, ImageFolderConfig{MaxBytes: 1 << 16})
	require.NoError(t, err)
	defer src2.Close()
	it, err := NewIterator(e, src2, IteratorOptions{BatchSize: 13, Transforms: map[string]Transform{"image": RandomResizedCrop{Size: 8}}})
	require.NoError(t, err)
	defer it.Close()
	_, err = it.Next(context.Background(), 0)
	require.ErrorIs(t, err, engine.ErrFormat)
	require.Contains(t, err.Error(), "zz-bad.png")

	// With OnErrorSkip the next sample takes its place, and the skip is counted.
	skip, err := NewIterator(e, src2, IteratorOptions{BatchSize: 13, OnError: OnErrorSkip,
		Transforms: map[string]Transform{"image": RandomResizedCrop{Size: 8}}})
	require.NoError(t, err)
	defer skip.Close()
	b, err := skip.Next(context.Background(), 0)
	require.NoError(t, err)
	badIndex := -1
	for i := 0; i < src2.Len(); i++ {
		if src2.Path(i) == bad {
			badIndex = i
		}
	}
	require.NotContains(t, b.Indices, badIndex)
	require.Contains(t, b.Indices, (badIndex+1)%src2.Len(), "the next sample took its place")
	require.GreaterOrEqual(t, skip.Stats().Skipped, uint64(1), "counted (prefetched epochs count theirs too)")
	require.NoError(t, b.Release(0))
	_, err = NewIterator(e, src2, IteratorOptions{BatchSize: 2, OnError: 7})
	require.ErrorIs(t, err, engine.ErrInvalidArgument)
}

func float32s(b []byte) []float32 {
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(uint32(b[4*i]) | uint32(b[4*i+1])<<8 | uint32(b[4*i+2])<<16 | uint32(b[4*i+3])<<24)
	}
	return out
}

// TestAntialiasResample checks the antialiased resample against a float64 evaluation of Pillow's
// separable triangle filter (widened by the downscale factor, normalized over the box), on a random image
// with boxes that shrink by 1.5 to 7 times, and that it is off when the box does not shrink.
func TestAntialiasResample(t *testing.T) {
	r := srcRand(t)
	const w, h, size = 211, 157, 24
	img := make([]byte, w*h*3)
	for i := range img {
		img[i] = byte(r.Uint32())
	}
	filter := func(origin, step float64, k, lo, hi int) (int, []float64) {
		support := math.Max(step, 1)
		center := origin + (float64(k)+0.5)*step
		xmin := int(math.Max(math.Trunc(center-support+0.5), float64(lo)))
		xmax := int(math.Min(math.Trunc(center+support+0.5), float64(hi+1)))
		var ws []float64
		sum := 0.0
		for x := xmin; x < xmax; x++ {
			v := math.Max(0, 1-math.Abs((float64(x)-center+0.5)/support))
			ws = append(ws, v)
			sum += v
		}
		for i := range ws {
			ws[i] /= sum
		}
		return xmin, ws
	}
	var scale, bias [maxChannels]float32
	for c := range 3 {
		scale[c], bias[c] = 1, 0
	}
	for _, b := range []cropBox{
		{y0: 0, x0: 0, dy: float64(h) / size, dx: float64(w) / size, ylo: 0, yhi: h - 1, xlo: 0, xhi: w - 1},
		{y0: 13, x0: 40, dy: 36.0 / size, dx: 100.0 / size, ylo: 13, yhi: 13 + 35, xlo: 40, xhi: 139},
		{y0: 5.5, x0: 7.25, dy: 1.5, dx: 2.25, ylo: 0, yhi: h - 1, xlo: 0, xhi: w - 1},
	} {
		out := make([]byte, 3*size*size*4)
		resampleAA(out, img, w, b, size, false, scale, bias, Float32, LayoutHWC)
		got := float32s(out)
		for oy := range size {
			y0, wy := filter(b.y0, b.dy, oy, b.ylo, b.yhi)
			for ox := range size {
				x0, wx := filter(b.x0, b.dx, ox, b.xlo, b.xhi)
				for c := range 3 {
					want := 0.0
					for i, a := range wy {
						for j, bb := range wx {
							want += a * bb * float64(img[((y0+i)*w+x0+j)*3+c])
						}
					}
					require.InDelta(t, want, float64(got[(oy*size+ox)*3+c]), 2e-3, "box %+v at (%d, %d, %d)", b, oy, ox, c)
				}
			}
		}
	}
}
