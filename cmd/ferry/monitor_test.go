package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/monitor"
	"github.com/ferry-ml/ferry/engine/report"
)

// runCLISplit runs the CLI in-process with standard output and standard error apart.
func runCLISplit(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := newRootCommand()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err = root.Execute()
	return out.String(), errOut.String(), err
}

func TestMonitorCommand(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent()) // the samplers and the endpoint are stopped
	dir := t.TempDir()
	jsonPath := filepath.Join(dir, "run.json")
	htmlPath := filepath.Join(dir, "run.html")

	out, err := runCLI(t, "monitor", "--duration", "300ms", "--interval", "100ms",
		"--report", jsonPath, "--prometheus", "127.0.0.1:0")
	require.NoError(t, err, out)
	require.Contains(t, out, "CPU")
	require.Contains(t, out, "PROCESS RSS")
	require.Regexp(t, `prometheus: serving http://127\.0\.0\.1:\d+/metrics`, out)
	require.NotRegexp(t, regexp.MustCompile(`prometheus: serving http://127\.0\.0\.1:0/`), out, "the bound port is printed")
	require.Contains(t, out, "(final)")
	require.Contains(t, out, "report written to "+jsonPath)
	require.NotContains(t, out, clearScreen, "no ANSI codes when the output is not a terminal")
	if n, _ := engine.DeviceCount(); n == 0 {
		require.Contains(t, out, "no GPU")
	} else {
		require.Contains(t, out, "SM CLOCK")
	}
	frames := strings.Count(out, "ferry monitor ")
	require.GreaterOrEqual(t, frames, 2, "a frame every 100 ms for 300 ms, then the final one:\n%s", out)

	b, err := os.ReadFile(jsonPath)
	require.NoError(t, err)
	var r report.Report
	require.NoError(t, json.Unmarshal(b, &r))
	require.Equal(t, report.ReportSchema, r.Schema)
	require.GreaterOrEqual(t, r.DurationS, 0.3)
	require.Contains(t, r.SystemMetrics, "memory_percent", "the system sampler ran")
	require.Positive(t, r.SystemMetrics["memory_percent"].Count)

	// The HTML report, and the JSON on standard output with the live view on standard error.
	stdout, stderr, err := runCLISplit(t, "monitor", "--duration", "150ms", "--interval", "50ms",
		"--report", htmlPath, "--json")
	require.NoError(t, err, stderr)
	require.Contains(t, stderr, "CPU")
	require.Contains(t, stderr, "report written to "+htmlPath)
	var r2 report.Report
	require.NoError(t, json.Unmarshal([]byte(stdout), &r2), "standard output is the report alone:\n%s", stdout)
	require.Equal(t, report.ReportSchema, r2.Schema)
	h, err := os.ReadFile(htmlPath)
	require.NoError(t, err)
	require.True(t, bytes.HasPrefix(bytes.TrimSpace(bytes.ToLower(h)), []byte("<!doctype html")), "%.200s", h)
	require.Contains(t, string(h), "</html>")
}

func TestMonitorCommandStopsOnSignal(t *testing.T) {
	// The test keeps its own handler, so that a signal sent before the command listens is harmless.
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	path := filepath.Join(t.TempDir(), "run.json")
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		type result struct {
			out string
			err error
		}
		done := make(chan result, 1)
		start := time.Now()
		go func() {
			root := newRootCommand()
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetErr(&out)
			root.SetArgs([]string{"monitor", "--interval", "50ms", "--report", path})
			err := root.Execute()
			done <- result{out.String(), err}
		}()
		var res result
	wait:
		for {
			select {
			case res = <-done:
				break wait
			case <-time.After(100 * time.Millisecond):
				require.NoError(t, syscall.Kill(os.Getpid(), sig))
			}
		}
		require.NoError(t, res.err, res.out)
		require.Less(t, time.Since(start), 30*time.Second)
		require.Contains(t, res.out, "interrupted: stopping", sig)
		require.Contains(t, res.out, "(final)")
		require.FileExists(t, path)
		require.NoError(t, os.Remove(path))
	}
}

func TestMonitorCommandStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	root := newRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"monitor", "--interval", "50ms"})
	require.NoError(t, root.ExecuteContext(ctx))
	require.Contains(t, out.String(), "(final)")
}

