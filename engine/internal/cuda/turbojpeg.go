package cuda

/*
#include <stdlib.h>
#include "turbojpeg_shim.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"github.com/ferry-ml/ferry/engine/internal/cenv"
)

// DefaultTurboJPEGLibrary is the TurboJPEG library loaded unless FERRY_TURBOJPEG_LIBRARY names another
// (Debian and Ubuntu: the libturbojpeg0 package).
const DefaultTurboJPEGLibrary = "libturbojpeg.so.0"

// ErrTurboJPEGNotLoaded is wrapped by every error that comes from TurboJPEG being unavailable.
var ErrTurboJPEGNotLoaded = errors.New("TurboJPEG (libjpeg-turbo) not available")

type tjLoadError struct{ msg string }

func (e *tjLoadError) Error() string { return e.msg }
func (e *tjLoadError) Unwrap() error { return ErrTurboJPEGNotLoaded }

var (
	tjOnce sync.Once
	tjErr  error
	// tjHandles are idle decompressors: each is used by one goroutine at a time, and kept for the next.
	tjHandles = make(chan unsafe.Pointer, 256)
)

// LoadTurboJPEG loads TurboJPEG once per process; later calls return the first result.
func LoadTurboJPEG() error {
	tjOnce.Do(func() {
		cenv.Sync()
		path := os.Getenv("FERRY_TURBOJPEG_LIBRARY")
		if path == "" {
			path = DefaultTurboJPEGLibrary
		}
		cpath := C.CString(path)
		defer C.free(unsafe.Pointer(cpath))
		var buf [512]C.char
		if C.ferry_tj_load(cpath, &buf[0], C.size_t(len(buf))) != 0 {
			tjErr = &tjLoadError{msg: C.GoString(&buf[0]) + " (install libjpeg-turbo's TurboJPEG library, e.g. the libturbojpeg0 package, or set FERRY_TURBOJPEG_LIBRARY)"}
		}
	})
	return tjErr
}

// JPEG colorspaces TurboJPEG reports.
const (
	JPEGColorCMYK = int(C.FERRY_TJCS_CMYK)
	JPEGColorYCCK = int(C.FERRY_TJCS_YCCK)
)

// JPEG pixel formats a decode writes.
const (
	JPEGPixelRGB  = int(C.FERRY_TJPF_RGB)
	JPEGPixelGray = int(C.FERRY_TJPF_GRAY)
	JPEGPixelCMYK = int(C.FERRY_TJPF_CMYK)
)

// JPEGHeader is what a JPEG's header says.
type JPEGHeader struct {
	Width, Height, Subsampling, Colorspace int
}

func tjHandle() (unsafe.Pointer, error) {
	if err := LoadTurboJPEG(); err != nil {
		return nil, err
	}
	select {
	case h := <-tjHandles:
		return h, nil
	default:
	}
	h := C.ferry_tj_init()
	if h == nil {
		return nil, errors.New("tjInitDecompress failed")
	}
	return h, nil
}

// tjRelease keeps a decompressor for later, or destroys it when enough are idle.
func tjRelease(h unsafe.Pointer) {
	select {
	case tjHandles <- h:
	default:
		C.ferry_tj_destroy(h)
	}
}

// ReadJPEGHeader reads a JPEG's dimensions and colorspace.
func ReadJPEGHeader(data []byte) (JPEGHeader, error) {
	if len(data) == 0 {
		return JPEGHeader{}, errors.New("no JPEG data")
	}
	h, err := tjHandle()
	if err != nil {
		return JPEGHeader{}, err
	}
	var w, ht, ss, cs C.int
	var buf [256]C.char
	if C.ferry_tj_header(h, (*C.uchar)(unsafe.Pointer(&data[0])), C.ulong(len(data)), &w, &ht, &ss, &cs, &buf[0], C.size_t(len(buf))) != 0 {
		C.ferry_tj_destroy(h) // a failed call may leave the decompressor unfit for the next file
		return JPEGHeader{}, fmt.Errorf("reading the JPEG header: %s", C.GoString(&buf[0]))
	}
	tjRelease(h)
	return JPEGHeader{Width: int(w), Height: int(ht), Subsampling: int(ss), Colorspace: int(cs)}, nil
}

// DecodeJPEG decodes data into dst, height rows of width pixels of the format (JPEGPixel*), with the
// accurate IDCT and fancy upsampling (libjpeg's defaults, as PIL decodes); a warning (a truncated or
// corrupt file) is an error.
func DecodeJPEG(data, dst []byte, width, height, format int) error {
	if len(data) == 0 || len(dst) == 0 {
		return errors.New("no JPEG data or no destination")
	}
	h, err := tjHandle()
	if err != nil {
		return err
	}
	var buf [256]C.char
	flags := C.int(C.FERRY_TJFLAG_ACCURATEDCT | C.FERRY_TJFLAG_STOPONWARNING)
	if C.ferry_tj_decompress(h, (*C.uchar)(unsafe.Pointer(&data[0])), C.ulong(len(data)), (*C.uchar)(unsafe.Pointer(&dst[0])),
		C.int(width), 0, C.int(height), C.int(format), flags, &buf[0], C.size_t(len(buf))) != 0 {
		C.ferry_tj_destroy(h)
		return fmt.Errorf("decoding the JPEG: %s", C.GoString(&buf[0]))
	}
	tjRelease(h)
	return nil
}

// DecodeJPEGPlanes decodes data to its components' samples as stored, before upsampling and color
// conversion: planes[c] for each component (one for gray, three for YCbCr), rows strides[c] bytes apart,
// each plane of the size the header's sampling gives (TurboJPEG's tjPlaneWidth and tjPlaneHeight).
func DecodeJPEGPlanes(data []byte, planes [][]byte, strides []int, width, height int) error {
	if len(data) == 0 || len(planes) == 0 || len(planes) != len(strides) || len(planes) > 3 {
		return errors.New("no JPEG data, or planes and strides that do not match")
	}
	h, err := tjHandle()
	if err != nil {
		return err
	}
	// The plane pointers live in C memory; the planes stay in Go memory, pinned for the call.
	ptrs := (*[3]*C.uchar)(C.malloc(3 * C.size_t(unsafe.Sizeof(uintptr(0)))))
	defer C.free(unsafe.Pointer(ptrs))
	var cstrides [3]C.int
	var pin runtime.Pinner
	defer pin.Unpin()
	for c := range planes {
		pin.Pin(&planes[c][0])
		ptrs[c] = (*C.uchar)(unsafe.Pointer(&planes[c][0]))
		cstrides[c] = C.int(strides[c])
	}
	var buf [256]C.char
	flags := C.int(C.FERRY_TJFLAG_ACCURATEDCT | C.FERRY_TJFLAG_STOPONWARNING)
	if C.ferry_tj_decompress_planes(h, (*C.uchar)(unsafe.Pointer(&data[0])), C.ulong(len(data)), &ptrs[0], C.int(width),
		&cstrides[0], C.int(height), flags, &buf[0], C.size_t(len(buf))) != 0 {
		C.ferry_tj_destroy(h)
		return fmt.Errorf("decoding the JPEG to planes: %s", C.GoString(&buf[0]))
	}
	tjRelease(h)
	return nil
}
