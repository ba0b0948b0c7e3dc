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
// BMP, TIFF raw and LZW, WebP lossless and lossy, the latter also at odd sizes, PPM, PGM) and the Netpbm
// encodings the generator wrote itself (plain, 16-bit, odd maxima, bitmaps) decode exactly as Pillow
// decodes them.
func TestDecodeOtherFormatsMatchPillow(t *testing.T) {
	for _, name := range []string{"astronaut_png_rgba.png", "astronaut_png_palette.png", "astronaut_bmp.bmp",
		"astronaut_tiff_raw.tif", "astronaut_tiff_lzw.tif", "astronaut_webp_lossless.webp", "astronaut_webp_lossy.webp",
		"chelsea_webp_lossy.webp", "astronaut_ppm.ppm", "astronaut_pgm.pgm", "astronaut_pbm_plain.pbm",
		"astronaut_pbm_raw.pbm", "astronaut_pgm_plain_max100.pgm", "astronaut_pgm_plain_max300.pgm",
		"astronaut_pgm_raw16_max65535.pgm", "astronaut_ppm_plain_max1000.ppm", "astronaut_ppm_raw16_max4095.ppm",
		"astronaut_ppm_raw16_max65535.ppm"} {
		worst, _ := comparePillow(t, filepath.Join("testdata", "images", name))
		require.Zero(t, worst, name)
	}
}

// TestDecodePNMEdges: samples Pillow 13.0.0 decoded from these small Netpbm files (Image.open(f).
// convert("RGB")), as gray values or RGB triples, and the files it refuses.
func TestDecodePNMEdges(t *testing.T) {
	gray := func(v ...byte) []byte {
		var out []byte
		for _, g := range v {
			out = append(out, g, g, g)
		}
		return out
	}
	for _, c := range []struct {
		file string
		want []byte
	}{
		{"P5\n7 1\n100\n\x00\x01\x02\x03\x32\x63\x64", gray(0, 3, 5, 8, 128, 252, 255)},
		{"P5\n3 1\n100\n\x1e\x46\x32", gray(76, 178, 128)}, // halves, rounded to even in floating point
		{"P6\n2 1\n65535\n\x00\xff\x00\x80\x01\x7f\xff\xff\x7f\xff\x80\x00", []byte{1, 0, 1, 255, 127, 128}},
		{"P2\n7 1\n100\n0 1 2 3 50 99 100", gray(0, 3, 5, 8, 128, 252, 255)},
		{"P6\n2 1\n1000\n\x00\x01\x00\x02\x00\x03\x01\xf4\x03\xe8\x00\x04", []byte{0, 1, 1, 128, 255, 1}},
		{"P3\n2 1\n65535\n1 255 256 65535 32768 4660\n", []byte{0, 1, 1, 255, 128, 18}},
		{"P2\n3 1\n1000\n1 3 4\n", gray(66, 197, 255)},
		{"P5\n3 1\n300\n\x00\x01\x00\x02\x00\x03", gray(218, 255, 255)},
		{"P2\n# c\n3 1 # x\n255\n1 # mid\n 2 3\n", gray(1, 2, 3)},
		{"P1\n3 2\n010\n1 1 0\n", gray(255, 0, 255, 0, 0, 255)},
		{"P4\n10 2\n\x80\x40\x00\xc0", gray(0, 255, 255, 255, 255, 255, 255, 255, 255, 0, 255, 255, 255, 255, 255, 255, 255, 255, 0, 0)},
		{"P3\n1 1\n1\n1 0 1\n", []byte{255, 0, 255}},
		{"P5\n2 1\n100\n\xc8\x65", gray(255, 255)},                       // raw samples above the maximum: clipped
		{"P6\n1 1\n1000\n\xff\xff\x03\xe9\x00\x00", []byte{255, 255, 0}}, // 16-bit too
	} {
		var d decodedImage
		require.NoError(t, decodeImage([]byte(c.file), 1<<20, &d), "%q", c.file)
		require.Equal(t, c.want, d.pix, "%q", c.file)
	}
	for _, c := range []struct{ file, msg string }{
		{"P2\n2 1\n100\n200 101\n", "sample 0 is 200, above the maximum 100"},
		{"P2\n2 1\n100\n1\n", "1 of 2 samples"},
		{"P1\n2 1\n1\n", "1 of 2 pixels"},
		{"P1\n2 1\n1 2\n", "1 of 2 pixels"},
		{"P5\n2 1\n0\n\x00\x00", "maximum 0"},
		{"P5\n2 1\n65536\n\x00\x00\x00\x00", "maximum 65536"},
		{"P6\n2 1\n1000\n\x00\x01", "2 bytes of samples, 12 expected"},
		{"P4\n9 2\n\x00\x00\x00", "3 bytes of pixels, 4 expected"},
		{"P3\n1 1", "header"},
		{"P2\n1 1\n255\n1234567890", "0 of 1 samples"},
	} {
		var d decodedImage
		err := decodeImage([]byte(c.file), 1<<20, &d)
		require.ErrorIs(t, err, engine.ErrFormat, "%q", c.file)
		require.ErrorContains(t, err, c.msg, "%q", c.file)
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
	f.Add([]byte("P3 1 1 1000 # c\n1 2 3\n"))
	f.Add([]byte("P4 9 1\n\xff\x80"))
	f.Add([]byte("P1 2 1 01"))
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
