package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

// The fake-driver case runs in a child process, since the driver path is read at the first GPU call.
const fakeDriverEnv = "FERRY_TEST_FAKE_DRIVER_CHILD"

// runOnFakeDriver builds the engine's stand-in driver (one 80 GiB "Fake GPU" whose device memory is host
// memory, engine/internal/testutil/testdata/fakecuda.c) and re-runs the test named child in a process that uses it, with
// childEnv=1 set, since the driver path is read at the first GPU call. It returns the child's output.
func runOnFakeDriver(t *testing.T, child, childEnv string) string {
	t.Helper()
	lib := filepath.Join(t.TempDir(), "libcuda.so.1")
	src := filepath.Join("..", "engine", "internal", "testutil", "testdata", "fakecuda.c")
	if _, err := os.Stat(src); err != nil {
		t.Skipf("the fake driver's source is not here (%v)", err)
	}
	out, err := exec.Command("cc", "-std=c11", "-O2", "-shared", "-fPIC", "-o", lib, src).CombinedOutput()
	require.NoError(t, err, "building the fake driver: %s", out)

	cmd := exec.Command(os.Args[0], "-test.run=^"+child+"$", "-test.count=1", "-test.v")
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FERRY_REQUIRE_GPU=") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, childEnv+"=1", "FERRY_LIBRARY="+libraryPath, "FERRY_CUDA_LIBRARY="+lib,
		"FERRY_NVML_LIBRARY=/nonexistent/libnvidia-ml.so.1")
	out, err = cmd.CombinedOutput()
	require.NoError(t, err, "child failed:\n%s", out)
	require.Contains(t, string(out), "--- PASS: "+child, "child did not run the test:\n%s", out)
	return string(out)
}

// TestFakeDriver runs the C API's GPU path against the stand-in driver, so that the device properties and
// the GPU snapshot are converted and checked through the C ABI on hosts without a GPU too.
func TestFakeDriver(t *testing.T) {
	if os.Getenv(fakeDriverEnv) == "1" {
		t.Skip("in the child process")
	}
	out := runOnFakeDriver(t, "TestFakeDriverChild", fakeDriverEnv)
	require.Contains(t, out, "--- PASS: TestFakeDriverChild/iterator", "child did not run the iterator:\n%s", out)
	require.Contains(t, out, "--- PASS: TestFakeDriverChild/transforms", "child did not run the transforms:\n%s", out)
}

// TestFakeDriverChild is the child of TestFakeDriver; it does nothing unless run by it.
func TestFakeDriverChild(t *testing.T) {
	if os.Getenv(fakeDriverEnv) != "1" {
		t.Skip("runs only as the child of TestFakeDriver")
	}
	const gib = 1 << 30
	require.Equal(t, int32(1), deviceCount(t))

	info := deviceProperties{Size: uint32(unsafe.Sizeof(deviceProperties{}))}
	requireOK(t, func() int32 { return ferryDeviceInfo(0, &info) })
	require.Equal(t, "Fake GPU", str(t, "name", info.Name[:]))
	require.Equal(t, "GPU-a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf", str(t, "uuid_string", info.UUIDString[:]))
	require.Equal(t, uint8(0xa0), info.UUID[0])
	require.Equal(t, uint8(0xaf), info.UUID[15])
	require.Equal(t, "0000:1b:00.0", str(t, "pci_bus_id", info.PCIBusID[:]))
	require.Equal(t, int32(9), info.ComputeCapabilityMajor)
	require.Equal(t, int32(0), info.ComputeCapabilityMinor)
	require.Equal(t, int32(132), info.MultiprocessorCount)
	require.Equal(t, uint64(80*gib), info.TotalMemoryBytes)
	require.Equal(t, int32(50<<20), info.L2CacheBytes)
	require.Equal(t, int32(5120), info.MemoryBusWidthBits)
	require.Equal(t, int32(3), info.AsyncEngineCount)
	require.Zero(t, info.Flags, "no NVML: the PCIe flag is clear")
	requireStatus(t, ferryErrNoDevice, func() int32 { return ferryDeviceInfo(1, &info) }, "device 1")

	e := newEngine(t, 0, 0)
	for _, s := range []memorySnapshot{check(t, e), checkLive(t, e)} {
		require.NotZero(t, s.Flags&memoryFlagDevice)
		require.Zero(t, s.Flags&memoryFlagProcess, "no NVML: no per-process figure")
		require.NotZero(t, s.Flags&memoryFlagHost)
		require.Equal(t, int32(0), s.Device)
		require.Equal(t, uint64(80*gib), s.DeviceTotalBytes)
		require.Equal(t, uint64(70*gib), s.DeviceFreeBytes)
		require.Equal(t, uint64(10*gib), s.DeviceUsedBytes)
	}
	require.NotZero(t, checkLive(t, e).Flags&memoryFlagLive)
	requireUsable(t)

	t.Run("iterator", func(t *testing.T) { fakeIteratorChecks(t, e) })
	t.Run("transforms", func(t *testing.T) { fakeTransformChecks(t, e) })
}

