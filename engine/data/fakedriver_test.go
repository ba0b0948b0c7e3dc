package data

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/testutil"
)

// TestFakeDriverIterators runs the iterators' GPU path (pools, events, streams, staging, host
// transforms) against a stand-in driver, so that it is exercised on hosts without a GPU too.
func TestFakeDriverIterators(t *testing.T) {
	out := testutil.RunOnFakeDriver(t, "TestFakeDriverIteratorsChild", false)
	require.Contains(t, out, "fake driver iterator checks passed")
}

func TestFakeDriverIteratorsChild(t *testing.T) {
	testutil.IsolatedChild(t)
	e, err := engine.Open(0, engine.WithSampleInterval(0))
	require.NoError(t, err)
	iteratorChecks(t, e)
	everySourceChecks(t, e)
	// The stand-in cannot run kernels: the transforms run on the host and their outputs cross.
	t.Run("transforms", func(t *testing.T) {
		transformChecks(t, e, func(Staging) Staging { return StagingGather })
	})
	t.Run("planar transforms", func(t *testing.T) { planarChecks(t, e) })
	t.Run("dma", func(t *testing.T) { dmaChecks(t, e) })
	require.NoError(t, e.Close())
	t.Run("batches held past close", func(t *testing.T) { heldPastCloseChecks(t, 0) })
	t.Log("fake driver iterator checks passed")
}
