package data

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-ml/ferry/engine/internal/enginetest"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/testutil"

	"github.com/stretchr/testify/require"
)

// randomSource is an in-memory source of n samples with an image-like and a label-like field, filled
// with fresh random bytes.
func randomSource(t testing.TB, n int) (*MemorySource, [][]byte) {
	t.Helper()
	return randomMemorySource(t, n, Field{Name: "image", DType: Uint8, Shape: []int{3, 8, 8}}, Field{Name: "label", DType: Int64})
}

// randomMemorySource is an in-memory source of n samples of fields, filled with fresh random bytes, closed
// when the test ends; it returns the fields' data too.
func randomMemorySource(t testing.TB, n int, fields ...Field) (*MemorySource, [][]byte) {
	t.Helper()
	data := make([][]byte, len(fields))
	for i, f := range fields {
		data[i] = make([]byte, n*f.Bytes())
		_, err := rand.Read(data[i])
		require.NoError(t, err)
	}
	src, err := NewMemorySource(n, fields, data)
	require.NoError(t, err)
	t.Cleanup(func() { _ = src.Close() })
	return src, data
}

// batchContents returns a batch's fields as host bytes: the host buffer on the CPU engine, a read-back
// of the device buffer on a GPU (poisoned first, so an unwritten byte shows).
func batchContents(t testing.TB, e *engine.Engine, b *Batch) [][]byte {
	t.Helper()
	out := make([][]byte, len(b.Fields))
	for i, f := range b.Fields {
		if !b.OnGPU {
			out[i] = append([]byte(nil), f.Host...)
			continue
		}
		out[i] = bytes.Repeat([]byte{0xA5}, f.Bytes)
		require.NoError(t, e.Context().MemcpyDtoH(out[i], f.Device))
	}
	return out
}

// expected is what a batch of these sample indices must hold, field by field.
func expected(fields []Field, data [][]byte, indices []int) [][]byte {
	out := make([][]byte, len(fields))
	for f, fl := range fields {
		fb := fl.Bytes()
		for _, i := range indices {
			out[f] = append(out[f], data[f][i*fb:(i+1)*fb]...)
		}
	}
	return out
}

// collectEpoch reads one epoch, checking every batch against the source and the sampler, and returns
// the batches' indices.
func collectEpoch(t testing.TB, e *engine.Engine, it *Iterator, data [][]byte) [][]int {
	t.Helper()
	var got [][]int
	want := it.State().Epoch
	for {
		b, err := it.Next(context.Background(), 0)
		if errors.Is(err, io.EOF) {
			return got
		}
		require.NoError(t, err)
		require.Equal(t, want, b.Epoch)
		require.Equal(t, len(got), b.Index)
		ref, err := it.sampler.Batch(b.Epoch, b.Index, nil)
		require.NoError(t, err)
		require.Equal(t, ref, b.Indices, "the batch holds the sampler's samples")
		require.Equal(t, expected(it.fields, data, b.Indices), batchContents(t, e, b), "batch %d", b.Index)
		for _, f := range b.Fields {
			require.Equal(t, b.Size(), f.Shape[0])
		}
		got = append(got, append([]int(nil), b.Indices...))
		require.NoError(t, b.Release(0))
	}
}

