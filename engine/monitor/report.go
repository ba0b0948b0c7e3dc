package monitor

import (
	"math"
	"os"
	"time"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/report"
)

// Report folds pending values and returns a snapshot of every metric. Its cost grows with the number of
// metrics and series points, never with the number of values logged.
func (m *Monitor) Report() *report.Report {
	if m.Sampling() {
		m.samplePipelinesOlderThan(reportSampleAge) // the attached iterators up to now
	}
	m.foldMu.Lock()
	m.drainLocked()
	states := *m.states.Load()
	metrics := make(map[string]*report.MetricReport, len(states))
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
	r := &report.Report{
		Schema: report.ReportSchema, Ferry: engine.Version, Created: now.UTC().Format(time.RFC3339Nano),
		Started: m.start.UTC().Format(time.RFC3339Nano), DurationS: now.Sub(m.start).Seconds(),
		Host: host, PID: os.Getpid(), Rank: m.opts.Rank, LocalRank: m.opts.LocalRank, Node: m.opts.Node, Clock: clock,
		TrainingMetrics: map[string]*report.MetricReport{}, GPUMetrics: map[string]map[string]*report.MetricReport{},
		SystemMetrics: map[string]*report.MetricReport{}, PipelineMetrics: map[string]map[string]*report.MetricReport{},
	}
	for name, mr := range metrics {
		group, key, rest := report.ClassifyMetric(name)
		switch group {
		case "gpu":
			if r.GPUMetrics[key] == nil {
				r.GPUMetrics[key] = map[string]*report.MetricReport{}
			}
			r.GPUMetrics[key][rest] = mr
		case "pipeline":
			if r.PipelineMetrics[key] == nil {
				r.PipelineMetrics[key] = map[string]*report.MetricReport{}
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

func (m *Monitor) metricReport(st *metricState) *report.MetricReport {
	s := st.summary()
	sec := func(t uint64) report.Float {
		if s.Count == 0 {
			return report.Float(math.NaN())
		}
		return report.Float(float64(int64(t-m.t0)) / 1e9)
	}
	mr := &report.MetricReport{Count: s.Count, NonFinite: s.NonFinite, Mean: report.Float(s.Mean), Min: report.Float(s.Min), Max: report.Float(s.Max),
		Std: report.Float(s.Std), Last: report.Float(s.Last), P50: report.Float(s.P50), P90: report.Float(s.P90), P99: report.Float(s.P99), P999: report.Float(s.P999),
		FirstS: sec(s.First), LastS: sec(s.LastTime), Series: [][5]report.Float{}}
	for _, p := range st.series.pts {
		mr.Series = append(mr.Series, [5]report.Float{report.Float(float64(int64(p.Time-m.t0)) / 1e9), report.Float(p.Mean), report.Float(p.Min), report.Float(p.Max), report.Float(p.Count)})
	}
	return mr
}
