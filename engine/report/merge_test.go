package report_test

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-ml/ferry/engine/report"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/monitor"

	"github.com/stretchr/testify/require"
)

// mergeTestRank is what one rank of the merge tests logs: its identity and the raw values, kept to
// compute the expected aggregates directly.
type mergeTestRank struct {
	rank, local int
	node        string
	loss        []float64
	tokens      []float64            // tokens_per_second, a training rate
	pipes       map[string][]float64 // "<pipeline>/<metric>" -> values, logged with LogAt
}

// report logs the rank's values into a real monitor with its samplers off and returns its report.
func (r mergeTestRank) report(t *testing.T) *report.Report {
	t.Helper()
	m := quietMonitor(t, monitor.MonitorOptions{Rank: r.rank, LocalRank: r.local, Node: r.node})
	loss, err := m.Metric("loss")
	require.NoError(t, err)
	// Half the values one at a time, the rest as a batch: both paths fold into the same summary.
	half := len(r.loss) / 2
	for _, v := range r.loss[:half] {
		require.NoError(t, m.Log(loss, v))
	}
	require.NoError(t, m.LogMany(loss, r.loss[half:]))
	if r.tokens != nil {
		id, err := m.Metric("tokens_per_second")
		require.NoError(t, err)
		require.NoError(t, m.LogMany(id, r.tokens))
	}
	if r.rank == 0 {
		_, err := m.Metric("never_logged") // registered, no value: absent, never zero
		require.NoError(t, err)
	}
	for name, vs := range r.pipes {
		id, err := m.Metric("pipeline/" + name)
		require.NoError(t, err)
		for i, v := range vs {
			require.NoError(t, m.LogAt(id, m.Origin()+uint64(i+1)*100_000_000, v))
		}
	}
	return m.Report()
}

// exactStats is the count, mean, population std, min and max of xs, computed directly.
func exactStats(xs []float64) (n int, mean, std, lo, hi float64) {
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, x := range xs {
		mean += x
		lo, hi = math.Min(lo, x), math.Max(hi, x)
	}
	mean /= float64(len(xs))
	for _, x := range xs {
		std += (x - mean) * (x - mean)
	}
	return len(xs), mean, math.Sqrt(std / float64(len(xs))), lo, hi
}

func exactMean(xs []float64) float64 { _, m, _, _, _ := exactStats(xs); return m }

func requireNear(t *testing.T, want, got report.Float, msg string) {
	t.Helper()
	require.InDelta(t, float64(want), float64(got), 1e-9*math.Max(1, math.Abs(float64(want))), msg)
}

// mergeTestRanks are three ranks on two nodes: rank 2 waits most for data on "train", rank 1 least.
// They are listed out of rank order, as files given on a command line may be.
func mergeTestRanks(seed uint64) []mergeTestRank {
	rng := rand.New(rand.NewPCG(seed, 7))
	gen := func(n int, mean, sd float64) []float64 {
		xs := make([]float64, n)
		for i := range xs {
			xs[i] = mean + sd*rng.NormFloat64()
		}
		return xs
	}
	return []mergeTestRank{
		{rank: 2, local: 0, node: "node-b", loss: gen(300, 1.5, 0.2), tokens: gen(40, 9000, 300),
			pipes: map[string][]float64{
				"train/data_stall_percent": gen(50, 30, 4), "train/samples_per_second": gen(50, 900, 40),
				"val/data_stall_percent": gen(10, 2, 0.5),
			}},
		{rank: 0, local: 0, node: "node-a", loss: gen(500, 1.2, 0.3), tokens: gen(60, 10000, 500),
			pipes: map[string][]float64{
				"train/data_stall_percent": gen(70, 10, 2), "train/samples_per_second": gen(70, 1200, 50),
			}},
		{rank: 1, local: 1, node: "node-a", loss: gen(800, 1.0, 0.5), tokens: gen(30, 11000, 200),
			pipes: map[string][]float64{
				"train/data_stall_percent": gen(60, 5, 1), "train/samples_per_second": gen(60, 1300, 30),
				"val/data_stall_percent": gen(12, 8, 1), "val/samples_per_second": gen(12, 400, 10),
			}},
	}
}

