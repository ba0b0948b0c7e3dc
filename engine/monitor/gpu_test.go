package monitor

import (
	"bufio"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-ml/ferry/engine/internal/testutil"

	"github.com/stretchr/testify/require"
)

func TestGPUSamplerMatchesNvidiaSmi(t *testing.T) {
	testutil.RequireGPU(t)
	g, err := NewGPUSampler(0)
	require.NoError(t, err)
	s, err := g.Sample()
	require.NoError(t, err)
	out, err := exec.Command("nvidia-smi", "-i", "0", "--query-gpu=memory.total,memory.used,temperature.gpu,power.draw,clocks.mem",
		"--format=csv,noheader,nounits").Output()
	require.NoError(t, err, "nvidia-smi")
	f := strings.Split(strings.TrimSpace(string(out)), ",")
	require.Len(t, f, 5, "nvidia-smi output %q", out)
	num := func(i int) float64 {
		v, err := strconv.ParseFloat(strings.TrimSpace(f[i]), 64)
		require.NoError(t, err, "nvidia-smi field %d of %q", i, out)
		return v
	}
	for _, fl := range []GPUField{GPUUtilization, GPUMemory, GPUTemperature, GPUPower, GPUSMClock, GPUMemoryClock, GPUProcesses} {
		require.True(t, s.Has(fl), "an H100 reports field %#x", fl)
	}
	require.InDelta(t, num(0), float64(s.MemoryTotal)/testutil.MiB, num(0)/100, "memory total (MiB)")
	require.InDelta(t, num(1), float64(s.MemoryUsed)/testutil.MiB, 512, "memory used (MiB)")
	require.InDelta(t, num(2), float64(s.TemperatureC), 5, "temperature (C)")
	require.InDelta(t, num(3), s.PowerWatts, 40, "power (W)")
	require.InDelta(t, num(4), float64(s.MemoryClockMHz), num(4)/10, "memory clock (MHz)")
	rx, tx, ok, err := g.SamplePCIe()
	require.NoError(t, err)
	t.Logf("%s; PCIe rx %.0f tx %.0f B/s (reported %v); fields %#x", s.String(), rx, tx, ok, s.Fields())
}

const matmulLoadScript = `
import sys, time, torch
dev = torch.device("cuda", int(sys.argv[1]))
a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
torch.cuda.synchronize(dev)
print("ready", flush=True)
end = time.time() + float(sys.argv[2])
while time.time() < end:
    for _ in range(20):
        c = a @ b
    torch.cuda.synchronize(dev)
`

// TestGPUSamplerSeesLoad: while a torch matmul loop runs, utilization and power rise.
func TestGPUSamplerSeesLoad(t *testing.T) {
	testutil.RequireGPU(t)
	g, err := NewGPUSampler(0)
	require.NoError(t, err)
	idle, err := g.Sample()
	require.NoError(t, err)
	cmd := exec.Command("python3", "-c", matmulLoadScript, "0", "6")
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	sc := bufio.NewScanner(stdout)
	require.True(t, sc.Scan(), "the load script did not start")
	require.Equal(t, "ready", sc.Text())
	var maxUtil uint32
	var maxPower float64
	for i := 0; i < 30; i++ {
		time.Sleep(100 * time.Millisecond)
		s, err := g.Sample()
		require.NoError(t, err)
		maxUtil = max(maxUtil, s.UtilizationPercent)
		maxPower = max(maxPower, s.PowerWatts)
	}
	t.Logf("idle: %d%% %.0f W; under load: up to %d%% %.0f W", idle.UtilizationPercent, idle.PowerWatts, maxUtil, maxPower)
	require.GreaterOrEqual(t, maxUtil, idle.UtilizationPercent+30, "utilization rises under a matmul loop")
	require.Greater(t, maxPower, idle.PowerWatts+50, "power rises under a matmul loop")
}
