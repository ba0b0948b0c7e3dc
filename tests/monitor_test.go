package tests

import (
	"encoding/json"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// sketchAccuracy is the quantiles' default relative accuracy (ferry_monitor_options.sketch_accuracy 0).
const sketchAccuracy = 0.005

// quietMonitorOptions returns options filled by ferry_monitor_options_init with every sampler off, so
// that a test sees only the metrics it logs.
func quietMonitorOptions(t testing.TB) monitorOptions {
	t.Helper()
	var o monitorOptions
	requireOK(t, func() int32 { return ferryMonitorOptionsInit(&o) })
	o.GPUIntervalUS, o.PCIeIntervalUS, o.SystemIntervalUS = -1, -1, -1
	return o
}

// newMonitor creates a monitor with opts (nil: the library's defaults) and destroys it at cleanup; a
// test may have destroyed it already.
func newMonitor(t testing.TB, opts *monitorOptions) monitorHandle {
	t.Helper()
	var m monitorHandle
	requireOK(t, func() int32 { return ferryMonitorCreate(opts, &m) })
	require.NotZero(t, m, "ferry_monitor_create returned OK with a NULL handle")
	t.Cleanup(func() {
		if s := ferryMonitorDestroy(m); s != ferryOK && s != ferryErrInvalidHandle {
			t.Errorf("ferry_monitor_destroy: %s", statusString(t, s))
		}
	})
	return m
}

// newQuietMonitor creates a monitor with every sampler off.
func newQuietMonitor(t testing.TB) monitorHandle {
	t.Helper()
	o := quietMonitorOptions(t)
	return newMonitor(t, &o)
}

// metricID interns name on m.
func metricID(t testing.TB, m monitorHandle, name string) uint32 {
	t.Helper()
	id := uint32(math.MaxUint32)
	requireOK(t, func() int32 { return ferryMetricID(m, cname(name), &id) })
	return id
}

// summaryOf returns ferry_metric_summary_get of metric id.
func summaryOf(t testing.TB, m monitorHandle, id uint32) metricSummary {
	t.Helper()
	s := metricSummary{Size: uint32(unsafe.Sizeof(metricSummary{}))}
	requireOK(t, func() int32 { return ferryMetricSummaryGet(m, id, &s) })
	return s
}

// reportJSON returns ferry_monitor_report_json. It asks for the length first, then grows the buffer
// while the report (whose creation time and duration change between calls) outgrows it.
func reportJSON(t testing.TB, m monitorHandle) []byte {
	t.Helper()
	var n uint64
	requireStatus(t, ferryErrLimit, func() int32 { return ferryMonitorReportJSON(m, nil, 0, &n) }, "buffer")
	require.NotZero(t, n)
	for range 8 {
		buf := make([]byte, n+1+64)
		var got uint64
		s, msg := call(t, func() int32 { return ferryMonitorReportJSON(m, &buf[0], uint64(len(buf)), &got) })
		if s == ferryErrLimit {
			require.Greater(t, got, uint64(len(buf)-1), "FERRY_ERR_LIMIT with a buffer that fits: %s", msg)
			n = got
			continue
		}
		require.Equal(t, statusString(t, ferryOK), statusString(t, s), msg)
		require.Less(t, got, uint64(len(buf)))
		require.Zero(t, buf[got], "the report is not NUL-terminated")
		require.NotContains(t, string(buf[:got]), "\x00")
		return buf[:got]
	}
	t.Fatal("the report kept outgrowing its buffer")
	return nil
}

// jsonReport is the part of the "ferry.report/1" report the tests read.
type jsonReport struct {
	Schema          string                               `json:"schema"`
	TrainingMetrics map[string]map[string]any            `json:"training_metrics"`
	GPUMetrics      map[string]map[string]map[string]any `json:"gpu_metrics"`
	SystemMetrics   map[string]map[string]any            `json:"system_metrics"`
	PipelineMetrics map[string]map[string]map[string]any `json:"pipeline_metrics"`
}

func parseReport(t testing.TB, b []byte) jsonReport {
	t.Helper()
	var r jsonReport
	require.NoError(t, json.Unmarshal(b, &r), "the report is not JSON:\n%.2000s", b)
	require.Equal(t, "ferry.report/1", r.Schema)
	return r
}

// exactQuantileRank is the 0-based rank numpy's np.quantile(method="inverted_cdf") picks: the smallest
// value whose empirical CDF reaches q.
func exactQuantileRank(n int, q float64) int {
	k := int(math.Ceil(float64(n)*q)) - 1
	return min(max(k, 0), n-1)
}

// requireQuantile checks a sketch quantile against the sorted values: it must be within the sketch's
// relative accuracy of the exact inverted_cdf quantile or of a neighbouring rank (the sketch and numpy
// round the rank differently).
func requireQuantile(t testing.TB, sorted []float64, q, got float64) {
	t.Helper()
	k := exactQuantileRank(len(sorted), q)
	for _, j := range []int{k, k - 1, k + 1} {
		if j < 0 || j >= len(sorted) {
			continue
		}
		if math.Abs(got-sorted[j]) <= sketchAccuracy*math.Abs(sorted[j])*(1+1e-9) {
			return
		}
	}
	t.Fatalf("p%g = %g; the exact quantile is %g (relative error %.4g%%, allowed %g%%)",
		q*100, got, sorted[k], 100*math.Abs(got-sorted[k])/math.Abs(sorted[k]), 100*sketchAccuracy)
}

// stats is the exact reference of a summary.
type stats struct {
	n                   int
	mean, min, max, std float64
	sorted              []float64
}

func statsOf(vs []float64) stats {
	s := stats{n: len(vs), min: math.Inf(1), max: math.Inf(-1), sorted: slices.Clone(vs)}
	slices.Sort(s.sorted)
	var sum float64
	for _, v := range vs {
		sum += v
		s.min, s.max = math.Min(s.min, v), math.Max(s.max, v)
	}
	s.mean = sum / float64(len(vs))
	var ss float64
	for _, v := range vs {
		ss += (v - s.mean) * (v - s.mean)
	}
	s.std = math.Sqrt(ss / float64(len(vs))) // population, as the monitor reports it
	return s
}

// requireSummary checks a summary against the exact statistics: count, min and max exactly, mean and std
// to rounding, the quantiles within the sketch's accuracy.
func requireSummary(t testing.TB, want stats, got metricSummary) {
	t.Helper()
	require.Equal(t, uint64(want.n), got.Count)
	require.Equal(t, want.min, got.Min)
	require.Equal(t, want.max, got.Max)
	require.InEpsilon(t, want.mean, got.Mean, 1e-12)
	require.InEpsilon(t, want.std, got.Std, 1e-9)
	for _, q := range []struct {
		q float64
		v float64
	}{{0.5, got.P50}, {0.9, got.P90}, {0.99, got.P99}, {0.999, got.P999}} {
		requireQuantile(t, want.sorted, q.q, q.v)
	}
}

// randomValues returns n values spread over three decades, so that relative accuracy is tested across a
// range of magnitudes.
func randomValues(r *rand.Rand, n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = math.Exp(r.Float64() * math.Log(1000))
	}
	return out
}

