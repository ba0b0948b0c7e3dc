package data

import (
	"context"
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

// Fault injection: each case makes one thing fail (a source, the driver, NVML, the network) and checks
// that the failure comes back as a clear error, that nothing waits without bound, that the engine's
// memory returns to where it was, and that the engine still works afterwards. The cases that need a
// failing driver or NVML run in a child process on the stand-in libraries (testdata/fakecuda.c,
// testdata/fakenvml.c), whose environment switches inject the faults.

// nextWithin calls Next on stream and fails the test if it does not return within testutil.FaultBound.
func nextWithin(t *testing.T, it *Iterator, stream Stream) (*Batch, error) {
	t.Helper()
	type result struct {
		b   *Batch
		err error
	}
	r := testutil.Within(t, testutil.FaultBound, "Next", func() result {
		b, err := it.Next(context.Background(), stream)
		return result{b, err}
	})
	return r.b, r.err
}

// memoryBase empties the engine's pool caches and returns the memory check to compare with later.
func memoryBase(t *testing.T, e *engine.Engine) engine.MemorySnapshot {
	t.Helper()
	_, err := e.Trim()
	require.NoError(t, err)
	return e.MemoryCheck()
}

// requireMemoryBack checks that nothing the engine handed out is still out, and that after a trim the
// engine holds no more device or page-locked memory than at base.
func requireMemoryBack(t *testing.T, e *engine.Engine, base engine.MemorySnapshot) {
	t.Helper()
	require.Equal(t, base.EngineAllocated, e.MemoryCheck().EngineAllocated, "device memory still handed out")
	_, err := e.Trim()
	require.NoError(t, err)
	s := e.MemoryCheck()
	require.Equal(t, base.EngineReserved, s.EngineReserved, "device memory still held from the driver")
	require.Equal(t, base.HostPinned, s.HostPinned, "page-locked host memory still held")
}

// requireIteratorWorks checks that the engine still delivers a correct epoch through a fresh iterator.
func requireIteratorWorks(t *testing.T, e *engine.Engine) {
	t.Helper()
	src, data := randomSource(t, 100)
	it, err := NewIterator(e, src, IteratorOptions{BatchSize: 16, Workers: 2, Prefetch: 3, Staging: StagingGather,
		Timeout: testutil.FaultBound})
	require.NoError(t, err)
	require.Len(t, collectEpoch(t, e, it, data), 7)
	require.NoError(t, it.Close())
}

// faultSource is a source over random data whose function calls hook(i) before it reads sample i.
func faultSource(t *testing.T, n int, hook func(i int) error) (*FuncSource, [][]byte) {
	t.Helper()
	mem, data := randomSource(t, n)
	src, err := NewFuncSource(n, mem.Fields(), func(i int, dst [][]byte) error {
		if err := hook(i); err != nil {
			return err
		}
		return mem.ReadSample(i, dst)
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = src.Close() })
	return src, data
}

// faultChecks runs on any engine: the CPU, a GPU, or the stand-in driver.
func faultChecks(t *testing.T, e *engine.Engine) {
	t.Run("a source error fails its batch and the next batch comes", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			hook func(i int) error
			is   error
			msg  []string
		}{
			{"an error", func(i int) error {
				if i == 37 {
					return errors.New("disk read failed")
				}
				return nil
			}, engine.ErrIO, []string{"disk read failed"}},
			{"an error of the engine's kind keeps it", func(i int) error {
				if i == 37 {
					return fmt.Errorf("%w: bad record header", engine.ErrFormat)
				}
				return nil
			}, engine.ErrFormat, []string{"bad record header"}},
			{"a panic", func(i int) error {
				if i == 37 {
					panic("decoder crashed")
				}
				return nil
			}, engine.ErrIO, []string{"the function panicked: decoder crashed"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				base := memoryBase(t, e)
				src, data := faultSource(t, 100, tc.hook)
				it, err := NewIterator(e, src, IteratorOptions{BatchSize: 16, Workers: 3, Prefetch: 3, Staging: StagingGather,
					Timeout: testutil.FaultBound})
				require.NoError(t, err)
				for epoch := uint64(0); epoch < 2; epoch++ {
					for i := 0; i < 7; i++ {
						b, err := it.Next(context.Background(), 0)
						if i == 2 { // sample 37 is in batch 2 (sequential, 16 a batch)
							require.ErrorIs(t, err, tc.is)
							require.Nil(t, b)
							for _, w := range append([]string{fmt.Sprintf("batch 2 of epoch %d", epoch), "sample 37"}, tc.msg...) {
								require.Contains(t, err.Error(), w)
							}
							continue
						}
						require.NoError(t, err, "batch %d of epoch %d comes after the failed one", i, epoch)
						require.Equal(t, i, b.Index)
						require.Equal(t, expected(it.fields, data, b.Indices), batchContents(t, e, b))
						require.NoError(t, b.Release(0))
					}
					_, err = it.Next(context.Background(), 0)
					require.ErrorIs(t, err, io.EOF)
				}
				require.Equal(t, uint64(12), it.Stats().Batches, "failed batches are not counted as delivered")
				require.NoError(t, it.Close())
				requireMemoryBack(t, e, base)
				requireIteratorWorks(t, e)
			})
		}
	})

	t.Run("a held ring grows instead of waiting, and keeps every batch of an epoch", func(t *testing.T) {
		base := memoryBase(t, e)
		src, data := randomSource(t, 100)
		// A 5-minute Timeout: a Next that waited for a held slot would hang the test.
		it, err := NewIterator(e, src, IteratorOptions{BatchSize: 10, Prefetch: 2, Shuffle: true, Seed: 7, Staging: StagingGather})
		require.NoError(t, err)
		var held []*Batch
		for i := range it.BatchesPerEpoch() {
			b, err := nextWithin(t, it, 0)
			require.NoError(t, err, "batch %d with %d held", i, len(held))
			require.Equal(t, i, b.Index)
			held = append(held, b)
		}
		_, err = nextWithin(t, it, 0)
		require.ErrorIs(t, err, io.EOF)
		seen := map[int]bool{}
		for _, b := range held {
			// Every batch kept its own memory: none was refilled while held.
			require.Equal(t, expected(it.fields, data, b.Indices), batchContents(t, e, b), "batch %d", b.Index)
			for _, i := range b.Indices {
				seen[i] = true
			}
		}
		require.Len(t, seen, 100, "the held batches are the whole epoch")
		it.ring.mu.Lock()
		require.Len(t, it.ring.all, 10, "the ring grew by a slot per batch held beyond its two")
		it.ring.mu.Unlock()
		for _, b := range held {
			require.NoError(t, b.Release(0))
		}
		// The next epoch runs on the slots given back: no more growth.
		for range it.BatchesPerEpoch() {
			b, err := nextWithin(t, it, 0)
			require.NoError(t, err)
			require.Equal(t, expected(it.fields, data, b.Indices), batchContents(t, e, b))
			require.NoError(t, b.Release(0))
		}
		it.ring.mu.Lock()
		require.Len(t, it.ring.all, 10)
		it.ring.mu.Unlock()
		require.NoError(t, it.Close())
		requireMemoryBack(t, e, base)
	})

	t.Run("beyond the pinned budget Next fails at once, names the budget, and takes nothing", func(t *testing.T) {
		base := memoryBase(t, e)
		src, data := randomSource(t, 100)
		// A budget of one slot: two in the ring, one grown, then the limit.
		probe, err := NewIterator(e, src, IteratorOptions{BatchSize: 10, Prefetch: 2, Staging: StagingGather})
		require.NoError(t, err)
		slotBytes := probe.ring.slotBytes
		require.NoError(t, probe.Close())
		it, err := NewIterator(e, src, IteratorOptions{BatchSize: 10, Prefetch: 2, Staging: StagingGather, PinnedBudget: slotBytes})
		require.NoError(t, err)
		var held []*Batch
		for range 3 {
			b, err := nextWithin(t, it, 0)
			require.NoError(t, err)
			held = append(held, b)
		}
		start := time.Now()
		c, err := nextWithin(t, it, 0)
		require.Nil(t, c)
		require.ErrorIs(t, err, engine.ErrLimit)
		require.Less(t, time.Since(start), testutil.FaultBound, "the refusal does not wait")
		for _, w := range []string{"batch 3 of epoch 0", "3 batches of the ring are still held by the caller",
			fmt.Sprintf("another ring slot of %d bytes", slotBytes), fmt.Sprintf("pinned budget (%d bytes beyond its 2 slots)", slotBytes),
			"release batches", "every tensor taken from it is freed"} {
			require.Contains(t, err.Error(), w)
		}
		require.Equal(t, IteratorState{Batch: 3}, it.State(), "a refused Next takes nothing")

		// Batch 0's slot left its lane when the ring grew for batch 2: released, it becomes a spare, which
		// serves batch 3 (whose lane holds batch 1).
		require.NoError(t, held[0].Release(0))
		c, err = nextWithin(t, it, 0)
		require.NoError(t, err, "a released batch lets the iterator go on")
		require.Equal(t, 3, c.Index)
		require.Equal(t, expected(it.fields, data, c.Indices), batchContents(t, e, c))
		for _, b := range []*Batch{held[1], held[2], c} {
			require.NoError(t, b.Release(0))
		}
		for range it.BatchesPerEpoch() - 4 {
			b, err := nextWithin(t, it, 0)
			require.NoError(t, err)
			require.Equal(t, expected(it.fields, data, b.Indices), batchContents(t, e, b))
			require.NoError(t, b.Release(0))
		}
		require.NoError(t, it.Close())

		// A negative budget never grows: the refusal comes with the ring's own slots held.
		it, err = NewIterator(e, src, IteratorOptions{BatchSize: 10, Prefetch: 2, Staging: StagingGather, PinnedBudget: -1})
		require.NoError(t, err)
		held = held[:0]
		for range 2 {
			b, err := nextWithin(t, it, 0)
			require.NoError(t, err)
			held = append(held, b)
		}
		_, err = nextWithin(t, it, 0)
		require.ErrorIs(t, err, engine.ErrLimit)
		require.Contains(t, err.Error(), "2 batches of the ring are still held by the caller")
		for _, b := range held {
			require.NoError(t, b.Release(0))
		}
		require.NoError(t, it.Close())
		requireMemoryBack(t, e, base)
	})

	t.Run("Close frees grown slots, and those held at Close at their release", func(t *testing.T) {
		base := memoryBase(t, e)
		src, _ := randomSource(t, 100)
		it, err := NewIterator(e, src, IteratorOptions{BatchSize: 10, Prefetch: 2, Staging: StagingGather})
		require.NoError(t, err)
		var held []*Batch
		for range 6 {
			b, err := nextWithin(t, it, 0)
			require.NoError(t, err)
			held = append(held, b)
		}
		require.NoError(t, held[4].Release(0)) // a grown slot, spare at Close
		require.NoError(t, it.Close())
		for i, b := range held {
			if i != 4 {
				require.NoError(t, b.Release(0), "a batch held across its iterator's Close")
			}
		}
		require.Eventually(t, func() bool { return e.Holds() == 0 }, testutil.FaultBound, time.Millisecond, "the held slots were freed")
		requireMemoryBack(t, e, base)
		requireIteratorWorks(t, e)
	})

	t.Run("Close wakes a Next that waits for a slow source, with batches held", func(t *testing.T) {
		base := memoryBase(t, e)
		var slow atomic.Bool
		gate := make(chan struct{})
		src, _ := faultSource(t, 100, func(int) error {
			if slow.Load() {
				<-gate
			}
			return nil
		})
		it, err := NewIterator(e, src, IteratorOptions{BatchSize: 10, Prefetch: 2, Workers: 1, Staging: StagingGather}) // 5 min Timeout
		require.NoError(t, err)
		var held []*Batch
		for range 2 {
			b, err := it.Next(context.Background(), 0)
			require.NoError(t, err)
			held = append(held, b)
		}
		slow.Store(true)
		waiting := make(chan error, 1)
		go func() {
			_, err := it.Next(context.Background(), 0)
			waiting <- err
		}()
		time.Sleep(50 * time.Millisecond) // let Next grow the ring and block on the slow read
		closed := make(chan error, 1)
		go func() { closed <- it.Close() }()
		err = testutil.Within(t, testutil.FaultBound, "the waiting Next", func() error { return <-waiting })
		require.ErrorIs(t, err, engine.ErrClosed)
		require.Contains(t, err.Error(), "iterator")
		close(gate) // the sample being read finishes, and Close returns
		require.NoError(t, testutil.Within(t, testutil.FaultBound, "Close with a Next waiting", func() error { return <-closed }))
		// The held batches stayed valid through the Close; their releases free them (on a GPU once the
		// release's event completes, off the releasing goroutine).
		for _, b := range held {
			require.NoError(t, b.Release(0), "a batch held across its iterator's Close")
			err := b.Release(0)
			require.ErrorIs(t, err, engine.ErrInvalidArgument, "a second release")
			require.Contains(t, err.Error(), "already released")
		}
		require.Eventually(t, func() bool { return e.Holds() == 0 }, testutil.FaultBound, time.Millisecond, "the held slots were freed")
		requireMemoryBack(t, e, base)
		requireIteratorWorks(t, e)
	})

	t.Run("Close during gathering waits only for the samples being read", func(t *testing.T) {
		base := memoryBase(t, e)
		gate := make(chan struct{})
		var calls, inFlight atomic.Int64
		src, _ := faultSource(t, 1000, func(int) error {
			calls.Add(1)
			inFlight.Add(1)
			defer inFlight.Add(-1)
			<-gate // a slow read (remote storage, a decoder) that the test lets finish
			return nil
		})
		const workers = 2
		it, err := NewIterator(e, src, IteratorOptions{BatchSize: 64, Workers: workers, Prefetch: 4, Staging: StagingGather})
		require.NoError(t, err)
		require.Eventually(t, func() bool { return inFlight.Load() == workers }, testutil.FaultBound, time.Millisecond,
			"every worker is reading a sample")
		p := it.run
		closed := make(chan error, 1)
		go func() { closed <- it.Close() }()
		require.Eventually(t, func() bool { return stopped(p) }, testutil.FaultBound, time.Millisecond, "Close stops the pipeline")
		select {
		case err := <-closed:
			t.Fatalf("Close returned (%v) while the source was being read", err)
		case <-time.After(20 * time.Millisecond):
		}
		reading := calls.Load()
		close(gate)
		err = testutil.Within(t, testutil.FaultBound, "Close during gathering", func() error { return <-closed })
		require.NoError(t, err)
		require.Zero(t, inFlight.Load())
		// Each worker finishes the sample it reads and stops: a 64-sample batch is 16 samples a task, which
		// a worker that only looked for the stop between tasks would go on reading.
		require.Equal(t, reading, calls.Load(), "samples read after the stop")
		require.NoError(t, src.Close(), "the source closes after its iterator")
		requireMemoryBack(t, e, base)
		requireIteratorWorks(t, e)
	})
}

