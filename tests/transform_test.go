package tests

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

// The fields the transform tests read: u8 images [H, W, C] and windows of seqLen+1 uint16 tokens.
const (
	imgH, imgW, imgC = 4, 8, 3
	seqLen           = 8
)

var transformSpecs = []fieldSpec{
	{name: "image", dtype: dtypeUint8, shape: []int64{imgH, imgW, imgC}},
	{name: "tokens", dtype: dtypeUint16, shape: []int64{seqLen + 1}},
}

// planarSpecs is transformSpecs with the image as channel planes, [C, H, W] (CIFAR's record layout).
var planarSpecs = []fieldSpec{
	{name: "image", dtype: dtypeUint8, shape: []int64{imgC, imgH, imgW}},
	transformSpecs[1],
}

// newTransform returns a transform filled by ferry_transform_init for the given field.
func newTransform(t testing.TB, kind int32, fieldName string) transform {
	t.Helper()
	var tr transform
	requireOK(t, func() int32 { return ferryTransformInit(&tr, kind, cname(fieldName)) })
	return tr
}

// normalizeTransform is a NORMALIZE of "image" with per-channel mean and std.
func normalizeTransform(t testing.TB, mean, std []float32, layout int32, flip float64) transform {
	t.Helper()
	tr := newTransform(t, transformNormalize, "image")
	tr.Channels = int32(len(mean))
	copy(tr.Mean[:], mean)
	copy(tr.Std[:], std)
	tr.Layout = layout
	tr.DType = dtypeFloat32
	tr.Flip = flip
	return tr
}

// transforms copies a transform array into C memory and returns its address.
func (m *cmem) transforms(ts []transform) uintptr {
	if len(ts) == 0 {
		return 0
	}
	arr := unsafe.Slice((*transform)(m.alloc(len(ts)*int(unsafe.Sizeof(transform{})))), len(ts))
	copy(arr, ts)
	return uintptr(unsafe.Pointer(&arr[0]))
}

// withTransforms sets the options' transforms, copied into c.
func withTransforms(o iteratorOptions, c *cmem, ts ...transform) iteratorOptions {
	o.Transforms = c.transforms(ts)
	o.NumTransforms = int32(len(ts))
	return o
}

// iteratorStaging returns ferry_iterator_staging's strategy and reason.
func iteratorStaging(t testing.TB, it iteratorHandle) (int32, string) {
	t.Helper()
	staging := int32(-1)
	why := make([]byte, 512)
	requireOK(t, func() int32 { return ferryIteratorStaging(it, &staging, &why[0], uint32(len(why))) })
	s, ok := fixedString(why)
	require.True(t, ok, "the reason is not NUL-terminated")
	return staging, s
}

