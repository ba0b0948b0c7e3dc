package data

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/ferry-ml/ferry/engine/internal/enginetest"

	"github.com/ferry-ml/ferry/engine"

	"github.com/stretchr/testify/require"
)

// indexSource is n samples whose only field is the sample's own index (int64).
func indexSource(t *testing.T, n int) *MemorySource {
	data := make([]byte, 8*n)
	for i := 0; i < n; i++ {
		binary.LittleEndian.PutUint64(data[8*i:], uint64(i))
	}
	src, err := NewMemorySource(n, []Field{{Name: "i", DType: Int64}}, [][]byte{data})
	require.NoError(t, err)
	t.Cleanup(func() { _ = src.Close() })
	return src
}

// ranks opens one iterator per rank of a world of w on the CPU engine.
func ranks(t *testing.T, e *engine.Engine, src Source, w, batch int, dropLast bool) []*Iterator {
	its := make([]*Iterator, w)
	for r := range its {
		it, err := NewIterator(e, src, IteratorOptions{BatchSize: batch, Shuffle: true, Seed: 99, Rank: r, WorldSize: w,
			DropLast: dropLast, Workers: 2, Prefetch: 2})
		require.NoError(t, err)
		t.Cleanup(func() { _ = it.Close() })
		its[r] = it
	}
	return its
}

// take reads up to k batches from every rank in lockstep (k < 0: to the epoch's end) and returns the
// samples each batch held, read from the batch itself.
func take(t *testing.T, its []*Iterator, k int) (samples []int, steps int) {
	for ; k < 0 || steps < k; steps++ {
		done := 0
		for _, it := range its {
			b, err := it.Next(context.Background(), 0)
			if errors.Is(err, io.EOF) {
				done++
				continue
			}
			require.NoError(t, err)
			host := b.Fields[0].Host
			for j := 0; j < b.Size(); j++ {
				samples = append(samples, int(binary.LittleEndian.Uint64(host[8*j:])))
			}
			require.NoError(t, b.Release(0))
		}
		if done == len(its) {
			return samples, steps
		}
		require.Zero(t, done, "ranks have the same number of batches")
	}
	return samples, steps
}

func TestElasticResume(t *testing.T) {
	e := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	for _, c := range []struct {
		n, batch, from, to, steps int
	}{
		{n: 960, batch: 10, from: 4, to: 3, steps: 7},   // W=4 -> W=3, no padding anywhere
		{n: 1000, batch: 10, from: 2, to: 5, steps: 13}, // W=2 -> W=5
		{n: 1003, batch: 8, from: 4, to: 3, steps: 5},   // padding before and after
		{n: 997, batch: 16, from: 2, to: 5, steps: 11},
	} {
		t.Run(fmt.Sprintf("len=%d W=%d->%d", c.n, c.from, c.to), func(t *testing.T) {
			src := indexSource(t, c.n)
			before := ranks(t, e, src, c.from, c.batch, false)
			seen, _ := take(t, before, c.steps)
			st := before[0].ElasticState()
			for _, it := range before[1:] {
				require.Equal(t, st, it.ElasticState(), "every rank reports the same global state")
			}
			require.Equal(t, uint64(0), st.Epoch)
			require.Equal(t, min(c.steps*c.batch*c.from, c.n), st.Consumed)
			// Without padding so far, the consumed samples are exactly the first st.Consumed of the
			// epoch's global order.
			uniqueBefore := map[int]bool{}
			for _, i := range seen {
				uniqueBefore[i] = true
			}
			require.Len(t, uniqueBefore, st.Consumed, "before the resume: no sample twice")

			after := ranks(t, e, src, c.to, c.batch, false)
			for _, it := range after {
				require.NoError(t, it.RestoreElastic(st))
			}
			rest, _ := take(t, after, -1)
			counts := map[int]int{}
			for _, i := range rest {
				counts[i]++
			}
			remaining := c.n - st.Consumed
			padding := (remaining+c.to-1)/c.to*c.to - remaining
			dup := 0
			for i := 0; i < c.n; i++ {
				switch {
				case uniqueBefore[i]:
					require.Zero(t, counts[i], "sample %d came before the resume and again after", i)
				default:
					require.GreaterOrEqual(t, counts[i], 1, "sample %d never came", i)
					dup += counts[i] - 1
				}
			}
			require.Equal(t, padding, dup, "only DistributedSampler's padding repeats a sample")
			require.Len(t, rest, remaining+padding)

			// The next epoch is whole under the new world size, and deterministic.
			next, _ := take(t, after, -1)
			require.Len(t, next, (c.n+c.to-1)/c.to*c.to)
			again := ranks(t, e, src, c.to, c.batch, false)
			for _, it := range again {
				require.NoError(t, it.RestoreElastic(st))
			}
			rest2, _ := take(t, again, -1)
			require.Equal(t, rest, rest2, "restoring the same state gives the same batches")
		})
	}
}

func TestElasticResumeDropLastAndEdges(t *testing.T) {
	e := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	src := indexSource(t, 1000)
	before := ranks(t, e, src, 4, 10, true)
	seen, _ := take(t, before, 3)
	st := before[0].ElasticState()
	require.Equal(t, 120, st.Consumed)
	after := ranks(t, e, src, 3, 10, true)
	for _, it := range after {
		require.NoError(t, it.RestoreElastic(st))
	}
	rest, _ := take(t, after, -1)
	all := map[int]int{}
	for _, i := range append(seen, rest...) {
		all[i]++
	}
	for i, n := range all {
		require.Equal(t, 1, n, "sample %d twice with DropLast", i)
	}
	// 880 remain: 293 per rank, 29 batches of 10 each: 870 samples, 10 dropped.
	require.Len(t, rest, 870)

	// A state at an epoch's end continues with the next epoch; a saved per-rank State of a resumed epoch
	// restores exactly; bad states are refused and the iterator stays usable.
	it := after[0]
	require.Equal(t, ElasticState{Epoch: 1}, it.ElasticState())
	mid := ranks(t, e, src, 3, 10, true)[1]
	require.NoError(t, mid.RestoreElastic(st))
	take(t, []*Iterator{mid}, 5)
	saved := mid.State()
	require.Equal(t, 120, saved.Offset)
	want, _ := take(t, []*Iterator{mid}, 3)
	require.NoError(t, mid.Restore(saved))
	got, _ := take(t, []*Iterator{mid}, 3)
	require.Equal(t, want, got)
	require.ErrorIs(t, mid.RestoreElastic(ElasticState{Consumed: 1001}), engine.ErrInvalidArgument)
	require.ErrorIs(t, mid.Restore(IteratorState{Offset: -1}), engine.ErrInvalidArgument)
	require.NoError(t, mid.RestoreElastic(ElasticState{Epoch: 2, Consumed: 1000}))
	require.Equal(t, IteratorState{Epoch: 3}, mid.State())
}