func TestFaultCPU(t *testing.T) {
	e := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	faultChecks(t, e)
}

// TestFaultFakeDriver injects driver faults (out of memory, copies that do not complete, bad streams)
// through the stand-in driver's switches, in a child process that uses it.
func TestFaultFakeDriver(t *testing.T) {
	out := testutil.RunOnFakeDriver(t, "TestFaultFakeDriverChild", false)
	require.Contains(t, out, "fault checks on the fake driver passed")
}

func TestFaultFakeDriverChild(t *testing.T) {
	testutil.IsolatedChild(t)
	e, err := engine.Open(0, engine.WithSampleInterval(0))
	require.NoError(t, err)
	defer func() { require.NoError(t, e.Close()) }()
	faultChecks(t, e)
	driverFaultChecks(t, e)
	t.Log("fault checks on the fake driver passed")
}

// ringOptions is an iterator over randomSource whose ring is, per slot, two 4 KiB page-locked staging
// buffers and two 4 KiB device buffers (16 samples of 192 B and of 8 B, each rounded to the 4 KiB class).
func ringOptions(timeout time.Duration) IteratorOptions {
	return IteratorOptions{BatchSize: 16, Workers: 2, Prefetch: 3, Staging: StagingGather, Timeout: timeout}
}

// warmPool leaves n blocks of 4 KiB in the device (or host) pool's cache, so that the next n allocations
// of that class do not reach the driver.
func warmPool(t *testing.T, e *engine.Engine, host bool, n int) {
	t.Helper()
	var frees []func()
	for range n {
		if host {
			b, err := e.HostPool().Alloc(4096)
			require.NoError(t, err)
			frees = append(frees, func() { e.HostPool().Free(b) })
		} else {
			b, err := e.DevicePool().Alloc(4096)
			require.NoError(t, err)
			frees = append(frees, func() { e.DevicePool().Free(b) })
		}
	}
	for _, f := range frees {
		f()
	}
}

