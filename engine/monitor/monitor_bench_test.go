package monitor

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ferry-ml/ferry/engine/internal/testutil"

	"github.com/ferry-ml/ferry/engine"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkMonitorLog is what the logging thread pays for one Log: the stamp and the ring append. The
// fold runs on the monitor's goroutine (BenchmarkMonitorFold is its cost per value); here the rings are
// folded outside the timed region every half ring, as the background fold does between a training
// loop's logs. A loop that logs faster than the fold for longer than a ring (4096 values) gets
// back-pressure: it folds itself (BenchmarkMonitorLogSustained).
func BenchmarkMonitorLog(b *testing.B) {
	m := quietMonitor(b, MonitorOptions{})
	id, _ := m.Metric("loss")
	v := 0.5
	n := 0
	for b.Loop() {
		_ = m.Log(id, v)
		if n++; n == logRingEntries/2 {
			b.StopTimer()
			m.Flush()
			b.StartTimer()
			n = 0
		}
	}
}

// BenchmarkMonitorLogSustained is Log in a tight loop with no pause: bounded by the fold, which the
// logging thread then does itself when its ring is full (back-pressure, never a drop).
func BenchmarkMonitorLogSustained(b *testing.B) {
	m := quietMonitor(b, MonitorOptions{})
	id, _ := m.Metric("loss")
	for b.Loop() {
		_ = m.Log(id, 0.5)
	}
}

// BenchmarkMonitorLogMany is LogMany of 4096 values: ns/op over 4096 is the cost per value of the
// batched path (it folds at once: Welford, the sketch and the series).
func BenchmarkMonitorLogMany(b *testing.B) {
	m := quietMonitor(b, MonitorOptions{})
	id, _ := m.Metric("loss")
	vs := make([]float64, 4096)
	for i := range vs {
		vs[i] = float64(i%100) * 0.01
	}
	for b.Loop() {
		_ = m.LogMany(id, vs)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(vs)), "ns/value")
}

// BenchmarkMonitorFold is the background fold's cost per value (what a logged value costs the folder).
func BenchmarkMonitorFold(b *testing.B) {
	m := quietMonitor(b, MonitorOptions{})
	id, _ := m.Metric("loss")
	for b.Loop() {
		for i := 0; i < 1024; i++ {
			_ = m.Log(id, float64(i))
		}
		m.Flush()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*1024), "ns/value")
}

// BenchmarkMonitorSummary is Summary after n values were logged: its cost does not grow with n.
func BenchmarkMonitorSummary(b *testing.B) {
	for _, n := range []int{1_000_000, 100_000_000} {
		b.Run(fmt.Sprintf("values=%d", n), func(b *testing.B) {
			if testing.Short() && n > 1_000_000 {
				b.Skip("short")
			}
			m := quietMonitor(b, MonitorOptions{})
			id, _ := m.Metric("loss")
			chunk := make([]float64, 1<<16)
			for i := range chunk {
				chunk[i] = 1 / float64(i+1)
			}
			for done := 0; done < n; done += len(chunk) {
				_ = m.LogMany(id, chunk[:min(len(chunk), n-done)])
			}
			for b.Loop() {
				s, err := m.Summary(id)
				if err != nil || s.Count != uint64(n) {
					b.Fatal(err, s.Count)
				}
			}
		})
	}
}

// BenchmarkPrometheusHistogramObserve is the anchor: client_golang's Histogram.Observe, the usual way a
// Go program records a distribution.
func BenchmarkPrometheusHistogramObserve(b *testing.B) {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "loss", Buckets: prometheus.DefBuckets})
	for b.Loop() {
		h.Observe(0.5)
	}
}

// BenchmarkMonitorSamplingCPU runs the samplers for 3 s, GPU at 10 ms and at the default 100 ms (host
// and pipelines at 100 ms and 1 s), and reports the process's CPU time over that wall time: the
// monitor's background cost. The "ticker" rows are the anchor: a bare time.Ticker at the same period,
// which is what a Go program pays to wake up that often at all.
func BenchmarkMonitorSamplingCPU(b *testing.B) {
	measure := func(b *testing.B, run func()) float64 {
		runtime.GC()
		time.Sleep(200 * time.Millisecond)
		cpu0, wall0 := testutil.CPUTime(b), time.Now()
		run()
		return (testutil.CPUTime(b) - cpu0).Seconds() / time.Since(wall0).Seconds()
	}
	for _, c := range []struct {
		name      string
		gpu, host time.Duration
	}{{"gpu=10ms", 10 * time.Millisecond, 100 * time.Millisecond}, {"gpu=100ms", 100 * time.Millisecond, time.Second}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				m, err := NewMonitor(MonitorOptions{GPUInterval: c.gpu, PCIeInterval: -1, SystemInterval: c.host})
				if err != nil {
					b.Fatal(err)
				}
				if err := m.Start(); err != nil {
					b.Fatal(err)
				}
				cores := measure(b, func() { time.Sleep(3 * time.Second) })
				_ = m.Stop()
				n := 0
				for _, name := range m.Names() {
					if strings.HasPrefix(name, "gpu") {
						n++
					}
				}
				_ = m.Close()
				b.ReportMetric(100*cores, "%core")
				b.ReportMetric(float64(n), "gpu-metrics")
			}
		})
	}
	for _, d := range []time.Duration{10 * time.Millisecond, 100 * time.Millisecond} {
		b.Run("ticker="+d.String(), func(b *testing.B) {
			for b.Loop() {
				t := time.NewTicker(d)
				cores := measure(b, func() {
					for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
						<-t.C
					}
				})
				t.Stop()
				b.ReportMetric(100*cores, "%core")
			}
		})
	}
}

// BenchmarkMonitorLogManyAt is LogManyAt of 8192 values with their own timestamps 10 µs apart (what
// Python's buffered log_metric hands over): ns per value.
func BenchmarkMonitorLogManyAt(b *testing.B) {
	m := quietMonitor(b, MonitorOptions{})
	id, _ := m.Metric("loss")
	vs, ts := make([]float64, 8192), make([]uint64, 8192)
	t0 := engine.MonotonicNow()
	for i := range vs {
		vs[i], ts[i] = float64(i%100)*0.01, t0+uint64(i)*10_000
	}
	for b.Loop() {
		_ = m.LogManyAt(id, vs, ts)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(vs)), "ns/value")
}

// BenchmarkGPUSample is one NVML reading of GPU 0: the fast fields alone (what the monitor reads every
// interval) and every field (the slow ones about once a second).
func BenchmarkGPUSample(b *testing.B) {
	if n, _ := engine.DeviceCount(); n == 0 {
		b.Skip("needs a GPU")
	}
	g, err := NewGPUSampler(0)
	if err != nil {
		b.Skip(err)
	}
	for _, c := range []struct {
		name   string
		fields GPUField
	}{{"fast", GPUFastFields}, {"all", GPUFastFields | GPUSlowFields}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := g.SampleFields(c.fields); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