// fakeIteratorChecks runs an iterator on the fake GPU. Its device memory is host memory, so the kDLCUDA
// tensors are read through their data pointers and compared with the caller's memory.
func fakeIteratorChecks(t *testing.T, e engineHandle) {
	r := newRand(t)
	gpu := device{kDLCUDA, 0}
	src := newMemorySource(t, r, 90+r.Int64N(30), standardSpecs)
	o := iterOptions(t, 8)
	o.Flags = iteratorShuffle
	o.Seed = r.Uint64()
	o.Prefetch = 3
	it := newIterator(t, e, src.h, o)
	for epoch := uint64(0); epoch < 2; epoch++ {
		requirePermutation(t, flatten(runEpoch(t, it, epoch, standardSpecs, src.ref, gpu, hostRead)), src.n)
	}
	before := check(t, e)
	require.NotZero(t, before.EngineAllocatedBytes, "the ring's device and pinned memory are the engine's")

	// Streams: NULL (the legacy default stream) and a made-up non-NULL handle, which the fake accepts.
	for _, stream := range []uintptr{0, 0x1234} {
		var b batchHandle
		requireOK(t, func() int32 { return ferryIteratorNext(it, stream, &b) })
		require.NotZero(t, b)
		checkBatch(t, b, standardSpecs, src.ref, gpu, hostRead)
		requireOK(t, func() int32 { return ferryBatchWait(b, 0) })
		requireOK(t, func() int32 { return ferryBatchWait(b, 0x5678) })
		tensor := batchField(t, b, 0)
		requireOK(t, func() int32 { return ferryBatchRelease(b, stream) })
		requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryBatchWait(b, 0) })
		deleteTensor(t, tensor)
	}
	var b batchHandle
	requireOK(t, func() int32 { return ferryIteratorNext(it, 0, &b) })
	requireOK(t, func() int32 { return ferryBatchRelease(b, 0x9abc) })

	// A restore gives the same batch as the run before.
	restore(t, it, 5, 3)
	b1 := next(t, it)
	_, idx1 := checkBatch(t, b1, standardSpecs, src.ref, gpu, hostRead)
	releaseBatch(t, b1)
	requireOK(t, func() int32 { return ferryIteratorSetEpoch(it, 5) })
	for i := 0; i < 3; i++ {
		releaseBatch(t, next(t, it))
	}
	b2 := next(t, it)
	_, idx2 := checkBatch(t, b2, standardSpecs, src.ref, gpu, hostRead)
	releaseBatch(t, b2)
	require.Equal(t, idx1, idx2)

	// Destroying the iterator gives its ring back to the engine's pools.
	requireOK(t, func() int32 { return ferryIteratorDestroy(it) })
	require.Less(t, check(t, e).EngineAllocatedBytes, before.EngineAllocatedBytes)
}
