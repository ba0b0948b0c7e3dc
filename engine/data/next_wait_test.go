package data

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/enginetest"

	"github.com/stretchr/testify/require"
)

// TestNextWithinWaitsInSlices: NextWithin returns ErrNotReady when no batch came within its wait, changes
// nothing, and consecutive calls continue one wait that the Timeout option bounds, with Next's error.
func TestNextWithinWaitsInSlices(t *testing.T) {
	e := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	gate := make(chan struct{})
	fields := []Field{{Name: "v", DType: Int64}}
	src, err := NewFuncSource(16, fields, func(i int, dst [][]byte) error {
		<-gate
		dst[0][0] = byte(i)
		return nil
	})
	require.NoError(t, err)
	defer src.Close()
	it, err := NewIterator(e, src, IteratorOptions{BatchSize: 4, Workers: 2, Prefetch: 2, Timeout: 300 * time.Millisecond})
	require.NoError(t, err)
	defer it.Close()

	// Slices of 20 ms: not ready, until the whole wait passes the 300 ms timeout, which fails as Next does.
	start := time.Now()
	notReady := 0
	for {
		b, err := it.NextWithin(context.Background(), 0, 20*time.Millisecond)
		require.Nil(t, b)
		if errors.Is(err, ErrNotReady) {
			notReady++
			require.Less(t, time.Since(start), 10*time.Second, "the slices must not stretch the timeout")
			continue
		}
		require.ErrorIs(t, err, engine.ErrTimeout)
		require.Contains(t, err.Error(), "batch 0 of epoch 0 was not ready within 300ms")
		break
	}
	require.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond)
	require.GreaterOrEqual(t, notReady, 2)
	require.Equal(t, IteratorState{}, it.State(), "a wait that found nothing changes nothing")

	// A new wait after the failure; the batch is still the first one once the source delivers.
	b, err := it.NextWithin(context.Background(), 0, 10*time.Millisecond)
	require.ErrorIs(t, err, ErrNotReady)
	require.Nil(t, b)
	close(gate)
	for {
		b, err = it.NextWithin(context.Background(), 0, 10*time.Millisecond)
		if !errors.Is(err, ErrNotReady) {
			break
		}
	}
	require.NoError(t, err)
	require.Equal(t, []int{0, 1, 2, 3}, b.Indices)
	require.Equal(t, byte(2), b.Fields[0].Host[16])
	require.NoError(t, b.Release(0))
}