func TestMonitorOptionsInit(t *testing.T) {
	g := newGuardBuf(unsafe.Sizeof(monitorOptions{}))
	requireOK(t, func() int32 { return ferryMonitorOptionsInit((*monitorOptions)(g.ptr())) })
	g.requireUntouchedFrom(t, unsafe.Sizeof(monitorOptions{}))
	require.Equal(t, monitorOptions{Size: 72}, *(*monitorOptions)(g.ptr()))
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMonitorOptionsInit(nil) }, "NULL")
}

func TestMonitorCreate(t *testing.T) {
	t.Run("NULL options", func(t *testing.T) {
		m := newMonitor(t, nil)
		id := metricID(t, m, "loss")
		requireOK(t, func() int32 { return ferryMetricLog(m, id, 1.5) })
		s := summaryOf(t, m, id)
		require.Equal(t, uint64(1), s.Count)
		require.Equal(t, 1.5, s.Last)
	})
	t.Run("labels and disk paths", func(t *testing.T) {
		c := newCmem(t, 1<<12)
		o := quietMonitorOptions(t)
		o.Rank, o.LocalRank = 3, 1
		o.Node = uintptr(unsafe.Pointer(c.cstring("node-7")))
		o.NumDiskPaths = 1
		o.DiskPaths = uintptr(unsafe.Pointer(c.strings([]string{t.TempDir()})))
		o.SketchAccuracy = 0.01
		o.SeriesPoints = 64
		m := newMonitor(t, &o)
		var r struct {
			Rank      int    `json:"rank"`
			LocalRank int    `json:"local_rank"`
			Node      string `json:"node"`
		}
		require.NoError(t, json.Unmarshal(reportJSON(t, m), &r))
		require.Equal(t, 3, r.Rank)
		require.Equal(t, 1, r.LocalRank)
		require.Equal(t, "node-7", r.Node)
	})
	t.Run("a larger struct", func(t *testing.T) {
		g := newGuardBuf(unsafe.Sizeof(monitorOptions{}) + 32)
		o := quietMonitorOptions(t)
		*(*monitorOptions)(g.ptr()) = o
		g.setSize(unsafe.Sizeof(monitorOptions{}) + 32)
		var m monitorHandle
		requireOK(t, func() int32 { return ferryMonitorCreate((*monitorOptions)(g.ptr()), &m) })
		requireOK(t, func() int32 { return ferryMonitorDestroy(m) })
	})

	c := newCmem(t, 1<<12)
	tests := []struct {
		name  string
		edit  func(o *monitorOptions)
		words []string
	}{
		{"size 0", func(o *monitorOptions) { o.Size = 0 }, []string{"size"}},
		{"size too small", func(o *monitorOptions) { o.Size = 71 }, []string{"size"}},
		{"unknown flag", func(o *monitorOptions) { o.Flags = 0x2 }, []string{"flags"}},
		{"high flag", func(o *monitorOptions) { o.Flags = monitorFStart | 0x80000000 }, []string{"flags"}},
		{"GPU interval below 10 ms", func(o *monitorOptions) { o.GPUIntervalUS = 9999 }, []string{"GPU", "interval"}},
		{"GPU interval 1 us", func(o *monitorOptions) { o.GPUIntervalUS = 1 }, []string{"GPU", "interval"}},
		// Intervals whose nanoseconds overflow int64 are refused, not wrapped to a small valid one.
		{"GPU interval 2^62 us", func(o *monitorOptions) { o.GPUIntervalUS = 1 << 62 }, []string{"GPU", "interval"}},
		{"system interval 2^62+10000 us", func(o *monitorOptions) { o.SystemIntervalUS = 1<<62 + 10000 }, []string{"system", "interval"}},
		{"PCIe interval below 10 ms", func(o *monitorOptions) { o.PCIeIntervalUS = 5000 }, []string{"PCIe", "interval"}},
		{"system interval below 10 ms", func(o *monitorOptions) { o.SystemIntervalUS = 1000 }, []string{"system", "interval"}},
		{"sketch accuracy negative", func(o *monitorOptions) { o.SketchAccuracy = -0.1 }, []string{"accuracy"}},
		{"sketch accuracy 0.5", func(o *monitorOptions) { o.SketchAccuracy = 0.5 }, []string{"accuracy"}},
		{"series points 8", func(o *monitorOptions) { o.SeriesPoints = 8 }, []string{"series"}},
		{"num_disk_paths negative", func(o *monitorOptions) { o.NumDiskPaths = -1 }, []string{"num_disk_paths"}},
		{"disk_paths NULL", func(o *monitorOptions) { o.NumDiskPaths = 2 }, []string{"disk_paths"}},
		{"a disk path NULL", func(o *monitorOptions) {
			arr := (*[2]uintptr)(c.alloc(16))
			arr[0] = uintptr(unsafe.Pointer(c.cstring("/")))
			o.NumDiskPaths, o.DiskPaths = 2, uintptr(unsafe.Pointer(arr))
		}, []string{"disk_paths[1]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := quietMonitorOptions(t)
			tt.edit(&o)
			m := monitorHandle(12345)
			requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMonitorCreate(&o, &m) }, tt.words...)
			require.Zero(t, m, "a failed create must write a NULL handle")
		})
	}
	t.Run("NULL out", func(t *testing.T) {
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMonitorCreate(nil, nil) }, "NULL")
	})
	requireUsable(t)
}

