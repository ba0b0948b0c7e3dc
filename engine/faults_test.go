package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
)

// Fault injection: each case makes one thing fail (a source, the driver, NVML, the network) and checks
// that the failure comes back as a clear error, that nothing waits without bound, that the engine's
// memory returns to where it was, and that the engine still works afterwards. The cases that need a
// failing driver or NVML run in a child process on the stand-in libraries (testdata/fakecuda.c,
// testdata/fakenvml.c), whose environment switches inject the faults.

// faultBound is the longest any call under a fault may take before the test calls it a hang.
const faultBound = 10 * time.Second

// within runs fn and fails the test if it does not return within d.
func within[T any](t *testing.T, d time.Duration, what string, fn func() T) T {
	t.Helper()
	done := make(chan T, 1)
	go func() { done <- fn() }()
	select {
	case v := <-done:
		return v
	case <-time.After(d):
		t.Fatalf("%s did not return within %v", what, d)
	}
	var zero T
	return zero
}

// nextWithin calls Next on stream and fails the test if it does not return within faultBound.
func nextWithin(t *testing.T, it *Iterator, stream Stream) (*Batch, error) {
	t.Helper()
	type result struct {
		b   *Batch
		err error
	}
	r := within(t, faultBound, "Next", func() result {
		b, err := it.Next(context.Background(), stream)
		return result{b, err}
	})
	return r.b, r.err
}

// memoryBase empties the engine's pool caches and returns the memory check to compare with later.
func memoryBase(t *testing.T, e *Engine) MemorySnapshot {
	t.Helper()
	_, err := e.Trim()
	require.NoError(t, err)
	return e.MemoryCheck()
}

// requireMemoryBack checks that nothing the engine handed out is still out, and that after a trim the
// engine holds no more device or page-locked memory than at base.
func requireMemoryBack(t *testing.T, e *Engine, base MemorySnapshot) {
	t.Helper()
	require.Equal(t, base.EngineAllocated, e.MemoryCheck().EngineAllocated, "device memory still handed out")
	_, err := e.Trim()
	require.NoError(t, err)
	s := e.MemoryCheck()
	require.Equal(t, base.EngineReserved, s.EngineReserved, "device memory still held from the driver")
	require.Equal(t, base.HostPinned, s.HostPinned, "page-locked host memory still held")
}

