package data

import (
	"encoding/binary"
	"fmt"

	"github.com/ferry-ml/ferry/engine"
)

// jpegInfo is what a JPEG's markers before its first scan say: enough to size the decoded image, refuse
// one too large, and pick a decoder.
type jpegInfo struct {
	w, h      int
	sof       byte // the frame marker: 0xC0 baseline, 0xC1 extended, 0xC2 progressive, ...
	precision int
	comps     int
	sampling  [4][2]int // per component: horizontal, vertical sampling factor
	ids       [4]byte
	adobe     bool // an APP14 "Adobe" marker
	transform int  // its color transform: 0 none (RGB or CMYK), 1 YCbCr, 2 YCCK
	scanComps int  // components in the first scan
}

// parseJPEGHeader reads the markers of a JPEG up to its first scan (SOS). It never reads past data and
// refuses what is not a JPEG frame ferry can size: no SOI, a marker segment running past the end, no
// frame before the scan, a zero or DNL-defined height.
func parseJPEGHeader(data []byte) (jpegInfo, error) {
	var info jpegInfo
	bad := func(format string, args ...any) (jpegInfo, error) {
		return jpegInfo{}, fmt.Errorf("%w: JPEG header: %s", engine.ErrFormat, fmt.Sprintf(format, args...))
	}
	if len(data) < 4 || data[0] != 0xFF || data[1] != 0xD8 {
		return bad("no start-of-image marker")
	}
	i := 2
	for {
		// A marker: 0xFF, any number of 0xFF fill bytes, then the code.
		if i >= len(data) || data[i] != 0xFF {
			return bad("expected a marker at byte %d", i)
		}
		for i < len(data) && data[i] == 0xFF {
			i++
		}
		if i >= len(data) {
			return bad("the file ends inside a marker")
		}
		m := data[i]
		i++
		switch {
		case m == 0xD9:
			return bad("end of image before any scan")
		case m == 0x01 || (m >= 0xD0 && m <= 0xD7):
			continue // standalone markers
		}
		if i+2 > len(data) {
			return bad("the file ends inside marker 0x%02X's length", m)
		}
		n := int(binary.BigEndian.Uint16(data[i:]))
		if n < 2 || i+n > len(data) {
			return bad("marker 0x%02X's segment of %d bytes runs past the end (%d bytes)", m, n, len(data))
		}
		seg := data[i+2 : i+n]
		i += n
		switch {
		case m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC:
			if info.comps != 0 {
				return bad("two frame headers")
			}
			if len(seg) < 6 {
				return bad("a frame header of %d bytes", len(seg))
			}
			info.sof, info.precision = m, int(seg[0])
			info.h, info.w = int(binary.BigEndian.Uint16(seg[1:])), int(binary.BigEndian.Uint16(seg[3:]))
			info.comps = int(seg[5])
			if info.comps < 1 || info.comps > 4 || len(seg) < 6+3*info.comps {
				return bad("a frame of %d components in %d bytes", info.comps, len(seg))
			}
			for c := range info.comps {
				info.ids[c] = seg[6+3*c]
				hv := seg[7+3*c]
				info.sampling[c] = [2]int{int(hv >> 4), int(hv & 15)}
				if info.sampling[c][0] < 1 || info.sampling[c][0] > 4 || info.sampling[c][1] < 1 || info.sampling[c][1] > 4 {
					return bad("component %d's sampling factors %dx%d", c, info.sampling[c][0], info.sampling[c][1])
				}
			}
			if info.w == 0 || info.h == 0 {
				return bad("a %d x %d frame (a height defined later, by a DNL marker, is not supported)", info.w, info.h)
			}
		case m == 0xEE && len(seg) >= 12 && string(seg[:5]) == "Adobe":
			info.adobe, info.transform = true, int(seg[11])
		case m == 0xDA:
			if info.comps == 0 {
				return bad("a scan before the frame header")
			}
			if len(seg) < 1 {
				return bad("an empty scan header")
			}
			info.scanComps = int(seg[0])
			return info, nil
		}
	}
}

// nvjpegFits reports whether nvJPEG decodes the image as the CPU path does, in one batched call: a
// baseline 8-bit frame, one interleaved scan of every component, gray or YCbCr (not RGB, CMYK or YCCK
// as stored), and a chroma subsampling that the hardware decoder takes and the color kernel upsamples as
// libjpeg does (4:4:4, 4:2:2, 4:2:0).
func (j jpegInfo) nvjpegFits() bool {
	if j.sof != 0xC0 || j.precision != 8 || j.scanComps != j.comps {
		return false
	}
	switch j.comps {
	case 1:
		return true
	case 3:
		if j.adobe && j.transform != 1 {
			return false
		}
		if !j.adobe && j.ids == [4]byte{'R', 'G', 'B'} {
			return false
		}
		if j.sampling[1] != [2]int{1, 1} || j.sampling[2] != [2]int{1, 1} {
			return false
		}
		switch j.sampling[0] {
		case [2]int{1, 1}, [2]int{2, 1}, [2]int{2, 2}:
			return true
		}
	}
	return false
}
