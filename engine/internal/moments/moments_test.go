package moments

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/ferry-ml/ferry/engine/internal/testutil"
)

// ulps is the distance between a and b in units of the last place of b (0 for equal values).
func ulps(a, b float64) float64 {
	if a == b {
		return 0
	}
	u := math.Nextafter(math.Abs(b), math.Inf(1)) - math.Abs(b)
	if math.IsInf(u, 0) || u == 0 {
		u = math.SmallestNonzeroFloat64
	}
	return math.Abs(a-b) / u
}

// adversarial are sequences that break a plain running mean and Welford's update.
func adversarial() map[string][]float64 {
	r := rand.New(rand.NewPCG(15, 11))
	seqs := map[string][]float64{
		"ten 1e155":           rep(1e155, 10),
		"1e15+{0,1,2,3}":      {1e15, 1e15 + 1, 1e15 + 2, 1e15 + 3},
		"ten -1e300":          rep(-1e300, 10),
		"huge mixed signs":    {1e300, -1e300, 1e300, -1e300, 3e299},
		"range ends":          {math.MaxFloat64, -math.MaxFloat64, math.MaxFloat64},
		"max repeated":        rep(math.MaxFloat64, 7),
		"tiny":                {1e-300, 2e-300, 3e-300, 5e-300},
		"subnormal":           {5e-324, 1e-323, 1.5e-323, 0},
		"cancellation":        {0x1p53 + 2, 0x1p53 - 2, 0x1p53 + 4, 0x1p53 - 4, 0x1p53},
		"drift from first":    append([]float64{0}, seq(1000, func(i int) float64 { return 1e8 + float64(i%7) })...),
		"large offset spread": seq(4096, func(i int) float64 { return 1e15 + float64(i%4) }),
		"mixed magnitudes":    seq(2000, func(int) float64 { return math.Ldexp(r.Float64()-0.5, r.IntN(200)-100) }),
		"many offset":         seq(50000, func(int) float64 { return 1e9 + r.NormFloat64()*1e-3 }),
		"one value":           {42.5},
		"zero then huge":      {0, 0, 1e306},
		"tiny then normal":    {1e-320, 2e-320, 1, 2},
	}
	return seqs
}

func rep(v float64, n int) []float64 { return seq(n, func(int) float64 { return v }) }

func seq(n int, f func(int) float64) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = f(i)
	}
	return out
}

func check(t *testing.T, name string, gotMean, gotStd float64, vs []float64) {
	t.Helper()
	mean, std := testutil.ExactMeanStd(vs)
	if u := ulps(gotMean, mean); u > 1 {
		t.Errorf("%s: mean %v, exact %v (%.3g ulps)", name, gotMean, mean, u)
	}
	if u := ulps(gotStd, std); u > 4 {
		t.Errorf("%s: std %v, exact %v (%.3g ulps)", name, gotStd, std, u)
	}
}

func TestAccAgainstExactArithmetic(t *testing.T) {
	for name, vs := range adversarial() {
		var a Acc
		for _, v := range vs {
			a.Add(v)
		}
		if a.N != uint64(len(vs)) {
			t.Fatalf("%s: N %d", name, a.N)
		}
		check(t, name, a.Mean(), a.Std(), vs)
	}
}

// TestAccSummariesAgainstExactArithmetic merges the summaries of pieces of each sequence, as the
// report merge combines ranks.
func TestAccSummariesAgainstExactArithmetic(t *testing.T) {
	for name, vs := range adversarial() {
		for _, pieces := range []int{1, 2, 3, 7} {
			if pieces > len(vs) {
				continue
			}
			var all Acc
			for p := range pieces {
				var a Acc
				for _, v := range vs[p*len(vs)/pieces : (p+1)*len(vs)/pieces] {
					a.Add(v)
				}
				all.AddSummary(a.N, a.Mean(), a.Std())
			}
			// The pieces' summaries are rounded to float64: allow for that rounding, relative to the spread.
			mean, std := testutil.ExactMeanStd(vs)
			tol := 4 * math.Abs(mean) * 0x1p-52
			if d := math.Abs(all.Mean() - mean); d > tol+std*1e-15 && ulps(all.Mean(), mean) > 1 {
				t.Errorf("%s in %d pieces: mean %v, exact %v", name, pieces, all.Mean(), mean)
			}
			if d := math.Abs(all.Std() - std); d > 1e-12*std+2*tol*math.Sqrt(float64(pieces)) && ulps(all.Std(), std) > 4 {
				t.Errorf("%s in %d pieces: std %v, exact %v", name, pieces, all.Std(), std)
			}
		}
	}
}

func TestMeanSince(t *testing.T) {
	for name, vs := range adversarial() {
		var a Acc
		for cut := range []int{0, 1} {
			a = Acc{}
			at := cut * len(vs) / 2
			for _, v := range vs[:at] {
				a.Add(v)
			}
			m := a.Mark()
			for _, v := range vs[at:] {
				a.Add(v)
			}
			mean, _ := testutil.ExactMeanStd(vs[at:])
			if got := a.MeanSince(m); ulps(got, mean) > 1 {
				t.Errorf("%s after %d: mean since %v, exact %v", name, at, got, mean)
			}
		}
	}
	var a Acc
	if !math.IsNaN(a.Mean()) || !math.IsNaN(a.Std()) || !math.IsNaN(a.MeanSince(a.Mark())) {
		t.Fatal("an empty Acc must give NaN")
	}
}

func BenchmarkAccAdd(b *testing.B) {
	var a Acc
	v := 0.0
	for b.Loop() {
		a.Add(v)
		v += 0.25
	}
	_ = fmt.Sprint(a.Mean())
}