// readFloat32s reads n float32 values of a host tensor.
func readFloat32s(tensor *dlManagedTensor, n int) []float32 {
	b := tensorBytes(tensor, 4*n)
	out := make([]float32, n)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

// readInt64s reads n int64 values of a host tensor.
func readInt64s(tensor *dlManagedTensor, n int) []int64 {
	b := tensorBytes(tensor, 8*n)
	out := make([]int64, n)
	for i := range out {
		out[i] = int64(binary.LittleEndian.Uint64(b[8*i:]))
	}
	return out
}

// imageTokensCase is an iterator over transformSpecs with NORMALIZE on "image" and SHIFT_TOKENS on
// "tokens", and what its batches must hold.
type imageTokensCase struct {
	src       *memSource
	it        iteratorHandle
	mean, std [imgC]float32
	layout    int32
	flip      float64 // 0 or 1: whether a sample flips is then known
	planar    bool    // the source's image is [C, H, W], read with input_layout FERRY_LAYOUT_CHW
}

// newImageTokensCase makes an iterator on e over fresh random samples with random mean and std.
func newImageTokensCase(t *testing.T, r *rand.Rand, e engineHandle, layout int32, flip float64, staging int32) *imageTokensCase {
	return newImageTokensCaseInput(t, r, e, layout, flip, staging, false)
}

// newImageTokensCaseInput is newImageTokensCase with the image stored as channel planes when planar.
func newImageTokensCaseInput(t *testing.T, r *rand.Rand, e engineHandle, layout int32, flip float64, staging int32,
	planar bool) *imageTokensCase {
	t.Helper()
	n := 40 + r.Int64N(40)
	specs := transformSpecs
	if planar {
		specs = planarSpecs
	}
	tc := &imageTokensCase{src: newMemorySource(t, r, n, specs), layout: layout, flip: flip, planar: planar}
	for c := range tc.mean {
		tc.mean[c] = 0.3 + 0.3*r.Float32()
		tc.std[c] = 0.2 + 0.1*r.Float32()
	}
	c := newCmem(t, 1<<12)
	o := iterOptions(t, 3+r.Int64N(7))
	o.Flags = iteratorShuffle
	o.Seed = r.Uint64()
	o.Staging = staging
	norm := normalizeTransform(t, tc.mean[:], tc.std[:], layout, flip)
	if planar {
		norm.InputLayout = layoutCHW
	}
	o = withTransforms(o, c, norm, newTransform(t, transformShiftTokens, "tokens"))
	tc.it = newIterator(t, e, tc.src.h, o)
	return tc
}

// checkEpoch reads one epoch and checks every batch's fields, read as host memory, against values
// computed from the source's bytes: (x/255 - mean)/std within 1e-6, x and y exactly.
func (tc *imageTokensCase) checkEpoch(t *testing.T, dev device) {
	t.Helper()
	imageShape := []int64{imgC, imgH, imgW}
	if tc.layout == layoutHWC {
		imageShape = []int64{imgH, imgW, imgC}
	}
	outSpecs := []fieldSpec{
		{name: "image", dtype: dtypeFloat32, shape: imageShape},
		{name: "x", dtype: dtypeInt64, shape: []int64{seqLen}},
		{name: "y", dtype: dtypeInt64, shape: []int64{seqLen}},
	}
	var seen []int64
	for {
		var b batchHandle
		st, msg := call(t, func() int32 { return ferryIteratorNext(tc.it, 0, &b) })
		if st == ferryEndOfEpoch {
			break
		}
		require.Equal(t, statusString(t, ferryOK), statusString(t, st), msg)
		info := batchInfo(t, b)
		require.Equal(t, int32(len(outSpecs)), info.NumFields, "the batch's fields are the transforms' outputs")
		idx := batchIndices(t, b, info.NumSamples)
		seen = append(seen, idx...)
		for k, spec := range outSpecs {
			byIndex := batchField(t, b, k)
			tensor := batchFieldByName(t, b, spec.name)
			requireTensor(t, byIndex, spec, info.NumSamples, dev)
			requireTensor(t, tensor, spec, info.NumSamples, dev)
			require.Equal(t, byIndex.DLTensor.Data, tensor.DLTensor.Data, "field %d is %q", k, spec.name)
			deleteTensor(t, byIndex)
			per := spec.bytes() / dtypeSize[spec.dtype]
			switch spec.name {
			case "image":
				tc.checkImages(t, idx, readFloat32s(tensor, len(idx)*per), per)
			case "x", "y":
				got := readInt64s(tensor, len(idx)*per)
				shift := 0
				if spec.name == "y" {
					shift = 1
				}
				for s, i := range idx {
					win := tc.src.ref(1, i)
					for j := 0; j < seqLen; j++ {
						want := int64(binary.LittleEndian.Uint16(win[2*(j+shift):]))
						require.Equal(t, want, got[s*per+j], "sample %d, %s[%d]", i, spec.name, j)
					}
				}
			}
			deleteTensor(t, tensor)
		}
		requireStatus(t, ferryErrInvalidArgument, func() int32 {
			var tensor *dlManagedTensor
			return ferryBatchFieldByName(b, cname("tokens"), &tensor)
		}, "tokens")
		releaseBatch(t, b)
	}
	requirePermutation(t, seen, tc.src.n)
}

// checkImages compares the normalized images of the samples idx, per values each, with the reference.
func (tc *imageTokensCase) checkImages(t *testing.T, idx []int64, got []float32, per int) {
	t.Helper()
	for s, i := range idx {
		img := tc.src.ref(0, i)
		for y := 0; y < imgH; y++ {
			for x := 0; x < imgW; x++ {
				sx := x
				if tc.flip == 1 {
					sx = imgW - 1 - x
				}
				for ch := 0; ch < imgC; ch++ {
					v := img[(y*imgW+sx)*imgC+ch]
					if tc.planar {
						v = img[(ch*imgH+y)*imgW+sx]
					}
					want := (float64(v)/255 - float64(tc.mean[ch])) / float64(tc.std[ch])
					o := (ch*imgH+y)*imgW + x
					if tc.layout == layoutHWC {
						o = (y*imgW+x)*imgC + ch
					}
					if g := got[s*per+o]; math.Abs(float64(g)-want) > 1e-6 {
						t.Fatalf("sample %d, pixel (%d, %d), channel %d (u8 %d): got %.9g, want %.9g", i, y, x, ch, v, g, want)
					}
				}
			}
		}
	}
}

// TestTransformNormalizeShiftTokens runs NORMALIZE on a u8 image field and SHIFT_TOKENS on a uint16 window
// on the CPU engine and checks every batch of an epoch against values computed here from the source bytes.
func TestTransformNormalizeShiftTokens(t *testing.T) {
	r := newRand(t)
	e := newCPUEngine(t, 0)
	for _, tt := range []struct {
		name   string
		layout int32
		flip   float64
	}{
		{"CHW", layoutCHW, 0},
		{"HWC flip=1", layoutHWC, 1},
		{"planar input, CHW flip=1", layoutCHW, 1},
		{"planar input, HWC", layoutHWC, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tc := newImageTokensCaseInput(t, r, e, tt.layout, tt.flip, stagingAuto, strings.HasPrefix(tt.name, "planar"))
			// The batch's fields after the transforms: the image keeps its name as float32, the window
			// becomes x and y.
			var n int32
			requireOK(t, func() int32 { return ferryIteratorNumFields(tc.it, &n) })
			var names []string
			for i := int32(0); i < n; i++ {
				var f field
				requireOK(t, func() int32 { return ferryIteratorField(tc.it, i, &f) })
				name, err := goString(f.Name)
				require.NoError(t, err)
				names = append(names, name)
				if name == "image" {
					require.Equal(t, dtypeFloat32, f.DType)
					require.Equal(t, int32(3), f.NDim)
				}
			}
			require.Equal(t, []string{"image", "x", "y"}, names)
			var f field
			requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorField(tc.it, n, &f) }, "index")
			requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorField(tc.it, 0, nil) }, "NULL")
			requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryIteratorNumFields(0, &n) })
			tc.checkEpoch(t, cpuDevice)
		})
	}
}

