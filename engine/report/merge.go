package report

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"time"

	"github.com/ferry-ml/ferry/engine"
)

// MergedReportSchema names the merged report's JSON schema; it changes only when a field's meaning
// changes.
const MergedReportSchema = "ferry.merged-report/1"

// MergedReport is the view of a distributed job: the reports of its ranks (torchrun's processes) side
// by side, their metrics combined, and the ranks ordered by how long they waited for data.
type MergedReport struct {
	Schema  string `json:"schema"`
	Ferry   string `json:"ferry_version"`
	Created string `json:"created"` // RFC 3339, UTC
	// NumRanks is the number of reports merged; Nodes are their distinct nodes (a report's Node, or its
	// host when it names none), sorted.
	NumRanks int      `json:"num_ranks"`
	Nodes    []string `json:"nodes"`
	// DurationS is the longest rank's run.
	DurationS float64 `json:"duration_s"`
	// Ranks are the ranks' reports, sorted by rank.
	Ranks []*RankReport `json:"ranks"`
	// Aggregate combines each training and pipeline metric over the ranks.
	Aggregate *MergedAggregate `json:"aggregate"`
	// Stragglers is the data-stall view, one entry per pipeline (iterator name), sorted by name.
	Stragglers []*PipelineStragglers `json:"stragglers"`
}

// RankReport is one rank's identity and metrics, as its report gave them. Each metric keeps its
// summary; the time series are left out (an empty Series) to keep the merged report small.
type RankReport struct {
	// Source names where the report came from: its file, when MergeReportFiles read it.
	Source    string  `json:"source,omitempty"`
	Rank      int     `json:"rank"`
	LocalRank int     `json:"local_rank"`
	Node      string  `json:"node,omitempty"`
	Host      string  `json:"host"`
	PID       int     `json:"pid"`
	Started   string  `json:"started"`
	DurationS float64 `json:"duration_s"`

	TrainingMetrics map[string]*MetricReport            `json:"training_metrics"`
	PipelineMetrics map[string]map[string]*MetricReport `json:"pipeline_metrics"` // by iterator name
	GPUMetrics      map[string]map[string]*MetricReport `json:"gpu_metrics"`      // by device ordinal
	SystemMetrics   map[string]*MetricReport            `json:"system_metrics"`
}

// MergedAggregate holds the combined metrics: training metrics by name, pipeline metrics by iterator
// name and metric name.
type MergedAggregate struct {
	Training map[string]*AggregateMetric            `json:"training"`
	Pipeline map[string]map[string]*AggregateMetric `json:"pipeline"`
}

// AggregateMetric is one metric combined over the ranks that logged it. Count, Mean, Min, Max and Std
// are exact: the mean is weighted by each rank's count and the standard deviation (population, as
// each rank's) is pooled from the ranks' counts, means and deviations by the parallel variance formula.
//
// Quantiles are not merged: a quantile of the whole job cannot be computed exactly from the ranks'
// summaries. PerRank lists each rank's p50 and p99 instead, and WorstP99 is the largest per-rank p99,
// an upper bound of the job's p99 (never less than it), not the job's p99 itself.
type AggregateMetric struct {
	// Ranks is how many ranks logged at least one finite value.
	Ranks     int    `json:"ranks"`
	Count     uint64 `json:"count"`
	NonFinite uint64 `json:"nonfinite,omitempty"`
	Mean      Float  `json:"mean"`
	Min       Float  `json:"min"`
	Max       Float  `json:"max"`
	Std       Float  `json:"std"`
	// TotalMean is the sum of the ranks' means, given for rate metrics (names ending in _per_second)
	// only: the job's throughput, where each rank's mean is its own.
	TotalMean *Float `json:"total_mean,omitempty"`
	// WorstP99 is the largest of the ranks' p99 (see the type's comment), from the rank WorstP99Rank.
	WorstP99     Float `json:"worst_p99"`
	WorstP99Rank *int  `json:"worst_p99_rank,omitempty"`
	// PerRank is each rank's count, mean, p50 and p99, sorted by rank.
	PerRank []RankQuantiles `json:"per_rank"`
}