// iteratorChecks runs on any engine: the CPU, a GPU, or the stand-in driver.
func iteratorChecks(t *testing.T, e *engine.Engine) {
	t.Run("epochs match the source", func(t *testing.T) {
		src, data := randomSource(t, 1000)
		it, err := NewIterator(e, src, IteratorOptions{BatchSize: 64, Shuffle: true, Seed: 7, Workers: 4, Prefetch: 3})
		require.NoError(t, err)
		defer it.Close()
		require.Equal(t, 16, it.BatchesPerEpoch())
		e0 := collectEpoch(t, e, it, data)
		require.Len(t, e0, 16)
		require.Len(t, e0[15], 1000-15*64, "the last batch is short without drop_last")
		seen := map[int]bool{}
		for _, b := range e0 {
			for _, i := range b {
				require.False(t, seen[i], "sample %d twice in one epoch", i)
				seen[i] = true
			}
		}
		require.Len(t, seen, 1000)
		e1 := collectEpoch(t, e, it, data)
		require.NotEqual(t, e0, e1, "a new epoch has a new order")
		st := it.Stats()
		require.Equal(t, uint64(32), st.Batches)
		require.Equal(t, uint64(2000), st.Samples)
	})

	t.Run("order does not depend on workers or prefetch", func(t *testing.T) {
		src, data := randomSource(t, 300)
		var orders [][][]int
		for _, w := range []struct{ workers, prefetch int }{{1, 2}, {7, 5}} {
			it, err := NewIterator(e, src, IteratorOptions{BatchSize: 32, Shuffle: true, Seed: 99, DropLast: true,
				Workers: w.workers, Prefetch: w.prefetch})
			require.NoError(t, err)
			orders = append(orders, collectEpoch(t, e, it, data))
			require.NoError(t, it.Close())
		}
		require.Equal(t, orders[0], orders[1])
		require.Len(t, orders[0], 9, "drop_last drops the short batch")
	})

	t.Run("restore resumes bit for bit", func(t *testing.T) {
		src, data := randomSource(t, 500)
		opts := IteratorOptions{BatchSize: 16, Shuffle: true, Seed: 3, Workers: 3}
		full, err := NewIterator(e, src, opts)
		require.NoError(t, err)
		defer full.Close()
		_ = collectEpoch(t, e, full, data) // epoch 0
		var st IteratorState
		var rest [][][]byte
		for i := 0; i < 20; i++ { // into epoch 1
			if i == 7 {
				st = full.State()
			}
			b, err := full.Next(context.Background(), 0)
			require.NoError(t, err)
			if i >= 7 {
				rest = append(rest, batchContents(t, e, b))
			}
			require.NoError(t, b.Release(0))
		}
		require.Equal(t, IteratorState{Epoch: 1, Batch: 7}, st)

		resumed, err := NewIterator(e, src, opts)
		require.NoError(t, err)
		defer resumed.Close()
		require.NoError(t, resumed.Restore(st))
		for i := range rest {
			b, err := resumed.Next(context.Background(), 0)
			require.NoError(t, err)
			require.Equal(t, rest[i], batchContents(t, e, b), "batch %d after the restore", i)
			require.NoError(t, b.Release(0))
		}

		// Restoring the end of an epoch gives io.EOF, then the next epoch.
		require.NoError(t, resumed.Restore(IteratorState{Epoch: 4, Batch: resumed.BatchesPerEpoch()}))
		_, err = resumed.Next(context.Background(), 0)
		require.ErrorIs(t, err, io.EOF)
		b, err := resumed.Next(context.Background(), 0)
		require.NoError(t, err)
		require.Equal(t, uint64(5), b.Epoch)
		require.Equal(t, 0, b.Index)
		require.NoError(t, b.Release(0))
		require.NoError(t, resumed.SetEpoch(2))
		require.Equal(t, IteratorState{Epoch: 2}, resumed.State())
		require.ErrorIs(t, resumed.Restore(IteratorState{Batch: 1000}), engine.ErrInvalidArgument)
	})

	t.Run("holding batches and releasing out of order", func(t *testing.T) {
		src, data := randomSource(t, 200)
		it, err := NewIterator(e, src, IteratorOptions{BatchSize: 10, Prefetch: 3})
		require.NoError(t, err)
		defer it.Close()
		a, err := it.Next(context.Background(), 0)
		require.NoError(t, err)
		b, err := it.Next(context.Background(), 0)
		require.NoError(t, err)
		wantA := expected(it.fields, data, a.Indices)
		require.NoError(t, b.Release(0))
		c, err := it.Next(context.Background(), 0)
		require.NoError(t, err)
		require.Equal(t, wantA, batchContents(t, e, a), "a held batch is not overwritten")
		require.NoError(t, a.Release(0))
		require.NoError(t, c.Release(0))
		require.ErrorIs(t, c.Release(0), engine.ErrInvalidArgument, "a second release is refused")
	})

	t.Run("a source error fails one batch, not the iterator", func(t *testing.T) {
		_, data := randomSource(t, 100)
		fields := []Field{{Name: "image", DType: Uint8, Shape: []int{3, 8, 8}}, {Name: "label", DType: Int64}}
		mem, err := NewMemorySource(100, fields, data)
		require.NoError(t, err)
		src, err := NewFuncSource(100, fields, func(i int, dst [][]byte) error {
			switch i {
			case 13:
				return fmt.Errorf("%w: sample 13 is unreadable", engine.ErrIO)
			case 42:
				panic("decoder crashed")
			}
			return mem.ReadSample(i, dst)
		})
		require.NoError(t, err)
		it, err := NewIterator(e, src, IteratorOptions{BatchSize: 10, Workers: 2})
		require.NoError(t, err)
		defer it.Close()
		var failed []int
		for i := 0; i < 10; i++ {
			b, err := it.Next(context.Background(), 0)
			if err != nil {
				require.ErrorIs(t, err, engine.ErrIO)
				failed = append(failed, i)
				continue
			}
			require.Equal(t, expected(fields, data, b.Indices), batchContents(t, e, b))
			require.NoError(t, b.Release(0))
		}
		require.Equal(t, []int{1, 4}, failed, "batches 1 (sample 13) and 4 (sample 42) fail")
		_, err = it.Next(context.Background(), 0)
		require.ErrorIs(t, err, io.EOF)
	})

	t.Run("a stuck source times out, and close waits for it", func(t *testing.T) {
		unblock := make(chan struct{})
		var calls atomic.Int32
		src, err := NewFuncSource(8, []Field{{Name: "x", DType: Float32, Shape: []int{4}}}, func(i int, dst [][]byte) error {
			calls.Add(1)
			<-unblock
			return nil
		})
		require.NoError(t, err)
		it, err := NewIterator(e, src, IteratorOptions{BatchSize: 4, Workers: 1, Timeout: 50 * time.Millisecond})
		require.NoError(t, err)
		start := time.Now()
		_, err = it.Next(context.Background(), 0)
		require.ErrorIs(t, err, engine.ErrTimeout)
		require.Less(t, time.Since(start), 5*time.Second)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err = it.Next(ctx, 0)
		require.ErrorIs(t, err, engine.ErrTimeout)
		close(unblock)
		b, err := it.Next(context.Background(), 0)
		require.NoError(t, err, "the batch arrives once the source answers")
		require.NoError(t, b.Release(0))
		require.NoError(t, it.Close())
		require.ErrorIs(t, it.Close(), engine.ErrClosed)
		_, err = it.Next(context.Background(), 0)
		require.ErrorIs(t, err, engine.ErrClosed)
	})

	t.Run("bad options", func(t *testing.T) {
		src, _ := randomSource(t, 10)
		for _, o := range []IteratorOptions{
			{BatchSize: 0}, {BatchSize: 4, Prefetch: 1}, {BatchSize: 4, Workers: -1}, {BatchSize: 4, Workers: 1000},
			{BatchSize: 4, Rank: 2, WorldSize: 2}, {BatchSize: 11, DropLast: true}, {BatchSize: 4, Timeout: -1},
		} {
			it, err := NewIterator(e, src, o)
			require.Nil(t, it)
			require.ErrorIs(t, err, engine.ErrInvalidArgument, "%+v", o)
		}
		_, err := NewIterator(e, nil, IteratorOptions{BatchSize: 1})
		require.ErrorIs(t, err, engine.ErrInvalidArgument)
	})

	t.Run("ranks split an epoch", func(t *testing.T) {
		src, data := randomSource(t, 103)
		seen := map[int]int{}
		for rank := 0; rank < 4; rank++ {
			it, err := NewIterator(e, src, IteratorOptions{BatchSize: 8, Shuffle: true, Seed: 1, Rank: rank, WorldSize: 4})
			require.NoError(t, err)
			for _, b := range collectEpoch(t, e, it, data) {
				for _, i := range b {
					seen[i]++
				}
			}
			require.NoError(t, it.Close())
		}
		require.Len(t, seen, 103, "every sample is seen")
		total := 0
		for _, c := range seen {
			total += c
		}
		require.Equal(t, 104, total, "103 samples pad to 104 over 4 ranks, as DistributedSampler does")
	})

	t.Run("a batch size beyond the data set sizes the ring by the data set", func(t *testing.T) {
		// 20 samples of 1 MiB with a batch size of 16 Mi: one batch of 20, as torch gives, not a ring of
		// 16 TiB per slot. With ranks, a slot holds the rank's share; a resumed epoch holds no more.
		src, data := randomMemorySource(t, 20, Field{Name: "x", DType: Uint8, Shape: []int{1 << 20}})
		const huge = 16 << 20
		it, err := NewIterator(e, src, IteratorOptions{BatchSize: huge, Shuffle: true, Seed: 3, Prefetch: 2})
		require.NoError(t, err)
		defer it.Close()
		require.Equal(t, 1, it.BatchesPerEpoch())
		for range 2 {
			got := collectEpoch(t, e, it, data)
			require.Len(t, got, 1)
			require.Len(t, got[0], 20)
		}
		require.NoError(t, it.Close())

		for rank := range 3 {
			it, err := NewIterator(e, src, IteratorOptions{BatchSize: huge, Seed: 3, Rank: rank, WorldSize: 3})
			require.NoError(t, err)
			got := collectEpoch(t, e, it, data)
			require.Len(t, got, 1)
			require.Len(t, got[0], 7, "20 samples over 3 ranks: 7 each, padded")
			require.NoError(t, it.RestoreElastic(ElasticState{Epoch: 1, Consumed: 6}))
			got = collectEpoch(t, e, it, data)
			require.Len(t, got, 1)
			require.Len(t, got[0], 5, "the 14 samples left over 3 ranks: 5 each, padded")
			require.NoError(t, it.Close())
		}
	})

	t.Run("the ring shows in the memory check and goes back on close", func(t *testing.T) {
		src, _ := randomSource(t, 64)
		_, err := e.Trim() // empty the pools' caches, so the ring's memory is new
		require.NoError(t, err)
		before := e.MemoryCheck()
		it, err := NewIterator(e, src, IteratorOptions{BatchSize: 64, Prefetch: 2})
		require.NoError(t, err)
		during := e.MemoryCheck()
		if e.GPU() {
			require.Greater(t, during.EngineAllocated, before.EngineAllocated)
			require.Greater(t, during.HostPinned, before.HostPinned)
		}
		require.NoError(t, it.Close())
		after := e.MemoryCheck()
		require.Equal(t, before.EngineAllocated, after.EngineAllocated)
		_, err = e.Trim()
		require.NoError(t, err)
		trimmed := e.MemoryCheck()
		require.Equal(t, before.HostPinned, trimmed.HostPinned)
		require.Equal(t, before.EngineReserved, trimmed.EngineReserved)
	})
}

