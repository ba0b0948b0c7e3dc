package report

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ferry-ml/ferry/engine"
)

// MergedReportSchema names the merged report's JSON schema; it changes only when a field's meaning
// changes.
const MergedReportSchema = "ferry.merged-report/1"

// UnmarshalJSON implements json.Unmarshaler: null reads back as NaN, the value MarshalJSON writes as
// null, so that a decoded report tells an absent value from a zero.
func (f *Float) UnmarshalJSON(b []byte) error {
	if string(bytes.TrimSpace(b)) == "null" {
		*f = Float(math.NaN())
		return nil
	}
	var v float64
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("%w: %.40s is not a number", engine.ErrFormat, b)
	}
	*f = Float(v)
	return nil
}

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

// ReadReport reads the JSON report a monitor wrote (Report.WriteJSON) from path. A file that cannot be
// read is an ErrIO error, one that is not JSON an ErrFormat error, and one of another schema an
// ErrInvalidArgument error; each names the file.
func ReadReport(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: reading the report %s: %v", engine.ErrIO, path, err)
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: %s is not a JSON report: %v", engine.ErrFormat, path, err)
	}
	if r.Schema != ReportSchema {
		return nil, fmt.Errorf("%w: %s has the schema %q; a ferry report has %q", engine.ErrInvalidArgument, path, r.Schema, ReportSchema)
	}
	return &r, nil
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
		Aggregate:  &MergedAggregate{Training: map[string]*AggregateMetric{}, Pipeline: map[string]map[string]*AggregateMetric{}},
		Stragglers: []*PipelineStragglers{}}
	nodes := map[string]bool{}
	for i, r := range reports {
		rr := &RankReport{Rank: r.Rank, LocalRank: r.LocalRank, Node: r.Node, Host: r.Host, PID: r.PID,
			Started: r.Started, DurationS: r.DurationS,
			TrainingMetrics: withoutSeries(r.TrainingMetrics), SystemMetrics: withoutSeries(r.SystemMetrics),
			PipelineMetrics: map[string]map[string]*MetricReport{}, GPUMetrics: map[string]map[string]*MetricReport{}}
		if i < len(sources) {
			rr.Source = sources[i]
		}
		for k, ms := range r.PipelineMetrics {
			rr.PipelineMetrics[k] = withoutSeries(ms)
		}
		for k, ms := range r.GPUMetrics {
			rr.GPUMetrics[k] = withoutSeries(ms)
		}
		m.Ranks = append(m.Ranks, rr)
		nodes[rr.nodeName()] = true
		if isFinite(r.DurationS) {
			m.DurationS = math.Max(m.DurationS, r.DurationS)
		}
	}
	sort.Slice(m.Ranks, func(i, j int) bool { return m.Ranks[i].Rank < m.Ranks[j].Rank })
	m.Nodes = sortedKeys(nodes)

	for _, n := range m.trainingNames() {
		var per []rankMetric
		for _, rr := range m.Ranks {
			if mr := rr.TrainingMetrics[n]; mr != nil {
				per = append(per, rankMetric{rr.Rank, mr})
			}
		}
		m.Aggregate.Training[n] = aggregateMetric(n, per)
	}
	for _, p := range m.pipelineNames() {
		names := map[string]bool{}
		for _, rr := range m.Ranks {
			for n := range rr.PipelineMetrics[p] {
				names[n] = true
			}
		}
		agg := map[string]*AggregateMetric{}
		for n := range names {
			var per []rankMetric
			for _, rr := range m.Ranks {
				if mr := rr.PipelineMetrics[p][n]; mr != nil {
					per = append(per, rankMetric{rr.Rank, mr})
				}
			}
			agg[n] = aggregateMetric(n, per)
		}
		m.Aggregate.Pipeline[p] = agg
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

// nodeName is the rank's node, or its host when the report names no node.
func (rr *RankReport) nodeName() string {
	if rr.Node != "" {
		return rr.Node
	}
	return rr.Host
}

// trainingNames lists the training metrics of every rank, sorted.
func (m *MergedReport) trainingNames() []string {
	names := map[string]bool{}
	for _, rr := range m.Ranks {
		for n := range rr.TrainingMetrics {
			names[n] = true
		}
	}
	return sortedKeys(names)
}

// pipelineNames lists the pipelines (iterator names) of every rank, sorted.
func (m *MergedReport) pipelineNames() []string {
	names := map[string]bool{}
	for _, rr := range m.Ranks {
		for n := range rr.PipelineMetrics {
			names[n] = true
		}
	}
	return sortedKeys(names)
}

type rankMetric struct {
	rank int
	mr   *MetricReport
}

// hasMean reports whether mr holds a usable summary: at least one value and a finite mean.
func hasMean(mr *MetricReport) bool { return mr != nil && mr.Count > 0 && isFinite(float64(mr.Mean)) }

// aggregateMetric combines one metric over the ranks in per (sorted by rank). With N = Σ nᵢ, the mean
// is Σ nᵢ·meanᵢ / N and the pooled population variance Σ nᵢ·(stdᵢ² + (meanᵢ − mean)²) / N: the parallel
// variance formula, exact for population deviations.
func aggregateMetric(name string, per []rankMetric) *AggregateMetric {
	nan := Float(math.NaN())
	a := &AggregateMetric{Mean: nan, Min: nan, Max: nan, Std: nan, WorstP99: nan, PerRank: []RankQuantiles{}}
	var sum, total float64
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, p := range per {
		mr := p.mr
		a.NonFinite += mr.NonFinite
		a.PerRank = append(a.PerRank, RankQuantiles{Rank: p.rank, Count: mr.Count, Mean: mr.Mean, P50: mr.P50, P99: mr.P99})
		if !hasMean(mr) {
			continue
		}
		a.Ranks++
		a.Count += mr.Count
		total += float64(mr.Count)
		sum += float64(mr.Count) * float64(mr.Mean)
		if v := float64(mr.Min); isFinite(v) {
			lo = math.Min(lo, v)
		}
		if v := float64(mr.Max); isFinite(v) {
			hi = math.Max(hi, v)
		}
		if v := float64(mr.P99); isFinite(v) && (a.WorstP99Rank == nil || v > float64(a.WorstP99)) {
			r := p.rank
			a.WorstP99, a.WorstP99Rank = mr.P99, &r
		}
	}
	if a.Ranks == 0 {
		return a
	}
	mean := sum / total
	a.Mean = Float(mean)
	if !math.IsInf(lo, 0) {
		a.Min = Float(lo)
	}
	if !math.IsInf(hi, 0) {
		a.Max = Float(hi)
	}
	m2 := 0.0
	for _, p := range per {
		if !hasMean(p.mr) {
			continue
		}
		sd, d := float64(p.mr.Std), float64(p.mr.Mean)-mean
		if !isFinite(sd) {
			m2 = math.NaN() // a rank's deviation is missing: the pooled one is unknown
			break
		}
		m2 += float64(p.mr.Count) * (sd*sd + d*d)
	}
	a.Std = Float(math.Sqrt(m2 / total))
	if strings.HasSuffix(name, "_per_second") {
		s := 0.0
		for _, p := range per {
			if hasMean(p.mr) {
				s += float64(p.mr.Mean)
			}
		}
		tm := Float(s)
		a.TotalMean = &tm
	}
	return a
}

// stragglers builds the data-stall view of pipeline p.
func (m *MergedReport) stragglers(p string) *PipelineStragglers {
	nan := Float(math.NaN())
	s := &PipelineStragglers{Pipeline: p, Ranks: []StragglerRank{}, DataStallSpread: nan, SamplesPerSecondSpread: nan}
	mean := func(mr *MetricReport) Float {
		if !hasMean(mr) {
			return nan
		}
		return mr.Mean
	}
	for _, rr := range m.Ranks {
		ms, ok := rr.PipelineMetrics[p]
		if !ok {
			continue
		}
		s.Ranks = append(s.Ranks, StragglerRank{Rank: rr.Rank, Node: rr.Node, Host: rr.Host,
			DataStallPercent: mean(ms["data_stall_percent"]), SamplesPerSecond: mean(ms["samples_per_second"])})
	}
	sort.SliceStable(s.Ranks, func(i, j int) bool {
		a, b := float64(s.Ranks[i].DataStallPercent), float64(s.Ranks[j].DataStallPercent)
		if isFinite(a) != isFinite(b) {
			return isFinite(a)
		}
		return a > b // equal stalls keep rank order
	})
	spread := func(get func(StragglerRank) Float) Float {
		lo, hi := math.Inf(1), math.Inf(-1)
		for _, r := range s.Ranks {
			if v := float64(get(r)); isFinite(v) {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
		if math.IsInf(lo, 0) {
			return nan
		}
		return Float(hi - lo)
	}
	s.DataStallSpread = spread(func(r StragglerRank) Float { return r.DataStallPercent })
	s.SamplesPerSecondSpread = spread(func(r StragglerRank) Float { return r.SamplesPerSecond })
	return s
}

// JSON encodes the merged report, indented.
func (m *MergedReport) JSON() ([]byte, error) { return json.MarshalIndent(m, "", "  ") }

// WriteJSON writes the merged report as JSON to path (see writeFileSafely).
func (m *MergedReport) WriteJSON(path string) error {
	b, err := m.JSON()
	if err != nil {
		return err
	}
	return writeFileSafely(path, b)
}

// textNumber formats v with one decimal, or "-" when there is no value: never a zero that was not read.
func textNumber(v Float) string {
	if !isFinite(float64(v)) {
		return "-"
	}
	return strconv.FormatFloat(float64(v), 'f', 1, 64)
}

// textRate formats a rate for the terminal: bytes per second with a decimal prefix, other rates as
// numbers per second.
func textRate(name string, v float64) string {
	if !isFinite(v) {
		return "-"
	}
	if unitOf(name) == unitByteRate {
		return formatValue(unitByteRate, v)
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + "/s"
}

// Text renders the merged report as plain-text tables for a terminal: one row per rank (rank, node,
// samples per second and data stall of each pipeline, and the count of the first training metric,
// which is the number of steps when the program logs it once a step); then the job's throughput, the
// sum of the ranks' mean rates; then, per pipeline, the ranks by data stall, the most stalled first.
// A figure a rank does not report is shown as "-".
func (m *MergedReport) Text() string {
	var b strings.Builder
	noun := "ranks"
	if m.NumRanks == 1 {
		noun = "rank"
	}
	nodes := "nodes"
	if len(m.Nodes) == 1 {
		nodes = "node"
	}
	fmt.Fprintf(&b, "ferry merged report: %d %s on %d %s, longest run %s\n\n", m.NumRanks, noun, len(m.Nodes), nodes,
		formatDuration(m.DurationS))

	pipes := m.pipelineNames()
	training := m.trainingNames()
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	header := []string{"RANK", "NODE"}
	if len(pipes) <= 1 {
		header = append(header, "SAMPLES/S", "STALL %")
	} else {
		for _, p := range pipes {
			header = append(header, p+" SAMPLES/S", p+" STALL %")
		}
	}
	if len(training) > 0 {
		header = append(header, "STEPS ("+training[0]+")")
	} else {
		header = append(header, "STEPS")
	}
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, rr := range m.Ranks {
		row := []string{strconv.Itoa(rr.Rank), rr.nodeName()}
		if len(pipes) == 0 {
			row = append(row, "-", "-")
		}
		for _, p := range pipes {
			ms := rr.PipelineMetrics[p]
			row = append(row, textMean(ms["samples_per_second"]), textMean(ms["data_stall_percent"]))
		}
		steps := "-"
		if len(training) > 0 {
			if mr := rr.TrainingMetrics[training[0]]; mr != nil {
				steps = groupDigits(mr.Count)
			}
		}
		row = append(row, steps)
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	_ = tw.Flush()

	// The throughput: every rate metric's sum of the ranks' means.
	var rates [][2]string
	for _, p := range pipes {
		agg := m.Aggregate.Pipeline[p]
		for _, n := range sortedKeys(agg) {
			if a := agg[n]; a.TotalMean != nil {
				rates = append(rates, [2]string{"pipeline " + p + " " + n, textRate(n, float64(*a.TotalMean)) +
					fmt.Sprintf(" (%d ranks)", a.Ranks)})
			}
		}
	}
	for _, n := range training {
		if a := m.Aggregate.Training[n]; a.TotalMean != nil {
			rates = append(rates, [2]string{n, textRate(n, float64(*a.TotalMean)) + fmt.Sprintf(" (%d ranks)", a.Ranks)})
		}
	}
	b.WriteString("\nthroughput (the sum of the ranks' means):\n")
	if len(rates) == 0 {
		b.WriteString("  no rate metric (*_per_second) was reported\n")
	} else {
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		for _, r := range rates {
			fmt.Fprintf(tw, "  %s\t%s\n", r[0], r[1])
		}
		_ = tw.Flush()
	}

	for _, s := range m.Stragglers {
		fmt.Fprintf(&b, "\nstragglers, pipeline %s (the rank that waits most for data first):\n", s.Pipeline)
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  RANK\tNODE\tSTALL %\tSAMPLES/S")
		for _, r := range s.Ranks {
			node := r.Node
			if node == "" {
				node = r.Host
			}
			fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\n", r.Rank, node, textNumber(r.DataStallPercent), textNumber(r.SamplesPerSecond))
		}
		fmt.Fprintf(tw, "  spread\t\t%s\t%s\n", textNumber(s.DataStallSpread), textNumber(s.SamplesPerSecondSpread))
		_ = tw.Flush()
	}
	return b.String()
}

// textMean is a metric's mean for the terminal, or "-" when the metric is absent or has no value.
func textMean(mr *MetricReport) string {
	if !hasMean(mr) {
		return "-"
	}
	return textNumber(mr.Mean)
}

// HTML renders the merged report as one self-contained HTML page (nothing loaded from elsewhere): the
// straggler table per pipeline, the aggregate table, and each rank's summary tables. A GPU field a
// device did not report is named as such, never shown as zero.
func (m *MergedReport) HTML() ([]byte, error) {
	if m == nil {
		return nil, fmt.Errorf("%w: merged report is nil", engine.ErrInvalidArgument)
	}
	var b bytes.Buffer
	if err := mergedHTMLTemplate.Execute(&b, m.htmlPage()); err != nil {
		return nil, fmt.Errorf("%w: rendering the merged HTML report: %v", engine.ErrFormat, err)
	}
	return b.Bytes(), nil
}

// WriteHTML writes the merged report as HTML to path (see HTML and writeFileSafely).
func (m *MergedReport) WriteHTML(path string) error {
	b, err := m.HTML()
	if err != nil {
		return err
	}
	return writeFileSafely(path, b)
}

// The merged page's model, already formatted; names from the reports stay plain strings, escaped by
// html/template.
type mergedPage struct {
	Ranks, Nodes, Duration, Created, Version, Schema string
	Stragglers                                       []mergedStragglers
	Aggregate                                        []mergedAggRow
	RankSections                                     []mergedRank
}

type mergedStragglers struct {
	Pipeline               string
	Rows                   [][]string // rank, node, host, stall, samples/s
	StallSpread, SpsSpread string
}

type mergedAggRow struct {
	Name  string
	Cells []string // ranks, count, mean, std, min, max, total, worst p99, its rank
}

type mergedRank struct {
	Title string
	Meta  string
	Group []htmlGroup
}

func (m *MergedReport) htmlPage() mergedPage {
	p := mergedPage{Ranks: strconv.Itoa(m.NumRanks), Nodes: strings.Join(m.Nodes, ", "), Duration: formatDuration(m.DurationS),
		Created: formatTimestamp(m.Created), Version: m.Ferry, Schema: m.Schema}
	fmtv := func(name string, v Float) string { return mergedValue(unitOf(name), float64(v)) }
	for _, s := range m.Stragglers {
		ms := mergedStragglers{Pipeline: s.Pipeline, StallSpread: fmtv("data_stall_percent", s.DataStallSpread),
			SpsSpread: fmtv("samples_per_second", s.SamplesPerSecondSpread)}
		for _, r := range s.Ranks {
			ms.Rows = append(ms.Rows, []string{strconv.Itoa(r.Rank), r.Node, r.Host,
				fmtv("data_stall_percent", r.DataStallPercent), fmtv("samples_per_second", r.SamplesPerSecond)})
		}
		p.Stragglers = append(p.Stragglers, ms)
	}
	aggRow := func(label, name string, a *AggregateMetric) mergedAggRow {
		total, worstRank := "", "—"
		if a.TotalMean != nil {
			total = fmtv(name, *a.TotalMean)
		}
		if a.WorstP99Rank != nil {
			worstRank = strconv.Itoa(*a.WorstP99Rank)
		}
		return mergedAggRow{Name: label, Cells: []string{strconv.Itoa(a.Ranks), groupDigits(a.Count), fmtv(name, a.Mean),
			fmtv(name, a.Std), fmtv(name, a.Min), fmtv(name, a.Max), total, fmtv(name, a.WorstP99), worstRank}}
	}
	for _, n := range sortedKeys(m.Aggregate.Training) {
		p.Aggregate = append(p.Aggregate, aggRow(n, n, m.Aggregate.Training[n]))
	}
	for _, pipe := range sortedKeys(m.Aggregate.Pipeline) {
		agg := m.Aggregate.Pipeline[pipe]
		for _, n := range sortedKeys(agg) {
			p.Aggregate = append(p.Aggregate, aggRow("pipeline/"+pipe+"/"+n, n, agg[n]))
		}
	}
	for _, rr := range m.Ranks {
		sec := mergedRank{Title: fmt.Sprintf("Rank %d", rr.Rank),
			Meta: fmt.Sprintf("local rank %d · node %s · host %s · pid %d · %s", rr.LocalRank, rr.nodeName(), rr.Host, rr.PID,
				formatDuration(rr.DurationS))}
		if rr.Source != "" {
			sec.Meta += " · " + rr.Source
		}
		if len(rr.TrainingMetrics) > 0 {
			sec.Group = append(sec.Group, buildGroup("Training metrics", nil, rr.TrainingMetrics, sortedKeys(rr.TrainingMetrics)))
		}
		for _, it := range sortedKeys(rr.PipelineMetrics) {
			ms := rr.PipelineMetrics[it]
			sec.Group = append(sec.Group, buildGroup("Pipeline "+strconv.Quote(it), nil, ms, sortedKeys(ms)))
		}
		devs := sortedKeys(rr.GPUMetrics)
		sort.SliceStable(devs, func(i, j int) bool {
			a, ea := strconv.Atoi(devs[i])
			b, eb := strconv.Atoi(devs[j])
			if ea == nil && eb == nil {
				return a < b
			}
			return devs[i] < devs[j]
		})
		for _, d := range devs {
			ms := rr.GPUMetrics[d]
			var order, absent []string
			known := map[string]bool{}
			for _, f := range gpuFields {
				known[f.name] = true
				if ms[f.name] != nil {
					order = append(order, f.name)
				} else {
					absent = append(absent, f.title)
				}
			}
			for _, n := range sortedKeys(ms) {
				if !known[n] {
					order = append(order, n)
				}
			}
			g := buildGroup("GPU "+d, nil, ms, order)
			if len(absent) > 0 {
				g.Notes = append(g.Notes, "Not reported by this device: "+strings.Join(absent, ", ")+".")
			}
			sec.Group = append(sec.Group, g)
		}
		if len(rr.SystemMetrics) > 0 {
			sec.Group = append(sec.Group, buildGroup("Host", nil, rr.SystemMetrics, sortedKeys(rr.SystemMetrics)))
		}
		p.RankSections = append(p.RankSections, sec)
	}
	return p
}

// mergedValue formats one value with its unit for the merged page, to four significant digits (a
// job's throughput is read to more than three): "45.3 %", "3.702 k/s", "53.51 GB/s".
func mergedValue(u unitKind, v float64) string {
	switch {
	case !isFinite(v):
		return "—"
	case u == unitNone:
		return formatValue(u, v)
	case u == unitPercent:
		return formatSig(v, 3) + " %"
	}
	sc := pickScale(u, math.Abs(v))
	if strings.HasPrefix(sc.label, "/") {
		return formatSig(v/sc.div, 4) + sc.label
	}
	return formatSig(v/sc.div, 4) + " " + sc.label
}

var mergedHTMLTemplate = template.Must(template.New("merged").Parse(mergedHTMLSource))

const mergedHTMLSource = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="ferry {{.Version}}">
<title>ferry merged report · {{.Ranks}} ranks</title>
<style>
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f6f7f9; color: #111827;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background: #111827; color: #f9fafb; padding: 20px 32px 14px; }
header h1 { margin: 0 0 12px; font-size: 20px; font-weight: 600; }
dl.meta { display: flex; flex-wrap: wrap; gap: 8px 28px; margin: 0; }
dl.meta dt { font-size: 11px; text-transform: uppercase; letter-spacing: .06em; color: #9ca3af; }
dl.meta dd { margin: 0; overflow-wrap: anywhere; }
nav { margin-top: 14px; display: flex; gap: 18px; font-size: 13px; }
nav a { color: #d1d5db; text-decoration: none; border-bottom: 1px dotted #6b7280; }
main { padding: 8px 32px 32px; max-width: 1480px; }
section { margin-top: 22px; }
h2 { font-size: 17px; font-weight: 600; margin: 0 0 10px; padding-bottom: 6px; border-bottom: 1px solid #e5e7eb; }
h3 { font-size: 15px; font-weight: 600; margin: 16px 0 4px; }
h4 { font-size: 13.5px; font-weight: 600; margin: 12px 0 0; }
p.empty, p.note, p.meta { color: #6b7280; margin: 6px 0; font-size: 13px; }
table.summary { border-collapse: collapse; margin-top: 8px; background: #fff; border: 1px solid #e5e7eb;
  font-size: 12.5px; font-variant-numeric: tabular-nums; }
table.summary th, table.summary td { padding: 4px 10px; text-align: right; border-bottom: 1px solid #f0f1f3; white-space: nowrap; }
table.summary th { background: #f3f4f6; font-weight: 600; color: #374151; }
table.summary th:first-child, table.summary th.l, table.summary td.name { text-align: left; }
table.summary td.name { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
table.summary td.unit { text-align: left; color: #6b7280; }
table.summary tr.spread td { border-top: 1px solid #d1d5db; color: #4b5563; }
.scroll { overflow-x: auto; }
footer { color: #9ca3af; font-size: 12px; padding: 0 32px 24px; }
</style>
</head>
<body>
<header>
<h1>ferry merged report</h1>
<dl class="meta">
<div><dt>Ranks</dt><dd>{{.Ranks}}</dd></div>
<div><dt>Nodes</dt><dd>{{.Nodes}}</dd></div>
<div><dt>Longest run</dt><dd>{{.Duration}}</dd></div>
<div><dt>Merged</dt><dd>{{.Created}}</dd></div>
<div><dt>ferry</dt><dd>{{.Version}}</dd></div>
<div><dt>Schema</dt><dd>{{.Schema}}</dd></div>
</dl>
<nav><a href="#stragglers">Stragglers</a><a href="#aggregate">Aggregate</a><a href="#ranks">Ranks</a></nav>
</header>
<main>
<section id="stragglers">
<h2>Stragglers</h2>
{{if not .Stragglers}}<p class="empty">No rank reported an input pipeline.</p>
{{end}}{{range .Stragglers}}<h3>Pipeline {{printf "%q" .Pipeline}}</h3>
<p class="note">Ranks by mean data stall (the share of time spent waiting for data), the most stalled first.</p>
<div class="scroll"><table class="summary">
<thead><tr><th>rank</th><th class="l">node</th><th class="l">host</th><th>data stall</th><th>samples per second</th></tr></thead>
<tbody>
{{range .Rows}}<tr>{{range $i, $c := .}}<td{{if lt $i 3}} class="name"{{end}}>{{$c}}</td>{{end}}</tr>
{{end}}<tr class="spread"><td class="name">spread (max − min)</td><td></td><td></td><td>{{.StallSpread}}</td><td>{{.SpsSpread}}</td></tr>
</tbody>
</table></div>
{{end}}</section>
<section id="aggregate">
<h2>Aggregate</h2>
<p class="note">Count, mean, std, min and max are exact over all ranks (the std pooled from each rank's). Total is the sum of the ranks' means, for rates: the job's throughput. Quantiles cannot be merged from summaries: worst p99 is the largest rank's p99, an upper bound of the job's.</p>
{{if not .Aggregate}}<p class="empty">No training or pipeline metric was reported.</p>
{{else}}<div class="scroll"><table class="summary">
<thead><tr><th>metric</th><th>ranks</th><th>count</th><th>mean</th><th>std</th><th>min</th><th>max</th><th>total</th><th>worst p99</th><th>its rank</th></tr></thead>
<tbody>
{{range .Aggregate}}<tr><td class="name">{{.Name}}</td>{{range .Cells}}<td>{{.}}</td>{{end}}</tr>
{{end}}</tbody>
</table></div>
{{end}}</section>
<section id="ranks">
<h2>Ranks</h2>
{{range .RankSections}}<h3>{{.Title}}</h3>
<p class="meta">{{.Meta}}</p>
{{if not .Group}}<p class="empty">No metrics.</p>
{{end}}{{range .Group}}<h4>{{.Title}}</h4>
{{range .Notes}}<p class="note">{{.}}</p>
{{end}}{{if .Rows}}<div class="scroll"><table class="summary">
<thead><tr><th>metric</th><th>unit</th><th>count</th><th>mean</th><th>std</th><th>min</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>last</th></tr></thead>
<tbody>
{{range .Rows}}<tr><td class="name">{{.Name}}</td><td class="unit">{{.Unit}}</td><td>{{.Count}}</td>{{range .Cells}}<td>{{.}}</td>{{end}}</tr>
{{end}}</tbody>
</table></div>
{{end}}{{end}}{{end}}</section>
</main>
<footer>ferry {{.Version}} · {{.Schema}} · per-rank percentiles from a quantile sketch, within its relative accuracy</footer>
</body>
</html>
`