// RankQuantiles is one rank's share of an AggregateMetric.
type RankQuantiles struct {
	Rank  int    `json:"rank"`
	Count uint64 `json:"count"`
	Mean  Float  `json:"mean"`
	P50   Float  `json:"p50"`
	P99   Float  `json:"p99"`
}

// PipelineStragglers ranks the ranks of one pipeline by data stall: the rank that waited most for
// data comes first.
type PipelineStragglers struct {
	Pipeline string `json:"pipeline"`
	// Ranks are the ranks that report the pipeline, by mean data stall, highest first; a rank without a
	// stall figure comes last.
	Ranks []StragglerRank `json:"ranks"`
	// DataStallSpread is the highest rank's mean stall less the lowest's, in percentage points;
	// SamplesPerSecondSpread is the same for the mean samples per second. Null when no rank has a value.
	DataStallSpread        Float `json:"data_stall_spread"`
	SamplesPerSecondSpread Float `json:"samples_per_second_spread"`
}

// StragglerRank is one rank's data-stall figures for a pipeline: the means of its data_stall_percent
// and samples_per_second (null when the rank has none).
type StragglerRank struct {
	Rank             int    `json:"rank"`
	Node             string `json:"node,omitempty"`
	Host             string `json:"host"`
	DataStallPercent Float  `json:"data_stall_percent"`
	SamplesPerSecond Float  `json:"samples_per_second"`
}

// MergeReportFiles reads the reports at paths (see ReadReport) and merges them (see MergeReports); an
// error names the file it is about.
func MergeReportFiles(paths ...string) (*MergedReport, error) {
	if len(paths) == 0 {
		return nil, fmt.Errorf("%w: no reports to merge", engine.ErrInvalidArgument)
	}
	reports := make([]*Report, len(paths))
	for i, p := range paths {
		r, err := ReadReport(p)
		if err != nil {
			return nil, err
		}
		reports[i] = r
	}
	return mergeReports(reports, paths)
}

// MergeReports merges the reports of a job's ranks (each rank's Monitor.Report, or its JSON read back
// with ReadReport). It is an ErrInvalidArgument error, naming the report, when there is no report, when
// one is nil or of another schema than ReportSchema, or when two have the same rank. The reports are
// not modified.
func MergeReports(reports []*Report) (*MergedReport, error) {
	return mergeReports(reports, nil)
}

