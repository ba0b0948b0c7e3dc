package monitor

import "math"

// SeriesPoint is one point of a metric's time series: the values logged in [Time, Time+step).
type SeriesPoint struct {
	Time           uint64 // CLOCK_MONOTONIC ns, the start of the point's interval
	Count          uint64
	Mean, Min, Max float64
	Last           float64
}

// series keeps at most capacity points. Points start 1 ms wide; when a new point would exceed the
// capacity, the step doubles and neighbouring points merge, so the series always spans the whole run.
type series struct {
	capacity int
	t0, step uint64
	pts      []SeriesPoint
}

func (s *series) init(capacity int) { s.capacity = capacity }

func (s *series) add(t uint64, v float64) {
	s.addPoint(t, SeriesPoint{Count: 1, Mean: v, Min: v, Max: v, Last: v})
}

// addPoint adds values summarized by q (its Time is ignored) at time t.
func (s *series) addPoint(t uint64, q SeriesPoint) {
	if s.step == 0 {
		s.t0, s.step = t, 1e6
	}
	var k uint64
	if t > s.t0 {
		k = (t - s.t0) / s.step
	}
	if n := len(s.pts); n > 0 && (s.pts[n-1].Time-s.t0)/s.step >= k {
		s.pts[n-1].merge(q)
		return
	}
	q.Time = s.t0 + k*s.step
	s.pts = append(s.pts, q)
	for len(s.pts) > s.capacity {
		s.coarsen()
	}
}

// sameStep reports whether times a and b fall in the same interval of the series' current step (before
// the first value, a 1 ms step).
func (s *series) sameStep(a, b uint64) bool {
	step, t0 := s.step, s.t0
	if step == 0 {
		step, t0 = 1e6, a
	}
	if a < t0 || b < t0 {
		return a == b
	}
	return (a-t0)/step == (b-t0)/step
}

// coarsen doubles the step and merges the points that now share an interval.
func (s *series) coarsen() {
	s.step *= 2
	out := s.pts[:0]
	for _, p := range s.pts {
		p.Time = s.t0 + (p.Time-s.t0)/s.step*s.step
		if n := len(out); n > 0 && out[n-1].Time == p.Time {
			out[n-1].merge(p)
			continue
		}
		out = append(out, p)
	}
	s.pts = out
}

// merge folds q, which follows p in time, into p. The mean moves by the weighted difference of the two
// (one rounding, where a weighted sum of two means near 1e15 would lose their fractions); where that
// difference overflows (means near both ends of the range), by the weighted sum, which cannot.
func (p *SeriesPoint) merge(q SeriesPoint) {
	n := p.Count + q.Count
	w := float64(q.Count) / float64(n)
	if d := q.Mean - p.Mean; !math.IsInf(d, 0) {
		p.Mean += d * w
	} else {
		p.Mean = p.Mean*(1-w) + q.Mean*w
	}
	p.Count = n
	p.Min = math.Min(p.Min, q.Min)
	p.Max = math.Max(p.Max, q.Max)
	p.Mean = math.Min(math.Max(p.Mean, p.Min), p.Max)
	p.Last = q.Last
}

func (s *series) points() []SeriesPoint { return append([]SeriesPoint(nil), s.pts...) }