// fakeTransformChecks runs transforms on the fake GPU, whose kernels never load: the transforms run on
// the host and the batch crosses to (fake) device memory, which is host memory and read directly.
// ferry_transform_launch reports the missing kernels.
func fakeTransformChecks(t *testing.T, e engineHandle) {
	r := newRand(t)
	gpu := device{kDLCUDA, 0}
	for _, staging := range []int32{stagingAuto, stagingGather, stagingDMA, stagingMapped} {
		tc := newImageTokensCase(t, r, e, layoutCHW, float64(staging%2), staging)
		s, why := iteratorStaging(t, tc.it)
		require.Contains(t, []int32{stagingGather, stagingDMA}, s, "staging %d asked for; got %d (%s)", staging, s, why)
		require.NotEmpty(t, why)
		t.Logf("staging %d asked for: %d (%s)", staging, s, why)
		tc.checkEpoch(t, gpu)
		requireOK(t, func() int32 { return ferryIteratorDestroy(tc.it) })
	}
	c := newCmem(t, 1<<16)
	in := c.alloc(4 * transformSpecs[0].bytes())
	dst := unsafe.Slice((*uint64)(c.alloc(8)), 1)
	dst[0] = uint64(uintptr(c.alloc(4 * imgC * imgH * imgW * 4)))
	norm := normalizeTransform(t, []float32{0.5}, []float32{0.25}, layoutCHW, 0)
	requireStatus(t, ferryErrUnsupported, func() int32 {
		return ferryTransformLaunch(e, &norm, c.fields(transformSpecs[:1]), 4, uint64(uintptr(in)), &dst[0], 1, 0)
	}, "kernel")
}

// TestTransformOptionsV1 checks the append rule: options whose size is that of the first version (48
// bytes) are accepted and their transform fields, past the size, are never read.
func TestTransformOptionsV1(t *testing.T) {
	r := newRand(t)
	src := newMemorySource(t, r, 10, transformSpecs)
	o := iterOptions(t, 5)
	o.Size = 48
	o.Transforms = 0xdead0
	o.NumTransforms = 3
	o.Staging = 99
	it := newIterator(t, newCPUEngine(t, 0), src.h, o)
	b := next(t, it)
	checkBatch(t, b, transformSpecs, src.ref, cpuDevice, hostRead)
	releaseBatch(t, b)
}

