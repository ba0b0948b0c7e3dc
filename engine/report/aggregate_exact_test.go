package report_test

import (
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-ml/ferry/engine/internal/testutil"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/report"

	"github.com/stretchr/testify/require"
)

// TestMergeAggregateExactOnAdversarialValues: the merged mean and pooled deviation against rational
// arithmetic over all ranks' values, where the weighted sum Σ nᵢ·meanᵢ rounded away the fractions of
// means near 1e15 and a rank's squared deviation of 1e200 overflowed.
func TestMergeAggregateExactOnAdversarialValues(t *testing.T) {
	offset := func(n, shift int) []float64 {
		xs := make([]float64, n)
		for i := range xs {
			xs[i] = 1e15 + float64((i+shift)%4)
		}
		return xs
	}
	for name, losses := range map[string][][]float64{
		"offset":      {offset(400, 0), offset(300, 1), offset(301, 3)},
		"huge spread": {{1e200, -1e200, 3e199}, {-2e200, 5e199}, {1e200}},
		"ten 1e155":   {{1e155, 1e155, 1e155, 1e155}, {1e155, 1e155, 1e155}, {1e155, 1e155, 1e155}},
	} {
		var reps []*report.Report
		var all []float64
		for r, loss := range losses {
			reps = append(reps, mergeTestRank{rank: r, node: "n", loss: loss}.report(t))
			all = append(all, loss...)
		}
		m, err := report.MergeReports(reps)
		require.NoError(t, err)
		agg := m.Aggregate.Training["loss"]
		mean, std := testutil.ExactMeanStd(all)
		require.Equal(t, uint64(len(all)), agg.Count, name)
		// Each rank's mean and deviation is rounded to float64 before the merge: a few roundings allowed.
		require.InDelta(t, mean, float64(agg.Mean), 4*math.Abs(mean)*0x1p-52+1e-12*std, "%s: mean", name)
		require.InDelta(t, std, float64(agg.Std), 1e-12*std+8*math.Abs(mean)*0x1p-52, "%s: std", name)
	}
}

// TestMergeStepsCountNonFiniteValues: a rank that logged 100 losses, 50 of them NaN, ran 100 steps. The
// text table's STEPS column counted only the finite values (50); the merged page's aggregate count now
// shows the non-finite ones beside the finite, as each rank's table does.
func TestMergeStepsCountNonFiniteValues(t *testing.T) {
	loss := make([]float64, 100)
	for i := range loss {
		loss[i] = 1 / float64(i+1)
		if i%2 == 1 {
			loss[i] = math.NaN()
		}
	}
	allNaN := []float64{math.NaN(), math.Inf(1), math.NaN()}
	m, err := report.MergeReports([]*report.Report{
		mergeTestRank{rank: 0, node: "n", loss: loss}.report(t),
		mergeTestRank{rank: 1, node: "n", loss: allNaN}.report(t),
	})
	require.NoError(t, err)
	require.Equal(t, uint64(100), m.Ranks[0].TrainingMetrics["loss"].Logged())
	text := m.Text()
	require.Regexp(t, `(?m)^0\s+n\s+-\s+-\s+100$`, text)
	require.Regexp(t, `(?m)^1\s+n\s+-\s+-\s+3$`, text)
	h, err := m.HTML()
	require.NoError(t, err)
	require.Contains(t, string(h), `<td class="name">loss</td><td>1</td><td>50 (&#43;53 non-finite)</td>`, "the aggregate's count")
}

// TestWriteRefusesADirectory: a report written over a directory said "rename .../.report.html.tmp123 ...:
// file exists", naming the temporary file; it is now refused up front, naming the directory, and leaves
// no temporary file behind.
func TestWriteRefusesADirectory(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "out.html")
	require.NoError(t, os.Mkdir(target, 0o755))
	r := mergeTestRank{rank: 0, node: "n", loss: []float64{1, 2}}.report(t)
	m, err := report.MergeReports([]*report.Report{r})
	require.NoError(t, err)
	for _, write := range []func(string) error{r.WriteHTML, r.WriteJSON, m.WriteHTML, m.WriteJSON} {
		err := write(target)
		require.ErrorIs(t, err, engine.ErrInvalidArgument)
		require.Contains(t, err.Error(), target+" is a directory")
		require.NotContains(t, err.Error(), ".tmp", "the temporary file is not the problem")
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary file left")
}
