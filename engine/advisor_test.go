package engine

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

const mb = 1 << 20

func TestAdvisorLinear(t *testing.T) {
	a, err := NewAdvisor(8)
	require.NoError(t, err)
	fixed, per := uint64(3000*mb), uint64(37*mb) // 3 GB of weights and optimizer state, 37 MB per sample
	for _, b := range []int{8, 16, 32} {
		require.NoError(t, a.Observe(b, fixed+per*uint64(b)))
	}
	f, err := a.Fit()
	require.NoError(t, err)
	require.Equal(t, 3, f.Observations)
	require.InDelta(t, float64(fixed), f.Fixed, 1)
	require.InDelta(t, float64(per), f.PerSample, 1e-6)
	require.InDelta(t, 1, f.RSquared, 1e-12)
	require.InDelta(t, 0, f.MaxResidual, 1)

	budget := uint64(80 << 30)
	b, err := a.Recommend(budget, 0)
	require.NoError(t, err)
	limit := int((budget - fixed) / per) // the true largest batch
	require.Equal(t, limit/8*8, b, "the largest multiple of 8 that fits")
	b10, err := a.Recommend(budget, 0.1)
	require.NoError(t, err)
	require.LessOrEqual(t, fixed+per*uint64(b10), uint64(float64(budget)*0.9))
	require.Zero(t, b10%8)
}

func TestAdvisorTwoObservationsAndRounding(t *testing.T) {
	a, err := NewAdvisor(1)
	require.NoError(t, err)
	require.NoError(t, a.Observe(4, 1000))
	_, err = a.Recommend(5000, 0)
	require.ErrorIs(t, err, ErrInvalidArgument, "one observation is not enough")
	require.NoError(t, a.Observe(10, 2200)) // 200 per sample, 200 fixed
	b, err := a.Recommend(5000, 0)
	require.NoError(t, err)
	require.Equal(t, 24, b) // 200 + 200*24 = 5000
	a8, _ := NewAdvisor(8)
	require.NoError(t, a8.Observe(4, 1000))
	require.NoError(t, a8.Observe(10, 2200))
	b, err = a8.Recommend(5000, 0)
	require.NoError(t, err)
	require.Equal(t, 24, b)
	b, err = a8.Recommend(3000, 0) // 14 fit: rounds down to 8
	require.NoError(t, err)
	require.Equal(t, 8, b)
	b, err = a8.Recommend(1500, 0) // 6 fit, below the multiple: 6 itself
	require.NoError(t, err)
	require.Equal(t, 6, b)
}

// TestAdvisorNoisy: with noise on fresh random curves (±2 % of the activations, ±0.2 % of the fixed part), observations up to half the limit (as
// AutoBatch probes) and 5 % headroom, the recommendation never exceeds the budget and lands within 10 %
// of the noise-free limit of the budget left after the headroom. (Extrapolating a noisy slope twice past the last observation can overshoot by a few
// per cent without headroom: the headroom is what absorbs it.)
func TestAdvisorNoisy(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for trial := 0; trial < 500; trial++ {
		fixed := 1e9 + r.Float64()*5e9
		per := 1e6 + r.Float64()*1e8
		limit := 200 + r.IntN(2000)
		budget := fixed + per*float64(limit)
		a, err := NewAdvisor(1)
		require.NoError(t, err)
		for _, b := range []int{8, 16, limit / 4, limit / 2} {
			// ±2 % on the activations, ±0.2 % on the fixed part (allocator rounding, workspaces).
			act := per * float64(b) * (1 + (r.Float64()-0.5)*0.04)
			base := fixed * (1 + (r.Float64()-0.5)*0.004)
			require.NoError(t, a.Observe(b, uint64(act+base)))
		}
		b, err := a.Recommend(uint64(budget), 0.05)
		require.NoError(t, err)
		require.LessOrEqual(t, fixed+per*float64(b), budget, "trial %d: overshoot", trial)
		// The noise-free limit of the budget left after the headroom.
		limitH := (0.95*budget - fixed) / per
		require.GreaterOrEqual(t, float64(b), 0.9*limitH, "trial %d: %d of %.0f (limit %d)", trial, b, limitH, limit)
	}
}