func TestMetricIDs(t *testing.T) {
	m := newQuietMonitor(t)
	a := metricID(t, m, "loss")
	b := metricID(t, m, "train/accuracy:top-1.v2")
	require.NotEqual(t, a, b)
	require.Equal(t, a, metricID(t, m, "loss"), "the same name gives the same ID")
	require.Equal(t, b, metricID(t, m, "train/accuracy:top-1.v2"))

	for _, name := range []string{"", "has space", "émoji", "semi;colon", "quote\"", strings.Repeat("x", 257)} {
		t.Run("bad name "+name[:min(len(name), 12)], func(t *testing.T) {
			id := uint32(7)
			requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMetricID(m, cname(name), &id) }, "metric name")
		})
	}
	requireOK(t, func() int32 { id := uint32(0); return ferryMetricID(m, cname(strings.Repeat("x", 256)), &id) })
	requireStatus(t, ferryErrInvalidArgument, func() int32 { id := uint32(0); return ferryMetricID(m, nil, &id) }, "NULL")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMetricID(m, cname("loss"), nil) }, "NULL")

	// An ID the monitor never gave.
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMetricLog(m, 1000, 1) }, "unknown metric")
	requireStatus(t, ferryErrInvalidArgument, func() int32 {
		v := 1.0
		return ferryMetricLogMany(m, 1000, &v, 1)
	}, "unknown metric")
	requireStatus(t, ferryErrInvalidArgument, func() int32 {
		s := metricSummary{Size: uint32(unsafe.Sizeof(metricSummary{}))}
		return ferryMetricSummaryGet(m, 1000, &s)
	}, "unknown metric")
}

