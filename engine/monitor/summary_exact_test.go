package monitor

import (
	"math"
	"testing"

	"github.com/ferry-ml/ferry/engine/internal/testutil"
)

// closeTo reports whether got is within k units in the last place of want.
func closeTo(got, want float64, k float64) bool {
	if got == want {
		return true
	}
	u := math.Nextafter(math.Abs(want), math.Inf(1)) - math.Abs(want)
	if u == 0 || math.IsInf(u, 0) {
		u = math.SmallestNonzeroFloat64
	}
	return math.Abs(got-want) <= k*u
}

// TestSummaryExactOnAdversarialValues: the summary's mean and deviation against rational arithmetic,
// for values logged one by one (the rings' fold), as a batch (LogMany) and with their own times
// (LogManyAt, the Python binding's path). A running mean lost these: ten values of 1e155 gave a
// deviation of NaN, and a batch's plain sum rounded away the fractions of values near 1e15.
func TestSummaryExactOnAdversarialValues(t *testing.T) {
	seqs := map[string][]float64{
		"ten 1e155":         {1e155, 1e155, 1e155, 1e155, 1e155, 1e155, 1e155, 1e155, 1e155, 1e155},
		"1e15+{0,1,2,3}":    {1e15, 1e15 + 1, 1e15 + 2, 1e15 + 3},
		"mixed huge":        {1e300, -1e300, 1e300, -1e300, 3e299},
		"range ends":        {math.MaxFloat64, -math.MaxFloat64, math.MaxFloat64},
		"tiny":              {1e-300, 2e-300, 3e-300, 5e-300},
		"cancellation":      {0x1p53 + 2, 0x1p53 - 2, 0x1p53 + 4, 0x1p53 - 4, 0x1p53},
		"offset, 4096 of 4": nil,
	}
	for i := range 4096 {
		seqs["offset, 4096 of 4"] = append(seqs["offset, 4096 of 4"], 1e15+float64(i%4))
	}
	m := quietMonitor(t, MonitorOptions{})
	for name, vs := range seqs {
		wantMean, wantStd := testutil.ExactMeanStd(vs)
		ids := map[string]MetricID{}
		for _, path := range []string{"log", "many", "at"} {
			id, err := m.Metric("x." + path + "." + sanitize(name))
			if err != nil {
				t.Fatal(err)
			}
			ids[path] = id
		}
		for _, v := range vs {
			if err := m.Log(ids["log"], v); err != nil {
				t.Fatal(err)
			}
		}
		if err := m.LogMany(ids["many"], vs); err != nil {
			t.Fatal(err)
		}
		ts := make([]uint64, len(vs))
		for i := range ts {
			ts[i] = 1e9 + uint64(i)*1000
		}
		if err := m.LogManyAt(ids["at"], vs, ts); err != nil {
			t.Fatal(err)
		}
		for path, id := range ids {
			s, err := m.Summary(id)
			if err != nil {
				t.Fatal(err)
			}
			if s.Count != uint64(len(vs)) || !closeTo(s.Mean, wantMean, 1) || !closeTo(s.Std, wantStd, 4) {
				t.Errorf("%s via %s: count %d mean %v std %v, exact mean %v std %v",
					name, path, s.Count, s.Mean, s.Std, wantMean, wantStd)
			}
		}
		// LogMany's values share one series point: its mean is the batch's.
		pts, err := m.Series(ids["many"])
		if err != nil {
			t.Fatal(err)
		}
		if len(pts) != 1 || !closeTo(pts[0].Mean, wantMean, 1) {
			t.Errorf("%s: LogMany's series %+v, exact mean %v", name, pts, wantMean)
		}
	}
}

func sanitize(s string) string {
	out := []byte(s)
	for i, c := range out {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			out[i] = '_'
		}
	}
	return string(out)
}

// TestSeriesMergeExactOnAdversarialValues: points merged as the series coarsens keep the mean of the
// values in their interval to within a few roundings, also where two means lie at both ends of the
// range (their difference overflowed: the mean became infinite).
func TestSeriesMergeExactOnAdversarialValues(t *testing.T) {
	for name, gen := range map[string]func(i int) float64{
		"range ends": func(i int) float64 { return math.MaxFloat64 * float64(1-2*(i%2)) },
		"offset":     func(i int) float64 { return 1e15 + float64(i%4) },
		"huge":       func(i int) float64 { return 1e300 * float64(i%3-1) },
	} {
		m := quietMonitor(t, MonitorOptions{SeriesPoints: 16})
		id, _ := m.Metric("s")
		var vs []float64
		for i := range 256 {
			v := gen(i)
			vs = append(vs, v)
			if err := m.LogAt(id, 1e9+uint64(i)*1e6, v); err != nil { // one per 1 ms point
				t.Fatal(err)
			}
		}
		pts, err := m.Series(id)
		if err != nil {
			t.Fatal(err)
		}
		i := 0
		for _, p := range pts {
			want, _ := testutil.ExactMeanStd(vs[i : i+int(p.Count)])
			// A point's mean is one float merged from others: each merge rounds once, at the scale of
			// its values (exact to the last place where the mean is of their size, not where it cancels).
			scale := math.Max(math.Abs(p.Min), math.Abs(p.Max))
			if math.IsNaN(p.Mean) || !closeTo(p.Mean, want, 2) && math.Abs(p.Mean-want) > 8*scale*0x1p-52 {
				t.Errorf("%s: point at %d (%d values) has mean %v, exact %v", name, p.Time, p.Count, p.Mean, want)
			}
			i += int(p.Count)
		}
		if i != len(vs) {
			t.Fatalf("%s: the points hold %d values, not %d", name, i, len(vs))
		}
	}
}