func TestMergeReports(t *testing.T) {
	for _, k := range []string{"RANK", "WORLD_SIZE", "LOCAL_RANK"} {
		t.Setenv(k, "") // rank 0 would otherwise be taken from a launcher's environment
	}
	seed := rand.Uint64()
	ranks := mergeTestRanks(seed)
	dir := t.TempDir()
	var paths []string
	var reports []*report.Report
	for _, r := range ranks {
		rep := r.report(t)
		reports = append(reports, rep)
		p := filepath.Join(dir, "report_rank"+string(rune('0'+r.rank))+".json")
		require.NoError(t, rep.WriteJSON(p))
		paths = append(paths, p)
	}
	byRank := map[int]mergeTestRank{}
	for _, r := range ranks {
		byRank[r.rank] = r
	}

	fromFiles, err := report.MergeReportFiles(paths...)
	require.NoError(t, err)
	inMemory, err := report.MergeReports(reports)
	require.NoError(t, err)
	for _, rep := range reports {
		require.NotEmpty(t, rep.TrainingMetrics["loss"].Series, "the reports are not modified")
	}

	for _, c := range []struct {
		name string
		m    *report.MergedReport
	}{{"files", fromFiles}, {"in memory", inMemory}} {
		t.Run(c.name, func(t *testing.T) {
			m := c.m
			require.Equal(t, report.MergedReportSchema, m.Schema)
			require.Equal(t, 3, m.NumRanks)
			require.Equal(t, []string{"node-a", "node-b"}, m.Nodes)

			// The ranks, sorted, with their identity and summaries (less their series).
			require.Len(t, m.Ranks, 3)
			for i, rr := range m.Ranks {
				want := byRank[i]
				require.Equal(t, i, rr.Rank)
				require.Equal(t, want.local, rr.LocalRank)
				require.Equal(t, want.node, rr.Node)
				require.Equal(t, os.Getpid(), rr.PID)
				require.NotEmpty(t, rr.Host)
				if c.name == "files" {
					require.Equal(t, filepath.Join(dir, "report_rank"+string(rune('0'+i))+".json"), rr.Source)
				} else {
					require.Empty(t, rr.Source)
				}
				loss := rr.TrainingMetrics["loss"]
				n, mean, std, lo, hi := exactStats(want.loss)
				require.Equal(t, uint64(n), loss.Count)
				requireNear(t, report.Float(mean), loss.Mean, "rank mean")
				requireNear(t, report.Float(std), loss.Std, "rank std")
				require.Equal(t, report.Float(lo), loss.Min)
				require.Equal(t, report.Float(hi), loss.Max)
				require.Empty(t, loss.Series, "series are left out")
				require.Contains(t, rr.PipelineMetrics, "train")
			}
			never := m.Ranks[0].TrainingMetrics["never_logged"]
			require.NotNil(t, never)
			require.Zero(t, never.Count)
			require.True(t, math.IsNaN(float64(never.Mean)), "no value reads back as NaN, never as zero")

			// The training aggregate equals the statistics of all the raw values together.
			var all, tokens []float64
			sumTokenMeans := 0.0
			for i := 0; i < 3; i++ {
				all = append(all, byRank[i].loss...)
				tokens = append(tokens, byRank[i].tokens...)
				sumTokenMeans += exactMean(byRank[i].tokens)
			}
			loss := m.Aggregate.Training["loss"]
			n, mean, std, lo, hi := exactStats(all)
			require.Equal(t, 3, loss.Ranks)
			require.Equal(t, uint64(n), loss.Count, "seed %d", seed)
			requireNear(t, report.Float(mean), loss.Mean, "count-weighted mean")
			requireNear(t, report.Float(std), loss.Std, "pooled std")
			require.Equal(t, report.Float(lo), loss.Min)
			require.Equal(t, report.Float(hi), loss.Max)
			require.Nil(t, loss.TotalMean, "only rates have a total")
			require.Len(t, loss.PerRank, 3)
			worst, worstRank := math.Inf(-1), -1
			for i, q := range loss.PerRank {
				rr := m.Ranks[i].TrainingMetrics["loss"]
				require.Equal(t, report.RankQuantiles{Rank: i, Count: rr.Count, Mean: rr.Mean, P50: rr.P50, P99: rr.P99}, q)
				if float64(q.P99) > worst {
					worst, worstRank = float64(q.P99), i
				}
			}
			require.Equal(t, report.Float(worst), loss.WorstP99)
			require.NotNil(t, loss.WorstP99Rank)
			require.Equal(t, worstRank, *loss.WorstP99Rank)

			tok := m.Aggregate.Training["tokens_per_second"]
			_, tmean, tstd, _, _ := exactStats(tokens)
			requireNear(t, report.Float(tmean), tok.Mean, "tokens mean")
			requireNear(t, report.Float(tstd), tok.Std, "tokens std")
			require.NotNil(t, tok.TotalMean)
			requireNear(t, report.Float(sumTokenMeans), *tok.TotalMean, "a rate's total is the sum of the ranks' means")

			nv := m.Aggregate.Training["never_logged"]
			require.Zero(t, nv.Count)
			require.Zero(t, nv.Ranks)
			require.True(t, math.IsNaN(float64(nv.Mean)) && math.IsNaN(float64(nv.Std)) && math.IsNaN(float64(nv.WorstP99)))
			require.Nil(t, nv.WorstP99Rank)

			// The pipeline aggregate: per pipeline and metric.
			sps := m.Aggregate.Pipeline["train"]["samples_per_second"]
			var spsAll []float64
			spsSum := 0.0
			for i := 0; i < 3; i++ {
				vs := byRank[i].pipes["train/samples_per_second"]
				spsAll = append(spsAll, vs...)
				spsSum += exactMean(vs)
			}
			n, mean, std, lo, hi = exactStats(spsAll)
			require.Equal(t, uint64(n), sps.Count)
			requireNear(t, report.Float(mean), sps.Mean, "samples/s mean")
			requireNear(t, report.Float(std), sps.Std, "samples/s std")
			require.Equal(t, report.Float(lo), sps.Min)
			require.Equal(t, report.Float(hi), sps.Max)
			require.NotNil(t, sps.TotalMean)
			requireNear(t, report.Float(spsSum), *sps.TotalMean, "the job's throughput")
			require.Nil(t, m.Aggregate.Pipeline["train"]["data_stall_percent"].TotalMean)
			valSps := m.Aggregate.Pipeline["val"]["samples_per_second"]
			require.Equal(t, 1, valSps.Ranks)
			requireNear(t, report.Float(exactMean(byRank[1].pipes["val/samples_per_second"])), *valSps.TotalMean, "one rank's")

			// The stragglers: the rank that waits most for data first.
			require.Len(t, m.Stragglers, 2)
			train := m.Stragglers[0]
			require.Equal(t, "train", train.Pipeline)
			var order []int
			stalls := map[int]float64{}
			for _, r := range train.Ranks {
				order = append(order, r.Rank)
				stalls[r.Rank] = exactMean(byRank[r.Rank].pipes["train/data_stall_percent"])
				requireNear(t, report.Float(stalls[r.Rank]), r.DataStallPercent, "stall")
				requireNear(t, report.Float(exactMean(byRank[r.Rank].pipes["train/samples_per_second"])), r.SamplesPerSecond, "samples/s")
				require.Equal(t, byRank[r.Rank].node, r.Node)
			}
			require.Equal(t, []int{2, 0, 1}, order)
			requireNear(t, report.Float(stalls[2]-stalls[1]), train.DataStallSpread, "stall spread")
			spsMeans := []float64{exactMean(byRank[0].pipes["train/samples_per_second"]),
				exactMean(byRank[1].pipes["train/samples_per_second"]), exactMean(byRank[2].pipes["train/samples_per_second"])}
			_, _, _, slo, shi := exactStats(spsMeans)
			requireNear(t, report.Float(shi-slo), train.SamplesPerSecondSpread, "samples/s spread")

			val := m.Stragglers[1]
			require.Equal(t, "val", val.Pipeline)
			require.Len(t, val.Ranks, 2, "rank 0 has no val pipeline")
			require.Equal(t, 1, val.Ranks[0].Rank, "8 % before 2 %")
			require.True(t, math.IsNaN(float64(val.Ranks[1].SamplesPerSecond)), "rank 2 reports no val samples/s")

			// The text table.
			text := m.Text()
			require.Contains(t, text, "3 ranks on 2 nodes")
			require.Regexp(t, `RANK\s+NODE\s+train SAMPLES/S\s+train STALL %\s+val SAMPLES/S\s+val STALL %\s+STEPS \(loss\)`, text)
			require.Regexp(t, `(?m)^0\s+node-a\s+[\d.]+\s+[\d.]+\s+-\s+-\s+500$`, text)
			require.Regexp(t, `(?m)^1\s+node-a\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+800$`, text)
			require.Regexp(t, `(?m)^2\s+node-b\s+[\d.]+\s+[\d.]+\s+-\s+[\d.]+\s+300$`, text)
			require.Contains(t, text, "pipeline train samples_per_second")
			require.Contains(t, text, strings.TrimSuffix(report.TextRate("samples_per_second", spsSum), "/s"))
			require.Contains(t, text, "tokens_per_second")
			i2 := strings.Index(text, "\n  2 ")
			i0 := strings.Index(text, "\n  0 ")
			i1 := strings.Index(text, "\n  1 ")
			require.True(t, i2 >= 0 && i2 < i0 && i0 < i1, "stragglers in stall order:\n%s", text)

			// The HTML page.
			h, err := m.HTML()
			require.NoError(t, err)
			page := string(h)
			require.True(t, strings.HasPrefix(page, "<!DOCTYPE html>"))
			for _, s := range []string{"Stragglers", "Pipeline &#34;train&#34;", "Rank 2", "node-b", "pipeline/train/samples_per_second",
				"worst p99", "</html>"} {
				require.Contains(t, page, s)
			}
			require.NotContains(t, page, "<script")
		})
	}

	// JSON: the schema, nulls for absent values, and a round trip through the file.
	out := filepath.Join(dir, "merged.json")
	require.NoError(t, fromFiles.WriteJSON(out))
	fi, err := os.Stat(out)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o644), fi.Mode().Perm())
	b, err := os.ReadFile(out)
	require.NoError(t, err)
	var raw map[string]any
	require.NoError(t, json.Unmarshal(b, &raw))
	require.Equal(t, report.MergedReportSchema, raw["schema"])
	for _, k := range []string{"ranks", "aggregate", "stragglers", "nodes", "num_ranks"} {
		require.Contains(t, raw, k)
	}
	agg := raw["aggregate"].(map[string]any)["training"].(map[string]any)
	require.Nil(t, agg["never_logged"].(map[string]any)["mean"], "NaN is null")
	require.NotContains(t, agg["loss"], "total_mean")
	require.Contains(t, agg["tokens_per_second"], "total_mean")
	var back report.MergedReport
	require.NoError(t, json.Unmarshal(b, &back))
	require.Equal(t, fromFiles.Aggregate.Training["loss"].Mean, back.Aggregate.Training["loss"].Mean)
	require.True(t, math.IsNaN(float64(back.Aggregate.Training["never_logged"].Mean)))
	require.Equal(t, fromFiles.Text(), back.Text())

	html := filepath.Join(dir, "merged.html")
	require.NoError(t, fromFiles.WriteHTML(html))
	require.FileExists(t, html)
}

