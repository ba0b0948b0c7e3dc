package monitor

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-ml/ferry/engine/internal/objstore"

	"github.com/ferry-ml/ferry/engine/data"
	"github.com/ferry-ml/ferry/engine/internal/enginetest"
	"github.com/ferry-ml/ferry/engine/internal/testutil"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/report"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// quietMonitor is a monitor with the samplers off.
func quietMonitor(t testing.TB, opts MonitorOptions) *Monitor {
	t.Helper()
	if opts.GPUInterval == 0 {
		opts.GPUInterval = -1
	}
	if opts.SystemInterval == 0 {
		opts.SystemInterval = -1
	}
	m, err := NewMonitor(opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = m.Close() })
	return m
}

func TestMonitorSummaryMatchesExact(t *testing.T) {
	seed := rand.Uint64()
	r := rand.New(rand.NewPCG(seed, 1))
	for _, dist := range []struct {
		name string
		gen  func() float64
	}{
		{"lognormal", func() float64 { return math.Exp(r.NormFloat64()) }},
		{"normal around 0", func() float64 { return r.NormFloat64() * 3 }},
		{"uniform 1e-6..1e6", func() float64 { return math.Pow(10, r.Float64()*12-6) }},
	} {
		t.Run(dist.name, func(t *testing.T) {
			m := quietMonitor(t, MonitorOptions{})
			id, err := m.Metric("x")
			require.NoError(t, err)
			xs := make([]float64, 200000)
			for i := range xs {
				xs[i] = dist.gen()
				require.NoError(t, m.Log(id, xs[i]))
			}
			s, err := m.Summary(id)
			require.NoError(t, err)
			// The batched path (LogMany: batch statistics merged, sketch stores fed directly) agrees.
			batched, err := m.Metric("x_batched")
			require.NoError(t, err)
			for i := 0; i < len(xs); i += 4096 {
				require.NoError(t, m.LogMany(batched, xs[i:min(i+4096, len(xs))]))
			}
			sb, err := m.Summary(batched)
			require.NoError(t, err)
			require.Equal(t, s.Count, sb.Count)
			require.Equal(t, s.Min, sb.Min)
			require.Equal(t, s.Max, sb.Max)
			require.InDelta(t, s.Mean, sb.Mean, 1e-9*math.Max(1, math.Abs(s.Mean)))
			require.InDelta(t, s.Std, sb.Std, 1e-9*math.Max(1, s.Std))
			require.Equal(t, []float64{s.P50, s.P90, s.P99, s.P999}, []float64{sb.P50, sb.P90, sb.P99, sb.P999})
			sorted := append([]float64(nil), xs...)
			sort.Float64s(sorted)
			var sum float64
			for _, x := range xs {
				sum += x
			}
			mean := sum / float64(len(xs))
			var ss float64
			for _, x := range xs {
				ss += (x - mean) * (x - mean)
			}
			require.Equal(t, uint64(len(xs)), s.Count, "seed %d", seed)
			require.InDelta(t, mean, s.Mean, 1e-9*math.Max(1, math.Abs(mean)))
			require.InDelta(t, math.Sqrt(ss/float64(len(xs))), s.Std, 1e-9*math.Max(1, s.Std))
			require.Equal(t, sorted[0], s.Min)
			require.Equal(t, sorted[len(sorted)-1], s.Max)
			require.Equal(t, xs[len(xs)-1], s.Last)
			for _, c := range []struct {
				q   float64
				got float64
			}{{0.5, s.P50}, {0.9, s.P90}, {0.99, s.P99}, {0.999, s.P999}} {
				// DDSketch's guarantee: within its relative accuracy of the value of rank q*(n-1). Rank
				// conventions differ by one (ceil(q*n)-1 or q*(n-1)), which matters near zero, where
				// neighbouring values differ by more than the accuracy of either: accept the ranks
				// around q*(n-1).
				lo := int(math.Floor(c.q*float64(len(sorted)-1))) - 1
				hi := int(math.Ceil(c.q*float64(len(sorted)))) + 1
				ok := false
				for k := max(lo, 0); k <= min(hi, len(sorted)-1); k++ {
					if math.Abs(c.got-sorted[k]) <= DefaultSketchAccuracy*math.Abs(sorted[k])+1e-12 {
						ok = true
					}
				}
				require.True(t, ok, "p%g = %g; the values of ranks %d..%d are %v (seed %d)", c.q*100, c.got, lo, hi,
					sorted[max(lo, 0):min(hi, len(sorted)-1)+1], seed)
			}
		})
	}
}