func TestIteratorCPU(t *testing.T) {
	e := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	iteratorChecks(t, e)
}

func TestIteratorGPU(t *testing.T) {
	testutil.RequireGPU(t)
	e, err := engine.Open(0, engine.WithSampleInterval(0))
	require.NoError(t, err)
	defer e.Close()
	iteratorChecks(t, e)
}

func TestEngineCloseClosesIterators(t *testing.T) {
	e, err := engine.Open(engine.CPU, engine.WithSampleInterval(0))
	require.NoError(t, err)
	src, _ := randomSource(t, 50)
	it, err := NewIterator(e, src, IteratorOptions{BatchSize: 5})
	require.NoError(t, err)
	b, err := it.Next(context.Background(), 0)
	require.NoError(t, err)
	require.NoError(t, e.Close())
	_, err = it.Next(context.Background(), 0)
	require.ErrorIs(t, err, engine.ErrClosed)
	require.True(t, b.IteratorClosed())
	require.Equal(t, 1, e.Holds(), "the held batch keeps the engine's memory")
	require.NoError(t, b.Release(0), "a batch held across the close is released (and its memory freed)")
	require.Equal(t, 0, e.Holds())
	require.ErrorIs(t, b.Release(0), engine.ErrInvalidArgument, "a second release")
	_, err = NewIterator(e, src, IteratorOptions{BatchSize: 5})
	require.ErrorIs(t, err, engine.ErrClosed)
}