func TestMergeReportsOneRankWithoutPipelines(t *testing.T) {
	r := &report.Report{Schema: report.ReportSchema, Rank: 0, Host: "solo", TrainingMetrics: map[string]*report.MetricReport{
		"loss": {Count: 3, Mean: 2, Min: 1, Max: 3, Std: report.Float(math.Sqrt(2.0 / 3)), P50: 2, P99: 3},
	}}
	m, err := report.MergeReports([]*report.Report{r})
	require.NoError(t, err)
	require.Equal(t, []string{"solo"}, m.Nodes, "the host stands in for a missing node name")
	require.Empty(t, m.Stragglers)
	require.Equal(t, report.Float(2), m.Aggregate.Training["loss"].Mean)
	requireNear(t, report.Float(math.Sqrt(2.0/3)), m.Aggregate.Training["loss"].Std, "one rank: its own std")
	text := m.Text()
	require.Contains(t, text, "1 rank on 1 node")
	require.Regexp(t, `(?m)^0\s+solo\s+-\s+-\s+3$`, text)
	require.Contains(t, text, "no rate metric")
	h, err := m.HTML()
	require.NoError(t, err)
	require.Contains(t, string(h), "No rank reported an input pipeline.")
}

func TestMergeReportsRejectsBadInput(t *testing.T) {
	ok := func(rank int) *report.Report {
		return &report.Report{Schema: report.ReportSchema, Rank: rank, Host: "h", PID: 100 + rank}
	}
	for _, c := range []struct {
		name    string
		reports []*report.Report
		msg     string
	}{
		{"none", nil, "no reports"},
		{"nil report", []*report.Report{ok(0), nil}, "report 1 is nil"},
		{"another schema", []*report.Report{ok(0), {Schema: "ferry.report/2", Rank: 1}}, `report 1 (rank 1) has the schema "ferry.report/2"`},
		{"no schema", []*report.Report{{Rank: 4}}, `report 0 (rank 4) has the schema ""`},
		{"duplicate rank", []*report.Report{ok(0), ok(1), ok(1)}, "report 1 and report 2 both have rank 1 (h pid 101 and h pid 101)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := report.MergeReports(c.reports)
			require.ErrorIs(t, err, engine.ErrInvalidArgument)
			require.ErrorContains(t, err, c.msg)
		})
	}

	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(body), 0o644))
		return p
	}
	r0, err := ok(0).JSON()
	require.NoError(t, err)
	a := write("a.json", string(r0))
	b := write("b.json", string(r0))
	merged, err := report.MergeReports([]*report.Report{ok(0)})
	require.NoError(t, err)
	mj, err := merged.JSON()
	require.NoError(t, err)
	for _, c := range []struct {
		name  string
		paths []string
		is    error
		msg   string
	}{
		{"no files", nil, engine.ErrInvalidArgument, "no reports"},
		{"missing file", []string{a, filepath.Join(dir, "missing.json")}, engine.ErrIO, "missing.json"},
		{"not JSON", []string{write("bad.json", "{not json")}, engine.ErrFormat, "bad.json is not a JSON report"},
		{"a string for a number", []string{write("str.json", `{"schema":"ferry.report/1","training_metrics":{"x":{"mean":"1"}}}`)},
			engine.ErrFormat, "str.json"},
		{"a file of another schema", []string{write("other.json", `{"schema":"something/1"}`)}, engine.ErrInvalidArgument, `other.json has the schema "something/1"`},
		{"a merged report", []string{write("merged.json", string(mj))}, engine.ErrInvalidArgument, report.MergedReportSchema},
		{"two files of one rank", []string{a, b}, engine.ErrInvalidArgument, a + " and " + b + " both have rank 0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := report.MergeReportFiles(c.paths...)
			require.ErrorIs(t, err, c.is)
			require.ErrorContains(t, err, c.msg)
		})
	}
}