// TestMetricLogThreads logs from four OS threads at once, each more values than its C ring holds (4096)
// so that the writers fold through back-pressure, and checks the summary against the exact statistics.
func TestMetricLogThreads(t *testing.T) {
	const threads, perThread = 4, 20000
	r := newRand(t)
	m := newQuietMonitor(t)
	id := metricID(t, m, "loss")
	other := metricID(t, m, "other")
	values := make([][]float64, threads)
	var all []float64
	for i := range values {
		values[i] = randomValues(r, perThread)
		all = append(all, values[i]...)
	}

	var ready, done sync.WaitGroup
	start := make(chan struct{})
	failures := make([]string, threads)
	tids := make([]int, threads)
	for i := range threads {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			tids[i] = unix.Gettid()
			ready.Done()
			<-start
			for j, v := range values[i] {
				if s := ferryMetricLog(m, id, v); s != ferryOK {
					msg, _ := goString(ferryLastError())
					failures[i] = statusString(t, s) + ": " + msg
					return
				}
				if j%1000 == 0 {
					_ = ferryMetricLog(m, other, float64(i))
				}
			}
		}()
	}
	ready.Wait()
	close(start)
	done.Wait()
	for i, f := range failures {
		require.Empty(t, f, "thread %d", i)
	}
	slices.Sort(tids)
	require.Len(t, slices.Compact(tids), threads, "the writers must be distinct OS threads")

	got := summaryOf(t, m, id)
	require.Zero(t, got.NonFinite)
	requireSummary(t, statsOf(all), got)
	require.NotZero(t, got.FirstNS)
	require.GreaterOrEqual(t, got.LastNS, got.FirstNS)
	require.LessOrEqual(t, got.LastNS, monotonicNS(t))
	require.Equal(t, uint64(threads*perThread/1000), summaryOf(t, m, other).Count)
}

func TestMetricLogNonFinite(t *testing.T) {
	m := newQuietMonitor(t)
	id := metricID(t, m, "loss")
	vals := []float64{1, math.NaN(), 2, math.Inf(1), 3, math.Inf(-1), math.NaN()}
	for _, v := range vals[:4] {
		requireOK(t, func() int32 { return ferryMetricLog(m, id, v) })
	}
	requireOK(t, func() int32 { return ferryMetricLogMany(m, id, &vals[4], 3) })
	s := summaryOf(t, m, id)
	require.Equal(t, uint64(3), s.Count)
	require.Equal(t, uint64(4), s.NonFinite)
	require.Equal(t, 2.0, s.Mean)
	require.Equal(t, 1.0, s.Min)
	require.Equal(t, 3.0, s.Max)
	require.Equal(t, 3.0, s.Last, "the last finite value")

	// A metric with only non-finite values: the statistics are NaN (JSON null in the report).
	nan := metricID(t, m, "nan_only")
	requireOK(t, func() int32 { return ferryMetricLog(m, nan, math.NaN()) })
	s = summaryOf(t, m, nan)
	require.Zero(t, s.Count)
	require.Equal(t, uint64(1), s.NonFinite)
	for _, v := range []float64{s.Mean, s.Min, s.Max, s.Std, s.Last, s.P50, s.P99} {
		require.True(t, math.IsNaN(v))
	}
	rep := parseReport(t, reportJSON(t, m))
	require.Contains(t, rep.TrainingMetrics, "nan_only")
	require.Nil(t, rep.TrainingMetrics["nan_only"]["mean"])
	require.EqualValues(t, 1, rep.TrainingMetrics["nan_only"]["nonfinite"])
}