func mergeReports(reports []*Report, sources []string) (*MergedReport, error) {
	if len(reports) == 0 {
		return nil, fmt.Errorf("%w: no reports to merge", engine.ErrInvalidArgument)
	}
	name := func(i int) string {
		if i < len(sources) && sources[i] != "" {
			return sources[i]
		}
		return "report " + strconv.Itoa(i)
	}
	byRank := map[int]int{}
	for i, r := range reports {
		if r == nil {
			return nil, fmt.Errorf("%w: %s is nil", engine.ErrInvalidArgument, name(i))
		}
		if r.Schema != ReportSchema {
			return nil, fmt.Errorf("%w: %s (rank %d) has the schema %q; a ferry report has %q",
				engine.ErrInvalidArgument, name(i), r.Rank, r.Schema, ReportSchema)
		}
		if j, dup := byRank[r.Rank]; dup {
			return nil, fmt.Errorf("%w: %s and %s both have rank %d (%s pid %d and %s pid %d)", engine.ErrInvalidArgument,
				name(j), name(i), r.Rank, reports[j].Host, reports[j].PID, r.Host, r.PID)
		}
		byRank[r.Rank] = i
	}

	m := &MergedReport{Schema: MergedReportSchema, Ferry: engine.Version, Created: time.Now().UTC().Format(time.RFC3339Nano),
		NumRanks: len(reports), Nodes: []string{}, Ranks: make([]*RankReport, 0, len(reports)),
		Aggregate:  &MergedAggregate{Pipeline: map[string]map[string]*AggregateMetric{}},
		Stragglers: []*PipelineStragglers{}}
	nodes := map[string]bool{}
	for i, r := range reports {
		rr := &RankReport{Rank: r.Rank, LocalRank: r.LocalRank, Node: r.Node, Host: r.Host, PID: r.PID,
			Started: r.Started, DurationS: r.DurationS,
			TrainingMetrics: withoutSeries(r.TrainingMetrics), SystemMetrics: withoutSeries(r.SystemMetrics),
			PipelineMetrics: groupsWithoutSeries(r.PipelineMetrics), GPUMetrics: groupsWithoutSeries(r.GPUMetrics)}
		if i < len(sources) {
			rr.Source = sources[i]
		}
		m.Ranks = append(m.Ranks, rr)
		nodes[rr.nodeName()] = true
		if isFinite(r.DurationS) {
			m.DurationS = math.Max(m.DurationS, r.DurationS)
		}
	}
	sort.Slice(m.Ranks, func(i, j int) bool { return m.Ranks[i].Rank < m.Ranks[j].Rank })
	m.Nodes = sortedKeys(nodes)

	m.Aggregate.Training = m.aggregate(func(rr *RankReport) map[string]*MetricReport { return rr.TrainingMetrics })
	for _, p := range m.pipelineNames() {
		m.Aggregate.Pipeline[p] = m.aggregate(func(rr *RankReport) map[string]*MetricReport { return rr.PipelineMetrics[p] })
		m.Stragglers = append(m.Stragglers, m.stragglers(p))
	}
	return m, nil
}

// withoutSeries copies a group of metrics without their series; a null entry is dropped.
func withoutSeries(ms map[string]*MetricReport) map[string]*MetricReport {
	out := make(map[string]*MetricReport, len(ms))
	for k, mr := range ms {
		if mr == nil {
			continue
		}
		c := *mr
		c.Series = [][5]Float{}
		out[k] = &c
	}
	return out
}

// groupsWithoutSeries copies groups of metrics (by iterator or device) without their series.
func groupsWithoutSeries(groups map[string]map[string]*MetricReport) map[string]map[string]*MetricReport {
	out := make(map[string]map[string]*MetricReport, len(groups))
	for k, ms := range groups {
		out[k] = withoutSeries(ms)
	}
	return out
}

// nodeName is the rank's node, or its host when the report names no node.
func (rr *RankReport) nodeName() string {
	if rr.Node != "" {
		return rr.Node
	}
	return rr.Host
}

// trainingNames lists the training metrics of every rank, sorted.
func (m *MergedReport) trainingNames() []string {
	return rankKeys(m.Ranks, func(rr *RankReport) map[string]*MetricReport { return rr.TrainingMetrics })
}

// pipelineNames lists the pipelines (iterator names) of every rank, sorted.
func (m *MergedReport) pipelineNames() []string {
	return rankKeys(m.Ranks, func(rr *RankReport) map[string]map[string]*MetricReport { return rr.PipelineMetrics })
}

// rankKeys lists the keys of the map group gives for each rank, sorted, without repeats.
func rankKeys[V any](ranks []*RankReport, group func(*RankReport) map[string]V) []string {
	keys := map[string]bool{}
	for _, rr := range ranks {
		for k := range group(rr) {
			keys[k] = true
		}
	}
	return sortedKeys(keys)
}

// JSON encodes the merged report, indented.
func (m *MergedReport) JSON() ([]byte, error) { return json.MarshalIndent(m, "", "  ") }

// WriteJSON writes the merged report as JSON to path (see writeFileSafely).
func (m *MergedReport) WriteJSON(path string) error { return writeRendered(path, m.JSON) }