func TestMonitorConcurrentLogsAreAllCounted(t *testing.T) {
	m := quietMonitor(t, MonitorOptions{})
	a, err := m.Metric("a")
	require.NoError(t, err)
	b, err := m.Metric("b")
	require.NoError(t, err)
	const goroutines, per = 8, 50000 // more than a ring holds: full rings fold, never drop
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < per; i++ {
				_ = m.Log(a, float64(i))
				_ = m.Log(b, 1)
			}
		}(g)
	}
	wg.Wait()
	sa, err := m.Summary(a)
	require.NoError(t, err)
	sb, err := m.Summary(b)
	require.NoError(t, err)
	require.Equal(t, uint64(goroutines*per), sa.Count)
	require.Equal(t, uint64(goroutines*per), sb.Count)
	require.InDelta(t, float64(per-1)/2, sa.Mean, 1e-6)
	require.Equal(t, 0.0, sa.Min)
	require.Equal(t, float64(per-1), sa.Max)
	require.Equal(t, 0.0, sb.Std)
}

func TestMonitorMetricsAndBadInput(t *testing.T) {
	m := quietMonitor(t, MonitorOptions{})
	id, err := m.Metric("train/loss")
	require.NoError(t, err)
	again, err := m.Metric("train/loss")
	require.NoError(t, err)
	require.Equal(t, id, again, "a name is interned once")
	require.Equal(t, "train/loss", m.MetricName(id))
	for _, bad := range []string{"", "a b", "loss{x}", strings.Repeat("x", 300), "ü"} {
		_, err := m.Metric(bad)
		require.ErrorIs(t, err, engine.ErrInvalidArgument, "%q", bad)
	}
	require.ErrorIs(t, m.Log(99, 1), errUnknownMetric)
	require.ErrorIs(t, m.LogMany(99, []float64{1}), errUnknownMetric)
	_, err = m.Summary(99)
	require.ErrorIs(t, err, errUnknownMetric)

	// Non-finite values are counted apart and leave the statistics alone.
	for _, v := range []float64{1, math.NaN(), 3, math.Inf(1), math.Inf(-1)} {
		require.NoError(t, m.Log(id, v))
	}
	s, err := m.Summary(id)
	require.NoError(t, err)
	require.Equal(t, uint64(2), s.Count)
	require.Equal(t, uint64(3), s.NonFinite)
	require.Equal(t, 2.0, s.Mean)

	// An empty metric summarizes to NaN, and its JSON to null.
	empty, err := m.Metric("empty")
	require.NoError(t, err)
	es, err := m.Summary(empty)
	require.NoError(t, err)
	require.Zero(t, es.Count)
	require.True(t, math.IsNaN(es.Mean))
	js, err := m.Report().JSON()
	require.NoError(t, err)
	require.Contains(t, string(js), `"p50": null`)

	for _, o := range []MonitorOptions{{GPUInterval: time.Millisecond}, {SystemInterval: 2 * time.Hour},
		{SketchAccuracy: 0.7}, {SeriesPoints: 3}} {
		_, err := NewMonitor(o)
		require.ErrorIs(t, err, engine.ErrInvalidArgument, "%+v", o)
	}
	require.NoError(t, m.Close())
	require.ErrorIs(t, m.Close(), engine.ErrClosed)
	_, err = m.Metric("new")
	require.ErrorIs(t, err, engine.ErrClosed)
	_, err = m.Summary(id)
	require.NoError(t, err, "summaries work after Close")
}

