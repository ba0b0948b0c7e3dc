package monitor

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-ml/ferry/engine/internal/testutil"

	"github.com/ferry-ml/ferry/engine"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func newSystemSampler(t testing.TB, paths ...string) *SystemSampler {
	t.Helper()
	s, err := NewSystemSampler(paths)
	require.NoError(t, err)
	return s
}

func TestSystemSamplerValues(t *testing.T) {
	dir := t.TempDir()
	s := newSystemSampler(t, dir)

	before := engine.MonotonicNow()
	smp, err := s.Sample()
	require.NoError(t, err)
	require.GreaterOrEqual(t, smp.Time, before)
	require.LessOrEqual(t, smp.Time, engine.MonotonicNow())

	require.True(t, smp.Has(SysProcessRSS))
	require.Greater(t, smp.ProcessRSS, uint64(0))

	require.True(t, smp.Has(SysMemoryTotal|SysMemoryUsed|SysMemoryPercent))
	want := testutil.MemTotalFromProc(t)
	require.InDelta(t, float64(want), float64(smp.MemoryTotal), float64(want)/100)
	require.LessOrEqual(t, smp.MemoryUsed, smp.MemoryTotal)
	require.GreaterOrEqual(t, smp.MemoryPercent, 0.0)
	require.LessOrEqual(t, smp.MemoryPercent, 100.0)

	require.True(t, smp.Has(SysLoad1|SysLoad5|SysLoad15))
	require.GreaterOrEqual(t, smp.Load1, 0.0)
	require.GreaterOrEqual(t, smp.Load5, 0.0)
	require.GreaterOrEqual(t, smp.Load15, 0.0)

	require.Len(t, smp.Disks, 1)
	d := smp.Disks[0]
	require.Equal(t, dir, d.Path)
	require.True(t, d.Has(DiskTotal|DiskUsed|DiskUsedPercent))
	require.Greater(t, d.Total, uint64(0))
	require.LessOrEqual(t, d.Used, d.Total)
	require.GreaterOrEqual(t, d.UsedPercent, 0.0)
	require.LessOrEqual(t, d.UsedPercent, 100.0)

	var st unix.Statfs_t
	require.NoError(t, unix.Statfs(dir, &st))
	total := float64(st.Blocks) * float64(st.Bsize)
	used := float64(st.Blocks-st.Bfree) * float64(st.Bsize)
	require.InDelta(t, total, float64(d.Total), total/100)
	require.InDelta(t, used, float64(d.Used), total/100)
	t.Logf("path %s on device %q", dir, d.Device)
}

func TestSystemSamplerRatesNeedTwoSamples(t *testing.T) {
	s := newSystemSampler(t, t.TempDir())
	first, err := s.Sample()
	require.NoError(t, err)
	require.False(t, first.Has(SysCPUPercent), "first sample must have no machine CPU rate")
	require.False(t, first.Has(SysProcessCPUPercent), "first sample must have no process CPU rate")
	require.False(t, first.Disks[0].Has(DiskReadRate))
	require.False(t, first.Disks[0].Has(DiskWriteRate))

	time.Sleep(200 * time.Millisecond) // well over a clock tick, so the kernel's CPU counters move
	second, err := s.Sample()
	require.NoError(t, err)
	require.Greater(t, second.Time, first.Time)
	require.True(t, second.Has(SysCPUPercent), "second sample must have the machine CPU rate")
	require.True(t, second.Has(SysProcessCPUPercent), "second sample must have the process CPU rate")
	require.GreaterOrEqual(t, second.CPUPercent, 0.0)
	require.LessOrEqual(t, second.CPUPercent, 100.0)
	require.GreaterOrEqual(t, second.ProcessCPUPercent, 0.0)
	if second.Disks[0].Device != "" {
		require.True(t, second.Disks[0].Has(DiskReadRate|DiskWriteRate))
		require.GreaterOrEqual(t, second.Disks[0].ReadBytesPerSec, 0.0)
		require.GreaterOrEqual(t, second.Disks[0].WriteBytesPerSec, 0.0)
	} else {
		require.False(t, second.Disks[0].Has(DiskReadRate))
		require.False(t, second.Disks[0].Has(DiskWriteRate))
	}
}

func TestSystemSamplerProcessCPUBurst(t *testing.T) {
	s := newSystemSampler(t)
	_, err := s.Sample()
	require.NoError(t, err)

	// One goroutine spins for 300 ms. Even on a busy two-core machine it gets most of a core.
	var wg sync.WaitGroup
	var sink atomic.Uint64
	wg.Go(func() {
		x := uint64(1)
		for deadline := time.Now().Add(300 * time.Millisecond); time.Now().Before(deadline); {
			for range 10000 {
				x = x*6364136223846793005 + 1442695040888963407
			}
		}
		sink.Store(x)
	})
	wg.Wait()

	smp, err := s.Sample()
	require.NoError(t, err)
	require.True(t, smp.Has(SysProcessCPUPercent))
	t.Logf("process CPU %.1f %%, machine CPU %.1f %%", smp.ProcessCPUPercent, smp.CPUPercent)
	require.Greater(t, smp.ProcessCPUPercent, 50.0)
	require.True(t, smp.Has(SysCPUPercent))
	require.Greater(t, smp.CPUPercent, 0.0)
	require.LessOrEqual(t, smp.CPUPercent, 100.0)
}