func TestMetricLogMany(t *testing.T) {
	r := newRand(t)
	m := newQuietMonitor(t)

	t.Run("log_many", func(t *testing.T) {
		id := metricID(t, m, "batch_loss")
		a, b := randomValues(r, 5000), randomValues(r, 3000)
		before := monotonicNS(t)
		requireOK(t, func() int32 { return ferryMetricLogMany(m, id, &a[0], int64(len(a))) })
		requireOK(t, func() int32 { return ferryMetricLog(m, id, 42) })
		requireOK(t, func() int32 { return ferryMetricLogMany(m, id, &b[0], int64(len(b))) })
		requireOK(t, func() int32 { return ferryMetricLogMany(m, id, nil, 0) })
		after := monotonicNS(t)
		s := summaryOf(t, m, id)
		requireSummary(t, statsOf(append(append(slices.Clone(a), 42), b...)), s)
		require.Equal(t, b[len(b)-1], s.Last)
		require.GreaterOrEqual(t, s.FirstNS, before)
		require.LessOrEqual(t, s.LastNS, after)
	})
	t.Run("log_many_at", func(t *testing.T) {
		id := metricID(t, m, "buffered")
		n := 9000
		vs := randomValues(r, n)
		ts := make([]uint64, n)
		t0 := monotonicNS(t) - uint64(n)*1000
		for i := range ts {
			ts[i] = t0 + uint64(i)*1000
		}
		requireOK(t, func() int32 { return ferryMetricLogManyAt(m, id, &vs[0], &ts[0], int64(n)) })
		s := summaryOf(t, m, id)
		requireSummary(t, statsOf(vs), s)
		require.Equal(t, ts[0], s.FirstNS)
		require.Equal(t, ts[n-1], s.LastNS)

		rep := parseReport(t, reportJSON(t, m))
		mr := rep.TrainingMetrics["buffered"]
		require.NotNil(t, mr)
		first, last := mr["first_s"].(float64), mr["last_s"].(float64)
		require.LessOrEqual(t, first, last)
		require.InDelta(t, float64(ts[n-1]-ts[0])/1e9, last-first, 1e-6)
	})
	t.Run("bad arguments", func(t *testing.T) {
		id := metricID(t, m, "batch_loss")
		v, ts := 1.0, uint64(1)
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMetricLogMany(m, id, nil, 1) }, "values")
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMetricLogMany(m, id, &v, -1) }, "count")
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMetricLogManyAt(m, id, &v, nil, 1) }, "timestamps")
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMetricLogManyAt(m, id, nil, &ts, 1) }, "values")
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMetricLogManyAt(m, id, &v, &ts, -5) }, "count")
		requireOK(t, func() int32 { return ferryMetricLogManyAt(m, id, nil, nil, 0) })
	})
}

func TestMetricSummarySize(t *testing.T) {
	m := newQuietMonitor(t)
	id := metricID(t, m, "loss")
	requireOK(t, func() int32 { return ferryMetricLog(m, id, 2.5) })
	const size = unsafe.Sizeof(metricSummary{})
	for _, n := range []uintptr{0, 4, size - 1} {
		g := newGuardBuf(size)
		g.setSize(n)
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMetricSummaryGet(m, id, (*metricSummary)(g.ptr())) }, "size")
		g.requireUntouchedFrom(t, 4)
	}
	for _, n := range []uintptr{size, size + 32} {
		g := newGuardBuf(size)
		g.setSize(n)
		requireOK(t, func() int32 { return ferryMetricSummaryGet(m, id, (*metricSummary)(g.ptr())) })
		g.requireUntouchedFrom(t, size)
		s := *(*metricSummary)(g.ptr())
		require.Equal(t, uint32(n), s.Size, "the size field is kept")
		require.Equal(t, uint64(1), s.Count)
		require.Equal(t, 2.5, s.P50)
	}
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMetricSummaryGet(m, id, nil) }, "NULL")
}

