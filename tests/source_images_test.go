package tests

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

const (
	transformRandomResizedCrop int32 = 4
	transformCenterCrop        int32 = 5
	transformDecodeImage       int32 = 6
)

// TestSourceImageFolder reads a folder of PNGs through the C ABI: torchvision's order and labels, the
// samples' names, and CENTER_CROP of images whose shorter side is the crop's (an exact copy).
func TestSourceImageFolder(t *testing.T) {
	r := newRand(t)
	root := t.TempDir()
	type img struct {
		rgb  []byte
		w, h int
	}
	images := map[string]img{}
	const side = 10
	for k := range 7 {
		w, h := side, side+r.IntN(9)
		if k%2 == 1 {
			w, h = h, w
		}
		path := filepath.Join(root, []string{"x", "y"}[k%2], string(rune('a'+k))+".png")
		rgb := writeRandomPNG(t, r, path, w, h)
		images[path] = img{rgb, w, h}
	}
	c := newCmem(t, 1<<14)
	var o imageSourceOptions
	requireOK(t, func() int32 { return ferryImageSourceOptionsInit(&o) })
	var src sourceHandle
	requireOK(t, func() int32 { return ferrySourceImageFolder(c.cstring(root), &o, &src) })
	destroyAtCleanup(t, src)
	var n int64
	requireOK(t, func() int32 { return ferrySourceLen(src, &n) })
	require.Equal(t, int64(7), n)
	name := make([]byte, 512)
	requireOK(t, func() int32 { return ferrySourceSampleName(src, 0, &name[0], uint32(len(name))) })
	first, ok := fixedString(name)
	require.True(t, ok)
	require.Equal(t, filepath.Join(root, "x", "a.png"), first, "class x, then its files sorted")

	e := newCPUEngine(t, 0)
	tr := newTransform(t, transformCenterCrop, "image")
	tr.CropSize, tr.ResizeTo, tr.Layout = side, side, layoutHWC
	it := newIterator(t, e, src, withTransforms(iterOptions(t, 3), c, tr))
	checked := 0
	for {
		var b batchHandle
		status := ferryIteratorNext(it, 0, &b)
		if status == ferryEndOfEpoch {
			break
		}
		require.Equal(t, ferryOK, status)
		p := batchInfo(t, b)
		idx := batchIndices(t, b, p.NumSamples)
		tensor := batchFieldByName(t, b, "image")
		px := readFloat32s(tensor, int(p.NumSamples)*side*side*3)
		for row, i := range idx {
			requireOK(t, func() int32 { return ferrySourceSampleName(src, i, &name[0], uint32(len(name))) })
			path, _ := fixedString(name)
			im := images[path]
			// torchvision's CenterCrop offset: Python's round, half to even.
			top, left := int(math.RoundToEven(float64(im.h-side)/2)), int(math.RoundToEven(float64(im.w-side)/2))
			for y := range side {
				for x := range side {
					for ch := range 3 {
						want := float32(im.rgb[((top+y)*im.w+left+x)*3+ch]) / 255
						require.InDelta(t, want, px[((row*side+y)*side+x)*3+ch], 1e-6, "%s (%d, %d)", path, y, x)
					}
				}
			}
			checked++
		}
		deleteTensor(t, tensor)
		releaseBatch(t, b)
	}
	require.Equal(t, 7, checked)

	// A file that does not decode: FERRY_ON_ERROR_SKIP puts the next one in its place and counts it; a
	// caller's older (40-byte) ferry_pipeline_stats gets nothing past its size.
	require.NoError(t, os.WriteFile(filepath.Join(root, "x", "zz.png"), []byte("\x89PNG\r\n\x1a\nbroken"), 0o644))
	var withBad sourceHandle
	requireOK(t, func() int32 { return ferrySourceImageFolder(c.cstring(root), &o, &withBad) })
	destroyAtCleanup(t, withBad)
	skipOpts := withTransforms(iterOptions(t, 8), c, tr)
	skipOpts.OnError = 1
	skipIt := newIterator(t, e, withBad, skipOpts)
	b := next(t, skipIt)
	require.Equal(t, int64(8), batchInfo(t, b).NumSamples)
	releaseBatch(t, b)
	g := newGuardBuf(48)
	old40 := (*pipelineStats)(g.ptr())
	old40.Size = 40
	requireOK(t, func() int32 { return ferryIteratorStats(skipIt, old40) })
	g.requireUntouchedFrom(t, 40)
	st := pipelineStats{Size: uint32(unsafe.Sizeof(pipelineStats{}))}
	requireOK(t, func() int32 { return ferryIteratorStats(skipIt, &st) })
	require.GreaterOrEqual(t, st.Skipped, uint64(1))

	// A crop with the older, shorter ferry_transform is refused; so are unknown flags.
	old := newTransform(t, transformRandomResizedCrop, "image")
	old.Size = 160
	old.CropSize = 8
	var bad iteratorHandle
	opts := withTransforms(iterOptions(t, 2), c, old)
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorCreate(e, src, &opts, &bad) }, "crop needs")
	o.Flags = 0x80
	var s2 sourceHandle
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceImageFolder(c.cstring(root), &o, &s2) }, "flags")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferrySourceSampleName(src, 99, &name[0], 8) }, "out of range")
	requireUsable(t)
}