func TestMonitorCommandRejectsBadFlags(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--interval", "0s"}, "--interval"},
		{[]string{"--interval", "5ms"}, "--interval"},
		{[]string{"--interval", "2m"}, "--interval"},
		{[]string{"--duration", "-1s"}, "--duration"},
		{[]string{"--report", filepath.Join(dir, "run.txt")}, ".html or .json"},
		{[]string{"--report", filepath.Join(dir, "missing", "run.json")}, "does not exist"},
		{[]string{"--prometheus", "9400", "--duration", "10ms"}, "prometheus address"},
		{[]string{"extra"}, "unknown command"},
	} {
		_, err := runCLI(t, append([]string{"monitor"}, c.args...)...)
		require.Error(t, err, "%v", c.args)
		require.Contains(t, err.Error(), c.msg, "%v", c.args)
	}
}

func TestMonitorCommandPortInUse(t *testing.T) {
	m, err := monitor.NewMonitor(monitor.MonitorOptions{GPUInterval: -1, SystemInterval: -1})
	require.NoError(t, err)
	defer m.Close()
	addr, shutdown, err := m.ServePrometheus("127.0.0.1:0")
	require.NoError(t, err)
	defer shutdown()
	_, err = runCLI(t, "monitor", "--duration", "10ms", "--prometheus", addr.String())
	require.ErrorIs(t, err, engine.ErrIO)
	require.Contains(t, err.Error(), addr.String())
}

func TestMonitorFrame(t *testing.T) {
	mr := func(v float64) *report.MetricReport {
		return &report.MetricReport{Count: 1, Last: report.Float(v), Mean: report.Float(v)}
	}
	empty := &report.MetricReport{Last: report.Float(math.NaN())}
	full := map[string]*report.MetricReport{
		"utilization_percent": mr(37), "memory_used_bytes": mr(1 << 30), "memory_total_bytes": mr(80 << 30),
		"power_watts": mr(123.4), "temperature_celsius": mr(55), "sm_clock_mhz": mr(1980),
	}
	host := map[string]*report.MetricReport{
		"cpu_percent": mr(12.34), "memory_percent": mr(45.6), "load1": mr(1.5), "process_rss_bytes": mr(300 << 20),
	}
	for _, c := range []struct {
		name   string
		gpus   []gpuName
		gm     map[string]map[string]*report.MetricReport
		sys    map[string]*report.MetricReport
		want   []string
		absent []string
	}{
		{
			name: "no GPU", sys: host,
			want:   []string{"no GPU (driver missing)", "12.3 %", "45.6 %", "1.50", "300.0 MiB"},
			absent: []string{"SM CLOCK"},
		},
		{
			name: "one GPU with every field", gpus: []gpuName{{0, "NVIDIA H100"}},
			gm: map[string]map[string]*report.MetricReport{"0": full}, sys: host,
			want:   []string{"NVIDIA H100", "37 %", "1.0 / 80.0 GiB", "123 W", "55 C", "1980 MHz", "12.3 %"},
			absent: []string{"no GPU"},
		},
		{
			name: "absent fields are dashes, not zeros", gpus: []gpuName{{0, "A"}, {1, "B"}},
			gm:     map[string]map[string]*report.MetricReport{"0": {"utilization_percent": mr(5), "power_watts": empty}},
			sys:    map[string]*report.MetricReport{"memory_percent": mr(50)},
			want:   []string{"5 %", "50.0 %"},
			absent: []string{" 0 W", " 0 C", " 0 MHz", " 0.0 %"},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := &report.Report{Host: "h", GPUMetrics: c.gm, SystemMetrics: c.sys}
			var b strings.Builder
			require.NoError(t, writeMonitorFrame(&b, r, c.gpus, "no GPU (driver missing)", monitorConfig{}, false))
			out := b.String()
			require.Contains(t, out, "CPU")
			require.Contains(t, out, "Ctrl-C")
			for _, s := range c.want {
				require.Contains(t, out, s)
			}
			for _, s := range c.absent {
				require.NotContains(t, out, s)
			}
			if len(c.gpus) == 2 {
				lines := strings.Split(out, "\n")
				var rowB string
				for _, l := range lines {
					if strings.Contains(l, " B ") {
						rowB = l
					}
				}
				require.Regexp(t, `^\s*1\s+B(\s+-){5}\s*$`, rowB, "a device without figures: all dashes\n%s", out)
			}
		})
	}
}
