package engine

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ferry-ml/ferry/engine/internal/testutil"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func openCPU(t *testing.T, opts ...Option) *Engine {
	t.Helper()
	e, err := Open(CPU, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = e.Close() })
	return e
}

func TestCPUEngineSnapshot(t *testing.T) {
	before := MonotonicNow()
	e := openCPU(t)
	s := e.MemoryCheck()

	require.Equal(t, CPU, s.Device)
	require.Equal(t, CPU, e.Device())
	require.False(t, s.DeviceValid, "a CPU engine has no device figures")
	require.False(t, s.ProcessValid)
	require.True(t, s.HostValid)
	require.False(t, s.Live)
	require.Zero(t, s.DeviceTotal)
	require.GreaterOrEqual(t, s.Sequence, uint64(1))
	require.GreaterOrEqual(t, s.Timestamp, before)
	require.Equal(t, s.Timestamp, s.SampleTimestamp)
	require.Less(t, s.Age, time.Second)

	total := testutil.MemTotalFromProc(t)
	require.InDelta(t, float64(total), float64(s.HostTotal), float64(total)/100, "host total vs /proc/meminfo")
	require.Positive(t, s.HostAvailable)
	require.LessOrEqual(t, s.HostAvailable, s.HostTotal)
}

func TestCPUEngineLive(t *testing.T) {
	e := openCPU(t, WithSampleInterval(0))
	sampled := e.MemoryCheck()
	live, err := e.MemoryCheckLive()
	require.NoError(t, err)
	require.True(t, live.Live)
	require.True(t, live.HostValid)
	require.GreaterOrEqual(t, live.Timestamp, sampled.Timestamp)
	require.Equal(t, live.Timestamp, live.SampleTimestamp, "the CPU engine queries the host now")
	require.Equal(t, sampled.Sequence, live.Sequence, "a live check publishes nothing")
}

func TestOpenRejectsBadOptions(t *testing.T) {
	for _, tc := range []struct {
		name   string
		device int
		opts   []Option
		want   string
	}{
		{"device below CPU", -2, nil, "device -2"},
		{"interval too short", CPU, []Option{WithSampleInterval(500 * time.Microsecond)}, "sample interval"},
		{"interval too long", CPU, []Option{WithSampleInterval(2 * time.Minute)}, "sample interval"},
		{"negative interval", CPU, []Option{WithSampleInterval(-time.Second)}, "sample interval"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := Open(tc.device, tc.opts...)
			require.Nil(t, e)
			require.ErrorIs(t, err, ErrInvalidArgument)
			require.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestSamplerRefreshes(t *testing.T) {
	e := openCPU(t, WithSampleInterval(5*time.Millisecond))
	first := e.MemoryCheck().Sequence
	require.Eventually(t, func() bool { return e.MemoryCheck().Sequence >= first+3 },
		5*time.Second, 5*time.Millisecond, "the sampler should publish every 5 ms")
	s := e.MemoryCheck()
	require.Less(t, s.Age, time.Second)
}

func TestSamplerOffAndSampleNow(t *testing.T) {
	e := openCPU(t, WithSampleInterval(0))
	first := e.MemoryCheck()
	time.Sleep(20 * time.Millisecond)
	require.Equal(t, first.Sequence, e.MemoryCheck().Sequence, "no sampler: the snapshot must not change")
	require.GreaterOrEqual(t, e.MemoryCheck().Age, 20*time.Millisecond)

	require.NoError(t, e.SampleNow())
	second := e.MemoryCheck()
	require.Equal(t, first.Sequence+1, second.Sequence)
	require.Greater(t, second.Timestamp, first.Timestamp)
}

func TestAccountingIsExactInTheSnapshot(t *testing.T) {
	e := openCPU(t, WithSampleInterval(0))
	a := e.Accounting()

	a.Reserve(64 << 20)
	a.Allocate(10 << 20)
	a.Allocate(30 << 20)
	a.Free(10 << 20)
	a.Failure()
	a.Pin(8 << 20)

	s := e.MemoryCheck()
	require.Equal(t, uint64(64<<20), s.EngineReserved)
	require.Equal(t, uint64(30<<20), s.EngineAllocated)
	require.Equal(t, uint64(40<<20), s.EnginePeak, "peak is the high-water mark of allocated")
	require.Equal(t, uint64(2), s.EngineAllocCount)
	require.Equal(t, uint64(1), s.EngineAllocFailures)
	require.Equal(t, uint64(8<<20), s.HostPinned)

	a.Free(30 << 20)
	a.Unreserve(64 << 20)
	a.Unpin(8 << 20)
	a.Free(1) // unbalanced: clamps at zero instead of wrapping
	s = e.MemoryCheck()
	require.Zero(t, s.EngineAllocated)
	require.Zero(t, s.EngineReserved)
	require.Zero(t, s.HostPinned)
	require.Equal(t, uint64(40<<20), s.EnginePeak)
}

func TestAccountingConcurrent(t *testing.T) {
	e := openCPU(t, WithSampleInterval(time.Millisecond))
	a := e.Accounting()
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				a.Allocate(4096)
				_ = e.MemoryCheck()
				a.Free(4096)
			}
		}()
	}
	wg.Wait()
	s := e.MemoryCheck()
	require.Zero(t, s.EngineAllocated)
	require.Equal(t, uint64(8000), s.EngineAllocCount)
	require.LessOrEqual(t, s.EnginePeak, uint64(8*4096))
	require.GreaterOrEqual(t, s.EnginePeak, uint64(4096))
}

