package engine

import (
	"testing"

	"github.com/ferry-ml/ferry/engine/internal/testutil"

	"github.com/stretchr/testify/require"
)

// TestFakeDriver runs the engine's GPU path against a stand-in driver, so that it is exercised on hosts
// without a GPU too.
func TestFakeDriver(t *testing.T) {
	out := testutil.RunOnFakeDriver(t, "TestFakeDriverChild", false)
	require.Contains(t, out, "fake driver checks passed")
}

func TestFakeDriverChild(t *testing.T) {
	testutil.IsolatedChild(t)
	const gib = 1 << 30
	n, err := DeviceCount()
	require.NoError(t, err)
	require.Equal(t, 1, n)

	d, err := Device(0)
	require.NoError(t, err)
	require.Equal(t, "Fake GPU", d.Name)
	require.Equal(t, "GPU-a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf", d.UUIDString)
	require.Equal(t, "0000:1b:00.0", d.PCIBusID, "the bus id is lower-cased")
	require.Equal(t, [2]int{9, 0}, d.ComputeCapability)
	require.Equal(t, 132, d.Multiprocessors)
	require.Equal(t, uint64(80*gib), d.TotalMemory)
	require.Nil(t, d.PCIe, "no NVML: no PCIe link")

	_, err = Device(1)
	require.ErrorIs(t, err, ErrNoDevice)

	e, err := Open(0, WithSampleInterval(0))
	require.NoError(t, err)
	s := e.MemoryCheck()
	require.True(t, s.DeviceValid)
	require.False(t, s.ProcessValid, "no NVML: no per-process figure")
	require.Equal(t, uint64(80*gib), s.DeviceTotal)
	require.Equal(t, uint64(70*gib), s.DeviceFree)
	require.Equal(t, uint64(10*gib), s.DeviceUsed)
	var live MemorySnapshot
	for i := 0; i < 20; i++ { // the fake's context stack is 8 deep: an unbalanced push would fail here
		live, err = e.MemoryCheckLive()
		require.NoError(t, err)
	}
	require.True(t, live.Live)
	require.Equal(t, uint64(70*gib), live.DeviceFree)

	// A failing driver call carries the driver's error name and string, and the engine stays usable.
	t.Setenv("FAKECUDA_FAIL_MEMINFO", "1")
	_, err = e.MemoryCheckLive()
	var ce *CUDAError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, "CUDA_ERROR_INVALID_CONTEXT", ce.Name)
	require.Contains(t, err.Error(), "cuMemGetInfo_v2 failed: CUDA_ERROR_INVALID_CONTEXT (201): invalid device context")
	require.ErrorAs(t, e.SampleNow(), &ce)
	require.Equal(t, s.Sequence, e.MemoryCheck().Sequence, "a failed sample publishes nothing")
	t.Setenv("FAKECUDA_FAIL_MEMINFO", "0")
	require.NoError(t, e.SampleNow())
	require.Equal(t, s.Sequence+1, e.MemoryCheck().Sequence)

	poolAccountingChecks(t, e)
	t.Setenv("FAKECUDA_FAIL_ALLOC", "1")
	failures := e.MemoryCheck().EngineAllocFailures
	_, err = e.DevicePool().Alloc(1 << 20)
	require.ErrorIs(t, err, ErrOutOfMemory)
	require.Contains(t, err.Error(), "CUDA_ERROR_OUT_OF_MEMORY")
	require.Equal(t, failures+1, e.MemoryCheck().EngineAllocFailures)
	t.Setenv("FAKECUDA_FAIL_ALLOC", "0")

	pressureChecks(t, e, 10*gib)
	require.NoError(t, e.Close())
	t.Log("fake driver checks passed")
}
