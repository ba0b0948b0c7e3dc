package data

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"

	"golang.org/x/image/bmp"
	"golang.org/x/image/tiff"
	"golang.org/x/image/webp"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/cuda"
)

// DefaultMaxPixels is the largest image decoded unless a transform says otherwise: 64 Mpx.
const DefaultMaxPixels = 64 << 20

// decodedImage is an image decoded to 8-bit RGB, [H, W, 3], in a buffer the decoder reuses.
type decodedImage struct {
	w, h int
	pix  []byte
	cmyk []byte // scratch for CMYK JPEGs
}

// errNotImage is wrapped by a decode of bytes that are no image ferry reads.
var errNotImage = errors.New("not a JPEG, PNG, BMP, TIFF, WebP or PPM/PGM/PBM image")

// decodeImage decodes a JPEG (TurboJPEG: the accurate IDCT and fancy upsampling, libjpeg's defaults, as
// PIL decodes), a PNG (image/png), a BMP, TIFF or WebP (golang.org/x/image) or a PPM/PGM/PBM to RGB as
// PIL's convert("RGB") makes it: gray replicated, alpha dropped, a palette looked up, 16-bit samples cut
// to their high byte, CMYK converted as PIL converts it. The size is read from the header first: an image
// of more than maxPixels pixels is refused before it is decoded. A truncated or corrupt file and any other
// format are errors.
func decodeImage(data []byte, maxPixels int, out *decodedImage) error {
	switch {
	case len(data) >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF:
		return decodeJPEG(data, maxPixels, out)
	case len(data) >= 8 && bytes.Equal(data[:8], []byte("\x89PNG\r\n\x1a\n")):
		return decodeWith(data, maxPixels, out, "PNG", png.DecodeConfig, png.Decode)
	case len(data) >= 2 && data[0] == 'B' && data[1] == 'M':
		return decodeWith(data, maxPixels, out, "BMP", bmp.DecodeConfig, bmp.Decode)
	case len(data) >= 4 && (string(data[:4]) == "II*\x00" || string(data[:4]) == "MM\x00*"):
		return decodeWith(data, maxPixels, out, "TIFF", tiff.DecodeConfig, tiff.Decode)
	case len(data) >= 12 && string(data[:4]) == "RIFF" && string(data[8:12]) == "WEBP":
		return decodeWith(data, maxPixels, out, "WebP", webp.DecodeConfig, webp.Decode)
	case len(data) >= 2 && data[0] == 'P' && data[1] >= '1' && data[1] <= '6':
		return decodePNM(data, maxPixels, out)
	}
	return fmt.Errorf("%w: %w (it starts with % x)", engine.ErrFormat, errNotImage, data[:min(len(data), 8)])
}

func (d *decodedImage) size(w, h, maxPixels int) error {
	if w <= 0 || h <= 0 {
		return fmt.Errorf("%w: the image is %d x %d pixels", engine.ErrFormat, w, h)
	}
	if int64(w)*int64(h) > int64(maxPixels) {
		return fmt.Errorf("%w: the image is %d x %d pixels, more than the %d allowed (max pixels)", engine.ErrLimit, w, h, maxPixels)
	}
	d.w, d.h = w, h
	if n := 3 * w * h; cap(d.pix) < n {
		d.pix = make([]byte, n)
	} else {
		d.pix = d.pix[:n]
	}
	return nil
}

func decodeJPEG(data []byte, maxPixels int, out *decodedImage) error {
	hdr, err := cuda.ReadJPEGHeader(data)
	if err != nil {
		return jpegError(err)
	}
	if err := out.size(hdr.Width, hdr.Height, maxPixels); err != nil {
		return err
	}
	if hdr.Colorspace != cuda.JPEGColorCMYK && hdr.Colorspace != cuda.JPEGColorYCCK {
		return jpegError(cuda.DecodeJPEG(data, out.pix, out.w, out.h, cuda.JPEGPixelRGB))
	}
	n := 4 * out.w * out.h
	if cap(out.cmyk) < n {
		out.cmyk = make([]byte, n)
	}
	out.cmyk = out.cmyk[:n]
	if err := cuda.DecodeJPEG(data, out.cmyk, out.w, out.h, cuda.JPEGPixelCMYK); err != nil {
		return jpegError(err)
	}
	// libjpeg hands Adobe's CMYK out as stored, inverted; PIL reads it as "CMYK;I" (inverting it back) and
	// converts with r = nk - c*nk/255, nk = 255 - k.
	for p := 0; p < out.w*out.h; p++ {
		c, m, y, k := 255-int(out.cmyk[4*p]), 255-int(out.cmyk[4*p+1]), 255-int(out.cmyk[4*p+2]), 255-int(out.cmyk[4*p+3])
		nk := 255 - k
		out.pix[3*p] = clip8(nk - muldiv255(c, nk))
		out.pix[3*p+1] = clip8(nk - muldiv255(m, nk))
		out.pix[3*p+2] = clip8(nk - muldiv255(y, nk))
	}
	return nil
}

