package tests

import (
	"runtime"
	"testing"
	"unsafe"

	"github.com/ebitengine/purego"
	"github.com/stretchr/testify/require"
)

// cudaDriver is the part of the CUDA driver API the GPU tests use to read device memory back.
type cudaDriver struct {
	init              func(flags uint32) int32
	deviceGet         func(dev *int32, ordinal int32) int32
	primaryCtxRetain  func(ctx *uintptr, dev int32) int32
	primaryCtxRelease func(dev int32) int32
	ctxSetCurrent     func(ctx uintptr) int32
	memcpyDtoH        func(dst unsafe.Pointer, src uint64, n uint64) int32
	ctxSynchronize    func() int32
	dev               int32
	ctx               uintptr
}

// openCUDA loads libcuda.so.1 and makes device 0's primary context current on the calling goroutine's
// OS thread, which stays locked to it until the test ends.
func openCUDA(t *testing.T) *cudaDriver {
	t.Helper()
	h, err := purego.Dlopen("libcuda.so.1", purego.RTLD_NOW|purego.RTLD_LOCAL)
	require.NoError(t, err)
	d := &cudaDriver{}
	purego.RegisterLibFunc(&d.init, h, "cuInit")
	purego.RegisterLibFunc(&d.deviceGet, h, "cuDeviceGet")
	purego.RegisterLibFunc(&d.primaryCtxRetain, h, "cuDevicePrimaryCtxRetain")
	purego.RegisterLibFunc(&d.primaryCtxRelease, h, "cuDevicePrimaryCtxRelease_v2")
	purego.RegisterLibFunc(&d.ctxSetCurrent, h, "cuCtxSetCurrent")
	purego.RegisterLibFunc(&d.memcpyDtoH, h, "cuMemcpyDtoH_v2")
	purego.RegisterLibFunc(&d.ctxSynchronize, h, "cuCtxSynchronize")
	require.Zero(t, d.init(0), "cuInit")
	require.Zero(t, d.deviceGet(&d.dev, 0), "cuDeviceGet")
	require.Zero(t, d.primaryCtxRetain(&d.ctx, d.dev), "cuDevicePrimaryCtxRetain")
	runtime.LockOSThread()
	require.Zero(t, d.ctxSetCurrent(d.ctx), "cuCtxSetCurrent")
	t.Cleanup(func() {
		d.ctxSetCurrent(0)
		d.primaryCtxRelease(d.dev)
		runtime.UnlockOSThread()
	})
	return d
}

// read copies a kDLCUDA tensor's bytes to the host. The batch was handed out for the legacy default
// stream, which cuMemcpyDtoH orders after the batch's copy. The context is made current on the calling
// goroutine's thread: subtests run on goroutines of their own.
func (d *cudaDriver) read(t testing.TB, tensor *dlManagedTensor, n int) []byte {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	require.Zero(t, d.ctxSetCurrent(d.ctx), "cuCtxSetCurrent")
	buf := make([]byte, n)
	require.Zero(t, d.memcpyDtoH(unsafe.Pointer(&buf[0]), uint64(uintptr(tensor.DLTensor.Data)), uint64(n)), "cuMemcpyDtoH")
	return buf
}

// TestGPUIterator iterates a memory source on device 0 and reads every field back from device memory.
func TestGPUIterator(t *testing.T) {
	requireGPU(t)
	d := openCUDA(t)
	r := newRand(t)
	specs := append([]fieldSpec{{name: "pixels", dtype: dtypeUint8, shape: []int64{3, 32, 32}}}, standardSpecs[1:]...)
	src := newMemorySource(t, r, 1000+r.Int64N(500), specs)
	e := newEngine(t, 0, 0)
	gpu := device{kDLCUDA, 0}

	it := newIterator(t, e, src.h, iterOptions(t, 64))
	require.Equal(t, iota64(src.n), flatten(runEpoch(t, it, 0, specs, src.ref, gpu, d.read)))

	o := iterOptions(t, 100)
	o.Flags = iteratorShuffle | iteratorDropLast
	o.Seed = r.Uint64()
	o.Prefetch = 3
	it2 := newIterator(t, e, src.h, o)
	for epoch := uint64(0); epoch < 2; epoch++ {
		bs := runEpoch(t, it2, epoch, specs, src.ref, gpu, d.read)
		require.Len(t, flatten(bs), int(src.n/100*100))
	}

	// A batch used on the default stream and released on it; wait on it once more first.
	b := next(t, it2)
	requireOK(t, func() int32 { return ferryBatchWait(b, 0) })
	checkBatch(t, b, specs, src.ref, gpu, d.read)
	require.Zero(t, d.ctxSynchronize())
	releaseBatch(t, b)

	snap := checkLive(t, e)
	require.NotZero(t, snap.EngineAllocatedBytes, "the rings are engine memory")
	require.NotZero(t, snap.HostPinnedBytes, "the staging buffers are page-locked")
}
