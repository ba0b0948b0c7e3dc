package engine

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// ReportSchema names the JSON report's schema; it changes only when a field's meaning changes.
const ReportSchema = "ferry.report/1"

// Version is ferry's version, as reports and the CLI carry it. The builds of the Makefile set it from the
// VERSION file (-ldflags -X github.com/ferry-ml/ferry/engine.Version=...); this default is for plain go
// build and go test, and make check fails when it differs from VERSION.
var Version = "0.1.0"

// Float is a float64 that JSON encodes as null when it is NaN or infinite.
type Float float64

// MarshalJSON implements json.Marshaler.
func (f Float) MarshalJSON() ([]byte, error) {
	if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
		return []byte("null"), nil
	}
	return json.Marshal(float64(f))
}

// MetricReport is one metric in a report: its summary and its time series.
type MetricReport struct {
	Count     uint64 `json:"count"`
	NonFinite uint64 `json:"nonfinite,omitempty"`
	Mean      Float  `json:"mean"`
	Min       Float  `json:"min"`
	Max       Float  `json:"max"`
	Std       Float  `json:"std"`
	Last      Float  `json:"last"`
	P50       Float  `json:"p50"`
	P90       Float  `json:"p90"`
	P99       Float  `json:"p99"`
	P999      Float  `json:"p999"`
	// FirstS and LastS are when the first and last values were logged, in seconds since the monitor
	// started.
	FirstS Float `json:"first_s"`
	LastS  Float `json:"last_s"`
	// Series is the time series, oldest first: [seconds since start, mean, min, max, count] per point.
	Series [][5]Float `json:"series"`
}

// Report is everything a monitor knows, grouped as the seed's report was: training metrics (those the
// program logs), GPU metrics by device, system metrics, and pipeline metrics by iterator.
type Report struct {
	Schema    string  `json:"schema"`
	Ferry     string  `json:"ferry_version"`
	Created   string  `json:"created"` // RFC 3339, UTC
	Started   string  `json:"started"`
	DurationS float64 `json:"duration_s"`
	Host      string  `json:"host"`
	PID       int     `json:"pid"`
	Rank      int     `json:"rank"`
	LocalRank int     `json:"local_rank"`
	Node      string  `json:"node,omitempty"`
	Clock     string  `json:"clock"` // how values were stamped: "tsc" or "monotonic"

	TrainingMetrics map[string]*MetricReport            `json:"training_metrics"`
	GPUMetrics      map[string]map[string]*MetricReport `json:"gpu_metrics"` // by device ordinal
	SystemMetrics   map[string]*MetricReport            `json:"system_metrics"`
	PipelineMetrics map[string]map[string]*MetricReport `json:"pipeline_metrics"` // by iterator name
}

// Report folds pending values and returns a snapshot of every metric. Its cost grows with the number of
// metrics and series points, never with the number of values logged.
func (m *Monitor) Report() *Report {
	if m.Sampling() {
		m.samplePipelinesOlderThan(reportSampleAge) // the attached iterators up to now
	}
	m.foldMu.Lock()
	m.drainLocked()
	states := *m.states.Load()
	metrics := make(map[string]*MetricReport, len(states))
	for _, st := range states {
		metrics[st.name] = m.metricReport(st)
	}
	m.foldMu.Unlock()

	host, _ := os.Hostname()
	now := time.Now()
	clock := "monotonic"
	if m.clock.tsc {
		clock = "tsc"
	}
	r := &Report{
		Schema: ReportSchema, Ferry: Version, Created: now.UTC().Format(time.RFC3339Nano),
		Started: m.start.UTC().Format(time.RFC3339Nano), DurationS: now.Sub(m.start).Seconds(),
		Host: host, PID: os.Getpid(), Rank: m.opts.Rank, LocalRank: m.opts.LocalRank, Node: m.opts.Node, Clock: clock,
		TrainingMetrics: map[string]*MetricReport{}, GPUMetrics: map[string]map[string]*MetricReport{},
		SystemMetrics: map[string]*MetricReport{}, PipelineMetrics: map[string]map[string]*MetricReport{},
	}
	for name, mr := range metrics {
		group, key, rest := classifyMetric(name)
		switch group {
		case "gpu":
			if r.GPUMetrics[key] == nil {
				r.GPUMetrics[key] = map[string]*MetricReport{}
			}
			r.GPUMetrics[key][rest] = mr
		case "pipeline":
			if r.PipelineMetrics[key] == nil {
				r.PipelineMetrics[key] = map[string]*MetricReport{}
			}
			r.PipelineMetrics[key][rest] = mr
		case "system":
			r.SystemMetrics[rest] = mr
		default:
			r.TrainingMetrics[name] = mr
		}
	}
	return r
}