// muldiv255 is PIL's MULDIV255: a*b/255 rounded.
func muldiv255(a, b int) int {
	t := a*b + 128
	return ((t >> 8) + t) >> 8
}

func clip8(v int) byte { return byte(min(max(v, 0), 255)) }

func jpegError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, cuda.ErrTurboJPEGNotLoaded):
		return fmt.Errorf("%w: decoding a JPEG on the CPU: %w", engine.ErrNoDevice, err)
	}
	return fmt.Errorf("%w: %w", engine.ErrFormat, err)
}

// decodeWith decodes a format through its image-package decoder, its header first.
func decodeWith(data []byte, maxPixels int, out *decodedImage, format string,
	config func(io.Reader) (image.Config, error), decode func(io.Reader) (image.Image, error)) (err error) {
	defer func() {
		if r := recover(); r != nil { // a decoder that panics on a hostile file is a format error, not a crash
			err = fmt.Errorf("%w: decoding the %s: %v", engine.ErrFormat, format, r)
		}
	}()
	cfg, err := config(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("%w: reading the %s header: %w", engine.ErrFormat, format, err)
	}
	if err := out.size(cfg.Width, cfg.Height, maxPixels); err != nil {
		return err
	}
	img, err := decode(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("%w: decoding the %s: %w", engine.ErrFormat, format, err)
	}
	if b := img.Bounds(); b.Dx() != out.w || b.Dy() != out.h {
		return fmt.Errorf("%w: the %s decodes to %d x %d pixels, its header says %d x %d", engine.ErrFormat, format, b.Dx(), b.Dy(), out.w, out.h)
	}
	toRGB(img, out)
	return nil
}

// toRGB writes img into out's RGB pixels, as PIL's convert("RGB"). A 4:2:0 YCbCr image (a lossy WebP) is
// converted as libwebp converts it, which Pillow decodes through: its "fancy" chroma upsampling and its
// BT.601 integer transform.
func toRGB(img image.Image, out *decodedImage) {
	switch m := img.(type) {
	case *image.YCbCr:
		if m.SubsampleRatio == image.YCbCrSubsampleRatio420 {
			webpFancyRGB(m.Y, m.Cb, m.Cr, m.YStride, m.CStride, out)
			return
		}
	case *image.NYCbCrA:
		if m.SubsampleRatio == image.YCbCrSubsampleRatio420 {
			webpFancyRGB(m.Y, m.Cb, m.Cr, m.YStride, m.CStride, out)
			return
		}
	}
	b := img.Bounds()
	p := 0
	put := func(r, g, bl uint8) {
		out.pix[p], out.pix[p+1], out.pix[p+2] = r, g, bl
		p += 3
	}
	switch m := img.(type) {
	case *image.Gray:
		for y := range out.h {
			for _, v := range m.Pix[y*m.Stride : y*m.Stride+out.w] {
				put(v, v, v)
			}
		}
	case *image.NRGBA:
		for y := range out.h {
			row := m.Pix[y*m.Stride : y*m.Stride+4*out.w]
			for i := 0; i < len(row); i += 4 {
				put(row[i], row[i+1], row[i+2])
			}
		}
	case *image.RGBA: // an opaque image
		for y := range out.h {
			row := m.Pix[y*m.Stride : y*m.Stride+4*out.w]
			for i := 0; i < len(row); i += 4 {
				put(row[i], row[i+1], row[i+2])
			}
		}
	default:
		for y := b.Min.Y; y < b.Max.Y; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				switch c := img.At(x, y).(type) {
				case color.NRGBA64:
					put(uint8(c.R>>8), uint8(c.G>>8), uint8(c.B>>8))
				case color.Gray16:
					v := uint8(c.Y >> 8)
					put(v, v, v)
				case color.NRGBA:
					put(c.R, c.G, c.B)
				default: // a palette entry, YCbCr, or RGBA64 of an opaque image
					n := color.NRGBAModel.Convert(c).(color.NRGBA)
					put(n.R, n.G, n.B)
				}
			}
		}
	}
}

