package data

import (
	"fmt"
	"math"

	"github.com/ferry-ml/ferry/engine"
)

// decodePNM decodes the Netpbm formats as Pillow reads them and converts them to RGB: PBM (P1 plain, P4
// raw; a set bit is black), PGM (P2 plain, P5 raw) and PPM (P3 plain, P6 raw), with a maximum sample value
// of 1 to 65535 (raw samples take two bytes, big-endian, above 255). The header is the magic, the width,
// the height and (but for PBM) the maximum, separated by whitespace and comments, then one whitespace
// byte before raw samples. Samples become 8-bit as Pillow's convert("RGB") makes them:
//
//   - color, and gray up to a maximum of 255: v/max*255 in floating point, rounded half to even;
//   - gray above 255 (Pillow's 32-bit "I" mode, scaled to 65535): v/max*65535, rounded, clipped to 255.
//
// A raw sample above the maximum is clipped to 255, as Pillow clips it; a plain one is an error, as is a
// file that ends before its last sample.
func decodePNM(data []byte, maxPixels int, out *decodedImage) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: PNM (P%c): %s", engine.ErrFormat, data[1], fmt.Sprintf(format, a...))
	}
	kind := data[1] - '0'
	bitmap := kind == 1 || kind == 4
	plain := kind <= 3
	channels := 1
	if kind == 3 || kind == 6 {
		channels = 3
	}
	p := pnmReader{data: data, pos: 2}
	nums := [3]int{0, 0, 1}
	for k := range nums {
		if bitmap && k == 2 {
			break
		}
		v, ok := p.number()
		if !ok {
			return bad("the header is cut short or not decimal")
		}
		nums[k] = v
	}
	maxVal := nums[2]
	if maxVal < 1 || maxVal > 65535 {
		return bad("maximum %d: it must be 1 to 65535", maxVal)
	}
	if err := out.size(nums[0], nums[1], maxPixels); err != nil {
		return err
	}
	// Each sample's 8-bit value, as Pillow computes it in floating point: round(v / max * out), rounded
	// half to even, out 255 (65535 for gray above 255, then clipped); a raw sample above the maximum: 255.
	var lut []byte
	if !bitmap {
		out := 255.0
		if channels == 1 && maxVal > 255 {
			out = 65535
		}
		lut = make([]byte, maxVal+1)
		for v := range lut {
			lut[v] = byte(min(255, math.RoundToEven(float64(v)/float64(maxVal)*out)))
		}
	}
	scale := func(v int) byte {
		if v > maxVal {
			return 255
		}
		return lut[v]
	}
	n := out.w * out.h * channels
	// The 8-bit samples go to the front of the RGB pixels; gray is spread to three channels after.
	samples := out.pix[:n]
	switch {
	case bitmap && plain:
		for i := range n {
			c, ok := p.bit()
			if !ok {
				return bad("%d of %d pixels before the end or a character other than 0 and 1", i, n)
			}
			samples[i] = 255 * (1 - c)
		}
	case bitmap:
		p.pos++ // the whitespace byte after the height
		row := (out.w + 7) / 8
		if len(data)-p.pos < row*out.h {
			return bad("%d bytes of pixels, %d expected (truncated?)", max(0, len(data)-p.pos), row*out.h)
		}
		for y := range out.h {
			bits := data[p.pos+y*row:]
			for x := range out.w {
				samples[y*out.w+x] = 255 * (1 - (bits[x/8]>>(7-x%8))&1)
			}
		}
	case plain:
		for i := range n {
			v, ok := p.number()
			if !ok {
				return bad("%d of %d samples before the end or a token that is not a decimal number", i, n)
			}
			if v > maxVal {
				return bad("sample %d is %d, above the maximum %d", i, v, maxVal)
			}
			samples[i] = scale(v)
		}
	default:
		p.pos++
		width := 1
		if maxVal > 255 {
			width = 2
		}
		if len(data)-p.pos < n*width {
			return bad("%d bytes of samples, %d expected (truncated?)", max(0, len(data)-p.pos), n*width)
		}
		src := data[p.pos:]
		for i := range n {
			v := int(src[i])
			if width == 2 {
				v = int(src[2*i])<<8 | int(src[2*i+1])
			}
			samples[i] = scale(v)
		}
	}
	if channels == 1 {
		for i := n - 1; i >= 0; i-- { // from the end: pixel i's three bytes start at or after sample i
			v := samples[i]
			out.pix[3*i], out.pix[3*i+1], out.pix[3*i+2] = v, v, v
		}
	}
	return nil
}

// pnmReader reads the whitespace-separated tokens of a Netpbm header and plain raster, skipping comments
// (from # to the end of the line) wherever whitespace may be.
type pnmReader struct {
	data []byte
	pos  int
}

func (p *pnmReader) skip() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case '#':
			for p.pos < len(p.data) && p.data[p.pos] != '\n' && p.data[p.pos] != '\r' {
				p.pos++
			}
		case ' ', '\t', '\n', '\r', '\v', '\f':
			p.pos++
		default:
			return
		}
	}
}

// number reads a decimal of at most 9 digits after whitespace and comments.
func (p *pnmReader) number() (int, bool) {
	p.skip()
	start, v := p.pos, 0
	for p.pos < len(p.data) && p.data[p.pos] >= '0' && p.data[p.pos] <= '9' && p.pos-start < 9 {
		v = v*10 + int(p.data[p.pos]-'0')
		p.pos++
	}
	if p.pos == start || (p.pos < len(p.data) && p.data[p.pos] >= '0' && p.data[p.pos] <= '9') {
		return 0, false
	}
	return v, true
}

// bit reads one pixel of a plain PBM: a 0 or a 1, with or without whitespace between pixels.
func (p *pnmReader) bit() (byte, bool) {
	p.skip()
	if p.pos >= len(p.data) || (p.data[p.pos] != '0' && p.data[p.pos] != '1') {
		return 0, false
	}
	p.pos++
	return p.data[p.pos-1] - '0', true
}
