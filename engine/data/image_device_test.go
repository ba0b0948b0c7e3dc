package data

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/enginetest"
	"github.com/ferry-ml/ferry/engine/internal/testutil"
)

// lockstep runs the same iterator over src on the GPU engine and on the CPU engine (the host reference)
// for one epoch and hands each pair of batches to check, with the GPU's read back from device memory
// that was poisoned first.
func lockstep(t *testing.T, gpu, cpu *engine.Engine, src Source, opts IteratorOptions, check func(indices []int, got, want [][]byte)) {
	t.Helper()
	poisonRing(t)
	g, err := NewIterator(gpu, src, opts)
	require.NoError(t, err)
	defer g.Close()
	staging, why := g.Staging()
	require.Equal(t, StagingGather, staging)
	require.Contains(t, why, "device arenas", "the crops run on the device")
	c, err := NewIterator(cpu, src, opts)
	require.NoError(t, err)
	defer c.Close()
	for {
		bg, err := g.Next(context.Background(), 0)
		if errors.Is(err, io.EOF) {
			_, err = c.Next(context.Background(), 0)
			require.ErrorIs(t, err, io.EOF)
			return
		}
		require.NoError(t, err)
		bc, err := c.Next(context.Background(), 0)
		require.NoError(t, err)
		require.Equal(t, bc.Indices, bg.Indices)
		check(bg.Indices, batchContents(t, gpu, bg), batchContents(t, cpu, bc))
		require.NoError(t, bg.Release(0))
		require.NoError(t, bc.Release(0))
	}
}

// TestCropKernelGPU: the crop kernel equals the host reference (to the output's rounding) on fresh random
// images, for both crops, every output type and layout, with and without antialiasing.
func TestCropKernelGPU(t *testing.T) {
	testutil.RequireGPU(t)
	gpu, err := engine.Open(0, engine.WithSampleInterval(0))
	require.NoError(t, err)
	defer gpu.Close()
	cpu := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	src, _ := randomMemorySource(t, 150, Field{Name: "image", DType: Uint8, Shape: []int{41, 67, 3}}, Field{Name: "label", DType: Int64})
	mean, std := []float32{0.485, 0.456, 0.406}, []float32{0.229, 0.224, 0.225}
	for _, d := range []DType{Float32, Float16, BFloat16} {
		for _, layout := range []ImageLayout{LayoutCHW, LayoutHWC} {
			for _, aa := range []bool{false, true} {
				for _, tr := range []Transform{
					RandomResizedCrop{Size: 24, Flip: 0.5, Mean: mean, Std: std, DType: d, Layout: layout, Antialias: aa},
					RandomResizedCrop{Size: 96, Scale: [2]float64{0.02, 0.3}, Flip: 1, DType: d, Layout: layout, Antialias: aa},
					CenterCrop{Size: 20, ResizeTo: 30, Mean: mean, Std: std, DType: d, Layout: layout, Antialias: aa},
				} {
					t.Run(tr.String(), func(t *testing.T) {
						lockstep(t, gpu, cpu, src, IteratorOptions{BatchSize: 32, Shuffle: true, Seed: 21, Workers: 3,
							Transforms: map[string]Transform{"image": tr}}, func(idx []int, got, want [][]byte) {
							requireClose(t, d, want[0], got[0], fmt.Sprintf("%v, samples %v", tr, idx))
							require.Equal(t, want[1], got[1], "labels")
						})
					})
				}
			}
		}
	}
}

// imageTree copies the test images into two class folders, the JPEGs in one and the others in the second.
func imageTree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	files, err := filepath.Glob("testdata/images/*")
	require.NoError(t, err)
	n := 0
	for _, f := range files {
		if strings.HasSuffix(f, ".pillow.png") || strings.HasSuffix(f, "PILLOW_VERSION") {
			continue
		}
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		class := "other"
		if strings.HasSuffix(f, ".jpg") {
			class = "jpeg"
		}
		require.NoError(t, os.MkdirAll(filepath.Join(root, class), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(root, class, filepath.Base(f)), b, 0o644))
		n++
	}
	require.Greater(t, n, 20)
	return root
}