// TestDecodeImageThroughCABI: FERRY_TRANSFORM_DECODE_IMAGE gives each PNG's pixels as uint8 [H, W, 3]; an
// image of another size fails its batch naming the file; a caller's older ferry_transform is refused.
func TestDecodeImageThroughCABI(t *testing.T) {
	r := newRand(t)
	root := t.TempDir()
	const w, h = 6, 5
	want := map[string][]byte{}
	for k := range 5 {
		path := filepath.Join(root, "a", string(rune('a'+k))+".png")
		want[path] = writeRandomPNG(t, r, path, w, h)
	}
	c := newCmem(t, 1<<14)
	var o imageSourceOptions
	requireOK(t, func() int32 { return ferryImageSourceOptionsInit(&o) })
	var src sourceHandle
	requireOK(t, func() int32 { return ferrySourceImageFolder(c.cstring(root), &o, &src) })
	destroyAtCleanup(t, src)
	e := newCPUEngine(t, 0)
	tr := newTransform(t, transformDecodeImage, "image")
	tr.Height, tr.Width = h, w
	it := newIterator(t, e, src, withTransforms(iterOptions(t, 5), c, tr))
	b := next(t, it)
	p := batchInfo(t, b)
	require.Equal(t, int64(5), p.NumSamples)
	idx := batchIndices(t, b, p.NumSamples)
	tensor := batchFieldByName(t, b, "image")
	got := tensorBytes(tensor, 5*h*w*3)
	name := make([]byte, 512)
	for row, i := range idx {
		requireOK(t, func() int32 { return ferrySourceSampleName(src, i, &name[0], uint32(len(name))) })
		path, _ := fixedString(name)
		require.Equal(t, want[path], got[row*h*w*3:(row+1)*h*w*3], path)
	}
	deleteTensor(t, tensor)
	releaseBatch(t, b)

	// Another size fails the batch that holds it, naming the file.
	tall := image.NewNRGBA(image.Rect(0, 0, w, h+1))
	var buf bytes.Buffer
	require.NoError(t, png.Encode(&buf, tall))
	require.NoError(t, os.WriteFile(filepath.Join(root, "a", "zz.png"), buf.Bytes(), 0o644))
	var withTall sourceHandle
	requireOK(t, func() int32 { return ferrySourceImageFolder(c.cstring(root), &o, &withTall) })
	destroyAtCleanup(t, withTall)
	tallIt := newIterator(t, e, withTall, withTransforms(iterOptions(t, 6), c, tr))
	var bad batchHandle
	requireStatus(t, ferryErrFormat, func() int32 { return ferryIteratorNext(tallIt, 0, &bad) }, "zz.png")

	old := newTransform(t, transformDecodeImage, "image")
	old.Size = 208
	var refused iteratorHandle
	opts := withTransforms(iterOptions(t, 2), c, old)
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorCreate(e, src, &opts, &refused) }, "DECODE_IMAGE needs")
	requireUsable(t)
}

// writeRandomPNG writes a w x h PNG of random opaque pixels at path (making its folder) and returns the
// pixels as RGB bytes.
func writeRandomPNG(t *testing.T, r *rand.Rand, path string, w, h int) []byte {
	t.Helper()
	m := image.NewNRGBA(image.Rect(0, 0, w, h))
	var rgb []byte
	for y := range h {
		for x := range w {
			c := color.NRGBA{uint8(r.Uint32()), uint8(r.Uint32()), uint8(r.Uint32()), 255}
			m.SetNRGBA(x, y, c)
			rgb = append(rgb, c.R, c.G, c.B)
		}
	}
	var buf bytes.Buffer
	require.NoError(t, png.Encode(&buf, m))
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, buf.Bytes(), 0o644))
	return rgb
}