func TestMonitorLogManySeriesAndReport(t *testing.T) {
	m := quietMonitor(t, MonitorOptions{SeriesPoints: 64})
	loss, err := m.Metric("loss")
	require.NoError(t, err)
	vals := make([]float64, 1000)
	for i := range vals {
		vals[i] = float64(i)
	}
	require.NoError(t, m.LogMany(loss, vals))
	s, err := m.Summary(loss)
	require.NoError(t, err)
	require.Equal(t, uint64(1000), s.Count)
	require.Equal(t, 499.5, s.Mean)

	// A series spread over time stays within its capacity and keeps every value's count.
	lr, err := m.Metric("lr")
	require.NoError(t, err)
	t0 := engine.MonotonicNow()
	for i := 0; i < 5000; i++ {
		require.NoError(t, m.LogAt(lr, t0+uint64(i)*uint64(time.Millisecond), float64(i)))
	}
	pts, err := m.Series(lr)
	require.NoError(t, err)
	require.LessOrEqual(t, len(pts), 64)
	require.Greater(t, len(pts), 16)
	var n uint64
	for i, p := range pts {
		n += p.Count
		require.LessOrEqual(t, p.Min, p.Mean)
		require.LessOrEqual(t, p.Mean, p.Max)
		if i > 0 {
			require.Greater(t, p.Time, pts[i-1].Time)
		}
	}
	require.Equal(t, uint64(5000), n)
	require.Equal(t, 4999.0, pts[len(pts)-1].Last)

	// Samplers' names land in their groups.
	for _, name := range []string{"gpu0/utilization_percent", "gpu1/power_watts", "system/cpu_percent",
		"disk/data/used_percent", "pipeline/train/data_stall_percent"} {
		id, err := m.Metric(name)
		require.NoError(t, err)
		require.NoError(t, m.LogAt(id, engine.MonotonicNow(), 42))
	}
	r := m.Report()
	require.Equal(t, report.ReportSchema, r.Schema)
	require.Contains(t, r.TrainingMetrics, "loss")
	require.Contains(t, r.TrainingMetrics, "lr")
	require.NotContains(t, r.TrainingMetrics, "system/cpu_percent")
	require.Equal(t, report.Float(42), r.GPUMetrics["0"]["utilization_percent"].Last)
	require.Contains(t, r.GPUMetrics["1"], "power_watts")
	require.Contains(t, r.SystemMetrics, "cpu_percent")
	require.Contains(t, r.SystemMetrics, "disk/data/used_percent")
	require.Contains(t, r.PipelineMetrics["train"], "data_stall_percent")
	require.Equal(t, report.Float(499.5), r.TrainingMetrics["loss"].Mean)

	dir := t.TempDir()
	path := filepath.Join(dir, "report.json")
	require.NoError(t, r.WriteJSON(path))
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o644), fi.Mode().Perm())
	var back map[string]any
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &back))
	for _, k := range []string{"schema", "training_metrics", "gpu_metrics", "system_metrics", "pipeline_metrics"} {
		require.Contains(t, back, k)
	}
	tm := back["training_metrics"].(map[string]any)["loss"].(map[string]any)
	for _, k := range []string{"count", "mean", "min", "max", "std", "p50", "p90", "p99", "p999", "series"} {
		require.Contains(t, tm, k)
	}
	// A symbolic link at the path is replaced, not followed.
	target := filepath.Join(dir, "target")
	require.NoError(t, os.WriteFile(target, []byte("keep"), 0o600))
	link := filepath.Join(dir, "link.json")
	require.NoError(t, os.Symlink(target, link))
	require.NoError(t, r.WriteJSON(link))
	kept, err := os.ReadFile(target)
	require.NoError(t, err)
	require.Equal(t, "keep", string(kept))
	require.ErrorIs(t, r.WriteJSON(filepath.Join(dir, "no", "such", "dir.json")), engine.ErrInvalidArgument)
}