// TestTransformArrayV1 passes a transform array built with the first version of the struct (120 bytes,
// without input_layout): the library reads it with that stride, and the images are read as [H, W, C].
// Elements of different sizes are refused.
func TestTransformArrayV1(t *testing.T) {
	r := newRand(t)
	e := newCPUEngine(t, 0)
	src := newMemorySource(t, r, 20, transformSpecs)
	const v1 = 120
	c := newCmem(t, 1<<12)
	mean, std := []float32{0.5, 0.4, 0.3}, []float32{0.2, 0.25, 0.3}
	norm := normalizeTransform(t, mean, std, layoutHWC, 0)
	shift := newTransform(t, transformShiftTokens, "tokens")
	arr := unsafe.Slice((*byte)(c.alloc(2*v1)), 2*v1)
	for i, tr := range []transform{norm, shift} {
		tr.Size = v1
		copy(arr[i*v1:(i+1)*v1], unsafe.Slice((*byte)(unsafe.Pointer(&tr)), v1))
	}
	o := iterOptions(t, 4)
	o.Transforms = uintptr(unsafe.Pointer(&arr[0]))
	o.NumTransforms = 2
	it := newIterator(t, e, src.h, o)
	b := next(t, it)
	info := batchInfo(t, b)
	require.Equal(t, int32(3), info.NumFields, "both transforms were read: image, x, y")
	idx := batchIndices(t, b, info.NumSamples)
	img := batchFieldByName(t, b, "image")
	got := readFloat32s(img, len(idx)*imgH*imgW*imgC)
	for s, i := range idx {
		px := src.ref(0, i)
		for k := 0; k < imgH*imgW*imgC; k++ {
			want := (float64(px[k])/255 - float64(mean[k%imgC])) / float64(std[k%imgC])
			require.InDelta(t, want, got[s*imgH*imgW*imgC+k], 1e-6, "sample %d element %d", i, k)
		}
	}
	deleteTensor(t, img)
	x := batchFieldByName(t, b, "x")
	deleteTensor(t, x)
	releaseBatch(t, b)

	// A second element whose size differs from the first.
	mixed := []transform{norm, shift}
	mixed[1].Size = v1
	o = withTransforms(iterOptions(t, 4), c, mixed...)
	var h iteratorHandle
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorCreate(e, src.h, &o, &h) },
		"transforms[1].size", "ferry_transform_init")
	// An input layout that is neither HWC nor CHW.
	bad := norm
	bad.InputLayout = 7
	o = withTransforms(iterOptions(t, 4), c, bad)
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorCreate(e, src.h, &o, &h) }, "input_layout")
	// A planar image [3, 32, 32] read as HWC has 32 channels: the error names the layout to set.
	planar := newMemorySource(t, r, 8, []fieldSpec{{name: "image", dtype: dtypeUint8, shape: []int64{3, 32, 32}}})
	o = withTransforms(iterOptions(t, 4), c, normalizeTransform(t, nil, nil, layoutCHW, 0))
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorCreate(e, planar.h, &o, &h) },
		"set the input layout to CHW")
}

// TestIteratorStagingCPU checks that the CPU engine gathers on the host, whatever staging is asked for,
// and says why; and ferry_iterator_staging's arguments.
func TestIteratorStagingCPU(t *testing.T) {
	r := newRand(t)
	src := newMemorySource(t, r, 16, transformSpecs)
	e := newCPUEngine(t, 0)
	for _, want := range []int32{stagingAuto, stagingGather, stagingDMA, stagingMapped} {
		o := iterOptions(t, 4)
		o.Staging = want
		o.PinnedBudget = int64(want-1) << 20 // negative, zero and positive budgets
		it := newIterator(t, e, src.h, o)
		s, why := iteratorStaging(t, it)
		require.Equal(t, stagingGather, s, "staging %d asked for", want)
		require.NotEmpty(t, why, "ferry_iterator_staging gives a reason")
		b := next(t, it)
		checkBatch(t, b, transformSpecs, src.ref, cpuDevice, hostRead)
		releaseBatch(t, b)

		// why may be NULL, and a short buffer is truncated and NUL-terminated.
		s = -1
		requireOK(t, func() int32 { return ferryIteratorStaging(it, &s, nil, 0) })
		require.Equal(t, stagingGather, s)
		short := []byte{0xff, 0xff, 0xff, 0xff, 0xff}
		requireOK(t, func() int32 { return ferryIteratorStaging(it, &s, &short[0], 4) })
		require.Equal(t, []byte(why[:3]), short[:3])
		require.Equal(t, []byte{0, 0xff}, short[3:], "4 bytes: 3 characters and the NUL, nothing after")
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorStaging(it, nil, nil, 0) }, "staging", "NULL")
		requireOK(t, func() int32 { return ferryIteratorDestroy(it) })
		requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryIteratorStaging(it, &s, nil, 0) })
	}
	var s int32
	requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryIteratorStaging(0, &s, nil, 0) })
	requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryIteratorStaging(0x7fff1234, &s, nil, 0) })
}

