package engine

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// buildFake compiles a stand-in library from testdata (fakecuda.c, fakenvml.c) and returns its path.
func buildFake(t *testing.T, source, name string) string {
	t.Helper()
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "cc"
	}
	out := filepath.Join(t.TempDir(), name)
	cmd := exec.Command(cc, "-std=c11", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", out, filepath.Join("testdata", source))
	msg, err := cmd.CombinedOutput()
	require.NoError(t, err, "building %s: %s", source, msg)
	return out
}

// buildFakeDriver compiles the stand-in CUDA driver.
func buildFakeDriver(t *testing.T) string { return buildFake(t, "fakecuda.c", "libcuda.so.1") }

// TestFakeDriver runs the engine's GPU path against a stand-in driver, so that it is exercised on hosts
// without a GPU too.
func TestFakeDriver(t *testing.T) {
	lib := buildFakeDriver(t)
	out := runIsolated(t, "TestFakeDriverChild", "FERRY_CUDA_LIBRARY="+lib,
		"FERRY_NVML_LIBRARY=/nonexistent/libnvidia-ml.so.1")
	require.Contains(t, out, "fake driver checks passed")
}

func TestFakeDriverChild(t *testing.T) {
	isolatedChild(t)
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

	iteratorChecks(t, e)
	everySourceChecks(t, e)
	// The stand-in cannot run kernels: the transforms run on the host and their outputs cross.
	t.Run("transforms", func(t *testing.T) { transformChecks(t, e, func(Staging) Staging { return StagingGather }) })
	t.Run("planar transforms", func(t *testing.T) { planarChecks(t, e) })
	t.Run("dma", func(t *testing.T) { dmaChecks(t, e) })
	pressureChecks(t, e, 10*gib)
	require.NoError(t, e.Close())
	t.Log("fake driver checks passed")
}

// TestFakeNVML runs the GPU sampler and the NVML-backed figures against the stand-in NVML
// (testdata/fakenvml.c), beside the stand-in driver.
func TestFakeNVML(t *testing.T) {
	out := runIsolated(t, "TestFakeNVMLChild", "FERRY_CUDA_LIBRARY="+buildFakeDriver(t),
		"FERRY_NVML_LIBRARY="+buildFake(t, "fakenvml.c", "libnvidia-ml.so.1"))
	require.Contains(t, out, "fake NVML checks passed")
}

func TestFakeNVMLChild(t *testing.T) {
	isolatedChild(t)
	s, err := System()
	require.NoError(t, err)
	require.Equal(t, "999.1.2", s.DriverVersion)
	d, err := Device(0)
	require.NoError(t, err)
	require.Equal(t, &PCIeLink{GenerationCurrent: 4, GenerationMax: 5, WidthCurrent: 8, WidthMax: 16}, d.PCIe)

	e, err := Open(0, WithSampleInterval(0))
	require.NoError(t, err)
	defer e.Close()
	snap := e.MemoryCheck()
	require.True(t, snap.ProcessValid, "NVML lists this process")
	require.Equal(t, uint64(1<<30), snap.ProcessDevice)

	g, err := NewGPUSampler(0)
	require.NoError(t, err)
	gs, err := g.Sample()
	require.NoError(t, err)
	require.True(t, gs.Has(GPUUtilization|GPUMemoryUtilization|GPUMemory|GPUTemperature|GPUPower|GPUSMClock|GPUMemoryClock|GPUProcesses))
	require.Equal(t, uint32(37), gs.UtilizationPercent)
	require.Equal(t, uint32(12), gs.MemoryUtilizationPercent)
	require.Equal(t, uint32(55), gs.TemperatureC)
	require.InDelta(t, 123.456, gs.PowerWatts, 1e-9)
	require.Equal(t, uint32(1980), gs.SMClockMHz)
	require.Equal(t, uint32(2619), gs.MemoryClockMHz)
	require.Equal(t, uint64(80<<30), gs.MemoryTotal)
	self, ok := gs.Self()
	require.True(t, ok)
	require.Equal(t, uint64(1<<30), self.MemoryUsed)
	// Absent both ways: ECC answers "not supported", the throttle query does not exist in this NVML.
	require.False(t, gs.Has(GPUECCCorrected))
	require.False(t, gs.Has(GPUECCUncorrected))
	require.False(t, gs.Has(GPUThrottleReasons))
	require.False(t, gs.Has(GPUPCIe), "no PCIe reading before SamplePCIe")
	rx, tx, ok, err := g.SamplePCIe()
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, 1000.0*1024, rx)
	require.Equal(t, 2000.0*1024, tx)
	gs, err = g.Sample()
	require.NoError(t, err)
	require.True(t, gs.Has(GPUPCIe))
	require.Equal(t, 1000.0*1024, gs.PCIeRxBytesPerSec)
	require.Equal(t, 9, gs.NumFields())
	t.Log("fake NVML checks passed")
}