func TestMonitorJSONL(t *testing.T) {
	m := quietMonitor(t, MonitorOptions{})
	id, err := m.Metric("loss")
	require.NoError(t, err)
	require.NoError(t, m.Log(id, 0.5)) // before the stream: not in it
	var buf bytes.Buffer
	stop, err := m.StreamJSONL(&buf)
	require.NoError(t, err)
	for i := 0; i < 100; i++ {
		require.NoError(t, m.Log(id, float64(i)))
	}
	require.NoError(t, m.Log(id, math.NaN()))
	require.NoError(t, stop())
	require.NoError(t, m.Log(id, 7)) // after stop: not in it
	m.Flush()
	sc := bufio.NewScanner(&buf)
	n := 0
	for sc.Scan() {
		var line struct {
			T      float64  `json:"t"`
			Metric string   `json:"metric"`
			Value  *float64 `json:"value"`
		}
		require.NoError(t, json.Unmarshal(sc.Bytes(), &line), sc.Text())
		require.Equal(t, "loss", line.Metric)
		if n < 100 {
			require.Equal(t, float64(n), *line.Value)
		} else {
			require.Nil(t, line.Value, "NaN is null")
		}
		require.GreaterOrEqual(t, line.T, 0.0)
		n++
	}
	require.Equal(t, 101, n)
}

func TestTickClockTracksMonotonic(t *testing.T) {
	c := newTickClock()
	time.Sleep(15 * time.Millisecond)
	c.calibrate()
	for i := 0; i < 5; i++ {
		want := engine.MonotonicNow()
		got := c.toNanos(ticks())
		require.InDelta(t, float64(want), float64(got), 50e3, "ticks map to CLOCK_MONOTONIC within 50 µs")
		time.Sleep(3 * time.Millisecond)
	}
}

func TestMonitorSamplersWithoutDevices(t *testing.T) {
	m, err := NewMonitor(MonitorOptions{GPUInterval: 10 * time.Millisecond, SystemInterval: 10 * time.Millisecond,
		DiskPaths: []string{t.TempDir()}, Devices: []int{}})
	require.NoError(t, err)
	defer m.Close()
	require.NoError(t, m.Start())
	require.True(t, m.Sampling())
	time.Sleep(80 * time.Millisecond)
	require.NoError(t, m.Stop())
	r := m.Report()
	require.Empty(t, r.GPUMetrics, "no devices sampled: no GPU metric, not zeros")
	require.Contains(t, r.SystemMetrics, "memory_percent")
	require.Contains(t, r.SystemMetrics, "cpu_percent", "the second sample gives the CPU rate")
}

func TestMonitorJSONLFile(t *testing.T) {
	m := quietMonitor(t, MonitorOptions{})
	id, err := m.Metric("loss")
	require.NoError(t, err)
	dir := t.TempDir()
	path := filepath.Join(dir, "metrics.jsonl")
	stop, err := m.StreamJSONLFile(path)
	require.NoError(t, err)
	require.NoError(t, m.Log(id, 1.5))
	require.NoError(t, stop())
	require.NoError(t, stop(), "stop is idempotent")
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Contains(t, string(b), `"metric":"loss","value":1.5}`)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o644), fi.Mode().Perm())
	link := filepath.Join(dir, "link.jsonl")
	require.NoError(t, os.Symlink(path, link))
	_, err = m.StreamJSONLFile(link)
	require.ErrorIs(t, err, engine.ErrIO, "a symbolic link is refused")
	_, err = m.StreamJSONLFile(filepath.Join(dir, "missing", "x.jsonl"))
	require.ErrorIs(t, err, engine.ErrIO)
}