// TestTransformInit checks ferry_transform_init's defaults and that it refuses unknown kinds and NULL
// without writing anything.
func TestTransformInit(t *testing.T) {
	g := newGuardBuf(unsafe.Sizeof(transform{}))
	name := cname("image")
	requireOK(t, func() int32 { return ferryTransformInit((*transform)(g.ptr()), transformNormalize, name) })
	g.requireUntouchedFrom(t, unsafe.Sizeof(transform{}))
	require.Equal(t, transform{Size: 216, Kind: transformNormalize, Field: uintptr(unsafe.Pointer(name)),
		Layout: layoutCHW, DType: dtypeFloat32, InputLayout: layoutHWC}, *(*transform)(g.ptr()))

	for _, kind := range []int32{transformShiftTokens, transformPadSequences, transformRandomResizedCrop, transformCenterCrop, transformDecodeImage} {
		tr := transform{Channels: 9, XName: 1, Flip: 3}
		requireOK(t, func() int32 { return ferryTransformInit(&tr, kind, name) })
		require.Equal(t, uint32(216), tr.Size)
		require.Equal(t, kind, tr.Kind)
		require.Zero(t, tr.Channels, "init resets every field")
		require.Zero(t, tr.XName)
		require.Zero(t, tr.Flip)
	}

	for _, kind := range []int32{0, 7, -1, 1 << 30} {
		g := newGuardBuf(unsafe.Sizeof(transform{}))
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryTransformInit((*transform)(g.ptr()), kind, name) }, "kind")
		g.requireUntouchedFrom(t, 0)
	}
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryTransformInit(nil, transformNormalize, name) }, "NULL")
	requireUsable(t)
}