func TestOnSnapshotListener(t *testing.T) {
	e, err := Open(CPU, WithSampleInterval(2*time.Millisecond))
	require.NoError(t, err)
	var mu sync.Mutex
	var seqs []uint64
	e.OnSnapshot(func(s *MemorySnapshot) {
		mu.Lock()
		seqs = append(seqs, s.Sequence)
		mu.Unlock()
	})
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(seqs) >= 4 },
		5*time.Second, 2*time.Millisecond)
	require.NoError(t, e.Close())
	mu.Lock()
	n := len(seqs)
	for i := 1; i < n; i++ {
		require.Equal(t, seqs[i-1]+1, seqs[i], "the listener sees every snapshot, in order")
	}
	mu.Unlock()
	time.Sleep(10 * time.Millisecond)
	mu.Lock()
	require.Equal(t, n, len(seqs), "no listener call after Close")
	mu.Unlock()
}

func TestCloseTwiceAndUseAfterClose(t *testing.T) {
	e, err := Open(CPU)
	require.NoError(t, err)
	require.NoError(t, e.Close())
	require.ErrorIs(t, e.Close(), ErrClosed)
	_, err = e.MemoryCheckLive()
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, e.SampleNow(), ErrClosed)
	// The last snapshot stays readable.
	require.True(t, e.MemoryCheck().HostValid)
}

func TestNoDriver(t *testing.T) {
	out := testutil.RunIsolated(t, "TestNoDriverChild", "FERRY_CUDA_LIBRARY=/nonexistent/libcuda.so.1",
		"FERRY_NVML_LIBRARY=/nonexistent/libnvidia-ml.so.1")
	require.Contains(t, out, "no-driver checks passed")
}

func TestNoDriverChild(t *testing.T) {
	testutil.IsolatedChild(t)
	n, err := DeviceCount()
	require.NoError(t, err)
	require.Zero(t, n)

	devs, err := Devices()
	require.NoError(t, err)
	require.Empty(t, devs)

	_, err = Device(0)
	require.ErrorIs(t, err, ErrNoDevice)

	e, err := Open(0)
	require.Nil(t, e)
	require.ErrorIs(t, err, ErrNoDevice)
	require.Contains(t, err.Error(), "/nonexistent/libcuda.so.1", "the message names the missing library")

	s, err := System()
	require.NoError(t, err)
	require.False(t, s.CUDAAvailable())
	require.False(t, s.NVMLAvailable())
	require.Contains(t, s.CUDAError, "libcuda.so.1")
	require.Contains(t, s.NVMLError, "libnvidia-ml.so.1")
	require.Zero(t, s.DeviceCount)

	cpu := openCPU(t)
	require.True(t, cpu.MemoryCheck().HostValid, "the CPU engine works without a driver")
	t.Log("no-driver checks passed")
}

func TestFormatUUID(t *testing.T) {
	u := [16]byte{0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0xa0, 0xb1, 0xc2, 0xd3, 0xe4, 0xf5}
	require.Equal(t, "GPU-deadbeef-0102-0304-0506-a0b1c2d3e4f5", formatUUID(u))
}

func TestErrorsAreDistinct(t *testing.T) {
	all := []error{ErrInvalidArgument, ErrNoDevice, ErrNVML, ErrClosed, ErrOutOfMemory, ErrUnsupported, ErrIO,
		ErrFormat, ErrTimeout, ErrLimit}
	for i, a := range all {
		for j, b := range all {
			require.Equal(t, i == j, errors.Is(a, b), "%v vs %v", a, b)
		}
	}
}

func TestMonotonicNowIsClockGettime(t *testing.T) {
	for i := 0; i < 100; i++ {
		var before, after unix.Timespec
		require.NoError(t, unix.ClockGettime(unix.CLOCK_MONOTONIC, &before))
		ours := MonotonicNow()
		require.NoError(t, unix.ClockGettime(unix.CLOCK_MONOTONIC, &after))
		require.GreaterOrEqual(t, ours, uint64(before.Nano()), "MonotonicNow is CLOCK_MONOTONIC")
		require.LessOrEqual(t, ours, uint64(after.Nano()), "MonotonicNow is CLOCK_MONOTONIC")
	}
}