// TestMonitorPipelineSampledAtReport attaches an iterator to a running monitor whose pipeline sampler next
// runs in a minute: the report samples it itself, so a run shorter than the interval has its figures.
func TestMonitorPipelineSampledAtReport(t *testing.T) {
	e := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	const n = 4096
	raw := make([]byte, n*64)
	src, err := data.NewMemorySource(n, []data.Field{{Name: "x", DType: data.Uint8, Shape: []int{64}}}, [][]byte{raw})
	require.NoError(t, err)
	defer src.Close()
	it, err := data.NewIterator(e, src, data.IteratorOptions{BatchSize: 64})
	require.NoError(t, err)
	defer it.Close()
	m, err := NewMonitor(MonitorOptions{GPUInterval: -1, SystemInterval: time.Minute})
	require.NoError(t, err)
	defer m.Close()
	require.NoError(t, m.Start()) // samples once now, then in a minute
	require.NoError(t, m.AttachIterator("train", it))
	batches := 0
	for start := time.Now(); time.Since(start) < 3*reportSampleAge; {
		b, err := it.Next(context.Background(), 0)
		if errors.Is(err, io.EOF) {
			continue
		}
		require.NoError(t, err)
		require.NoError(t, b.Release(0))
		batches++
	}
	r := m.Report()
	p := r.PipelineMetrics["train"]
	require.NotNil(t, p, "the report sampled the attached iterator")
	// The sampler's first run may see the iterator just attached (a rate over nothing); the report's sample
	// covers the batches read since.
	count := p["samples_per_second"].Count
	require.GreaterOrEqual(t, count, uint64(1))
	require.Greater(t, float64(p["samples_per_second"].Last), 0.0, "%d batches were read", batches)
	// A second report right away does not sample again over a few microseconds.
	require.Equal(t, count, m.Report().PipelineMetrics["train"]["samples_per_second"].Count)
}

// A named pipe as the JSONL file: with no reader the open would wait for one for ever; it is refused at
// once, and with a reader the stream is written to it.
func TestMonitorJSONLFileNamedPipe(t *testing.T) {
	m := quietMonitor(t, MonitorOptions{})
	id, err := m.Metric("loss")
	require.NoError(t, err)
	fifo := filepath.Join(t.TempDir(), "metrics.fifo")
	require.NoError(t, unix.Mkfifo(fifo, 0o600))
	err = testutil.Within(t, testutil.FaultBound, "StreamJSONLFile", func() error {
		_, err := m.StreamJSONLFile(fifo)
		return err
	})
	require.ErrorIs(t, err, engine.ErrIO)
	require.Contains(t, err.Error(), "named pipe that no process has open for reading")

	r, err := os.OpenFile(fifo, os.O_RDONLY|unix.O_NONBLOCK, 0)
	require.NoError(t, err)
	defer r.Close()
	stop, err := m.StreamJSONLFile(fifo)
	require.NoError(t, err)
	require.NoError(t, m.Log(id, 2.5))
	require.NoError(t, stop())
	b, err := io.ReadAll(r)
	require.NoError(t, err)
	require.Contains(t, string(b), `"metric":"loss","value":2.5}`)
}

// TestMonitorStorageCounters: the object store's counters become storage/s3 metrics once anything was
// fetched.
func TestMonitorStorageCounters(t *testing.T) {
	m := quietMonitor(t, MonitorOptions{})
	objstore.Stats.Requests.Add(3)
	objstore.Stats.BytesFetched.Add(4096)
	objstore.Stats.Misses.Add(1)
	objstore.Stats.Retries.Add(2)
	m.samplePipelines()
	for name, at := range map[string]float64{"storage/s3/requests": 3, "storage/s3/bytes_fetched": 4096, "storage/s3/cache_misses": 1,
		"storage/s3/retries": 2} {
		s, err := m.Summary(mustMetric(t, m, name))
		require.NoError(t, err)
		require.GreaterOrEqual(t, float64(s.Last), at, name)
	}
}

func mustMetric(t *testing.T, m *Monitor, name string) MetricID {
	t.Helper()
	id, err := m.Metric(name)
	require.NoError(t, err)
	return id
}
