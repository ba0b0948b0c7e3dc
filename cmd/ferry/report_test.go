package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/monitor"
	"github.com/ferry-ml/ferry/engine/report"
)

// writeRankReport writes the report of one rank, built by a real monitor with its samplers off: steps
// loss values, and the pipeline "train" logging the given data stall and samples per second.
func writeRankReport(t *testing.T, dir string, rank int, node string, steps int, stall, sps []float64) string {
	t.Helper()
	m, err := monitor.NewMonitor(monitor.MonitorOptions{GPUInterval: -1, SystemInterval: -1, Rank: rank, LocalRank: rank % 2, Node: node})
	require.NoError(t, err)
	defer func() { require.NoError(t, m.Close()) }()
	loss, err := m.Metric("loss")
	require.NoError(t, err)
	for i := range steps {
		require.NoError(t, m.Log(loss, 2/float64(i+1)))
	}
	t0 := engine.MonotonicNow()
	for name, vs := range map[string][]float64{"data_stall_percent": stall, "samples_per_second": sps} {
		id, err := m.Metric("pipeline/train/" + name)
		require.NoError(t, err)
		for i, v := range vs {
			require.NoError(t, m.LogAt(id, t0+uint64(i)*uint64(1e8), v))
		}
	}
	path := filepath.Join(dir, fmt.Sprintf("report_rank%d.json", rank))
	require.NoError(t, m.Report().WriteJSON(path))
	return path
}

func TestReportMergeCommand(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent()) // every monitor is closed
	for _, k := range []string{"RANK", "WORLD_SIZE", "LOCAL_RANK"} {
		t.Setenv(k, "")
	}
	dir := t.TempDir()
	// Rank 1 waits most for data, rank 2 least.
	r0 := writeRankReport(t, dir, 0, "node-a", 100, []float64{10, 12, 14}, []float64{1000, 1100, 1200})
	r1 := writeRankReport(t, dir, 1, "node-a", 90, []float64{40, 50}, []float64{600, 700})
	r2 := writeRankReport(t, dir, 2, "node-b", 80, []float64{1, 3}, []float64{1500, 1700})
	out := filepath.Join(dir, "merged.json")
	html := filepath.Join(dir, "merged.html")

	stdout, stderr, err := runCLISplit(t, "report", "merge", "--out", out, "--html", html, r2, r0, r1)
	require.NoError(t, err, stderr)
	require.Empty(t, stderr)
	require.Contains(t, stdout, "ferry merged report: 3 ranks on 2 nodes")
	require.Regexp(t, `RANK\s+NODE\s+SAMPLES/S\s+STALL %\s+STEPS \(loss\)`, stdout)
	require.Regexp(t, `(?m)^0\s+node-a\s+1100\.0\s+12\.0\s+100$`, stdout)
	require.Regexp(t, `(?m)^1\s+node-a\s+650\.0\s+45\.0\s+90$`, stdout)
	require.Regexp(t, `(?m)^2\s+node-b\s+1600\.0\s+2\.0\s+80$`, stdout)
	require.Regexp(t, `pipeline train samples_per_second\s+3350\.0/s \(3 ranks\)`, stdout, "1100 + 650 + 1600")
	stragglers := stdout[strings.Index(stdout, "stragglers, pipeline train"):]
	require.Regexp(t, `(?s)RANK\s+NODE\s+STALL %\s+SAMPLES/S\s+1\s+node-a\s+45\.0\s+650\.0\s+0\s+node-a\s+12\.0\s+1100\.0\s+2\s+node-b\s+2\.0\s+1600\.0\s+spread\s+43\.0\s+950\.0`,
		stragglers)
	require.Contains(t, stdout, "merged report written to "+out)
	require.Contains(t, stdout, "HTML page written to "+html)

	b, err := os.ReadFile(out)
	require.NoError(t, err)
	var m report.MergedReport
	require.NoError(t, json.Unmarshal(b, &m))
	require.Equal(t, report.MergedReportSchema, m.Schema)
	require.Len(t, m.Ranks, 3)
	for i, rr := range m.Ranks {
		require.Equal(t, i, rr.Rank)
	}
	require.Equal(t, r0, m.Ranks[0].Source)
	loss := m.Aggregate.Training["loss"]
	require.Equal(t, uint64(270), loss.Count)
	require.Equal(t, report.Float(2), loss.Max)
	require.Equal(t, report.Float(2.0/100), loss.Min)
	sps := m.Aggregate.Pipeline["train"]["samples_per_second"]
	require.NotNil(t, sps.TotalMean)
	require.InDelta(t, 3350, float64(*sps.TotalMean), 1e-9)
	require.InDelta(t, (1000+1100+1200+600+700+1500+1700)/7.0, float64(sps.Mean), 1e-9)
	require.Len(t, m.Stragglers, 1)
	var order []int
	for _, r := range m.Stragglers[0].Ranks {
		order = append(order, r.Rank)
	}
	require.Equal(t, []int{1, 0, 2}, order)
	require.InDelta(t, 43, float64(m.Stragglers[0].DataStallSpread), 1e-9)

	h, err := os.ReadFile(html)
	require.NoError(t, err)
	require.True(t, bytes.HasPrefix(bytes.ToLower(h), []byte("<!doctype html")), "%.200s", h)
	require.Contains(t, string(h), "Stragglers")
	require.Contains(t, string(h), "</html>")

	// Without outputs it only prints the table.
	stdout, err = runCLI(t, "report", "merge", r0, r1)
	require.NoError(t, err)
	require.Contains(t, stdout, "2 ranks on 1 node")
	require.NotContains(t, stdout, "written to")
}

