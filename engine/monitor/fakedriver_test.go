package monitor

import (
	"testing"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/testutil"

	"github.com/stretchr/testify/require"
)

// TestFakeNVML runs the GPU sampler and the NVML-backed figures against the stand-in NVML
// (testdata/fakenvml.c), beside the stand-in driver.
func TestFakeNVML(t *testing.T) {
	out := testutil.RunOnFakeDriver(t, "TestFakeNVMLChild", true)
	require.Contains(t, out, "fake NVML checks passed")
}

func TestFakeNVMLChild(t *testing.T) {
	testutil.IsolatedChild(t)
	s, err := engine.System()
	require.NoError(t, err)
	require.Equal(t, "999.1.2", s.DriverVersion)
	d, err := engine.Device(0)
	require.NoError(t, err)
	require.Equal(t, &engine.PCIeLink{GenerationCurrent: 4, GenerationMax: 5, WidthCurrent: 8, WidthMax: 16}, d.PCIe)

	e, err := engine.Open(0, engine.WithSampleInterval(0))
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