func TestBatchHeldPastCloseCPU(t *testing.T) { heldPastCloseChecks(t, engine.CPU) }

func TestBatchHeldPastCloseGPU(t *testing.T) {
	testutil.RequireGPU(t)
	heldPastCloseChecks(t, 0)
}

// heldPastCloseChecks: batches held across their iterator's Close and their engine's Close stay readable
// (a DLPack tensor over them must not see its memory unmapped); their releases free the ring and then the
// engine's pools and context, in either order, and Close does not wait for them.
func heldPastCloseChecks(t *testing.T, device int) {
	for _, closeEngine := range []bool{false, true} {
		t.Run(fmt.Sprintf("engine closed %v", closeEngine), func(t *testing.T) {
			e, err := engine.Open(device, engine.WithSampleInterval(0))
			require.NoError(t, err)
			src, data := randomSource(t, 50)
			it, err := NewIterator(e, src, IteratorOptions{BatchSize: 5, Prefetch: 3, Timeout: 30 * time.Second})
			require.NoError(t, err)
			var held []*Batch
			for range 2 {
				b, err := it.Next(context.Background(), 0)
				require.NoError(t, err)
				held = append(held, b)
			}
			want := [][][]byte{}
			for _, b := range held {
				want = append(want, expected(it.SourceFields(), data, b.Indices))
			}
			require.NoError(t, it.Close())
			if closeEngine {
				require.NoError(t, e.Close())
			}
			require.Equal(t, 1, e.Holds(), "the iterator holds the engine while batches are out")
			for i, b := range held {
				require.Equal(t, want[i], batchContents(t, e, b), "batch %d after the close", i)
			}
			pinned := e.Accounting().Figures().Pinned
			require.NoError(t, held[0].Release(0))
			require.Equal(t, want[1], batchContents(t, e, held[1]), "the other batch is untouched")
			require.NoError(t, held[1].Release(0))
			require.ErrorIs(t, held[1].Release(0), engine.ErrInvalidArgument)
			// On a GPU the last slot is freed once the consumer's stream passes the release.
			deadline := time.Now().Add(30 * time.Second)
			for e.Holds() != 0 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			require.Equal(t, 0, e.Holds(), "the last release gives the engine back")
			if device != engine.CPU {
				if closeEngine {
					require.Zero(t, e.Accounting().Figures().Pinned, "the engine's pinned memory went with the last release")
				} else {
					require.Equal(t, pinned, e.Accounting().Figures().Pinned, "the ring went back to the live engine's pool")
				}
			}
			if !closeEngine {
				// The engine is intact: a new iterator works on it.
				it2, err := NewIterator(e, src, IteratorOptions{BatchSize: 5})
				require.NoError(t, err)
				b, err := it2.Next(context.Background(), 0)
				require.NoError(t, err)
				require.Equal(t, expected(it2.SourceFields(), data, b.Indices), batchContents(t, e, b))
				require.NoError(t, b.Release(0))
				require.NoError(t, it2.Close())
				require.NoError(t, e.Close())
			}
			_, err = NewIterator(e, src, IteratorOptions{BatchSize: 5})
			require.ErrorIs(t, err, engine.ErrClosed)
		})
	}
}
