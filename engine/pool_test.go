package engine

import (
	"crypto/rand"
	"testing"
	"time"

	"github.com/ferry-ml/ferry/engine/internal/testutil"

	"github.com/stretchr/testify/require"
)

func TestSizeClass(t *testing.T) {
	for _, tc := range []struct{ n, want int }{
		{1, 4 << 10}, {4 << 10, 4 << 10}, {4<<10 + 1, 8 << 10}, {1 << 20, 1 << 20}, {1<<20 + 1, 2 << 20},
		{2 << 20, 2 << 20}, {2<<20 + 1, 4 << 20}, {5 << 20, 6 << 20}, {38535168, 39845888},
	} {
		require.Equal(t, tc.want, sizeClass(tc.n), "sizeClass(%d)", tc.n)
		require.GreaterOrEqual(t, sizeClass(tc.n), tc.n)
	}
}

func TestHostPoolOnCPU(t *testing.T) {
	e := openCPU(t, WithSampleInterval(0))
	p := e.HostPool()

	_, err := p.Alloc(0)
	require.ErrorIs(t, err, ErrInvalidArgument)

	a, err := p.Alloc(3 << 20)
	require.NoError(t, err)
	require.Equal(t, 3<<20, a.Len())
	buf := a.Bytes()
	_, _ = rand.Read(buf)
	want := append([]byte(nil), buf...)
	require.Equal(t, want, a.Bytes(), "the memory holds what was written")
	addr := a.Pointer()
	p.Free(a)

	b, err := p.Alloc(3<<20 + 100) // same class: the cached block comes back
	require.NoError(t, err)
	require.Equal(t, addr, b.Pointer())
	p.Free(b)

	released, err := p.Trim()
	require.NoError(t, err)
	require.Equal(t, uint64(4<<20), released)
	released, err = p.Trim()
	require.NoError(t, err)
	require.Zero(t, released)
	require.Zero(t, e.MemoryCheck().HostPinned, "the CPU engine pins nothing")

	_, err = e.DevicePool().Alloc(1 << 20)
	require.ErrorIs(t, err, ErrUnsupported)
}

func TestPoolsAfterEngineClose(t *testing.T) {
	e, err := Open(CPU, WithSampleInterval(0))
	require.NoError(t, err)
	held, err := e.HostPool().Alloc(1 << 20)
	require.NoError(t, err)
	require.NoError(t, e.Close())
	_, err = e.HostPool().Alloc(1 << 20)
	require.ErrorIs(t, err, ErrClosed)
	e.HostPool().Free(held) // released to the system, not cached
}

// poolAccountingChecks runs on a GPU engine (real or the stand-in driver): every pool byte shows in the
// memory check.
func poolAccountingChecks(t *testing.T, e *Engine) {
	base := e.MemoryCheck()
	dp := e.DevicePool()
	a, err := dp.Alloc(3 << 20)
	require.NoError(t, err)
	b, err := dp.Alloc(1 << 20)
	require.NoError(t, err)
	s := e.MemoryCheck()
	require.Equal(t, base.EngineReserved+5<<20, s.EngineReserved, "3 MiB rounds to the 4 MiB class")
	require.Equal(t, base.EngineAllocated+5<<20, s.EngineAllocated)
	require.Equal(t, base.EngineAllocCount+2, s.EngineAllocCount)
	require.GreaterOrEqual(t, s.EnginePeak, s.EngineAllocated)

	dp.Free(a)
	s = e.MemoryCheck()
	require.Equal(t, base.EngineAllocated+1<<20, s.EngineAllocated)
	require.Equal(t, base.EngineReserved+5<<20, s.EngineReserved, "freed memory stays cached")
	c, err := dp.Alloc(4 << 20)
	require.NoError(t, err)
	require.Equal(t, base.EngineReserved+5<<20, e.MemoryCheck().EngineReserved, "the cached block is reused")
	dp.Free(c)
	dp.Free(b)
	released, err := e.Trim()
	require.NoError(t, err)
	require.GreaterOrEqual(t, released, uint64(5<<20))
	s = e.MemoryCheck()
	require.Equal(t, base.EngineReserved, s.EngineReserved)
	require.Equal(t, base.EngineAllocated, s.EngineAllocated)

	h, err := e.HostPool().Alloc(2 << 20)
	require.NoError(t, err)
	require.Equal(t, base.HostPinned+2<<20, e.MemoryCheck().HostPinned)
	e.HostPool().Free(h)
	_, err = e.Trim()
	require.NoError(t, err)
	require.Equal(t, base.HostPinned, e.MemoryCheck().HostPinned)
}

func TestGPUPools(t *testing.T) {
	testutil.RequireGPU(t)
	e, err := Open(0, WithSampleInterval(0))
	require.NoError(t, err)
	defer e.Close()
	poolAccountingChecks(t, e)

	// A 1 GiB device allocation shows in the driver's free memory and in engine_reserved exactly.
	before, err := e.MemoryCheckLive()
	require.NoError(t, err)
	buf, err := e.DevicePool().Alloc(1 << 30)
	require.NoError(t, err)
	after, err := e.MemoryCheckLive()
	require.NoError(t, err)
	require.InDelta(t, float64(1<<30), float64(before.DeviceFree-after.DeviceFree), 32<<20)
	require.Equal(t, before.EngineReserved+1<<30, after.EngineReserved)
	// Poison the memory, read it back.
	require.NoError(t, e.ctx.MemsetD8(buf.Ptr(), 0xA5, 4096))
	back := make([]byte, 4096)
	require.NoError(t, e.ctx.MemcpyDtoH(back, buf.Ptr()))
	for _, v := range back {
		require.Equal(t, byte(0xA5), v)
	}
	e.DevicePool().Free(buf)
	_, err = e.Trim()
	require.NoError(t, err)
	time.Sleep(10 * time.Millisecond)
	final, err := e.MemoryCheckLive()
	require.NoError(t, err)
	require.InDelta(t, float64(before.DeviceFree), float64(final.DeviceFree), 32<<20, "trim gives the memory back")
}