func TestFloatUnmarshalJSON(t *testing.T) {
	for _, c := range []struct {
		in   string
		want float64
		err  bool
	}{
		{"null", math.NaN(), false},
		{" null ", math.NaN(), false},
		{"1.5", 1.5, false},
		{"-0", 0, false},
		{"1e300", 1e300, false},
		{`"1"`, 0, true},
		{"true", 0, true},
	} {
		var f report.Float
		err := json.Unmarshal([]byte(c.in), &f)
		if c.err {
			require.ErrorIs(t, err, engine.ErrFormat, c.in)
			continue
		}
		require.NoError(t, err, c.in)
		if math.IsNaN(c.want) {
			require.True(t, math.IsNaN(float64(f)), c.in)
		} else {
			require.Equal(t, c.want, float64(f), c.in)
		}
	}
	// A whole metric: nulls come back as NaN, numbers as themselves, through a round trip.
	mr := report.MetricReport{Count: 0, Mean: report.Float(math.NaN()), Min: 1, Series: [][5]report.Float{{1, report.Float(math.NaN()), 2, 3, 4}}}
	b, err := json.Marshal(mr)
	require.NoError(t, err)
	var back report.MetricReport
	require.NoError(t, json.Unmarshal(b, &back))
	require.True(t, math.IsNaN(float64(back.Mean)))
	require.Equal(t, report.Float(1), back.Min)
	require.True(t, math.IsNaN(float64(back.Series[0][1])))
	require.Equal(t, report.Float(4), back.Series[0][4])
}