// TestImageFolderDecodeGPU: a folder of real photographs (JPEG at several qualities and subsamplings,
// progressive, gray and CMYK JPEGs, PNG, WebP, BMP, TIFF, PPM) decoded on the GPU path and cropped there
// equals the CPU path: the images nvJPEG decodes within the IDCTs' differences (mean absolute difference
// at most 1.5 and max 16 of 255 per sample), the others to the output's rounding.
func TestImageFolderDecodeGPU(t *testing.T) {
	testutil.RequireGPU(t)
	gpu, err := engine.Open(0, engine.WithSampleInterval(0))
	require.NoError(t, err)
	defer gpu.Close()
	if d := imageDecodersOf(gpu); !d.nvjpeg() {
		if os.Getenv("FERRY_REQUIRE_GPU") == "1" {
			t.Fatalf("nvJPEG does not load: %s", d.why)
		}
		t.Logf("nvJPEG does not load (%s): every image decodes on the host", d.why)
	} else {
		t.Log(d.describe())
	}
	cpu := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	src, err := NewImageFolderSource(imageTree(t), ImageFolderConfig{})
	require.NoError(t, err)
	defer src.Close()
	nvjpegSample := map[int]bool{}
	for i := 0; i < src.Len(); i++ {
		b, err := os.ReadFile(src.Path(i))
		require.NoError(t, err)
		info, err := parseJPEGHeader(b)
		nvjpegSample[i] = err == nil && info.nvjpegFits()
	}
	require.Contains(t, nvjpegSample, 0)
	for _, tr := range []Transform{
		CenterCrop{Size: 96, DType: Float32},
		RandomResizedCrop{Size: 64, Flip: 0.5, DType: Float32, Antialias: true},
	} {
		lockstep(t, gpu, cpu, src, IteratorOptions{BatchSize: 16, Shuffle: true, Seed: 3,
			Transforms: map[string]Transform{"image": tr}}, func(idx []int, got, want [][]byte) {
			per := len(want[0]) / len(idx)
			for k, i := range idx {
				w, g := want[0][k*per:(k+1)*per], got[0][k*per:(k+1)*per]
				if !nvjpegSample[i] || !imageDecodersOf(gpu).nvjpeg() {
					requireClose(t, Float32, w, g, fmt.Sprintf("%v: %s (decoded on the host)", tr, src.Path(i)))
					continue
				}
				requireNVJPEGClose(t, fmt.Sprintf("%v: %s", tr, src.Path(i)), per/4, func(j int) (float64, float64) {
					return decode(Float32, w, j) * 255, decode(Float32, g, j) * 255
				})
			}
			require.Equal(t, want[1], got[1], "labels")
		})
	}
}

// TestBadImagesGPU: on the GPU path a truncated JPEG, a JPEG with a broken header and a JPEG whose scan
// data is garbage fail their batch with an error naming the file, or are skipped and counted; the same
// holds when nvJPEG refuses the batch and the host decodes it image by image.
func TestBadImagesGPU(t *testing.T) {
	testutil.RequireGPU(t)
	gpu, err := engine.Open(0, engine.WithSampleInterval(0))
	require.NoError(t, err)
	defer gpu.Close()
	good, err := os.ReadFile("testdata/images/astronaut_q90_420.jpg")
	require.NoError(t, err)
	info, err := parseJPEGHeader(good)
	require.NoError(t, err)
	require.True(t, info.nvjpegFits())
	garbage := append([]byte(nil), good...)
	for i := len(garbage) / 2; i < len(garbage)-2; i++ {
		garbage[i] = 0xFF // fill bytes and a marker run where entropy-coded data should be
	}
	header := append([]byte(nil), good...)
	header[5] = 0xFF // the first segment's length runs past the end
	for name, bad := range map[string][]byte{"truncated.jpg": good[:len(good)*2/3], "header.jpg": header, "garbage.jpg": garbage} {
		for _, refuse := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s nvJPEG refuses %v", name, refuse), func(t *testing.T) {
				testHookRefuseNVJPEG = refuse
				defer func() { testHookRefuseNVJPEG = false }()
				root := t.TempDir()
				require.NoError(t, os.MkdirAll(filepath.Join(root, "a"), 0o755))
				for k := range 6 {
					require.NoError(t, os.WriteFile(filepath.Join(root, "a", fmt.Sprintf("%d.jpg", k)), good, 0o644))
				}
				require.NoError(t, os.WriteFile(filepath.Join(root, "a", "3-"+name), bad, 0o644))
				src, err := NewImageFolderSource(root, ImageFolderConfig{})
				require.NoError(t, err)
				defer src.Close()
				tr := map[string]Transform{"image": RandomResizedCrop{Size: 32}}
				it, err := NewIterator(gpu, src, IteratorOptions{BatchSize: 7, Transforms: tr})
				require.NoError(t, err)
				b, err := it.Next(context.Background(), 0)
				if err == nil {
					// nvJPEG may decode garbage scan data without complaint, as libjpeg does with its warnings.
					require.Equal(t, "garbage.jpg", name, "only garbage scan data may pass")
					require.False(t, refuse, "the host decode refuses it")
					require.NoError(t, b.Release(0))
				} else {
					require.ErrorIs(t, err, engine.ErrFormat)
					require.Contains(t, err.Error(), "3-"+name)
				}
				require.NoError(t, it.Close())
				skip, err := NewIterator(gpu, src, IteratorOptions{BatchSize: 7, OnError: OnErrorSkip, Transforms: tr})
				require.NoError(t, err)
				defer skip.Close()
				b, err = skip.Next(context.Background(), 0)
				require.NoError(t, err)
				require.NoError(t, b.Release(0))
				if name != "garbage.jpg" || refuse {
					require.GreaterOrEqual(t, skip.Stats().Skipped, uint64(1))
				}
			})
		}
	}
}

// requireNVJPEGClose checks n values of an image nvJPEG decoded against the CPU path's (at gives both, in
// levels of 255): the bound the IDCTs' differences allow, a mean absolute difference of at most 1.5 and a
// largest of 16.
func requireNVJPEGClose(t *testing.T, name string, n int, at func(j int) (want, got float64)) {
	t.Helper()
	var sum, worst float64
	for j := range n {
		w, g := at(j)
		d := math.Abs(w - g)
		sum, worst = sum+d, max(worst, d)
	}
	t.Logf("%s: nvJPEG vs the CPU path: mean %.3f, max %.1f", name, sum/float64(n), worst)
	require.LessOrEqual(t, sum/float64(n), 1.5, name)
	require.LessOrEqual(t, worst, 16.0, name)
}
