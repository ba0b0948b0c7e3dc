package report

import (
	"fmt"
	"strconv"
	"strings"
)

var (
	stragglerHead = []htmlCell{{Text: "rank"}, {"l", "node"}, {"l", "host"}, {Text: "data stall"}, {Text: "samples per second"}}
	aggregateHead = cells("metric", "ranks", "count", "mean", "std", "min", "max", "total", "worst p99", "its rank")
)

func (m *MergedReport) htmlPage() htmlPage {
	return htmlPage{
		Title: "ferry merged report · " + strconv.Itoa(m.NumRanks) + " ranks", Heading: "ferry merged report",
		Meta: []htmlMeta{{"Ranks", strconv.Itoa(m.NumRanks)}, {"Nodes", strings.Join(m.Nodes, ", ")},
			{"Longest run", formatDuration(m.DurationS)}, {"Merged", formatTimestamp(m.Created)}, {"ferry", m.Ferry},
			{"Schema", m.Schema}},
		Sections:   []htmlSection{m.stragglerSection(), m.aggregateSection(), m.ranksSection()},
		Version:    m.Ferry,
		Schema:     m.Schema,
		FooterNote: "per-rank percentiles from a quantile sketch, within its relative accuracy",
	}
}

// mergedCell formats the value of metric name for the merged page (see mergedValue).
func mergedCell(name string, v Float) string { return mergedValue(unitOf(name), float64(v)) }

func (m *MergedReport) stragglerSection() htmlSection {
	s := htmlSection{ID: "stragglers", Title: "Stragglers"}
	if len(m.Stragglers) == 0 {
		s.Empty = "No rank reported an input pipeline."
	}
	for _, st := range m.Stragglers {
		t := &htmlTable{Head: stragglerHead}
		for _, r := range st.Ranks {
			t.Rows = append(t.Rows, htmlRow{Cells: []htmlCell{{"name", strconv.Itoa(r.Rank)}, {"name", r.Node}, {"name", r.Host},
				{Text: mergedCell("data_stall_percent", r.DataStallPercent)},
				{Text: mergedCell("samples_per_second", r.SamplesPerSecond)}}})
		}
		t.Rows = append(t.Rows, htmlRow{Class: "spread", Cells: []htmlCell{{"name", "spread (max − min)"}, {}, {},
			{Text: mergedCell("data_stall_percent", st.DataStallSpread)},
			{Text: mergedCell("samples_per_second", st.SamplesPerSecondSpread)}}})
		s.Groups = append(s.Groups, htmlGroup{Title: "Pipeline " + strconv.Quote(st.Pipeline), Table: t,
			Notes: []string{"Ranks by mean data stall (the share of time spent waiting for data), the most stalled first."}})
	}
	return s
}

func (m *MergedReport) aggregateSection() htmlSection {
	s := htmlSection{ID: "aggregate", Title: "Aggregate", Notes: []string{"Count, mean, std, min and max are exact over " +
		"all ranks (the std pooled from each rank's). Total is the sum of the ranks' means, for rates: the job's " +
		"throughput. Quantiles cannot be merged from summaries: worst p99 is the largest rank's p99, an upper bound " +
		"of the job's."}}
	t := &htmlTable{Head: aggregateHead}
	row := func(label, name string, a *AggregateMetric) {
		total, worstRank := "", "—"
		if a.TotalMean != nil {
			total = mergedCell(name, *a.TotalMean)
		}
		if a.WorstP99Rank != nil {
			worstRank = strconv.Itoa(*a.WorstP99Rank)
		}
		t.Rows = append(t.Rows, htmlRow{Cells: append([]htmlCell{{"name", label}}, cells(strconv.Itoa(a.Ranks),
			countText(a.Count, a.NonFinite), mergedCell(name, a.Mean), mergedCell(name, a.Std), mergedCell(name, a.Min),
			mergedCell(name, a.Max), total, mergedCell(name, a.WorstP99), worstRank)...)})
	}
	for _, n := range sortedKeys(m.Aggregate.Training) {
		row(n, n, m.Aggregate.Training[n])
	}
	for _, pipe := range sortedKeys(m.Aggregate.Pipeline) {
		agg := m.Aggregate.Pipeline[pipe]
		for _, n := range sortedKeys(agg) {
			row("pipeline/"+pipe+"/"+n, n, agg[n])
		}
	}
	if len(t.Rows) == 0 {
		s.Empty = "No training or pipeline metric was reported."
	} else {
		s.Groups = []htmlGroup{{Table: t}}
	}
	return s
}

// ranksSection is each rank's summary tables, with the rank's identity.
func (m *MergedReport) ranksSection() htmlSection {
	s := htmlSection{ID: "ranks", Title: "Ranks"}
	for _, rr := range m.Ranks {
		g := htmlGroup{Title: fmt.Sprintf("Rank %d", rr.Rank),
			Meta: fmt.Sprintf("local rank %d · node %s · host %s · pid %d · %s", rr.LocalRank, rr.nodeName(), rr.Host, rr.PID,
				formatDuration(rr.DurationS))}
		if rr.Source != "" {
			g.Meta += " · " + rr.Source
		}
		if len(rr.TrainingMetrics) > 0 {
			g.Groups = append(g.Groups, buildGroup("Training metrics", nil, rr.TrainingMetrics, sortedKeys(rr.TrainingMetrics)))
		}
		for _, it := range sortedKeys(rr.PipelineMetrics) {
			ms := rr.PipelineMetrics[it]
			g.Groups = append(g.Groups, buildGroup("Pipeline "+strconv.Quote(it), nil, ms, sortedKeys(ms)))
		}
		for _, d := range sortedDevices(rr.GPUMetrics) {
			g.Groups = append(g.Groups, gpuGroup("GPU "+d, nil, rr.GPUMetrics[d]))
		}
		if len(rr.SystemMetrics) > 0 {
			g.Groups = append(g.Groups, buildGroup("Host", nil, rr.SystemMetrics, sortedKeys(rr.SystemMetrics)))
		}
		for i := range g.Groups {
			g.Groups[i].Sub = true
		}
		if len(g.Groups) == 0 {
			g.Empty = "No metrics."
		}
		s.Groups = append(s.Groups, g)
	}
	return s
}