func TestReportMergeCommandRejectsBadInput(t *testing.T) {
	for _, k := range []string{"RANK", "WORLD_SIZE", "LOCAL_RANK"} {
		t.Setenv(k, "")
	}
	dir := t.TempDir()
	r0 := writeRankReport(t, dir, 0, "n", 3, []float64{1}, []float64{2})
	r1 := writeRankReport(t, dir, 1, "n", 3, []float64{1}, []float64{2})
	dup := filepath.Join(dir, "copy_of_rank0.json")
	b, err := os.ReadFile(r0)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(dup, b, 0o644))
	other := filepath.Join(dir, "other.json")
	require.NoError(t, os.WriteFile(other, []byte(`{"schema":"other/1"}`), 0o644))
	out := filepath.Join(dir, "merged.json")

	for _, c := range []struct {
		args []string
		is   error
		msg  string
	}{
		{[]string{}, nil, "no reports to merge"},
		{[]string{r0, filepath.Join(dir, "missing.json")}, engine.ErrIO, "missing.json"},
		{[]string{r0, other}, engine.ErrInvalidArgument, other + ` has the schema "other/1"`},
		{[]string{r0, r1, dup}, engine.ErrInvalidArgument, r0 + " and " + dup + " both have rank 0"},
		{[]string{"--out", filepath.Join(dir, "missing", "m.json"), r0}, nil, "does not exist"},
		{[]string{"--html", filepath.Join(dir, "missing", "m.html"), r0}, nil, "does not exist"},
		{[]string{"--out", r1, r0, r1}, nil, "would be overwritten"},
		{[]string{"--out", out, "--html", out, r0}, nil, "the same file"},
		{[]string{"--bogus", r0}, nil, "unknown flag"},
	} {
		_, err := runCLI(t, append([]string{"report", "merge"}, c.args...)...)
		require.Error(t, err, "%v", c.args)
		require.ErrorContains(t, err, c.msg, "%v", c.args)
		if c.is != nil {
			require.ErrorIs(t, err, c.is, "%v", c.args)
		}
	}
	require.NoFileExists(t, out, "nothing is written when the arguments are wrong")
	b1, err := os.ReadFile(r1)
	require.NoError(t, err)
	require.True(t, json.Valid(b1), "the input was not overwritten")

	_, err = runCLI(t, "report", "bogus")
	require.ErrorContains(t, err, "unknown command")
	help, err := runCLI(t, "report")
	require.NoError(t, err)
	require.Regexp(t, regexp.MustCompile(`merge\s+Merge the reports`), help)
}

func TestReportMergeCommandKeepsAbsentFiguresAbsent(t *testing.T) {
	// A rank with no pipeline and no value: dashes, never zeros.
	dir := t.TempDir()
	nan := report.Float(math.NaN())
	r := &report.Report{Schema: report.ReportSchema, Rank: 0, Host: "h0",
		TrainingMetrics: map[string]*report.MetricReport{"loss": {Count: 0, Mean: nan, Min: nan, Max: nan, Std: nan}}}
	p := filepath.Join(dir, "r0.json")
	require.NoError(t, r.WriteJSON(p))
	stdout, err := runCLI(t, "report", "merge", p)
	require.NoError(t, err)
	require.Regexp(t, `(?m)^0\s+h0\s+-\s+-\s+0$`, stdout, "the step count is a real zero; the rates are absent")
}