func TestMonitorReportJSON(t *testing.T) {
	r := newRand(t)
	m := newQuietMonitor(t)
	id := metricID(t, m, "loss")
	vs := randomValues(r, 6000)
	for _, v := range vs {
		requireOK(t, func() int32 { return ferryMetricLog(m, id, v) })
	}

	var n uint64
	requireStatus(t, ferryErrLimit, func() int32 { return ferryMonitorReportJSON(m, nil, 0, &n) })
	require.Greater(t, n, uint64(100))
	small := make([]byte, 16)
	got := uint64(0)
	requireStatus(t, ferryErrLimit, func() int32 { return ferryMonitorReportJSON(m, &small[0], uint64(len(small)), &got) })
	require.Greater(t, got, uint64(len(small)))
	require.Equal(t, make([]byte, 16), small, "nothing is written into a buffer that is too small")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMonitorReportJSON(m, nil, 0, nil) }, "NULL")

	rep := parseReport(t, reportJSON(t, m))
	require.NotNil(t, rep.GPUMetrics)
	require.NotNil(t, rep.SystemMetrics)
	require.NotNil(t, rep.PipelineMetrics)
	mr := rep.TrainingMetrics["loss"]
	require.NotNil(t, mr, "training_metrics lacks loss: %v", rep.TrainingMetrics)
	for _, k := range []string{"count", "mean", "min", "max", "std", "last", "p50", "p90", "p99", "p999", "series"} {
		require.Contains(t, mr, k)
	}
	want := statsOf(vs)
	require.EqualValues(t, len(vs), mr["count"])
	require.Equal(t, want.min, mr["min"])
	require.Equal(t, want.max, mr["max"])
	require.InEpsilon(t, want.mean, mr["mean"], 1e-12)
	require.InEpsilon(t, want.std, mr["std"], 1e-9)
	requireQuantile(t, want.sorted, 0.5, mr["p50"].(float64))
	requireQuantile(t, want.sorted, 0.99, mr["p99"].(float64))
	series := mr["series"].([]any)
	require.NotEmpty(t, series)
	var count float64
	for _, p := range series {
		pt := p.([]any)
		require.Len(t, pt, 5, "a series point is [seconds, mean, min, max, count]")
		count += pt[4].(float64)
	}
	require.EqualValues(t, len(vs), count, "the series counts every value")
}

func TestMonitorWriteReport(t *testing.T) {
	m := newQuietMonitor(t)
	id := metricID(t, m, "loss")
	for i := range 200 {
		requireOK(t, func() int32 { return ferryMetricLog(m, id, 1/float64(i+1)) })
	}
	dir := t.TempDir()
	for _, name := range []string{"report.json", "report.html", "REPORT.HTM", "report.txt"} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, name)
			requireOK(t, func() int32 { return ferryMonitorWriteReport(m, cname(p)) })
			fi, err := os.Stat(p)
			require.NoError(t, err)
			require.Equal(t, os.FileMode(0o644), fi.Mode().Perm())
			b, err := os.ReadFile(p)
			require.NoError(t, err)
			if strings.HasSuffix(strings.ToLower(name), ".html") || strings.HasSuffix(strings.ToLower(name), ".htm") {
				require.Contains(t, strings.ToLower(string(b)), "<html")
				require.Contains(t, string(b), "<svg")
				require.Contains(t, string(b), "loss")
				return
			}
			rep := parseReport(t, b)
			require.EqualValues(t, 200, rep.TrainingMetrics["loss"]["count"])
		})
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 4, "no temporary file is left behind")

	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMonitorWriteReport(m, nil) }, "NULL")
	requireStatus(t, ferryErrInvalidArgument, func() int32 {
		return ferryMonitorWriteReport(m, cname(filepath.Join(dir, "missing", "r.json")))
	}, "does not exist")
}

func TestMonitorServePrometheus(t *testing.T) {
	m := newQuietMonitor(t)
	id := metricID(t, m, "loss")
	requireOK(t, func() int32 { return ferryMetricLog(m, id, 0.25) })

	bound := make([]byte, 64)
	requireOK(t, func() int32 {
		return ferryMonitorServePrometheus(m, cname("127.0.0.1:0"), &bound[0], uint32(len(bound)))
	})
	addr, ok := fixedString(bound)
	require.True(t, ok, "the bound address is not NUL-terminated")
	host, port, err := net.SplitHostPort(addr)
	require.NoError(t, err, "bound address %q", addr)
	require.Equal(t, "127.0.0.1", host)
	require.NotEqual(t, "0", port)

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, string(body), "ferry_loss")

	// A second endpoint on the same monitor is refused; the first keeps serving.
	other := make([]byte, 64)
	requireStatus(t, ferryErrInvalidArgument, func() int32 {
		return ferryMonitorServePrometheus(m, cname("127.0.0.1:0"), &other[0], uint32(len(other)))
	}, "already")

	// The port of a live endpoint, taken: FERRY_ERR_IO from another monitor.
	m2 := newQuietMonitor(t)
	requireStatus(t, ferryErrIO, func() int32 { return ferryMonitorServePrometheus(m2, cname(addr), nil, 0) }, port)
	requireStatus(t, ferryErrInvalidArgument, func() int32 {
		return ferryMonitorServePrometheus(m2, cname("no-port"), nil, 0)
	}, "address")

	// Destroying the monitor stops the endpoint.
	requireOK(t, func() int32 { return ferryMonitorDestroy(m) })
	_, err = client.Get("http://" + addr + "/metrics")
	require.Error(t, err, "the endpoint still serves after ferry_monitor_destroy")
}