func TestAdvisorConvexStaysSafe(t *testing.T) {
	a, _ := NewAdvisor(1)
	peak := func(b int) uint64 { return uint64(1000 + 10*b + b*b/4) } // grows faster than linear
	for _, b := range []int{4, 8, 16, 32} {
		require.NoError(t, a.Observe(b, peak(b)))
	}
	f, err := a.Fit()
	require.NoError(t, err)
	require.Less(t, f.RSquared, 1.0)
	require.Positive(t, f.MaxResidual)
	b, err := a.Recommend(peak(32), 0)
	require.NoError(t, err)
	require.LessOrEqual(t, peak(b), peak(32), "the upper envelope keeps the prediction at or above every observation")
}

func TestAdvisorOOMCeilingAndReduce(t *testing.T) {
	a, _ := NewAdvisor(8)
	require.NoError(t, a.Observe(8, 1008))
	require.NoError(t, a.Observe(16, 1016)) // 1 byte per sample: a huge budget allows huge batches
	b, err := a.Recommend(100000, 0)
	require.NoError(t, err)
	require.Greater(t, b, 1000)
	require.NoError(t, a.ReportOOM(200))
	b, err = a.Recommend(100000, 0)
	require.NoError(t, err)
	require.Equal(t, 192, b, "the largest multiple below the OOM")
	require.NoError(t, a.ReportOOM(300)) // a larger OOM does not raise the ceiling
	require.NoError(t, a.ReportOOM(100))
	b, _ = a.Recommend(100000, 0)
	require.Equal(t, 96, b)
	f, _ := a.Fit()
	require.Equal(t, 100, f.OOMCeiling)

	a.SetReduce(func(v int64) (int64, error) { return min(v, 40), nil }) // another rank has less room
	b, err = a.Recommend(100000, 0)
	require.NoError(t, err)
	require.Equal(t, 40, b)
	a.SetReduce(func(v int64) (int64, error) { return v + 1, nil })
	_, err = a.Recommend(100000, 0)
	require.ErrorIs(t, err, ErrInvalidArgument, "a reduction must return the minimum")
	a.SetReduce(func(v int64) (int64, error) { return 0, errors.New("rank 3 is gone") })
	_, err = a.Recommend(100000, 0)
	require.ErrorContains(t, err, "rank 3 is gone")
}

func TestAdvisorBadInput(t *testing.T) {
	_, err := NewAdvisor(0)
	require.ErrorIs(t, err, ErrInvalidArgument)
	a, _ := NewAdvisor(8)
	require.ErrorIs(t, a.Observe(0, 10), ErrInvalidArgument)
	require.ErrorIs(t, a.Observe(8, 0), ErrInvalidArgument)
	require.ErrorIs(t, a.ReportOOM(-1), ErrInvalidArgument)
	require.NoError(t, a.Observe(8, 5000))
	require.NoError(t, a.Observe(16, 4000)) // memory that shrinks with the batch
	_, err = a.Recommend(10000, 0)
	require.ErrorContains(t, err, "does not grow")
	b, _ := NewAdvisor(8)
	require.NoError(t, b.Observe(8, 5000))
	require.NoError(t, b.Observe(16, 6000))
	_, err = b.Recommend(4000, 0)
	require.ErrorContains(t, err, "below the cost of one sample")
	for _, h := range []float64{-0.1, 1, math.NaN()} {
		_, err = b.Recommend(1<<30, h)
		require.ErrorIs(t, err, ErrInvalidArgument, "headroom %v", h)
	}
	_, err = b.Recommend(0, 0)
	require.ErrorIs(t, err, ErrInvalidArgument)
	require.NoError(t, b.Close())
	require.ErrorIs(t, b.Observe(8, 1), ErrClosed)
	require.ErrorIs(t, b.Close(), ErrClosed)
}