// driverFaultChecks injects faults through the stand-in driver's switches (see testdata/fakecuda.c).
func driverFaultChecks(t *testing.T, e *engine.Engine) {
	t.Run("device OOM at pool growth", func(t *testing.T) {
		base := memoryBase(t, e)
		warmPool(t, e, false, 1)
		t.Setenv("FAKECUDA_FAIL_ALLOC", "1")
		failures := e.MemoryCheck().EngineAllocFailures
		cached, err := e.DevicePool().Alloc(4096)
		require.NoError(t, err, "a cached block is handed out without the driver")
		_, err = e.DevicePool().Alloc(8192)
		require.ErrorIs(t, err, engine.ErrOutOfMemory)
		require.Contains(t, err.Error(), "cannot allocate 8192 bytes on device 0: cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY (2): out of memory")
		var ce *engine.CUDAError
		require.ErrorAs(t, err, &ce)
		s := e.MemoryCheck()
		require.Equal(t, failures+1, s.EngineAllocFailures)
		require.Equal(t, base.EngineAllocated+4096, s.EngineAllocated, "the failure takes nothing")
		e.DevicePool().Free(cached)
		t.Setenv("FAKECUDA_FAIL_ALLOC", "0")
		grown, err := e.DevicePool().Alloc(8192)
		require.NoError(t, err, "the pool grows again once the driver has memory")
		e.DevicePool().Free(grown)
		requireMemoryBack(t, e, base)
	})

	for _, tc := range []struct {
		name, env string
		host      bool
		msg       string
	}{
		{"device OOM", "FAKECUDA_FAIL_ALLOC", false,
			"cannot allocate 4096 bytes on device 0: cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY (2): out of memory"},
		{"page-locked host OOM", "FAKECUDA_FAIL_HOSTALLOC", true,
			"cannot page-lock 4096 bytes of host memory: cuMemHostAlloc failed: CUDA_ERROR_OUT_OF_MEMORY (2): out of memory"},
	} {
		// cached 3: the first slot's buffers and one of the second's come from the pool, so the failure
		// comes part-way through the ring, with buffers, events and a stream to give back.
		for _, cached := range []int{0, 3} {
			t.Run(fmt.Sprintf("%s at iterator creation, %d blocks cached", tc.name, cached), func(t *testing.T) {
				base := memoryBase(t, e)
				warmPool(t, e, tc.host, cached)
				failures := e.MemoryCheck().EngineAllocFailures
				src, _ := randomSource(t, 100)
				t.Setenv(tc.env, "1")
				it, err := NewIterator(e, src, ringOptions(testutil.FaultBound))
				require.Nil(t, it)
				require.ErrorIs(t, err, engine.ErrOutOfMemory)
				require.Contains(t, err.Error(), "the iterator's ring of 3 batches of 16 samples")
				require.Contains(t, err.Error(), tc.msg)
				s := e.MemoryCheck()
				require.Equal(t, failures+1, s.EngineAllocFailures)
				t.Setenv(tc.env, "0")
				requireMemoryBack(t, e, base)
				requireIteratorWorks(t, e)
			})
		}
	}

	t.Run("Close waits for copies in flight", func(t *testing.T) {
		base := memoryBase(t, e)
		src, data := randomSource(t, 100)
		t.Setenv("FAKECUDA_BUSY_MS", "200")
		created := time.Now()
		it, err := NewIterator(e, src, ringOptions(testutil.FaultBound))
		require.NoError(t, err)
		b, err := it.Next(context.Background(), 0)
		require.NoError(t, err, "Next orders the consumer after the copy; it does not wait for it")
		require.Equal(t, expected(it.fields, data, b.Indices), batchContents(t, e, b))
		require.NoError(t, b.Release(0))
		require.NoError(t, testutil.Within(t, testutil.FaultBound, "Close", it.Close))
		require.GreaterOrEqual(t, time.Since(created), 200*time.Millisecond,
			"Close returned before the copies issued after creation completed")
		requireMemoryBack(t, e, base)
		t.Setenv("FAKECUDA_BUSY_MS", "0")
		requireIteratorWorks(t, e)
	})

	t.Run("copies that never complete time Next and Close out", func(t *testing.T) {
		base := memoryBase(t, e)
		src, _ := randomSource(t, 100)
		t.Setenv("FAKECUDA_BUSY_MS", "-1")
		const timeout = 150 * time.Millisecond
		opts := ringOptions(timeout)
		opts.Prefetch = 2
		it, err := NewIterator(e, src, opts)
		require.NoError(t, err)
		for range 2 { // the first two were copied into fresh buffers
			b, err := it.Next(context.Background(), 0)
			require.NoError(t, err)
			require.NoError(t, b.Release(0))
		}
		// The third reuses the first slot, whose copy never completes: the producer gives up on it (or
		// Next's own Timeout comes first; both are the same bound).
		b, err := nextWithin(t, it, 0)
		require.Nil(t, b)
		require.ErrorIs(t, err, engine.ErrTimeout)
		require.Contains(t, err.Error(), "within 150ms")
		start := time.Now()
		err = testutil.Within(t, testutil.FaultBound, "Close", it.Close)
		require.ErrorIs(t, err, engine.ErrTimeout)
		require.Contains(t, err.Error(), "copies in flight did not complete within 150ms")
		require.GreaterOrEqual(t, time.Since(start), timeout, "Close waits for the Timeout")
		require.ErrorIs(t, it.Close(), engine.ErrClosed)
		requireMemoryBack(t, e, base)
		t.Setenv("FAKECUDA_BUSY_MS", "0")
		requireIteratorWorks(t, e)
	})

	t.Run("a restore while copies are in flight keeps the position", func(t *testing.T) {
		base := memoryBase(t, e)
		src, data := randomSource(t, 100)
		t.Setenv("FAKECUDA_BUSY_MS", "-1")
		it, err := NewIterator(e, src, ringOptions(time.Second))
		require.NoError(t, err)
		b, err := it.Next(context.Background(), 0)
		require.NoError(t, err)
		require.NoError(t, b.Release(0))
		err = testutil.Within(t, testutil.FaultBound, "Restore", func() error { return it.Restore(IteratorState{Epoch: 3}) })
		require.ErrorIs(t, err, engine.ErrTimeout)
		require.Contains(t, err.Error(), "restore not done")
		require.Contains(t, err.Error(), "copies in flight did not complete within 1s")
		require.Equal(t, IteratorState{Batch: 1}, it.State(), "a failed restore moves nothing")
		t.Setenv("FAKECUDA_BUSY_MS", "0")
		b, err = nextWithin(t, it, 0)
		require.NoError(t, err, "the iterator runs on after the failed restore")
		require.Equal(t, uint64(0), b.Epoch)
		require.Equal(t, 1, b.Index)
		require.Equal(t, expected(it.fields, data, b.Indices), batchContents(t, e, b))
		require.NoError(t, b.Release(0))
		require.NoError(t, it.Restore(IteratorState{Epoch: 3}))
		b, err = it.Next(context.Background(), 0)
		require.NoError(t, err)
		require.Equal(t, uint64(3), b.Epoch)
		require.NoError(t, b.Release(0))
		require.NoError(t, it.Close())
		requireMemoryBack(t, e, base)
	})

	t.Run("a bad consumer stream is refused and loses nothing", func(t *testing.T) {
		t.Setenv("FAKECUDA_STRICT_STREAMS", "1")
		live, err := e.Context().StreamCreate()
		require.NoError(t, err)
		defer func() { require.NoError(t, e.Context().StreamDestroy(live)) }()
		dead, err := e.Context().StreamCreate()
		require.NoError(t, err)
		require.NoError(t, e.Context().StreamDestroy(dead))
		for _, bad := range []struct {
			name   string
			stream Stream
		}{{"made up", 0xdead}, {"destroyed", dead}} {
			t.Run(bad.name, func(t *testing.T) {
				base := memoryBase(t, e)
				src, data := randomSource(t, 100)
				it, err := NewIterator(e, src, ringOptions(testutil.FaultBound))
				require.NoError(t, err)
				requireInvalidHandle := func(err error, words ...string) {
					t.Helper()
					var ce *engine.CUDAError
					require.ErrorAs(t, err, &ce)
					require.Equal(t, "CUDA_ERROR_INVALID_HANDLE", ce.Name)
					for _, w := range words {
						require.Contains(t, err.Error(), w)
					}
				}
				b, err := it.Next(context.Background(), bad.stream)
				require.Nil(t, b)
				requireInvalidHandle(err, fmt.Sprintf("batch 0 of epoch 0: making consumer stream %#x wait for its copy", uintptr(bad.stream)))
				b, err = it.Next(context.Background(), live)
				require.NoError(t, err)
				require.Equal(t, 0, b.Index, "the refused batch is still the next one")
				require.Equal(t, expected(it.fields, data, b.Indices), batchContents(t, e, b))
				requireInvalidHandle(b.Wait(bad.stream), "cuStreamWaitEvent")
				require.NoError(t, b.Wait(live))
				requireInvalidHandle(b.Release(bad.stream), fmt.Sprintf("releasing batch 0 of epoch 0 on stream %#x", uintptr(bad.stream)),
					"could not be ordered", "cuEventRecord")
				require.ErrorIs(t, b.Release(live), engine.ErrInvalidArgument, "the batch was released all the same")
				for i := 1; i < 7; i++ {
					b, err := it.Next(context.Background(), live)
					require.NoError(t, err)
					require.Equal(t, i, b.Index)
					require.Equal(t, expected(it.fields, data, b.Indices), batchContents(t, e, b))
					require.NoError(t, b.Release(live))
				}
				require.NoError(t, it.Close())
				requireMemoryBack(t, e, base)
			})
		}
		requireIteratorWorks(t, e)
	})
}