// TestTransformInvalidArguments gives ferry_iterator_create bad transforms and staging: each gets
// FERRY_ERR_INVALID_ARGUMENT with a message naming the problem, and the library goes on working.
func TestTransformInvalidArguments(t *testing.T) {
	r := newRand(t)
	src := newMemorySource(t, r, 12, transformSpecs)
	e := newCPUEngine(t, 0)
	c := newCmem(t, 1<<16)
	norm := func() transform {
		return normalizeTransform(t, []float32{0.485, 0.456, 0.406}, []float32{0.229, 0.224, 0.225}, layoutCHW, 0)
	}
	shift := func() transform { return newTransform(t, transformShiftTokens, "tokens") }
	tests := []struct {
		name   string
		modify func(o *iteratorOptions)
		words  []string
	}{
		{"transform size 0", func(o *iteratorOptions) {
			tr := norm()
			tr.Size = 0
			*o = withTransforms(*o, c, tr)
		}, []string{"transforms[0]", "size"}},
		{"NULL field", func(o *iteratorOptions) {
			tr := shift()
			tr.Field = 0
			*o = withTransforms(*o, c, norm(), tr)
		}, []string{"transforms[1].field", "NULL"}},
		{"unknown field name", func(o *iteratorOptions) {
			*o = withTransforms(*o, c, newTransform(t, transformNormalize, "no_such_field"))
		}, []string{"no_such_field"}},
		{"unknown kind", func(o *iteratorOptions) {
			tr := norm()
			tr.Kind = 17
			*o = withTransforms(*o, c, tr)
		}, []string{"kind", "17"}},
		{"channels 7", func(o *iteratorOptions) {
			tr := norm()
			tr.Channels = 7
			*o = withTransforms(*o, c, tr)
		}, []string{"channels", "7"}},
		{"channels -1", func(o *iteratorOptions) {
			tr := norm()
			tr.Channels = -1
			*o = withTransforms(*o, c, tr)
		}, []string{"channels"}},
		{"2 mean values for 3 channels", func(o *iteratorOptions) {
			tr := norm()
			tr.Channels = 2
			*o = withTransforms(*o, c, tr)
		}, []string{"mean", "3 channels"}},
		{"std 0", func(o *iteratorOptions) {
			tr := norm()
			tr.Std[1] = 0
			*o = withTransforms(*o, c, tr)
		}, []string{"std[1]"}},
		{"mean NaN", func(o *iteratorOptions) {
			tr := norm()
			tr.Mean[2] = float32(math.NaN())
			*o = withTransforms(*o, c, tr)
		}, []string{"mean[2]", "finite"}},
		{"flip 1.5", func(o *iteratorOptions) {
			tr := norm()
			tr.Flip = 1.5
			*o = withTransforms(*o, c, tr)
		}, []string{"flip"}},
		{"layout 2", func(o *iteratorOptions) {
			tr := norm()
			tr.Layout = 2
			*o = withTransforms(*o, c, tr)
		}, []string{"layout"}},
		{"dtype int32", func(o *iteratorOptions) {
			tr := norm()
			tr.DType = dtypeInt32
			*o = withTransforms(*o, c, tr)
		}, []string{"float32"}},
		{"two transforms on one field", func(o *iteratorOptions) {
			*o = withTransforms(*o, c, norm(), shift(), norm())
		}, []string{"two transforms", "image"}},
		{"num_transforms > 0 with NULL transforms", func(o *iteratorOptions) {
			o.Transforms, o.NumTransforms = 0, 2
		}, []string{"transforms", "NULL"}},
		{"num_transforms -1", func(o *iteratorOptions) {
			*o = withTransforms(*o, c, norm())
			o.NumTransforms = -1
		}, []string{"num_transforms"}},
		{"staging 9", func(o *iteratorOptions) { o.Staging = 9 }, []string{"staging", "9"}},
		{"staging -1", func(o *iteratorOptions) { o.Staging = -1 }, []string{"staging"}},
		{"NORMALIZE on a non-u8 field", func(o *iteratorOptions) {
			*o = withTransforms(*o, c, newTransform(t, transformNormalize, "tokens"))
		}, []string{"uint8", "tokens"}},
		{"SHIFT_TOKENS on an image", func(o *iteratorOptions) {
			*o = withTransforms(*o, c, newTransform(t, transformShiftTokens, "image"))
		}, []string{"ShiftTokens", "image"}},
		{"x and y named alike", func(o *iteratorOptions) {
			tr := shift()
			tr.XName, tr.YName = uintptr(unsafe.Pointer(cname("t"))), uintptr(unsafe.Pointer(cname("t")))
			*o = withTransforms(*o, c, tr)
		}, []string{"x and y"}},
		{"an output named like another field", func(o *iteratorOptions) {
			tr := shift()
			tr.XName = uintptr(unsafe.Pointer(cname("image")))
			*o = withTransforms(*o, c, tr)
		}, []string{"two batch fields", "image"}},
		{"PAD_SEQUENCES on a fixed-length field", func(o *iteratorOptions) {
			*o = withTransforms(*o, c, newTransform(t, transformPadSequences, "tokens"))
		}, []string{"PadSequences", "variable length"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := iterOptions(t, 4)
			tt.modify(&o)
			it := iteratorHandle(0x5a5a)
			requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorCreate(e, src.h, &o, &it) }, tt.words...)
			require.Zero(t, it, "a failed create writes a NULL handle")
			requireUsable(t)
		})
	}
	// The same engine and source still make an iterator with transforms.
	o := withTransforms(iterOptions(t, 4), c, norm(), shift())
	it := newIterator(t, e, src.h, o)
	b := next(t, it)
	require.Equal(t, int32(3), batchInfo(t, b).NumFields)
	releaseBatch(t, b)
}