// requireIteratorWorks checks that the engine still delivers a correct epoch through a fresh iterator.
func requireIteratorWorks(t *testing.T, e *Engine) {
	t.Helper()
	src, data := randomSource(t, 100)
	it, err := e.NewIterator(src, IteratorOptions{BatchSize: 16, Workers: 2, Prefetch: 3, Staging: StagingGather,
		Timeout: faultBound})
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
func faultChecks(t *testing.T, e *Engine) {
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
			}, ErrIO, []string{"disk read failed"}},
			{"an error of the engine's kind keeps it", func(i int) error {
				if i == 37 {
					return fmt.Errorf("%w: bad record header", ErrFormat)
				}
				return nil
			}, ErrFormat, []string{"bad record header"}},
			{"a panic", func(i int) error {
				if i == 37 {
					panic("decoder crashed")
				}
				return nil
			}, ErrIO, []string{"the function panicked: decoder crashed"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				base := memoryBase(t, e)
				src, data := faultSource(t, 100, tc.hook)
				it, err := e.NewIterator(src, IteratorOptions{BatchSize: 16, Workers: 3, Prefetch: 3, Staging: StagingGather,
					Timeout: faultBound})
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

	t.Run("an unreleased ring times Next out with a clear message", func(t *testing.T) {
		base := memoryBase(t, e)
		src, data := randomSource(t, 100)
		it, err := e.NewIterator(src, IteratorOptions{BatchSize: 10, Prefetch: 2, Timeout: 100 * time.Millisecond,
			Staging: StagingGather})
		require.NoError(t, err)
		a, err := it.Next(context.Background(), 0)
		require.NoError(t, err)
		b, err := it.Next(context.Background(), 0)
		require.NoError(t, err)
		start := time.Now()
		c, err := nextWithin(t, it, 0)
		require.Nil(t, c)
		require.ErrorIs(t, err, ErrTimeout)
		require.GreaterOrEqual(t, time.Since(start), 100*time.Millisecond, "Next waits for the Timeout")
		for _, w := range []string{"batch 2 of epoch 0 was not ready within 100ms", "holds 2 unreleased batches of the 2",
			"release batches"} {
			require.Contains(t, err.Error(), w)
		}
		require.Equal(t, IteratorState{Batch: 2}, it.State(), "a timed-out Next takes nothing")

		require.NoError(t, a.Release(0))
		c, err = it.Next(context.Background(), 0)
		require.NoError(t, err, "releasing a batch lets the iterator go on")
		require.Equal(t, 2, c.Index)
		require.Equal(t, expected(it.fields, data, c.Indices), batchContents(t, e, c))
		require.NoError(t, b.Release(0))
		require.NoError(t, c.Release(0))
		for i := 3; i < 10; i++ {
			d, err := it.Next(context.Background(), 0)
			require.NoError(t, err)
			require.Equal(t, i, d.Index)
			require.NoError(t, d.Release(0))
		}
		require.NoError(t, it.Close())
		requireMemoryBack(t, e, base)
	})

	t.Run("Close wakes a Next that waits for a held ring", func(t *testing.T) {
		base := memoryBase(t, e)
		src, _ := randomSource(t, 100)
		it, err := e.NewIterator(src, IteratorOptions{BatchSize: 10, Prefetch: 2, Staging: StagingGather}) // 5 min Timeout
		require.NoError(t, err)
		var held []*Batch
		for range 2 {
			b, err := it.Next(context.Background(), 0)
			require.NoError(t, err)
			held = append(held, b)
		}
		waiting := make(chan error, 1)
		go func() {
			_, err := it.Next(context.Background(), 0)
			waiting <- err
		}()
		time.Sleep(50 * time.Millisecond) // let Next block on the ring
		require.NoError(t, within(t, faultBound, "Close with a Next waiting", it.Close))
		err = within(t, faultBound, "the waiting Next", func() error { return <-waiting })
		require.ErrorIs(t, err, ErrClosed)
		require.Contains(t, err.Error(), "iterator")
		for _, b := range held {
			err := b.Release(0)
			require.ErrorIs(t, err, ErrInvalidArgument, "a batch of a closed iterator")
			require.Contains(t, err.Error(), "iterator was closed")
		}
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
		it, err := e.NewIterator(src, IteratorOptions{BatchSize: 64, Workers: workers, Prefetch: 4, Staging: StagingGather})
		require.NoError(t, err)
		require.Eventually(t, func() bool { return inFlight.Load() == workers }, faultBound, time.Millisecond,
			"every worker is reading a sample")
		p := it.run
		closed := make(chan error, 1)
		go func() { closed <- it.Close() }()
		require.Eventually(t, func() bool { return stopped(p) }, faultBound, time.Millisecond, "Close stops the pipeline")
		select {
		case err := <-closed:
			t.Fatalf("Close returned (%v) while the source was being read", err)
		case <-time.After(20 * time.Millisecond):
		}
		reading := calls.Load()
		close(gate)
		err = within(t, faultBound, "Close during gathering", func() error { return <-closed })
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
	e := openCPU(t, WithSampleInterval(0))
	faultChecks(t, e)
}

// TestFaultFakeDriver injects driver faults (out of memory, copies that do not complete, bad streams)
// through the stand-in driver's switches, in a child process that uses it.
func TestFaultFakeDriver(t *testing.T) {
	out := runIsolated(t, "TestFaultFakeDriverChild", "FERRY_CUDA_LIBRARY="+buildFakeDriver(t),
		"FERRY_NVML_LIBRARY=/nonexistent/libnvidia-ml.so.1")
	require.Contains(t, out, "fault checks on the fake driver passed")
}

func TestFaultFakeDriverChild(t *testing.T) {
	isolatedChild(t)
	e, err := Open(0, WithSampleInterval(0))
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
func warmPool(t *testing.T, e *Engine, host bool, n int) {
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
func driverFaultChecks(t *testing.T, e *Engine) {
	t.Run("device OOM at pool growth", func(t *testing.T) {
		base := memoryBase(t, e)
		warmPool(t, e, false, 1)
		t.Setenv("FAKECUDA_FAIL_ALLOC", "1")
		failures := e.MemoryCheck().EngineAllocFailures
		cached, err := e.DevicePool().Alloc(4096)
		require.NoError(t, err, "a cached block is handed out without the driver")
		_, err = e.DevicePool().Alloc(8192)
		require.ErrorIs(t, err, ErrOutOfMemory)
		require.Contains(t, err.Error(), "cannot allocate 8192 bytes on device 0: cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY (2): out of memory")
		var ce *CUDAError
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
				it, err := e.NewIterator(src, ringOptions(faultBound))
				require.Nil(t, it)
				require.ErrorIs(t, err, ErrOutOfMemory)
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
		it, err := e.NewIterator(src, ringOptions(faultBound))
		require.NoError(t, err)
		b, err := it.Next(context.Background(), 0)
		require.NoError(t, err, "Next orders the consumer after the copy; it does not wait for it")
		require.Equal(t, expected(it.fields, data, b.Indices), batchContents(t, e, b))
		require.NoError(t, b.Release(0))
		require.NoError(t, within(t, faultBound, "Close", it.Close))
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
		it, err := e.NewIterator(src, opts)
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
		require.ErrorIs(t, err, ErrTimeout)
		require.Contains(t, err.Error(), "within 150ms")
		start := time.Now()
		err = within(t, faultBound, "Close", it.Close)
		require.ErrorIs(t, err, ErrTimeout)
		require.Contains(t, err.Error(), "copies in flight did not complete within 150ms")
		require.GreaterOrEqual(t, time.Since(start), timeout, "Close waits for the Timeout")
		require.ErrorIs(t, it.Close(), ErrClosed)
		requireMemoryBack(t, e, base)
		t.Setenv("FAKECUDA_BUSY_MS", "0")
		requireIteratorWorks(t, e)
	})

	t.Run("a restore while copies are in flight keeps the position", func(t *testing.T) {
		base := memoryBase(t, e)
		src, data := randomSource(t, 100)
		t.Setenv("FAKECUDA_BUSY_MS", "-1")
		it, err := e.NewIterator(src, ringOptions(time.Second))
		require.NoError(t, err)
		b, err := it.Next(context.Background(), 0)
		require.NoError(t, err)
		require.NoError(t, b.Release(0))
		err = within(t, faultBound, "Restore", func() error { return it.Restore(IteratorState{Epoch: 3}) })
		require.ErrorIs(t, err, ErrTimeout)
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
		live, err := e.ctx.StreamCreate()
		require.NoError(t, err)
		defer func() { require.NoError(t, e.ctx.StreamDestroy(live)) }()
		dead, err := e.ctx.StreamCreate()
		require.NoError(t, err)
		require.NoError(t, e.ctx.StreamDestroy(dead))
		for _, bad := range []struct {
			name   string
			stream Stream
		}{{"made up", 0xdead}, {"destroyed", dead}} {
			t.Run(bad.name, func(t *testing.T) {
				base := memoryBase(t, e)
				src, data := randomSource(t, 100)
				it, err := e.NewIterator(src, ringOptions(faultBound))
				require.NoError(t, err)
				requireInvalidHandle := func(err error, words ...string) {
					t.Helper()
					var ce *CUDAError
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
				require.ErrorIs(t, b.Release(live), ErrInvalidArgument, "the batch was released all the same")
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

// syncBuffer is a log destination that several goroutines write.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestFaultNVML makes NVML fail mid-sampling: the stand-in answers its first 12 device calls and fails
// every later one with NVML_ERROR_GPU_IS_LOST.
func TestFaultNVML(t *testing.T) {
	out := runIsolated(t, "TestFaultNVMLChild", "FERRY_CUDA_LIBRARY="+buildFakeDriver(t),
		"FERRY_NVML_LIBRARY="+buildFake(t, "fakenvml.c", "libnvidia-ml.so.1"), "FAKENVML_FAIL_AFTER=12")
	require.Contains(t, out, "NVML fault checks passed")
}

func TestFaultNVMLChild(t *testing.T) {
	isolatedChild(t)
	var logs syncBuffer
	logger := zerolog.New(&logs).Level(zerolog.DebugLevel)
	m, err := NewMonitor(MonitorOptions{GPUInterval: MinSampleInterval, PCIeInterval: -1, SystemInterval: -1,
		Logger: &logger})
	require.NoError(t, err)
	require.NoError(t, m.Start())
	// Twelve calls: the handle lookup, the first sample's nine queries (with the slow fields), and the
	// second sample's utilization and memory queries; its temperature query is the first to fail.
	require.Eventually(t, func() bool { return strings.Count(logs.String(), `"GPU sample failed"`) >= 3 },
		faultBound, time.Millisecond, "the sampler keeps sampling after the failure:\n%s", logs.String())
	require.True(t, m.Sampling())

	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	var warnings []string
	for _, l := range lines {
		if strings.Contains(l, `"level":"warn"`) {
			warnings = append(warnings, l)
		}
	}
	require.Len(t, warnings, 1, "one warning when the sampler starts failing, not one a sample:\n%s", logs.String())
	for _, w := range []string{`"gpu":0`, "GPU sample failed", "left out", "nvmlDeviceGetTemperature failed: GPU is lost (15)"} {
		require.Contains(t, warnings[0], w)
	}

	count := func(name string) uint64 {
		id, err := m.Metric(name)
		require.NoError(t, err)
		s, err := m.Summary(id)
		require.NoError(t, err)
		return s.Count
	}
	want := map[string]float64{
		"gpu0/utilization_percent": 37, "gpu0/memory_utilization_percent": 12, "gpu0/memory_used_bytes": float64(80<<30 - 70<<30 - 512<<20),
		"gpu0/memory_total_bytes": 80 << 30, "gpu0/temperature_celsius": 55, "gpu0/power_watts": 123.456,
		"gpu0/sm_clock_mhz": 1980, "gpu0/memory_clock_mhz": 2619, "gpu0/processes": 1, "gpu0/process_memory_bytes": 1 << 30,
	}
	for _, name := range m.Names() {
		if !strings.HasPrefix(name, "gpu0/") {
			continue
		}
		v, ok := want[name]
		require.True(t, ok, "unexpected metric %s", name)
		id, err := m.Metric(name)
		require.NoError(t, err)
		s, err := m.Summary(id)
		require.NoError(t, err)
		require.Equal(t, v, s.Min, "%s: a failed query is absent, never zero", name)
		require.Equal(t, v, s.Max, name)
	}
	// The sample cut short by the failure still gave the fields read before it.
	require.Equal(t, uint64(2), count("gpu0/utilization_percent"))
	require.Equal(t, uint64(2), count("gpu0/memory_used_bytes"))
	require.Equal(t, uint64(1), count("gpu0/temperature_celsius"))
	require.Equal(t, uint64(1), count("gpu0/processes"))

	// The monitor still records what the program logs.
	id, err := m.Metric("loss")
	require.NoError(t, err)
	require.NoError(t, m.Log(id, 0.5))
	s, err := m.Summary(id)
	require.NoError(t, err)
	require.Equal(t, uint64(1), s.Count)
	require.NoError(t, within(t, faultBound, "Monitor.Close", m.Close))
	t.Log("NVML fault checks passed")
}

// TestFaultSystemSamplerPathRemoved removes a disk path the system sampler reads, mid-run: the path's
// fields stop, the host's go on, and the failure is logged once as a warning.
func TestFaultSystemSamplerPathRemoved(t *testing.T) {
	dir := t.TempDir() + "/data"
	require.NoError(t, os.Mkdir(dir, 0o755))
	var logs syncBuffer
	logger := zerolog.New(&logs).Level(zerolog.DebugLevel)
	m, err := NewMonitor(MonitorOptions{GPUInterval: -1, SystemInterval: MinSampleInterval, DiskPaths: []string{dir},
		Logger: &logger})
	require.NoError(t, err)
	defer m.Close()
	count := func(name string) uint64 {
		id, err := m.Metric(name)
		require.NoError(t, err)
		s, err := m.Summary(id)
		require.NoError(t, err)
		return s.Count
	}
	disk := "disk/" + metricPathName(dir) + "/used_percent"
	require.NoError(t, m.Start())
	require.Eventually(t, func() bool { return count(disk) >= 2 }, faultBound, time.Millisecond)
	require.NoError(t, os.Remove(dir))
	require.Eventually(t, func() bool { return strings.Count(logs.String(), `"system sample failed"`) >= 3 },
		faultBound, time.Millisecond, "the sampler keeps sampling after the failure:\n%s", logs.String())
	require.NoError(t, m.Stop())
	warnings := strings.Count(logs.String(), `"level":"warn"`)
	require.Equal(t, 1, warnings, "one warning when the sampler starts failing:\n%s", logs.String())
	require.Contains(t, logs.String(), dir+`\": no such file or directory`)
	// Samples after the failure still gave the host's fields, and not the removed path's.
	memory, usage := count("system/memory_used_bytes"), count(disk)
	require.Greater(t, memory, usage+2, "host fields are logged while the path fails")
	require.NoError(t, m.Close())
}

func TestFaultPrometheusPortInUse(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	port := taken.Addr().(*net.TCPAddr).Port
	m := quietMonitor(t, MonitorOptions{})
	for _, addr := range []string{taken.Addr().String(), fmt.Sprintf("127.0.0.1:+%d", port)} {
		t.Run(addr, func(t *testing.T) {
			got, shutdown, err := m.ServePrometheus(addr)
			require.Nil(t, got)
			require.Nil(t, shutdown)
			require.ErrorIs(t, err, ErrIO)
			require.Contains(t, err.Error(), "prometheus endpoint: cannot listen on "+taken.Addr().String())
			require.Contains(t, err.Error(), "address already in use")
		})
	}
	// The monitor still works, and serves on a free port.
	logValues(t, m, "loss", 3, 1, 2)
	id, err := m.Metric("loss")
	require.NoError(t, err)
	s, err := m.Summary(id)
	require.NoError(t, err)
	require.Equal(t, uint64(3), s.Count)
	body, err := scrape(servePrometheus(t, m))
	require.NoError(t, err)
	require.Contains(t, body, "ferry_loss{")
}
