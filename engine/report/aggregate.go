package report

import (
	"math"
	"sort"
	"strings"

	"github.com/ferry-ml/ferry/engine/internal/moments"
)

// The merge's arithmetic: each metric combined over the ranks, and the data-stall view of each pipeline.

type rankMetric struct {
	rank int
	mr   *MetricReport
}

// hasMean reports whether mr holds a usable summary: at least one value and a finite mean.
func hasMean(mr *MetricReport) bool { return mr != nil && mr.Count > 0 && isFinite(float64(mr.Mean)) }

// aggregate combines each metric of the group that group gives for each rank over the ranks that
// have it.
func (m *MergedReport) aggregate(group func(*RankReport) map[string]*MetricReport) map[string]*AggregateMetric {
	out := map[string]*AggregateMetric{}
	for _, n := range rankKeys(m.Ranks, group) {
		var per []rankMetric
		for _, rr := range m.Ranks {
			if mr := group(rr)[n]; mr != nil {
				per = append(per, rankMetric{rr.Rank, mr})
			}
		}
		out[n] = aggregateMetric(n, per)
	}
	return out
}

// aggregateMetric combines one metric over the ranks in per (sorted by rank). With N = Σ nᵢ, the mean
// is Σ nᵢ·meanᵢ / N and the pooled population variance Σ nᵢ·(stdᵢ² + (meanᵢ − mean)²) / N: the parallel
// variance formula, exact for population deviations. Both are summed as the monitor sums its values
// (moments.Acc: shifted, compensated and scaled), so that means near 1e15 keep their fractions and a
// deviation of 1e200 does not overflow when squared.
func aggregateMetric(name string, per []rankMetric) *AggregateMetric {
	nan := Float(math.NaN())
	a := &AggregateMetric{Mean: nan, Min: nan, Max: nan, Std: nan, WorstP99: nan, PerRank: []RankQuantiles{}}
	var acc moments.Acc
	lo, hi := math.Inf(1), math.Inf(-1)
	stdKnown := true
	for _, p := range per {
		mr := p.mr
		a.NonFinite += mr.NonFinite
		a.PerRank = append(a.PerRank, RankQuantiles{Rank: p.rank, Count: mr.Count, Mean: mr.Mean, P50: mr.P50, P99: mr.P99})
		if !hasMean(mr) {
			continue
		}
		a.Ranks++
		a.Count += mr.Count
		if sd := float64(mr.Std); isFinite(sd) && sd >= 0 {
			acc.AddSummary(mr.Count, float64(mr.Mean), sd)
		} else {
			stdKnown = false // a rank's deviation is missing: the pooled one is unknown
			acc.AddSummary(mr.Count, float64(mr.Mean), 0)
		}
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
	a.Mean = Float(acc.Mean())
	if !math.IsInf(lo, 0) {
		a.Min = Float(lo)
	}
	if !math.IsInf(hi, 0) {
		a.Max = Float(hi)
	}
	if stdKnown {
		a.Std = Float(acc.Std())
	}
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
