package data

import (
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferry-ml/ferry/engine/internal/cuda"
)

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
	var d decodedImage
	for _, p := range paths {
		data, err := os.ReadFile(p)
		require.NoError(t, err)
		require.NoError(t, decodeImage(data, DefaultMaxPixels, &d), p)
		f, err := os.Open(strings.TrimSuffix(p, ".jpg") + ".pillow.png")
		require.NoError(t, err)
		ref, err := png.Decode(f)
		require.NoError(t, f.Close())
		require.NoError(t, err)
		b := ref.Bounds()
		require.Equal(t, [2]int{b.Dx(), b.Dy()}, [2]int{d.w, d.h}, p)
		worst, sum := 0, 0
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
		mean := float64(sum) / float64(3*d.w*d.h)
		t.Logf("%s: largest difference %d, mean %.4f", filepath.Base(p), worst, mean)
		require.LessOrEqual(t, worst, 1, p)
		require.Less(t, mean, 0.05, p)
	}
}