// webpFancyRGB is libwebp's fancy upsampler (EmitFancyRGB, UpsampleRgbLinePair) and YUV-to-RGB transform
// (VP8YUVToR/G/B) over 4:2:0 planes: each pair of luma rows between two chroma rows takes the chroma
// interpolated 9:3:3:1, the first row and an even height's last row the nearest chroma row.
func webpFancyRGB(yp, up, vp []byte, ys, cs int, out *decodedImage) {
	w, h := out.w, out.h
	line := func(topY, botY []byte, tu, tv, cu, cv []byte, topDst, botDst []byte) {
		put := func(dst []byte, x int, y, u, v int) {
			dst[3*x], dst[3*x+1], dst[3*x+2] = webpYUVToRGB(y, u, v)
		}
		lastPair := (w - 1) >> 1
		tlU, tlV, lU, lV := int(tu[0]), int(tv[0]), int(cu[0]), int(cv[0])
		put(topDst, 0, int(topY[0]), (3*tlU+lU+2)>>2, (3*tlV+lV+2)>>2)
		if botY != nil {
			put(botDst, 0, int(botY[0]), (3*lU+tlU+2)>>2, (3*lV+tlV+2)>>2)
		}
		for x := 1; x <= lastPair; x++ {
			tU, tV, u, v := int(tu[x]), int(tv[x]), int(cu[x]), int(cv[x])
			avgU, avgV := tlU+tU+lU+u+8, tlV+tV+lV+v+8
			d12U, d12V := (avgU+2*(tU+lU))>>3, (avgV+2*(tV+lV))>>3
			d03U, d03V := (avgU+2*(tlU+u))>>3, (avgV+2*(tlV+v))>>3
			put(topDst, 2*x-1, int(topY[2*x-1]), (d12U+tlU)>>1, (d12V+tlV)>>1)
			put(topDst, 2*x, int(topY[2*x]), (d03U+tU)>>1, (d03V+tV)>>1)
			if botY != nil {
				put(botDst, 2*x-1, int(botY[2*x-1]), (d03U+lU)>>1, (d03V+lV)>>1)
				put(botDst, 2*x, int(botY[2*x]), (d12U+u)>>1, (d12V+v)>>1)
			}
			tlU, tlV, lU, lV = tU, tV, u, v
		}
		if w&1 == 0 {
			put(topDst, w-1, int(topY[w-1]), (3*tlU+lU+2)>>2, (3*tlV+lV+2)>>2)
			if botY != nil {
				put(botDst, w-1, int(botY[w-1]), (3*lU+tlU+2)>>2, (3*lV+tlV+2)>>2)
			}
		}
	}
	row := func(y int) []byte { return yp[y*ys : y*ys+w] }
	crow := func(p []byte, c int) []byte { return p[c*cs:] }
	dst := func(y int) []byte { return out.pix[3*w*y : 3*w*(y+1)] }
	line(row(0), nil, crow(up, 0), crow(vp, 0), crow(up, 0), crow(vp, 0), dst(0), nil)
	for y := 1; y+1 < h; y += 2 {
		c := (y + 1) / 2
		line(row(y), row(y+1), crow(up, c-1), crow(vp, c-1), crow(up, c), crow(vp, c), dst(y), dst(y+1))
	}
	if h > 1 && h&1 == 0 {
		c := (h - 1) / 2
		line(row(h-1), nil, crow(up, c), crow(vp, c), crow(up, c), crow(vp, c), dst(h-1), nil)
	}
}

// webpYUVToRGB is libwebp's VP8YUVToR/G/B: BT.601 with 14-bit fixed-point coefficients.
func webpYUVToRGB(y, u, v int) (byte, byte, byte) {
	mult := func(a, coeff int) int { return (a * coeff) >> 8 }
	clip := func(a int) byte {
		if a&^((256<<6)-1) == 0 {
			return byte(a >> 6)
		}
		if a < 0 {
			return 0
		}
		return 255
	}
	r := clip(mult(y, 19077) + mult(v, 26149) - 14234)
	g := clip(mult(y, 19077) - mult(u, 6419) - mult(v, 13320) + 8708)
	b := clip(mult(y, 19077) + mult(u, 33050) - 17685)
	return r, g, b
}