// classifyMetric sorts a metric name into its report group: "gpu<N>/x" -> ("gpu", "N", "x");
// "pipeline/<name>/x" -> ("pipeline", name, x); "system/x" -> ("system", "", "x"); "disk/..." ->
// ("system", "", "disk/..."); anything else is a training metric.
func classifyMetric(name string) (group, key, rest string) {
	head, tail, ok := strings.Cut(name, "/")
	switch {
	case ok && strings.HasPrefix(head, "gpu") && len(head) > 3 && strings.Trim(head[3:], "0123456789") == "":
		return "gpu", head[3:], tail
	case ok && head == "pipeline":
		if k, r, ok := strings.Cut(tail, "/"); ok {
			return "pipeline", k, r
		}
	case ok && head == "system":
		return "system", "", tail
	case ok && head == "disk":
		return "system", "", name
	}
	return "", "", name
}

func (m *Monitor) metricReport(st *metricState) *MetricReport {
	s := st.summary()
	sec := func(t uint64) Float {
		if s.Count == 0 {
			return Float(math.NaN())
		}
		return Float(float64(int64(t-m.t0)) / 1e9)
	}
	mr := &MetricReport{Count: s.Count, NonFinite: s.NonFinite, Mean: Float(s.Mean), Min: Float(s.Min), Max: Float(s.Max),
		Std: Float(s.Std), Last: Float(s.Last), P50: Float(s.P50), P90: Float(s.P90), P99: Float(s.P99), P999: Float(s.P999),
		FirstS: sec(s.First), LastS: sec(s.LastTime), Series: [][5]Float{}}
	for _, p := range st.series.pts {
		mr.Series = append(mr.Series, [5]Float{Float(float64(int64(p.Time-m.t0)) / 1e9), Float(p.Mean), Float(p.Min), Float(p.Max), Float(p.Count)})
	}
	return mr
}

// JSON encodes the report, indented.
func (r *Report) JSON() ([]byte, error) { return json.MarshalIndent(r, "", "  ") }

// MetricNames lists the report's training metrics, sorted.
func (r *Report) MetricNames() []string {
	out := make([]string, 0, len(r.TrainingMetrics))
	for k := range r.TrainingMetrics {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// WriteJSON writes the report as JSON to path (see writeFileSafely).
func (r *Report) WriteJSON(path string) error {
	b, err := r.JSON()
	if err != nil {
		return err
	}
	return writeFileSafely(path, b)
}

// writeFileSafely writes data to path: created 0644 through a temporary file in the same directory and
// renamed over path, so a reader never sees half a file; a symbolic link at path is replaced, never
// followed. The directory must exist.
func writeFileSafely(path string, data []byte) error {
	if path == "" {
		return fmt.Errorf("%w: empty path", ErrInvalidArgument)
	}
	dir := filepath.Dir(path)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return fmt.Errorf("%w: %s: the directory %s does not exist", ErrInvalidArgument, path, dir)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrIO, err)
	}
	name := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(name, path)
	}
	if err != nil {
		_ = os.Remove(name)
		return fmt.Errorf("%w: writing %s: %v", ErrIO, path, err)
	}
	return nil
}