func TestMonitorHandles(t *testing.T) {
	o := quietMonitorOptions(t)
	var m monitorHandle
	requireOK(t, func() int32 { return ferryMonitorCreate(&o, &m) })
	id := metricID(t, m, "loss")
	requireOK(t, func() int32 { return ferryMetricLog(m, id, 1) })
	requireOK(t, func() int32 { return ferryMonitorDestroy(m) })

	v, ts := 1.0, uint64(1)
	s := metricSummary{Size: uint32(unsafe.Sizeof(metricSummary{}))}
	var n uint64
	var out uint32
	bound := make([]byte, 64)
	calls := map[string]func(h monitorHandle) int32{
		"ferry_metric_log":               func(h monitorHandle) int32 { return ferryMetricLog(h, id, 1) },
		"ferry_metric_log_many":          func(h monitorHandle) int32 { return ferryMetricLogMany(h, id, &v, 1) },
		"ferry_metric_log_many_at":       func(h monitorHandle) int32 { return ferryMetricLogManyAt(h, id, &v, &ts, 1) },
		"ferry_metric_id":                func(h monitorHandle) int32 { return ferryMetricID(h, cname("loss"), &out) },
		"ferry_metric_find":              func(h monitorHandle) int32 { return ferryMetricFind(h, cname("loss"), &out) },
		"ferry_metric_summary_get":       func(h monitorHandle) int32 { return ferryMetricSummaryGet(h, id, &s) },
		"ferry_monitor_start":            func(h monitorHandle) int32 { return ferryMonitorStart(h) },
		"ferry_monitor_stop":             func(h monitorHandle) int32 { return ferryMonitorStop(h) },
		"ferry_monitor_report_json":      func(h monitorHandle) int32 { return ferryMonitorReportJSON(h, nil, 0, &n) },
		"ferry_monitor_write_report":     func(h monitorHandle) int32 { return ferryMonitorWriteReport(h, cname("report.json")) },
		"ferry_monitor_serve_prometheus": func(h monitorHandle) int32 { return ferryMonitorServePrometheus(h, nil, &bound[0], 64) },
		"ferry_monitor_attach_iterator":  func(h monitorHandle) int32 { return ferryMonitorAttachIterator(h, cname("x"), 0) },
	}
	// A live engine handle is a handle of another kind.
	e := newCPUEngine(t, 0)
	handles := []struct {
		name string
		h    monitorHandle
	}{
		{"stale", m},
		{"NULL", 0},
		{"made up", monitorHandle(0x4d00000100000003)},
		{"an engine", monitorHandle(e)},
	}
	for _, h := range handles {
		for name, fn := range calls {
			t.Run(h.name+"/"+name, func(t *testing.T) {
				requireStatus(t, ferryErrInvalidHandle, func() int32 { return fn(h.h) })
			})
		}
	}
	requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryMonitorDestroy(m) }, "stale")
	requireOK(t, func() int32 { return ferryMonitorDestroy(0) })
	requireUsable(t)
}

// TestMonitorStaleLogAfterReuse destroys a monitor and creates others until one reuses its slot: the old
// handle must stay stale in the C log path, and the new monitor must not see its values.
func TestMonitorStaleLogAfterReuse(t *testing.T) {
	o := quietMonitorOptions(t)
	var old monitorHandle
	requireOK(t, func() int32 { return ferryMonitorCreate(&o, &old) })
	id := metricID(t, old, "loss")
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for range 100 {
		require.Equal(t, ferryOK, ferryMetricLog(old, id, 1)) // this thread's ring in the slot
	}
	requireOK(t, func() int32 { return ferryMonitorDestroy(old) })
	var fresh []monitorHandle
	t.Cleanup(func() {
		for _, h := range fresh {
			_ = ferryMonitorDestroy(h)
		}
	})
	for range 8 {
		m := newQuietMonitor(t)
		fresh = append(fresh, m)
		nid := metricID(t, m, "loss")
		require.Equal(t, ferryErrInvalidHandle, ferryMetricLog(old, id, 99))
		require.Equal(t, ferryOK, ferryMetricLog(m, nid, 2))
		s := summaryOf(t, m, nid)
		require.Equal(t, uint64(1), s.Count, "values of the destroyed monitor leaked into a new one")
		require.Equal(t, 2.0, s.Max)
	}
}

