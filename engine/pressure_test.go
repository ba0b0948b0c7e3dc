package engine

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPressureOnCPU(t *testing.T) {
	e := openCPU(t, WithSampleInterval(0))
	require.ErrorContains(t, e.SetPressure(PressureThresholds{WarnFraction: 0.5}), "needs a GPU engine")
	require.ErrorIs(t, e.SetPressure(PressureThresholds{Metric: 9}), ErrInvalidArgument)
	require.ErrorContains(t, e.SetPressure(PressureThresholds{WarnBytes: 10, CriticalBytes: 5}), "below the warn")
	require.NoError(t, e.SetPressure(PressureThresholds{Metric: PressureEngineReserved, WarnBytes: 1 << 20}))
	s := e.MemoryCheck()
	require.Equal(t, PressureNone, s.Level)
	require.Equal(t, uint64(1<<20), s.WarnThreshold)

	var order []int
	id1, err := e.OnPressure(func(l Pressure) error { order = append(order, 1); return nil })
	require.NoError(t, err)
	_, err = e.OnPressure(func(l Pressure) error { order = append(order, 2); return errors.New("no") })
	require.NoError(t, err)
	_, err = e.OnPressure(func(l Pressure) error { order = append(order, 3); panic("bad callback") })
	require.NoError(t, err)
	r, err := e.Optimize(64)
	require.NoError(t, err)
	require.Equal(t, []int{1, 2, 3}, order, "callbacks run in registration order")
	require.Equal(t, 3, r.CallbacksCalled)
	require.Equal(t, 2, r.CallbacksFailed, "an error and a panic both count as failures")
	require.Zero(t, r.Recommended, "no advisor")
	require.NoError(t, e.RemoveCallback(id1))
	require.ErrorIs(t, e.RemoveCallback(id1), ErrInvalidArgument)
	_, err = e.Optimize(-1)
	require.ErrorIs(t, err, ErrInvalidArgument)
}

// pressureChecks runs on a GPU engine: the stand-in driver reports 10 GiB used of 80 GiB.
func pressureChecks(t *testing.T, e *Engine, used uint64) {
	const gib = 1 << 30
	set := func(th PressureThresholds) MemorySnapshot {
		require.NoError(t, e.SetPressure(th))
		return e.MemoryCheck()
	}
	require.Equal(t, PressureWarn, set(PressureThresholds{WarnBytes: used / 2, CriticalBytes: used * 2}).Level)
	require.Equal(t, PressureCritical, set(PressureThresholds{WarnBytes: used / 2, CriticalBytes: used - 1}).Level)
	s := set(PressureThresholds{WarnBytes: used + gib})
	require.Equal(t, PressureNone, s.Level)
	require.Equal(t, used+gib, s.WarnThreshold)
	s = set(PressureThresholds{WarnFraction: 0.0001, CriticalFraction: 0.99})
	require.Equal(t, PressureWarn, s.Level)
	require.InDelta(t, 0.99*float64(s.DeviceTotal), float64(s.CriticalThreshold), 1)
	live, err := e.MemoryCheckLive()
	require.NoError(t, err)
	require.Equal(t, PressureWarn, live.Level, "the live check carries the level too")

	a, err := NewAdvisor(8)
	require.NoError(t, err)
	require.NoError(t, a.Observe(8, 2*gib))
	require.NoError(t, a.Observe(16, 3*gib))
	e.SetAdvisor(a)
	r, err := e.Optimize(32)
	require.NoError(t, err)
	require.Equal(t, PressureWarn, r.LevelBefore)
	require.Positive(t, r.Recommended)
	require.LessOrEqual(t, r.Recommended, 32, "under pressure, never above the current batch size")
	require.NoError(t, a.Close())
	r, err = e.Optimize(32)
	require.NoError(t, err)
	require.Zero(t, r.Recommended, "a closed advisor recommends nothing")
	e.SetAdvisor(nil)
	require.NoError(t, e.SetPressure(PressureThresholds{}))
	require.Equal(t, PressureNone, e.MemoryCheck().Level)
}
