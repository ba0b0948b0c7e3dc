package monitor

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/testutil"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
)

// Fault injection: each case makes one thing fail (a source, the driver, NVML, the network) and checks
// that the failure comes back as a clear error, that nothing waits without bound, that the engine's
// memory returns to where it was, and that the engine still works afterwards. The cases that need a
// failing driver or NVML run in a child process on the stand-in libraries (testdata/fakecuda.c,
// testdata/fakenvml.c), whose environment switches inject the faults.
// syncBuffer is a log destination that several goroutines write.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestFaultNVML makes NVML fail mid-sampling: the stand-in answers its first 12 device calls and fails
// every later one with NVML_ERROR_GPU_IS_LOST.
func TestFaultNVML(t *testing.T) {
	out := testutil.RunOnFakeDriver(t, "TestFaultNVMLChild", true, "FAKENVML_FAIL_AFTER=12")
	require.Contains(t, out, "NVML fault checks passed")
}

func TestFaultNVMLChild(t *testing.T) {
	testutil.IsolatedChild(t)
	var logs syncBuffer
	logger := zerolog.New(&logs).Level(zerolog.DebugLevel)
	m, err := NewMonitor(MonitorOptions{GPUInterval: MinSampleInterval, PCIeInterval: -1, SystemInterval: -1,
		Logger: &logger})
	require.NoError(t, err)
	require.NoError(t, m.Start())
	// Twelve calls: the handle lookup, the first sample's nine queries (with the slow fields), and the
	// second sample's utilization and memory queries; its temperature query is the first to fail.
	require.Eventually(t, func() bool { return strings.Count(logs.String(), `"GPU sample failed"`) >= 3 },
		testutil.FaultBound, time.Millisecond, "the sampler keeps sampling after the failure:\n%s", logs.String())
	require.True(t, m.Sampling())

	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	var warnings []string
	for _, l := range lines {
		if strings.Contains(l, `"level":"warn"`) {
			warnings = append(warnings, l)
		}
	}
	require.Len(t, warnings, 1, "one warning when the sampler starts failing, not one a sample:\n%s", logs.String())
	for _, w := range []string{`"gpu":0`, "GPU sample failed", "left out", "nvmlDeviceGetTemperature failed: GPU is lost (15)"} {
		require.Contains(t, warnings[0], w)
	}

	count := func(name string) uint64 {
		id, err := m.Metric(name)
		require.NoError(t, err)
		s, err := m.Summary(id)
		require.NoError(t, err)
		return s.Count
	}
	want := map[string]float64{
		"gpu0/utilization_percent": 37, "gpu0/memory_utilization_percent": 12, "gpu0/memory_used_bytes": float64(80<<30 - 70<<30 - 512<<20),
		"gpu0/memory_total_bytes": 80 << 30, "gpu0/temperature_celsius": 55, "gpu0/power_watts": 123.456,
		"gpu0/sm_clock_mhz": 1980, "gpu0/memory_clock_mhz": 2619, "gpu0/processes": 1, "gpu0/process_memory_bytes": 1 << 30,
	}
	for _, name := range m.Names() {
		if !strings.HasPrefix(name, "gpu0/") {
			continue
		}
		v, ok := want[name]
		require.True(t, ok, "unexpected metric %s", name)
		id, err := m.Metric(name)
		require.NoError(t, err)
		s, err := m.Summary(id)
		require.NoError(t, err)
		require.Equal(t, v, s.Min, "%s: a failed query is absent, never zero", name)
		require.Equal(t, v, s.Max, name)
	}
	// The sample cut short by the failure still gave the fields read before it.
	require.Equal(t, uint64(2), count("gpu0/utilization_percent"))
	require.Equal(t, uint64(2), count("gpu0/memory_used_bytes"))
	require.Equal(t, uint64(1), count("gpu0/temperature_celsius"))
	require.Equal(t, uint64(1), count("gpu0/processes"))

	// The monitor still records what the program logs.
	id, err := m.Metric("loss")
	require.NoError(t, err)
	require.NoError(t, m.Log(id, 0.5))
	s, err := m.Summary(id)
	require.NoError(t, err)
	require.Equal(t, uint64(1), s.Count)
	require.NoError(t, testutil.Within(t, testutil.FaultBound, "Monitor.Close", m.Close))
	t.Log("NVML fault checks passed")
}

// TestFaultSystemSamplerPathRemoved removes a disk path the system sampler reads, mid-run: the path's
// fields stop, the host's go on, and the failure is logged once as a warning.
func TestFaultSystemSamplerPathRemoved(t *testing.T) {
	dir := t.TempDir() + "/data"
	require.NoError(t, os.Mkdir(dir, 0o755))
	var logs syncBuffer
	logger := zerolog.New(&logs).Level(zerolog.DebugLevel)
	m, err := NewMonitor(MonitorOptions{GPUInterval: -1, SystemInterval: MinSampleInterval, DiskPaths: []string{dir},
		Logger: &logger})
	require.NoError(t, err)
	defer m.Close()
	count := func(name string) uint64 {
		id, err := m.Metric(name)
		require.NoError(t, err)
		s, err := m.Summary(id)
		require.NoError(t, err)
		return s.Count
	}
	disk := "disk/" + metricPathName(dir) + "/used_percent"
	require.NoError(t, m.Start())
	require.Eventually(t, func() bool { return count(disk) >= 2 }, testutil.FaultBound, time.Millisecond)
	require.NoError(t, os.Remove(dir))
	require.Eventually(t, func() bool { return strings.Count(logs.String(), `"system sample failed"`) >= 3 },
		testutil.FaultBound, time.Millisecond, "the sampler keeps sampling after the failure:\n%s", logs.String())
	require.NoError(t, m.Stop())
	warnings := strings.Count(logs.String(), `"level":"warn"`)
	require.Equal(t, 1, warnings, "one warning when the sampler starts failing:\n%s", logs.String())
	require.Contains(t, logs.String(), dir+`\": no such file or directory`)
	// Samples after the failure still gave the host's fields, and not the removed path's.
	memory, usage := count("system/memory_used_bytes"), count(disk)
	require.Greater(t, memory, usage+2, "host fields are logged while the path fails")
	require.NoError(t, m.Close())
}

func TestFaultPrometheusPortInUse(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	port := taken.Addr().(*net.TCPAddr).Port
	m := quietMonitor(t, MonitorOptions{})
	for _, addr := range []string{taken.Addr().String(), fmt.Sprintf("127.0.0.1:+%d", port)} {
		t.Run(addr, func(t *testing.T) {
			got, shutdown, err := m.ServePrometheus(addr)
			require.Nil(t, got)
			require.Nil(t, shutdown)
			require.ErrorIs(t, err, engine.ErrIO)
			require.Contains(t, err.Error(), "prometheus endpoint: cannot listen on "+taken.Addr().String())
			require.Contains(t, err.Error(), "address already in use")
		})
	}
	// The monitor still works, and serves on a free port.
	logValues(t, m, "loss", 3, 1, 2)
	id, err := m.Metric("loss")
	require.NoError(t, err)
	s, err := m.Summary(id)
	require.NoError(t, err)
	require.Equal(t, uint64(3), s.Count)
	body, err := scrape(servePrometheus(t, m))
	require.NoError(t, err)
	require.Contains(t, body, "ferry_loss{")
}
