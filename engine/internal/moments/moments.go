// Package moments accumulates the count, mean and population standard deviation of float64 values
// without the losses of a plain running mean: ten values of 1e155 have a deviation of 0 (not NaN from an
// overflowing square), and 1e15 + {0, 1, 2, 3} a mean of 1e15 + 1.5.
//
// The sums are of each value's deviation from a shift (the first value), kept as double-doubles (a
// float64 and the rounding error that float64 dropped), and scaled by a power of two chosen so that the
// squares of the deviations neither overflow nor underflow. Mean and variance come from the sums at the
// end, in double-double arithmetic, so that cancellation between Σd² and (Σd)²/n costs nothing visible.
package moments

import "math"

const (
	// A scaled deviation beyond hugeDev, or nonzero below tinyDev, takes the slow path that rescales.
	// With |d| ≤ 2^450 the squares of 2^64 values still sum below 2^1023.
	hugeDev = 0x1p450
	tinyDev = 0x1p-450
	// The scale exponent stays within these bounds: 2^-minExp and 2^-maxExp are both finite and nonzero.
	minExp = -900
	maxExp = 1030
)

// Acc accumulates values; its zero value is empty and ready to use.
type Acc struct {
	N        uint64
	k        float64 // the shift: the first value
	e        int     // the scale: sums are of (v-k)·2^-e
	inv      float64 // 2^-e
	s1h, s1l float64 // Σ d, d = (v-k)·2^-e, as a double-double
	s2h, s2l float64 // Σ d²
}

// Add accumulates the finite value v (the caller leaves NaN and infinities out).
func (a *Acc) Add(v float64) {
	if a.N == 0 && a.inv == 0 {
		a.k, a.inv = v, 1
	}
	d := (v - a.k) * a.inv
	if x := math.Abs(d); x > hugeDev || (x < tinyDev && x != 0) {
		d = a.fit(v, 0)
	}
	a.N++
	// Knuth's two-sum for Σd; for Σd² also the product's rounding error (an FMA).
	t := a.s1h + d
	b := t - a.s1h
	a.s1l += (a.s1h - (t - b)) + (d - b)
	a.s1h = t
	p := d * d
	pe := math.FMA(d, d, -p)
	t = a.s2h + p
	b = t - a.s2h
	a.s2l += (a.s2h - (t - b)) + (p - b) + pe
	a.s2h = t
}

// AddSummary accumulates n values whose mean and population standard deviation are mean and std (both
// finite, std ≥ 0): a merge of summaries, as Chan et al.'s parallel formula does it.
func (a *Acc) AddSummary(n uint64, mean, std float64) {
	if n == 0 {
		return
	}
	if a.N == 0 && a.inv == 0 {
		a.k, a.inv = mean, 1
	}
	d := (mean - a.k) * a.inv
	sd := std * a.inv
	if x := math.Max(math.Abs(d), sd); x > hugeDev || (x < tinyDev && x != 0) || math.IsInf(sd, 0) {
		d = a.fit(mean, std)
		sd = math.Ldexp(std, -a.e)
	}
	a.N += n
	fn := float64(n)
	h, l := twoProd(fn, d)
	a.s1h, a.s1l = ddAdd(a.s1h, a.s1l, h, l)
	qh, ql := twoProd(d, d)
	rh, rl := twoProd(sd, sd)
	qh, ql = ddAdd(qh, ql, rh, rl)
	h, l = twoProd(fn, qh)
	l += fn * ql
	a.s2h, a.s2l = ddAdd(a.s2h, a.s2l, h, l)
}

// fit is the slow path of Add and AddSummary: it rescales the sums so that the deviation of v (and a
// spread of std) fits, and returns v's scaled deviation.
func (a *Acc) fit(v, std float64) float64 {
	// Halved, the deviation cannot overflow; its exponent is what matters here.
	mag := math.Max(math.Abs(v*0.5-a.k*0.5), std*0.5)
	_, ex := math.Frexp(mag)
	ex++ // mag·2 < 2^ex
	if dev := math.Abs(v-a.k) * a.inv; dev < tinyDev && std*a.inv < tinyDev {
		// Tiny: worth a finer scale only while nothing else is in the sums; beside what is, it is noise.
		if a.s1h == 0 && a.s1l == 0 && a.s2h == 0 && a.s2l == 0 {
			a.setExp(ex)
		}
	} else if ex > a.e {
		f := a.e - ex
		a.s1h, a.s1l = math.Ldexp(a.s1h, f), math.Ldexp(a.s1l, f)
		a.s2h, a.s2l = math.Ldexp(a.s2h, 2*f), math.Ldexp(a.s2l, 2*f)
		a.setExp(ex)
	}
	if d := v - a.k; !math.IsInf(d, 0) {
		return math.Ldexp(d, -a.e)
	}
	return math.Ldexp(v*0.5-a.k*0.5, 1-a.e)
}

