package monitor

import (
	"fmt"
	"math"
	_ "unsafe" // for go:linkname

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/DataDog/sketches-go/ddsketch/mapping"

	"github.com/ferry-ml/ferry/engine/internal/moments"
)

// metricState is one metric's fold: the exact statistics, the sketch and the series.
type metricState struct {
	name      string
	mom       moments.Acc // count, mean and deviation, without a running mean's rounding or overflow
	min, max  float64
	last      float64
	nonfinite uint64 // NaN and ±Inf values: counted, left out of the statistics
	first     uint64 // ns of the first value
	lastT     uint64
	sketch    *ddsketch.DDSketch
	mapping   mapping.IndexMapping
	series    series
}

// add folds one value: the moments, the sketch and the series. Non-finite values are counted apart.
func (s *metricState) add(t uint64, v float64) {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		s.nonfinite++
		return
	}
	if s.mom.N == 0 || t < s.first {
		s.first = t
	}
	s.mom.Add(v)
	s.min = math.Min(s.min, v)
	s.max = math.Max(s.max, v)
	if t >= s.lastT { // rings fold one after another: the last value is the latest, not the last folded
		s.last, s.lastT = v, t
	}
	_ = s.sketch.Add(v)
	s.series.add(t, v)
}

// addBatchAt folds values with their own timestamps (in time order, as a buffer collects them): the
// statistics and the sketch as addBatch does, and one series point per run of values that fall in the
// same series interval.
func (s *metricState) addBatchAt(ts []uint64, vs []float64) {
	start := 0
	for i := 1; i <= len(vs); i++ {
		if i < len(vs) && s.series.sameStep(ts[start], ts[i]) {
			continue
		}
		s.addBatchSpan(ts[start], ts[i-1], vs[start:i])
		start = i
	}
}

// addBatch folds values that share the timestamp t: the statistics and the sketch take each value, the
// series gets one point.
func (s *metricState) addBatch(t uint64, vs []float64) { s.addBatchSpan(t, t, vs) }

// addBatchSpan folds values logged between first and last (one series interval).
func (s *metricState) addBatchSpan(first, last uint64, vs []float64) {
	var n uint64
	lo, hi := math.Inf(1), math.Inf(-1)
	mark := s.mom.Mark()
	newFirst := s.mom.N == 0 || first < s.first
	lastV := math.NaN()
	// The sketch's own Add, less its per-value checks: indexable values go straight to their store.
	pos, neg := s.sketch.GetPositiveValueStore(), s.sketch.GetNegativeValueStore()
	minIdx, maxIdx := s.mapping.MinIndexableValue(), s.mapping.MaxIndexableValue()
	for _, v := range vs {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			s.nonfinite++
			continue
		}
		n++
		s.mom.Add(v)
		lo, hi = math.Min(lo, v), math.Max(hi, v)
		lastV = v
		switch {
		case v > minIdx && v <= maxIdx:
			pos.Add(s.mapping.Index(v))
		case v < -minIdx && v >= -maxIdx:
			neg.Add(s.mapping.Index(-v))
		default:
			_ = s.sketch.Add(v) // zero, and the rare value beyond the mapping's range
		}
	}
	if n == 0 {
		return
	}
	if newFirst {
		s.first = first
	}
	mean := math.Min(math.Max(s.mom.MeanSince(mark), lo), hi)
	s.min, s.max = math.Min(s.min, lo), math.Max(s.max, hi)
	if last >= s.lastT {
		s.last, s.lastT = lastV, last
	}
	s.series.addPoint(first, SeriesPoint{Count: n, Mean: mean, Min: lo, Max: hi, Last: lastV})
}

// Summary is a metric's statistics: exact count, mean, min, max, std (population) and last value;
// p50..p999 from the sketch, each within its relative accuracy of a value of that rank.
type Summary struct {
	Name                      string
	Count                     uint64
	NonFinite                 uint64 // NaN and ±Inf values logged, left out of the rest
	Mean, Min, Max, Std, Last float64
	P50, P90, P99, P999       float64
	First, LastTime           uint64 // CLOCK_MONOTONIC ns of the first and last value
}

func (s *metricState) summary() Summary {
	out := Summary{Name: s.name, Count: s.mom.N, NonFinite: s.nonfinite, First: s.first, LastTime: s.lastT}
	if s.mom.N == 0 {
		nan := math.NaN()
		out.Mean, out.Min, out.Max, out.Std, out.Last = nan, nan, nan, nan, nan
		out.P50, out.P90, out.P99, out.P999 = nan, nan, nan, nan
		return out
	}
	out.Min, out.Max, out.Last = s.min, s.max, s.last
	out.Mean = math.Min(math.Max(s.mom.Mean(), s.min), s.max)
	out.Std = s.mom.Std()
	q, err := s.sketch.GetValuesAtQuantiles([]float64{0.5, 0.9, 0.99, 0.999})
	if err == nil {
		// The sketch's value is within its relative accuracy; clamp it into the exact range.
		for i := range q {
			q[i] = math.Min(math.Max(q[i], s.min), s.max)
		}
		out.P50, out.P90, out.P99, out.P999 = q[0], q[1], q[2], q[3]
	}
	return out
}

// Summary folds pending values and returns the metric's summary. Its cost does not depend on how many
// values were logged.
func (m *Monitor) Summary(id MetricID) (Summary, error) {
	if uint32(id) >= m.nids.Load() {
		return Summary{}, fmt.Errorf("%w: %d (the monitor has %d metrics)", errUnknownMetric, id, m.nids.Load())
	}
	m.foldMu.Lock()
	defer m.foldMu.Unlock()
	m.drainLocked()
	return (*m.states.Load())[id].summary(), nil
}

// Series returns the metric's time series (oldest first).
func (m *Monitor) Series(id MetricID) ([]SeriesPoint, error) {
	if uint32(id) >= m.nids.Load() {
		return nil, fmt.Errorf("%w: %d (the monitor has %d metrics)", errUnknownMetric, id, m.nids.Load())
	}
	m.foldMu.Lock()
	defer m.foldMu.Unlock()
	m.drainLocked()
	return (*m.states.Load())[id].series.points(), nil
}