func TestMonitorStartStop(t *testing.T) {
	o := quietMonitorOptions(t)
	o.SystemIntervalUS = 20_000
	o.Flags = monitorFStart
	m := newMonitor(t, &o)
	var rep jsonReport
	require.Eventually(t, func() bool {
		rep = parseReport(t, reportJSON(t, m))
		return len(rep.SystemMetrics) > 0
	}, 10*time.Second, 20*time.Millisecond, "no system metrics after starting the samplers")
	for name, mr := range rep.SystemMetrics {
		require.NotEqualValues(t, 0, mr["count"], "system metric %s", name)
	}
	require.Empty(t, rep.TrainingMetrics, "the samplers' metrics are not training metrics")
	requireOK(t, func() int32 { return ferryMonitorStop(m) })
	requireOK(t, func() int32 { return ferryMonitorStop(m) })
	requireOK(t, func() int32 { return ferryMonitorStart(m) })
	requireOK(t, func() int32 { return ferryMonitorStart(m) }) // a running monitor is left alone
	requireOK(t, func() int32 { return ferryMonitorStop(m) })
}

func TestMonitorAttachIterator(t *testing.T) {
	r := newRand(t)
	src := newMemorySource(t, r, 64, standardSpecs)
	it := newIterator(t, newCPUEngine(t, 0), src.h, iterOptions(t, 8))

	o := quietMonitorOptions(t)
	o.SystemIntervalUS = 20_000
	m := newMonitor(t, &o)
	requireOK(t, func() int32 { return ferryMonitorAttachIterator(m, cname("train"), it) })
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMonitorAttachIterator(m, cname("train"), it) }, "already")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMonitorAttachIterator(m, cname("a/b"), it) }, "pipeline name")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMonitorAttachIterator(m, nil, it) }, "NULL")
	requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryMonitorAttachIterator(m, cname("x"), 0) })
	requireStatus(t, ferryErrInvalidHandle, func() int32 {
		return ferryMonitorAttachIterator(m, cname("x"), iteratorHandle(src.h))
	})
	requireOK(t, func() int32 { return ferryMonitorStart(m) })
	for range iteratorLen(t, it) {
		releaseBatch(t, next(t, it))
	}
	var rep jsonReport
	require.Eventually(t, func() bool {
		rep = parseReport(t, reportJSON(t, m))
		return rep.PipelineMetrics["train"]["batches_per_second"] != nil
	}, 10*time.Second, 20*time.Millisecond, "no pipeline metrics for the attached iterator")
	for _, k := range []string{"batches_per_second", "samples_per_second", "h2d_bytes_per_second", "data_stall_percent", "queue_depth"} {
		require.Contains(t, rep.PipelineMetrics["train"], k)
	}
	requireOK(t, func() int32 { return ferryMonitorStop(m) })
}

// TestMonitorStreamJSONL covers ferry_monitor_stream_jsonl: values logged while it streams are in the
// file, one JSON object a line; NULL stops it; a second stream, a symbolic link and a bad directory are
// refused; the library stays usable.
func TestMonitorStreamJSONL(t *testing.T) {
	m := newQuietMonitor(t)
	id := metricID(t, m, "loss")
	dir := t.TempDir()
	p := filepath.Join(dir, "metrics.jsonl")
	requireOK(t, func() int32 { return ferryMonitorStreamJSONL(m, cname(p)) })
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMonitorStreamJSONL(m, cname(p)) }, "already")
	for i := range 50 {
		requireOK(t, func() int32 { return ferryMetricLog(m, id, float64(i)) })
	}
	requireOK(t, func() int32 { return ferryMonitorStreamJSONL(m, nil) })
	requireOK(t, func() int32 { return ferryMonitorStreamJSONL(m, nil) }) // stopping twice is fine
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	require.Len(t, lines, 50)
	for i, l := range lines {
		var v struct {
			T      float64 `json:"t"`
			Metric string  `json:"metric"`
			Value  float64 `json:"value"`
		}
		require.NoError(t, json.Unmarshal([]byte(l), &v), l)
		require.Equal(t, "loss", v.Metric)
		require.Equal(t, float64(i), v.Value)
	}
	link := filepath.Join(dir, "link.jsonl")
	require.NoError(t, os.Symlink(p, link))
	requireStatus(t, ferryErrIO, func() int32 { return ferryMonitorStreamJSONL(m, cname(link)) })
	requireStatus(t, ferryErrIO, func() int32 { return ferryMonitorStreamJSONL(m, cname(filepath.Join(dir, "no", "x"))) })
	requireOK(t, func() int32 { return ferryMetricLog(m, id, 1) })
}
