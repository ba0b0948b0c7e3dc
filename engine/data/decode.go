package data

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"

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
var errNotImage = errors.New("not a JPEG or PNG image")

// decodeImage decodes a JPEG (TurboJPEG: the accurate IDCT and fancy upsampling, libjpeg's defaults, as
// PIL decodes) or a PNG (image/png) to RGB as PIL's convert("RGB") makes it: gray replicated, alpha
// dropped, a palette looked up, 16-bit samples cut to their high byte, CMYK converted as PIL converts it.
// An image of more than maxPixels pixels, a truncated or corrupt file, and any other format are errors.
func decodeImage(data []byte, maxPixels int, out *decodedImage) error {
	switch {
	case len(data) >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF:
		return decodeJPEG(data, maxPixels, out)
	case len(data) >= 8 && bytes.Equal(data[:8], []byte("\x89PNG\r\n\x1a\n")):
		return decodePNG(data, maxPixels, out)
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

func decodePNG(data []byte, maxPixels int, out *decodedImage) error {
	cfg, err := png.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("%w: reading the PNG header: %w", engine.ErrFormat, err)
	}
	if err := out.size(cfg.Width, cfg.Height, maxPixels); err != nil {
		return err
	}
	img, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("%w: decoding the PNG: %w", engine.ErrFormat, err)
	}
	b := img.Bounds()
	p := 0
	put := func(r, g, bl uint8) {
		out.pix[p], out.pix[p+1], out.pix[p+2] = r, g, bl
		p += 3
	}
	switch m := img.(type) {
	case *image.Gray:
		for _, v := range m.Pix {
			put(v, v, v)
		}
	case *image.NRGBA:
		for i := 0; i < len(m.Pix); i += 4 {
			put(m.Pix[i], m.Pix[i+1], m.Pix[i+2])
		}
	case *image.RGBA: // an opaque RGB PNG
		for i := 0; i < len(m.Pix); i += 4 {
			put(m.Pix[i], m.Pix[i+1], m.Pix[i+2])
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
				default: // a palette entry, or RGBA64 of an opaque image
					n := color.NRGBAModel.Convert(c).(color.NRGBA)
					put(n.R, n.G, n.B)
				}
			}
		}
	}
	return nil
}