func TestSystemSamplerDiskWrite(t *testing.T) {
	dir := t.TempDir()
	s := newSystemSampler(t, dir)
	first, err := s.Sample()
	require.NoError(t, err)
	if first.Disks[0].Device == "" {
		t.Skipf("the block device that holds %s is not known (overlay, tmpfs or network file system?)", dir)
	}

	buf := make([]byte, 1<<20)
	_, err = rand.Read(buf)
	require.NoError(t, err)
	f, err := os.Create(filepath.Join(dir, "data"))
	require.NoError(t, err)
	for range 64 {
		_, err = f.Write(buf)
		require.NoError(t, err)
	}
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())

	smp, err := s.Sample()
	require.NoError(t, err)
	d := smp.Disks[0]
	require.True(t, d.Has(DiskWriteRate))
	t.Logf("device %s: write %.1f MB/s, read %.1f MB/s", d.Device, d.WriteBytesPerSec/1e6, d.ReadBytesPerSec/1e6)
	require.Greater(t, d.WriteBytesPerSec, 0.0)
}

func TestSystemSamplerBadPaths(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "does-not-exist")
	_, err := NewSystemSampler([]string{missing})
	require.ErrorIs(t, err, engine.ErrInvalidArgument)
	require.ErrorContains(t, err, missing)

	_, err = NewSystemSampler([]string{t.TempDir(), ""})
	require.ErrorIs(t, err, engine.ErrInvalidArgument)

	s, err := NewSystemSampler(nil)
	require.NoError(t, err)
	smp, err := s.Sample()
	require.NoError(t, err)
	require.Empty(t, smp.Disks)
}

func TestSystemSamplerPathRemoved(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "gone")
	require.NoError(t, os.Mkdir(dir, 0o755))
	s := newSystemSampler(t, dir)
	require.NoError(t, os.Remove(dir))
	smp, err := s.Sample()
	require.ErrorIs(t, err, engine.ErrIO)
	require.ErrorContains(t, err, dir)
	require.Len(t, smp.Disks, 1)
	require.False(t, smp.Disks[0].Has(DiskTotal))
	require.True(t, smp.Has(SysMemoryTotal), "the rest of the sample is still returned")
}

func TestSystemSamplerConcurrent(t *testing.T) {
	s := newSystemSampler(t, t.TempDir())
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 20 {
				smp, err := s.Sample()
				if err != nil || smp.Time == 0 || len(smp.Disks) != 1 {
					t.Errorf("bad sample: %+v, %v", smp, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestRunSystemSampler(t *testing.T) {
	s := newSystemSampler(t)
	const interval = 50 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var times []uint64
	done := make(chan error, 1)
	go func() {
		done <- RunSystemSampler(ctx, s, interval, func(smp SystemSample) {
			mu.Lock()
			times = append(times, smp.Time)
			mu.Unlock()
		})
	}()
	time.Sleep(330 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(2 * time.Second):
		t.Fatal("RunSystemSampler did not stop on cancel")
	}

	mu.Lock()
	defer mu.Unlock()
	// One sample at once, then one per 50 ms over 330 ms: about 7; allow for a slow machine.
	require.GreaterOrEqual(t, len(times), 3)
	require.LessOrEqual(t, len(times), 8)
	var gaps []float64
	for i := 1; i < len(times); i++ {
		gaps = append(gaps, float64(times[i]-times[i-1])/1e6)
	}
	mean := float64(times[len(times)-1]-times[0]) / 1e6 / float64(len(times)-1)
	t.Logf("%d samples, gaps %v ms", len(times), gaps)
	require.InDelta(t, 50, mean, 25, "mean gap between samples")

	// No callback after RunSystemSampler returned.
	n := len(times)
	mu.Unlock()
	time.Sleep(2 * interval)
	mu.Lock()
	require.Equal(t, n, len(times))
}

func TestRunSystemSamplerArguments(t *testing.T) {
	s := newSystemSampler(t)
	fn := func(SystemSample) {}
	for _, iv := range []time.Duration{0, -time.Second, time.Millisecond, MinSystemSampleInterval - 1} {
		err := RunSystemSampler(context.Background(), s, iv, fn)
		require.ErrorIs(t, err, engine.ErrInvalidArgument, "interval %v", iv)
	}
	require.ErrorIs(t, RunSystemSampler(context.Background(), nil, time.Second, fn), engine.ErrInvalidArgument)
	require.ErrorIs(t, RunSystemSampler(context.Background(), s, time.Second, nil), engine.ErrInvalidArgument)

	// An already cancelled context returns at once, without sampling.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	called := false
	require.NoError(t, RunSystemSampler(ctx, s, MinSystemSampleInterval, func(SystemSample) { called = true }))
	require.False(t, called)
}

func BenchmarkSystemSample(b *testing.B) {
	s := newSystemSampler(b, b.TempDir())
	_, err := s.Sample()
	require.NoError(b, err)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Sample(); err != nil {
			b.Fatal(err)
		}
	}
}