// TestTransformLaunchCPU calls ferry_transform_launch on the CPU engine, which has no kernels: a valid
// call gets FERRY_ERR_UNSUPPORTED, bad arguments FERRY_ERR_INVALID_ARGUMENT, and nothing crashes.
func TestTransformLaunchCPU(t *testing.T) {
	e := newCPUEngine(t, 0)
	c := newCmem(t, 1<<16)
	image := c.fields(transformSpecs[:1])
	tokens := c.fields(transformSpecs[1:])
	const batch = 4
	src := uint64(uintptr(c.alloc(batch * transformSpecs[0].bytes())))
	out := c.alloc(batch * imgC * imgH * imgW * 4)
	dstArr := unsafe.Slice((*uint64)(c.alloc(16)), 2)
	dstArr[0] = uint64(uintptr(out))
	dstArr[1] = uint64(uintptr(c.alloc(batch * seqLen * 8)))
	dst := &dstArr[0]
	norm := normalizeTransform(t, []float32{0.5}, []float32{0.25}, layoutCHW, 0)
	shift := newTransform(t, transformShiftTokens, "tokens")
	pad := newTransform(t, transformPadSequences, "tokens")
	bad := norm
	bad.Channels = 7

	tests := []struct {
		name   string
		status int32
		call   func() int32
		words  []string
	}{
		{"NORMALIZE", ferryErrUnsupported, func() int32 { return ferryTransformLaunch(e, &norm, image, batch, src, dst, 1, 0) }, []string{"GPU"}},
		{"SHIFT_TOKENS", ferryErrUnsupported, func() int32 { return ferryTransformLaunch(e, &shift, tokens, batch, src, dst, 2, 0) }, []string{"GPU"}},
		{"PAD_SEQUENCES", ferryErrUnsupported, func() int32 { return ferryTransformLaunch(e, &pad, tokens, batch, src, dst, 3, 0) }, []string{"iterator"}},
		{"NULL dst", ferryErrInvalidArgument, func() int32 { return ferryTransformLaunch(e, &norm, image, batch, src, nil, 1, 0) }, []string{"dst", "NULL"}},
		{"num_dst 0", ferryErrInvalidArgument, func() int32 { return ferryTransformLaunch(e, &norm, image, batch, src, dst, 0, 0) }, []string{"num_dst"}},
		{"num_dst 9", ferryErrInvalidArgument, func() int32 { return ferryTransformLaunch(e, &norm, image, batch, src, dst, 9, 0) }, []string{"num_dst"}},
		{"too few destinations", ferryErrInvalidArgument, func() int32 { return ferryTransformLaunch(e, &shift, tokens, batch, src, dst, 1, 0) }, []string{"2 outputs"}},
		{"batch 0", ferryErrInvalidArgument, func() int32 { return ferryTransformLaunch(e, &norm, image, 0, src, dst, 1, 0) }, []string{"batch"}},
		{"batch -5", ferryErrInvalidArgument, func() int32 { return ferryTransformLaunch(e, &norm, image, -5, src, dst, 1, 0) }, []string{"batch"}},
		{"batch 2^40", ferryErrInvalidArgument, func() int32 { return ferryTransformLaunch(e, &norm, image, 1<<40, src, dst, 1, 0) }, []string{"batch"}},
		{"src 0", ferryErrInvalidArgument, func() int32 { return ferryTransformLaunch(e, &norm, image, batch, 0, dst, 1, 0) }, []string{"address"}},
		{"NULL t", ferryErrInvalidArgument, func() int32 { return ferryTransformLaunch(e, nil, image, batch, src, dst, 1, 0) }, []string{"NULL"}},
		{"NULL in", ferryErrInvalidArgument, func() int32 { return ferryTransformLaunch(e, &norm, nil, batch, src, dst, 1, 0) }, []string{"NULL"}},
		{"bad transform", ferryErrInvalidArgument, func() int32 { return ferryTransformLaunch(e, &bad, image, batch, src, dst, 1, 0) }, []string{"channels"}},
		{"NORMALIZE on tokens", ferryErrInvalidArgument, func() int32 { return ferryTransformLaunch(e, &norm, tokens, batch, src, dst, 1, 0) }, []string{"uint8"}},
		{"no engine", ferryErrInvalidHandle, func() int32 { return ferryTransformLaunch(0, &norm, image, batch, src, dst, 1, 0) }, nil},
		{"foreign engine", ferryErrInvalidHandle, func() int32 { return ferryTransformLaunch(0x7fff5555, &norm, image, batch, src, dst, 1, 0) }, nil},
	}
	before := append([]byte(nil), unsafe.Slice((*byte)(out), 64)...)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			requireStatus(t, tt.status, tt.call, tt.words...)
		})
	}
	require.Equal(t, before, unsafe.Slice((*byte)(out), 64), "nothing was written")
	requireUsable(t)
}
