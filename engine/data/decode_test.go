package data

import (
	"errors"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/cuda"
)

// comparePillow decodes path with ferry and compares it with what Pillow decoded from the same file
// (path's .pillow.png): the largest and the mean absolute difference per channel.
func comparePillow(t *testing.T, path string) (worst int, mean float64) {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var d decodedImage
	require.NoError(t, decodeImage(data, DefaultMaxPixels, &d), path)
	f, err := os.Open(strings.TrimSuffix(path, filepath.Ext(path)) + ".pillow.png")
	require.NoError(t, err)
	ref, err := png.Decode(f)
	require.NoError(t, f.Close())
	require.NoError(t, err)
	b := ref.Bounds()
	require.Equal(t, [2]int{b.Dx(), b.Dy()}, [2]int{d.w, d.h}, path)
	sum := 0
	for y := range d.h {
		for x := range d.w {
			r, g, bl, _ := ref.At(x, y).RGBA()
			for k, v := range []uint32{r >> 8, g >> 8, bl >> 8} {
				diff := int(v) - int(d.pix[3*(y*d.w+x)+k])
				worst = max(worst, diff, -diff)
				sum += max(diff, -diff)
			}
		}
	}
	mean = float64(sum) / float64(3*d.w*d.h)
	t.Logf("%s: largest difference %d, mean %.4f", filepath.Base(path), worst, mean)
	return worst, mean
}

// TestDecodeMatchesPillow decodes every JPEG of testdata/images (photographs encoded by Pillow: qualities,
// 4:2:0, 4:2:2 and 4:4:4 chroma, progressive, grayscale, CMYK) and compares with what Pillow decoded from
// the same file, Image.open(f).convert("RGB"): every pixel within 1, and the mean difference under 0.05.
func TestDecodeMatchesPillow(t *testing.T) {
	if err := cuda.LoadTurboJPEG(); err != nil {
		t.Skipf("no TurboJPEG here: %v", err)
	}
	paths, err := filepath.Glob(filepath.Join("testdata", "images", "*.jpg"))
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(paths), 24)
	for _, p := range paths {
		worst, mean := comparePillow(t, p)
		require.LessOrEqual(t, worst, 1, p)
		require.Less(t, mean, 0.05, p)
	}
}

// TestDecodeOtherFormatsMatchPillow: the other formats Pillow wrote (PNG with alpha and with a palette,
// BMP, TIFF raw and LZW, WebP lossless and lossy, the latter also at odd sizes, PPM, PGM) decode exactly as
// Pillow decodes them.
func TestDecodeOtherFormatsMatchPillow(t *testing.T) {
	for _, name := range []string{"astronaut_png_rgba.png", "astronaut_png_palette.png", "astronaut_bmp.bmp",
		"astronaut_tiff_raw.tif", "astronaut_tiff_lzw.tif", "astronaut_webp_lossless.webp", "astronaut_webp_lossy.webp",
		"chelsea_webp_lossy.webp", "astronaut_ppm.ppm", "astronaut_pgm.pgm"} {
		worst, _ := comparePillow(t, filepath.Join("testdata", "images", name))
		require.Zero(t, worst, name)
	}
}

// FuzzDecodeImage decodes arbitrary bytes: a refusal is a typed error (never a crash), and a success
// fills exactly the image's pixels.
func FuzzDecodeImage(f *testing.F) {
	paths, _ := filepath.Glob(filepath.Join("testdata", "images", "*_q90_420.jpg"))
	for _, p := range paths[:min(2, len(paths))] {
		b, err := os.ReadFile(p)
		require.NoError(f, err)
		f.Add(b)
	}
	f.Add([]byte("\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00\x00\x02\x00\x00\x00\x02\x08\x02\x00\x00\x00"))
	f.Add([]byte("P6 2 1 255\n\x01\x02\x03\x04\x05\x06"))
	f.Add([]byte("BM"))
	f.Add([]byte("RIFF\x00\x00\x00\x00WEBPVP8 "))
	f.Add([]byte("II*\x00\x08\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var d decodedImage
		err := decodeImage(b, 1<<20, &d)
		if err != nil {
			require.True(t, errors.Is(err, engine.ErrFormat) || errors.Is(err, engine.ErrLimit) || errors.Is(err, engine.ErrNoDevice), "%v", err)
			return
		}
		require.Equal(t, 3*d.w*d.h, len(d.pix))
		require.LessOrEqual(t, d.w*d.h, 1<<20)
	})
}

// TestJPEGHeaderRoutes: the header parser sizes every JPEG fixture as TurboJPEG does, and sends to nvJPEG
// exactly the baseline gray and YCbCr files of the subsamplings its hardware decoder takes.
func TestJPEGHeaderRoutes(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join("testdata", "images", "*.jpg"))
	require.NoError(t, err)
	require.NotEmpty(t, paths)
	for _, p := range paths {
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		info, err := parseJPEGHeader(b)
		require.NoError(t, err, p)
		var d decodedImage
		if decodeImage(b, DefaultMaxPixels, &d) == nil {
			require.Equal(t, [2]int{d.w, d.h}, [2]int{info.w, info.h}, p)
		}
		base := filepath.Base(p)
		want := !strings.Contains(base, "progressive") && !strings.Contains(base, "cmyk")
		require.Equal(t, want, info.nvjpegFits(), "%s: %+v", p, info)
	}
	good, err := os.ReadFile(paths[0])
	require.NoError(t, err)
	for name, bad := range map[string][]byte{
		"empty":       nil,
		"no SOI":      []byte("\x00\x01\x02\x03"),
		"cut":         good[:20],
		"long length": append(append([]byte(nil), good[:4]...), 0xFF, 0xFF),
		"EOI first":   []byte("\xFF\xD8\xFF\xD9"),
	} {
		_, err := parseJPEGHeader(bad)
		require.ErrorIs(t, err, engine.ErrFormat, name)
	}
}

func FuzzJPEGHeader(f *testing.F) {
	paths, _ := filepath.Glob(filepath.Join("testdata", "images", "*.jpg"))
	for _, p := range paths[:min(3, len(paths))] {
		b, err := os.ReadFile(p)
		require.NoError(f, err)
		f.Add(b[:min(len(b), 2048)])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := parseJPEGHeader(b)
		if err != nil {
			require.ErrorIs(t, err, engine.ErrFormat)
			return
		}
		require.Positive(t, info.w)
		require.Positive(t, info.h)
		require.True(t, info.comps >= 1 && info.comps <= 4)
		_ = info.nvjpegFits()
	})
}
