package data

import (
	"context"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/enginetest"
	"github.com/ferry-ml/ferry/engine/internal/testutil"
)

// sameSizeTree is a folder of the 96 x 96 test images in every format, and, when odd is set, one
// photograph of another size (chelsea, 101 x 95) as class "z".
func sameSizeTree(t *testing.T, odd bool) string {
	t.Helper()
	root := t.TempDir()
	files, err := filepath.Glob("testdata/images/astronaut_*")
	require.NoError(t, err)
	if odd {
		files = append(files, "testdata/images/chelsea_q90_420.jpg")
	}
	for _, f := range files {
		if strings.HasSuffix(f, ".pillow.png") {
			continue
		}
		class := "a"
		if strings.HasPrefix(filepath.Base(f), "chelsea") {
			class = "z"
		}
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		require.NoError(t, os.MkdirAll(filepath.Join(root, class), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(root, class, filepath.Base(f)), b, 0o644))
	}
	return root
}

// pillowPixels is what Pillow decoded from the test image name (its .pillow.png beside it).
func pillowPixels(t *testing.T, name string) []byte {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata/images", strings.TrimSuffix(name, filepath.Ext(name))+".pillow.png"))
	require.NoError(t, err)
	defer f.Close()
	img, err := png.Decode(f)
	require.NoError(t, err)
	b := img.Bounds()
	var pix []byte
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			pix = append(pix, byte(r>>8), byte(g>>8), byte(bl>>8))
		}
	}
	return pix
}

// TestDecodeImageThroughIterator: DecodeImage gives each image's pixels as Pillow decodes them (within 1
// for JPEG), an image of another size fails its batch naming the file, or is skipped.
func TestDecodeImageThroughIterator(t *testing.T) {
	e := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	src, err := NewImageFolderSource(sameSizeTree(t, true), ImageFolderConfig{})
	require.NoError(t, err)
	defer src.Close()
	tr := map[string]Transform{"image": DecodeImage{Height: 96, Width: 96}}
	it, err := NewIterator(e, src, IteratorOptions{BatchSize: src.Len() - 1, Transforms: tr})
	require.NoError(t, err)
	defer it.Close()
	require.Equal(t, []int{96, 96, 3}, it.Fields()[0].Shape)
	b, err := it.Next(context.Background(), 0)
	require.NoError(t, err)
	for k, i := range b.Indices {
		got := b.Fields[0].Host[k*96*96*3 : (k+1)*96*96*3]
		want := pillowPixels(t, filepath.Base(src.Path(i)))
		for j := range want {
			require.InDelta(t, int(want[j]), int(got[j]), 1, "%s byte %d", src.Path(i), j)
		}
	}
	require.NoError(t, b.Release(0))
	_, err = it.Next(context.Background(), 0)
	require.ErrorIs(t, err, engine.ErrFormat)
	require.Contains(t, err.Error(), "chelsea_q90_420.jpg")
	require.Contains(t, err.Error(), "101 x 95")

	skip, err := NewIterator(e, src, IteratorOptions{BatchSize: src.Len(), OnError: OnErrorSkip, Transforms: tr})
	require.NoError(t, err)
	defer skip.Close()
	b, err = skip.Next(context.Background(), 0)
	require.NoError(t, err)
	require.NoError(t, b.Release(0))
	require.GreaterOrEqual(t, skip.Stats().Skipped, uint64(1))

	for _, bad := range []DecodeImage{{}, {Height: 5}, {Height: 5, Width: 5, MaxPixels: -1}} {
		_, err := NewIterator(e, src, IteratorOptions{BatchSize: 2, Transforms: map[string]Transform{"image": bad}})
		require.ErrorIs(t, err, engine.ErrInvalidArgument, "%v", bad)
	}
	_, err = DecodeImage{Height: 2, Width: 2}.Outputs(Field{Name: "x", DType: Uint8, Shape: []int{2, 2, 3}})
	require.ErrorIs(t, err, engine.ErrInvalidArgument)
}

// TestDecodeImageGPU: on the GPU, DecodeImage writes each image into the batch (nvJPEG's within its IDCT's
// differences of the CPU path's, the others equal), into device memory poisoned first; a wrong size is
// named as on the CPU.
func TestDecodeImageGPU(t *testing.T) {
	testutil.RequireGPU(t)
	gpu, err := engine.Open(0, engine.WithSampleInterval(0))
	require.NoError(t, err)
	defer gpu.Close()
	cpu := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	src, err := NewImageFolderSource(sameSizeTree(t, false), ImageFolderConfig{})
	require.NoError(t, err)
	defer src.Close()
	nv := imageDecodersOf(gpu).nvjpeg()
	lockstep(t, gpu, cpu, src, IteratorOptions{BatchSize: 6, Shuffle: true, Seed: 1,
		Transforms: map[string]Transform{"image": DecodeImage{Height: 96, Width: 96}}}, func(idx []int, got, want [][]byte) {
		const per = 96 * 96 * 3
		for k, i := range idx {
			w, g := want[0][k*per:(k+1)*per], got[0][k*per:(k+1)*per]
			b, err := os.ReadFile(src.Path(i))
			require.NoError(t, err)
			info, err := parseJPEGHeader(b)
			if !nv || err != nil || !info.nvjpegFits() {
				require.Equal(t, w, g, src.Path(i))
				continue
			}
			requireNVJPEGClose(t, src.Path(i), per, func(j int) (float64, float64) { return float64(w[j]), float64(g[j]) })
		}
		require.Equal(t, want[1], got[1])
	})
	odd, err := NewImageFolderSource(sameSizeTree(t, true), ImageFolderConfig{})
	require.NoError(t, err)
	defer odd.Close()
	it, err := NewIterator(gpu, odd, IteratorOptions{BatchSize: odd.Len(), Transforms: map[string]Transform{"image": DecodeImage{Height: 96, Width: 96}}})
	require.NoError(t, err)
	defer it.Close()
	_, err = it.Next(context.Background(), 0)
	require.ErrorIs(t, err, engine.ErrFormat)
	require.Contains(t, err.Error(), "chelsea_q90_420.jpg", fmt.Sprint(err))
}