func (a *Acc) setExp(ex int) {
	a.e = min(max(ex, minExp), maxExp)
	a.inv = math.Ldexp(1, -a.e)
}

// Mean returns the mean of the values (NaN when there are none).
func (a *Acc) Mean() float64 {
	if a.N == 0 {
		return math.NaN()
	}
	mh, ml := ddDivN(a.s1h, a.s1l, float64(a.N))
	return a.unshift(mh, ml)
}

// unshift returns k + (h+l)·2^e rounded once.
func (a *Acc) unshift(h, l float64) float64 {
	x := math.Ldexp(h, a.e)
	s, err := twoSum(a.k, x)
	r := s + (err + math.Ldexp(l, a.e))
	if math.IsInf(r, 0) || math.IsInf(x, 0) {
		// k and the mean at opposite ends of the range: their difference overflows, their halves do not.
		r = (a.k*0.5 + math.Ldexp(h, a.e-1) + math.Ldexp(l, a.e-1)) * 2
	}
	return r
}

// Std returns the population standard deviation of the values (NaN when there are none).
func (a *Acc) Std() float64 {
	if a.N == 0 {
		return math.NaN()
	}
	n := float64(a.N)
	mh, ml := ddDivN(a.s1h, a.s1l, n)
	ph, pl := ddMul(mh, ml, a.s1h, a.s1l) // (Σd)²/n
	rh, rl := ddAdd(a.s2h, a.s2l, -ph, -pl)
	m2 := rh + rl
	if m2 <= 0 {
		return 0
	}
	return math.Ldexp(math.Sqrt(m2/n), a.e)
}

// Mark is a point in an Acc's history: MeanSince gives the mean of the values added after it.
type Mark struct {
	n        uint64
	e        int
	s1h, s1l float64
}

// Mark returns the current point.
func (a *Acc) Mark() Mark { return Mark{n: a.N, e: a.e, s1h: a.s1h, s1l: a.s1l} }

// MeanSince returns the mean of the values added since m (NaN when there are none).
func (a *Acc) MeanSince(m Mark) float64 {
	n := a.N - m.n
	if n == 0 {
		return math.NaN()
	}
	if m.n == 0 {
		return a.Mean()
	}
	h, l := m.s1h, m.s1l
	if m.e != a.e {
		h, l = math.Ldexp(h, m.e-a.e), math.Ldexp(l, m.e-a.e)
	}
	dh, dl := ddAdd(a.s1h, a.s1l, -h, -l)
	mh, ml := ddDivN(dh, dl, float64(n))
	return a.unshift(mh, ml)
}

// --- double-double arithmetic (error-free transformations) ---

func twoSum(a, b float64) (s, err float64) {
	s = a + b
	bb := s - a
	return s, (a - (s - bb)) + (b - bb)
}

func twoProd(a, b float64) (p, err float64) {
	p = a * b
	return p, math.FMA(a, b, -p)
}

func ddAdd(ah, al, bh, bl float64) (float64, float64) {
	s, e := twoSum(ah, bh)
	e += al + bl
	return fastTwoSum(s, e)
}

func fastTwoSum(a, b float64) (float64, float64) {
	s := a + b
	return s, b - (s - a)
}

func ddMul(ah, al, bh, bl float64) (float64, float64) {
	p, e := twoProd(ah, bh)
	e += ah*bl + al*bh
	return fastTwoSum(p, e)
}

// ddDivN divides (h, l) by n.
func ddDivN(h, l, n float64) (float64, float64) {
	q1 := h / n
	p, pe := twoProd(q1, n)
	r := ((h - p) - pe + l) / n
	return fastTwoSum(q1, r)
}
