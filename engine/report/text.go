package report

import (
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
)

// The merged report as plain text, for a terminal.

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
// samples per second and data stall of each pipeline, and how many values the first training metric
// received, NaN and ±Inf included, which is the number of steps when the program logs it once a step); then the job's throughput, the
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
				steps = groupDigits(mr.Logged())
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
