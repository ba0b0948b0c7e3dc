package data

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferry-ml/ferry/engine/internal/cuda"
)

// yccRGB is the host reference of the ferry_ycc_rgb kernel (kernels/ycc.cu): planar Y, Cb, Cr as decoded
// (chroma at its subsampled size) to interleaved RGB as libjpeg makes it by default.
func yccRGB(yp, cbp, crp []byte, yPitch, cPitch, w, h, cw, ch, hs, vs int, gray bool) []byte {
	out := make([]byte, 3*w*h)
	chroma := func(plane []byte, x, y int) int {
		switch {
		case hs == 1 && vs == 1:
			return int(plane[y*cPitch+x])
		case vs == 1:
			row, c := plane[y*cPitch:], x>>1
			if x&1 == 0 {
				if c == 0 {
					return int(row[0])
				}
				return (int(row[c])*3 + int(row[c-1]) + 1) >> 2
			}
			if c == cw-1 {
				return int(row[c])
			}
			return (int(row[c])*3 + int(row[c+1]) + 2) >> 2
		}
		r := y >> 1
		f := min(r+1, ch-1)
		if y&1 == 0 {
			f = max(r-1, 0)
		}
		near, far, c := plane[r*cPitch:], plane[f*cPitch:], x>>1
		sum := func(k int) int { return int(near[k])*3 + int(far[k]) }
		if x&1 == 0 {
			if c == 0 {
				return (sum(0)*4 + 8) >> 4
			}
			return (sum(c)*3 + sum(c-1) + 8) >> 4
		}
		if c == cw-1 {
			return (sum(c)*4 + 7) >> 4
		}
		return (sum(c)*3 + sum(c+1) + 7) >> 4
	}
	clamp := func(v int) byte { return byte(min(max(v, 0), 255)) }
	for y := range h {
		for x := range w {
			l := int(yp[y*yPitch+x])
			o := out[3*(y*w+x):]
			if gray {
				o[0], o[1], o[2] = byte(l), byte(l), byte(l)
				continue
			}
			cb, cr := chroma(cbp, x, y)-128, chroma(crp, x, y)-128
			o[0] = clamp(l + ((91881*cr + 32768) >> 16))
			o[1] = clamp(l + ((-22554*cb + 32768 - 46802*cr) >> 16))
			o[2] = clamp(l + ((116130*cb + 32768) >> 16))
		}
	}
	return out
}

// TestYCCReferenceIsLibjpeg: the GPU path's color step (the kernel's host reference), applied to the
// components as libjpeg-turbo decodes them, gives libjpeg-turbo's own RGB, byte for byte, for every JPEG
// fixture nvJPEG decodes (4:4:4, 4:2:2, 4:2:0, gray; even and odd sizes). With nvJPEG's IDCT equal to
// libjpeg's, the GPU path then decodes as Pillow does.
func TestYCCReferenceIsLibjpeg(t *testing.T) {
	if err := cuda.LoadTurboJPEG(); err != nil {
		t.Skipf("TurboJPEG: %v", err)
	}
	paths, err := filepath.Glob(filepath.Join("testdata", "images", "*.jpg"))
	require.NoError(t, err)
	checked := map[[2]int]int{}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		require.NoError(t, err)
		info, err := parseJPEGHeader(data)
		require.NoError(t, err)
		if !info.nvjpegFits() {
			continue
		}
		w, h := info.w, info.h
		hs, vs := info.sampling[0][0], info.sampling[0][1]
		pad := func(n, m int) int { return (n + m - 1) / m * m }
		yw, yh := pad(w, hs), pad(h, vs)
		cw, ch := yw/hs, yh/vs
		planes, strides := [][]byte{make([]byte, yw*yh)}, []int{yw}
		if info.comps == 3 {
			planes = append(planes, make([]byte, cw*ch), make([]byte, cw*ch))
			strides = append(strides, cw, cw)
		}
		require.NoError(t, cuda.DecodeJPEGPlanes(data, planes, strides, w, h), p)
		var got []byte
		if info.comps == 1 {
			got = yccRGB(planes[0], nil, nil, yw, 0, w, h, 0, 0, 1, 1, true)
		} else {
			got = yccRGB(planes[0], planes[1], planes[2], yw, cw, w, h, cw, ch, hs, vs, false)
		}
		var d decodedImage
		require.NoError(t, decodeImage(data, DefaultMaxPixels, &d))
		require.Equal(t, d.pix, got, "%s (%d x %d, sampling %dx%d)", p, w, h, hs, vs)
		checked[[2]int{hs, vs}]++
	}
	t.Logf("checked per sampling: %v", checked)
	require.Positive(t, checked[[2]int{2, 2}], "4:2:0")
	require.Positive(t, checked[[2]int{2, 1}], "4:2:2")
	require.Positive(t, checked[[2]int{1, 1}], "4:4:4 and gray")
}
