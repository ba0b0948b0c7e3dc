package tests

import (
	"math"
	"os"
	"strconv"
	"sync"
	"testing"
	"unsafe"

	"github.com/ebitengine/purego"
	"github.com/stretchr/testify/require"
)

// The memory manager through the C ABI: pressure thresholds and levels, pressure callbacks,
// ferry_memory_optimize, and the batch-size advisor. Levels need device memory, so they are checked on the
// stand-in driver (engine/internal/testutil/testdata/fakecuda.c: one 80 GiB device with 10 GiB used) in a child process;
// everything else runs on the CPU engine.

const (
	kib = uint64(1) << 10
	mib = uint64(1) << 20
	gib = uint64(1) << 30
)

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

// pressureOpts returns options filled by ferry_pressure_options_init.
func pressureOpts(t testing.TB) pressureOptions {
	t.Helper()
	var o pressureOptions
	requireOK(t, func() int32 { return ferryPressureOptionsInit(&o) })
	return o
}

// bytesOpts returns options with byte thresholds on metric.
func bytesOpts(t testing.TB, metric int32, warn, critical uint64) pressureOptions {
	t.Helper()
	o := pressureOpts(t)
	o.Metric = metric
	o.WarnBytes = warn
	o.CriticalBytes = critical
	return o
}

func setPressure(t testing.TB, e engineHandle, o pressureOptions) {
	t.Helper()
	requireOK(t, func() int32 { return ferryEngineSetPressure(e, &o) })
}

func optimize(t testing.TB, e engineHandle, current int64) optimizeResult {
	t.Helper()
	r := optimizeResult{Size: uint32(unsafe.Sizeof(optimizeResult{}))}
	requireOK(t, func() int32 { return ferryMemoryOptimize(e, current, &r) })
	require.Equal(t, uint32(40), r.Size, "the size field is kept")
	return r
}

// newAdvisor creates an advisor and destroys it at cleanup; a test may have destroyed it already.
func newAdvisor(t testing.TB, multiple int64) advisorHandle {
	t.Helper()
	var a advisorHandle
	requireOK(t, func() int32 { return ferryAdvisorCreate(multiple, &a) })
	require.NotZero(t, a, "ferry_advisor_create returned OK with a NULL handle")
	t.Cleanup(func() {
		if s := ferryAdvisorDestroy(a); s != ferryOK && s != ferryErrInvalidHandle {
			t.Errorf("ferry_advisor_destroy: %s", statusString(t, s))
		}
	})
	return a
}

func observe(t testing.TB, a advisorHandle, batch int64, peak uint64) {
	t.Helper()
	requireOK(t, func() int32 { return ferryAdvisorObserve(a, batch, peak) })
}

func model(t testing.TB, a advisorHandle) advisorFit {
	t.Helper()
	f := advisorFit{Size: uint32(unsafe.Sizeof(advisorFit{}))}
	requireOK(t, func() int32 { return ferryAdvisorModel(a, &f) })
	return f
}

func recommend(t testing.TB, a advisorHandle, budget uint64, headroom float64) int64 {
	t.Helper()
	b := int64(-7)
	requireOK(t, func() int32 { return ferryAdvisorRecommend(a, budget, headroom, &b) })
	require.Positive(t, b, "a successful recommendation is a batch size >= 1")
	return b
}

// linear observes fixed + perSample*b exactly at each size.
func linear(t testing.TB, a advisorHandle, fixed, perSample uint64, sizes ...int64) {
	t.Helper()
	for _, b := range sizes {
		observe(t, a, b, fixed+perSample*uint64(b))
	}
}

// roundDown is the advisor's rounding: down to a multiple, or b itself when that would be 0.
func roundDown(b, multiple int64) int64 {
	if r := b / multiple * multiple; r > 0 {
		return r
	}
	return b
}

// fits is the largest batch the line fixed + margin + perSample*b allows in budget*(1-headroom), before
// rounding; ok is false when the quotient is so close to an integer that float rounding could decide it.
func fits(fixed, margin, perSample float64, budget uint64, headroom float64) (b int64, ok bool) {
	x := (float64(budget)*(1-headroom) - fixed - margin) / perSample
	frac := x - math.Floor(x)
	return int64(math.Floor(x)), frac > 1e-6 && frac < 1-1e-6
}

// Pressure callbacks. purego callbacks are never freed, so there is one, which dispatches on `user`.
type pressureRecorder struct {
	tag int
	ret int32
	log *callLog
}

// callLog records the callbacks of one test in call order: tag and level.
type callLog struct {
	mu    sync.Mutex
	calls [][2]int32
}

func (l *callLog) take() [][2]int32 {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.calls
	l.calls = nil
	return c
}

var pressureCallbacks struct {
	sync.RWMutex
	once sync.Once
	fn   uintptr
	m    map[uintptr]*pressureRecorder
	next uintptr
}

func pressureCallback() uintptr {
	pressureCallbacks.once.Do(func() {
		pressureCallbacks.m = map[uintptr]*pressureRecorder{}
		pressureCallbacks.fn = purego.NewCallback(func(user uintptr, level int32) int32 {
			pressureCallbacks.RLock()
			r := pressureCallbacks.m[user]
			pressureCallbacks.RUnlock()
			if r == nil {
				return -100
			}
			r.log.mu.Lock()
			r.log.calls = append(r.log.calls, [2]int32{int32(r.tag), level})
			r.log.mu.Unlock()
			return r.ret
		})
	})
	return pressureCallbacks.fn
}

// onPressure registers a recording callback that returns ret, and returns its ID.
func onPressure(t testing.TB, e engineHandle, log *callLog, tag int, ret int32) uint64 {
	t.Helper()
	fn := pressureCallback()
	pressureCallbacks.Lock()
	pressureCallbacks.next++
	user := pressureCallbacks.next
	pressureCallbacks.m[user] = &pressureRecorder{tag: tag, ret: ret, log: log}
	pressureCallbacks.Unlock()
	var id uint64
	requireOK(t, func() int32 { return ferryMemoryOnPressure(e, fn, user, &id) })
	return id
}

// Reduce hooks: a fake "other rank" whose value is other; the hook writes min(value, other).
type fakeRank struct {
	mu    sync.Mutex
	other int64
	fail  int32
	seen  []int64
}

func (r *fakeRank) values() []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	v := r.seen
	r.seen = nil
	return v
}

var reduceHooks struct {
	sync.RWMutex
	once sync.Once
	fn   uintptr
	m    map[uintptr]*fakeRank
	next uintptr
}

func reduceHook() uintptr {
	reduceHooks.once.Do(func() {
		reduceHooks.m = map[uintptr]*fakeRank{}
		reduceHooks.fn = purego.NewCallback(func(user uintptr, value *int64) int32 {
			reduceHooks.RLock()
			r := reduceHooks.m[user]
			reduceHooks.RUnlock()
			if r == nil || value == nil {
				return -100
			}
			r.mu.Lock()
			defer r.mu.Unlock()
			r.seen = append(r.seen, *value)
			if r.fail != 0 {
				return r.fail
			}
			*value = min(*value, r.other)
			return 0
		})
	})
	return reduceHooks.fn
}

// setFakeRank sets a's reduce hook to a fake rank whose own value is other.
func setFakeRank(t testing.TB, a advisorHandle, other int64, fail int32) *fakeRank {
	t.Helper()
	fn := reduceHook()
	r := &fakeRank{other: other, fail: fail}
	reduceHooks.Lock()
	reduceHooks.next++
	user := reduceHooks.next
	reduceHooks.m[user] = r
	reduceHooks.Unlock()
	requireOK(t, func() int32 { return ferryAdvisorSetReduce(a, fn, user) })
	return r
}

// ---------------------------------------------------------------------------------------------------
// Options and struct sizes
// ---------------------------------------------------------------------------------------------------

func TestPressureOptionsInit(t *testing.T) {
	g := newGuardBuf(unsafe.Sizeof(pressureOptions{}))
	requireOK(t, func() int32 { return ferryPressureOptionsInit((*pressureOptions)(g.ptr())) })
	g.requireUntouchedFrom(t, unsafe.Sizeof(pressureOptions{}))
	require.Equal(t, pressureOptions{Size: 40, Metric: pressureDeviceUsed}, *(*pressureOptions)(g.ptr()))
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryPressureOptionsInit(nil) }, "NULL")
}

// TestMemoryStructSizes checks the size rule of the memory manager's structs: a size below the struct is
// refused without writing past the size field, and a larger one works without writing past the struct.
func TestMemoryStructSizes(t *testing.T) {
	e := newCPUEngine(t, 0)
	a := newAdvisor(t, 8)
	linear(t, a, gib, 10*mib, 8, 16)
	cases := []struct {
		name  string
		size  uintptr
		input bool // an input struct: the call reads it and writes nothing
		call  func(p unsafe.Pointer) int32
	}{
		{"ferry_engine_set_pressure", unsafe.Sizeof(pressureOptions{}), true, func(p unsafe.Pointer) int32 {
			return ferryEngineSetPressure(e, (*pressureOptions)(p))
		}},
		{"ferry_memory_optimize", unsafe.Sizeof(optimizeResult{}), false, func(p unsafe.Pointer) int32 {
			return ferryMemoryOptimize(e, 0, (*optimizeResult)(p))
		}},
		{"ferry_advisor_model", unsafe.Sizeof(advisorFit{}), false, func(p unsafe.Pointer) int32 {
			return ferryAdvisorModel(a, (*advisorFit)(p))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fill := func(g *guardBuf) {
				if c.input {
					o := pressureOpts(t)
					o.Metric = pressureEngineReserved
					o.WarnBytes = 3 * gib
					o.CriticalBytes = 4 * gib
					copy(g.bytes(), unsafe.Slice((*byte)(unsafe.Pointer(&o)), unsafe.Sizeof(o)))
				}
			}
			for _, size := range []uintptr{0, 4, c.size - 1} {
				g := newGuardBuf(c.size)
				fill(g)
				g.setSize(size)
				before := append([]byte(nil), g.bytes()...)
				requireStatus(t, ferryErrInvalidArgument, func() int32 { return c.call(g.ptr()) }, "size")
				require.Equal(t, before, g.bytes(), "a refused call writes nothing")
			}
			for _, size := range []uintptr{c.size, c.size + 32} {
				g := newGuardBuf(c.size)
				fill(g)
				g.setSize(size)
				requireOK(t, func() int32 { return c.call(g.ptr()) })
				g.requireUntouchedFrom(t, c.size)
				require.Equal(t, uint32(size), *(*uint32)(g.ptr()), "the size field is kept")
			}
			requireStatus(t, ferryErrInvalidArgument, func() int32 { return c.call(nil) }, "NULL")
		})
	}
	// The options set with a larger size took effect.
	s := check(t, e)
	require.Equal(t, 3*gib, s.WarnThresholdBytes)
	require.Equal(t, 4*gib, s.CriticalThresholdBytes)
	f := model(t, a)
	require.Equal(t, int32(2), f.Observations)
}

// ---------------------------------------------------------------------------------------------------
// Pressure on the CPU engine
// ---------------------------------------------------------------------------------------------------

// TestPressureCPU: the CPU engine refuses fractions (it has no device memory to take them of), accepts
// byte thresholds, reports them in every snapshot, and stays at level NONE.
func TestPressureCPU(t *testing.T) {
	e := newCPUEngine(t, 0)
	s := check(t, e)
	require.Equal(t, int32(pressureNone), s.Level, "no thresholds: NONE")
	require.Zero(t, s.WarnThresholdBytes)
	require.Zero(t, s.CriticalThresholdBytes)

	for _, metric := range []int32{pressureDeviceUsed, pressureProcessUsed, pressureEngineReserved} {
		o := pressureOpts(t)
		o.Metric = metric
		o.WarnFraction = 0.5
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryEngineSetPressure(e, &o) }, "fraction")
		o.WarnFraction = 0
		o.CriticalFraction = 0.9
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryEngineSetPressure(e, &o) }, "fraction")
	}
	s = check(t, e)
	require.Zero(t, s.WarnThresholdBytes, "a refused call changes nothing")
	require.Zero(t, s.CriticalThresholdBytes)

	for _, metric := range []int32{pressureDeviceUsed, pressureProcessUsed, pressureEngineReserved} {
		setPressure(t, e, bytesOpts(t, metric, 1, 2))
		for _, s := range []memorySnapshot{check(t, e), checkLive(t, e)} {
			require.Equal(t, int32(pressureNone), s.Level, "metric %d: no device memory on the CPU engine", metric)
			require.Equal(t, uint64(1), s.WarnThresholdBytes)
			require.Equal(t, uint64(2), s.CriticalThresholdBytes)
		}
		r := optimize(t, e, 0)
		require.Equal(t, int32(pressureNone), r.LevelBefore)
		require.Equal(t, int32(pressureNone), r.LevelAfter)
		require.Zero(t, r.RecommendedBatchSize)
	}

	// A bytes threshold wins over a fraction given with it, so the CPU engine accepts the pair.
	o := bytesOpts(t, pressureEngineReserved, 5*gib, 7*gib)
	o.WarnFraction = 0.5
	o.CriticalFraction = 0.75
	setPressure(t, e, o)
	s = check(t, e)
	require.Equal(t, 5*gib, s.WarnThresholdBytes)
	require.Equal(t, 7*gib, s.CriticalThresholdBytes)

	// Only one threshold set.
	setPressure(t, e, bytesOpts(t, pressureEngineReserved, 0, 9*gib))
	s = check(t, e)
	require.Zero(t, s.WarnThresholdBytes)
	require.Equal(t, 9*gib, s.CriticalThresholdBytes)
	// Back to no thresholds.
	setPressure(t, e, pressureOpts(t))
	s = check(t, e)
	require.Zero(t, s.WarnThresholdBytes)
	require.Zero(t, s.CriticalThresholdBytes)
	require.Equal(t, int32(pressureNone), s.Level)
}

// TestPressureInvalid: unknown metrics, critical below warn, NULL options; each refused with nothing
// changed.
func TestPressureInvalid(t *testing.T) {
	e := newCPUEngine(t, 0)
	setPressure(t, e, bytesOpts(t, pressureEngineReserved, 2*gib, 3*gib))
	for _, m := range []int32{4, 99, -1} {
		o := bytesOpts(t, m, gib, 2*gib)
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryEngineSetPressure(e, &o) }, "metric")
	}
	o := bytesOpts(t, pressureEngineReserved, 5*gib, 4*gib)
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryEngineSetPressure(e, &o) }, "critical")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryEngineSetPressure(e, nil) }, "NULL")
	s := check(t, e)
	require.Equal(t, 2*gib, s.WarnThresholdBytes, "refused calls change nothing")
	require.Equal(t, 3*gib, s.CriticalThresholdBytes)
	// Equal thresholds are allowed: critical is not below warn.
	setPressure(t, e, bytesOpts(t, pressureEngineReserved, 4*gib, 4*gib))
}

// ---------------------------------------------------------------------------------------------------
// Callbacks and optimize (CPU engine)
// ---------------------------------------------------------------------------------------------------

func TestPressureCallbacksCPU(t *testing.T) {
	e := newCPUEngine(t, 0)
	log := &callLog{}

	r := optimize(t, e, 0)
	require.Zero(t, r.CallbacksCalled, "no callbacks yet")
	require.Zero(t, r.CallbacksFailed)
	require.Empty(t, log.take())

	ids := []uint64{
		onPressure(t, e, log, 1, 0),
		onPressure(t, e, log, 2, 7), // fails
		onPressure(t, e, log, 3, 0),
		onPressure(t, e, log, 4, -1), // fails
		onPressure(t, e, log, 5, 0),
	}
	seen := map[uint64]bool{}
	for _, id := range ids {
		require.False(t, seen[id], "IDs are distinct: %v", ids)
		seen[id] = true
	}
	for round := 0; round < 3; round++ {
		r = optimize(t, e, 64)
		require.Equal(t, int32(5), r.CallbacksCalled)
		require.Equal(t, int32(2), r.CallbacksFailed, "the callbacks after a failed one still run")
		require.Equal(t, int32(pressureNone), r.LevelBefore)
		require.Equal(t, int32(pressureNone), r.LevelAfter)
		require.Zero(t, r.RecommendedBatchSize, "no advisor attached")
		require.Equal(t, [][2]int32{{1, 0}, {2, 0}, {3, 0}, {4, 0}, {5, 0}}, log.take(), "registration order, level NONE")
	}

	// Removal: the rest keep their order; a later registration goes last.
	requireOK(t, func() int32 { return ferryMemoryRemoveCallback(e, ids[1]) })
	requireOK(t, func() int32 { return ferryMemoryRemoveCallback(e, ids[4]) })
	id6 := onPressure(t, e, log, 6, 0)
	r = optimize(t, e, 0)
	require.Equal(t, int32(4), r.CallbacksCalled)
	require.Equal(t, int32(1), r.CallbacksFailed)
	require.Equal(t, [][2]int32{{1, 0}, {3, 0}, {4, 0}, {6, 0}}, log.take())

	// Unknown IDs: removed already, never given, and an ID of another engine.
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMemoryRemoveCallback(e, ids[1]) }, "callback")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMemoryRemoveCallback(e, 0) })
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMemoryRemoveCallback(e, 1<<62) })
	other := newCPUEngine(t, 0)
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMemoryRemoveCallback(other, id6) })
	require.Zero(t, optimize(t, other, 0).CallbacksCalled, "callbacks belong to their engine")
	require.Empty(t, log.take())

	for _, id := range []uint64{ids[0], ids[2], ids[3], id6} {
		requireOK(t, func() int32 { return ferryMemoryRemoveCallback(e, id) })
	}
	r = optimize(t, e, 0)
	require.Zero(t, r.CallbacksCalled)
	require.Empty(t, log.take())

	// Bad input.
	var id uint64
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMemoryOnPressure(e, 0, 0, &id) }, "NULL")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMemoryOnPressure(e, pressureCallback(), 0, nil) }, "NULL")
	for _, n := range []int64{-1, -64, math.MinInt64} {
		res := optimizeResult{Size: 40}
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryMemoryOptimize(e, n, &res) }, "batch")
	}
	require.Zero(t, optimize(t, e, 0).CallbacksCalled, "a refused registration registers nothing")
}

// TestOptimizeTrimsCPU: optimize gives the pools' cached memory back after an iterator released its ring.
func TestOptimizeTrimsCPU(t *testing.T) {
	r := newRand(t)
	e := newCPUEngine(t, 0)
	src := newMemorySource(t, r, 64, standardSpecs)
	o := iterOptions(t, 16)
	var it iteratorHandle
	requireOK(t, func() int32 { return ferryIteratorCreate(e, src.h, &o, &it) })
	releaseBatch(t, next(t, it))
	requireOK(t, func() int32 { return ferryIteratorDestroy(it) })
	res := optimize(t, e, 16)
	require.NotZero(t, res.TrimmedBytes, "the ring's host memory was cached by the pool, and trimmed")
	require.Zero(t, optimize(t, e, 16).TrimmedBytes, "nothing left to trim")
	// The engine works as before: a new iterator allocates again.
	it2 := newIterator(t, e, src.h, o)
	runEpoch(t, it2, 0, standardSpecs, src.ref, cpuDevice, hostRead)
}

// TestOptimizeAdvisorCPU: an attached advisor, detached, and destroyed while attached.
func TestOptimizeAdvisorCPU(t *testing.T) {
	e := newCPUEngine(t, 0)
	var a advisorHandle
	requireOK(t, func() int32 { return ferryAdvisorCreate(8, &a) })
	linear(t, a, gib, 100*mib, 8, 16, 32)
	requireOK(t, func() int32 { return ferryEngineSetAdvisor(e, a) })
	optimize(t, e, 32) // the CPU engine has no device memory to recommend for; it must not fail
	requireOK(t, func() int32 { return ferryEngineSetAdvisor(e, 0) })
	require.Zero(t, optimize(t, e, 32).RecommendedBatchSize, "detached")
	requireOK(t, func() int32 { return ferryEngineSetAdvisor(e, a) })
	requireOK(t, func() int32 { return ferryAdvisorDestroy(a) })
	for i := 0; i < 3; i++ {
		require.Zero(t, optimize(t, e, 32).RecommendedBatchSize, "the attached advisor was destroyed")
	}
	requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryEngineSetAdvisor(e, a) }, "handle")
	requireOK(t, func() int32 { return ferryEngineSetAdvisor(e, 0) })
}

// ---------------------------------------------------------------------------------------------------
// The advisor
// ---------------------------------------------------------------------------------------------------

// TestAdvisorLinearExact: an exact line is recovered exactly, with R^2 = 1 and no margin, and the
// recommendation is the formula's, for several budgets, headrooms and multiples.
func TestAdvisorLinearExact(t *testing.T) {
	const fixed, perSample = 3*gib + 12345, 50*mib + 7
	for _, sizes := range [][]int64{{8, 16}, {8, 16, 32, 40}, {1, 2, 3, 100, 500}} {
		t.Run(strconv.Itoa(len(sizes))+"-sizes", func(t *testing.T) {
			a := newAdvisor(t, 8)
			linear(t, a, fixed, perSample, sizes...)
			f := model(t, a)
			require.Equal(t, int32(len(sizes)), f.Observations)
			require.InDelta(t, float64(fixed), f.FixedBytes, 1, "fixed")
			require.InDelta(t, float64(perSample), f.PerSampleBytes, 1e-3, "per sample")
			require.InDelta(t, 1.0, f.RSquared, 1e-12, "R^2")
			require.GreaterOrEqual(t, f.MaxResidualBytes, 0.0)
			require.LessOrEqual(t, f.MaxResidualBytes, 1.0, "an exact line has no margin")
			require.Zero(t, f.OOMCeiling)
			require.Zero(t, f.Reserved)
		})
	}

	for _, multiple := range []int64{1, 7, 8, 64} {
		a := newAdvisor(t, multiple)
		linear(t, a, fixed, perSample, 16, 64)
		for _, budget := range []uint64{4 * gib, 16 * gib, 40*gib + 3} {
			for _, headroom := range []float64{0, 0.1, 0.25, 0.5} {
				raw, ok := fits(float64(fixed), 0, float64(perSample), budget, headroom)
				require.True(t, ok, "a case on a rounding boundary: pick other numbers")
				if raw < 1 {
					continue
				}
				want := roundDown(raw, multiple)
				require.Equal(t, want, recommend(t, a, budget, headroom),
					"multiple %d, budget %d, headroom %v (unrounded %d)", multiple, budget, headroom, raw)
			}
		}
	}
}

// TestAdvisorRounding: rounding down to the multiple, and a batch below the multiple returned as is.
func TestAdvisorRounding(t *testing.T) {
	const fixed, perSample = gib, 100 * mib
	budget := func(b float64) uint64 { return uint64(float64(fixed) + b*float64(perSample)) }
	cases := []struct {
		multiple int64
		fitsB    float64 // the unrounded batch that fits
		want     int64
	}{
		{8, 92.16, 88}, {8, 95.99, 88}, {8, 96.5, 96}, {1, 92.16, 92}, {7, 92.16, 91}, {64, 92.16, 64},
		{64, 40.5, 40}, {8, 5.5, 5}, {8, 1.2, 1}, {3, 2.5, 2}, {1000, 999.5, 999}, {1000, 1000.5, 1000},
	}
	for _, c := range cases {
		a := newAdvisor(t, c.multiple)
		linear(t, a, fixed, perSample, 4, 8)
		require.Equal(t, c.want, recommend(t, a, budget(c.fitsB), 0), "multiple %d, fits %v", c.multiple, c.fitsB)
	}
	// Less than one sample fits: nothing to recommend, which is an error.
	a := newAdvisor(t, 8)
	linear(t, a, fixed, perSample, 4, 8)
	var b int64
	s, msg := call(t, func() int32 { return ferryAdvisorRecommend(a, budget(0.5), 0, &b) })
	require.NotEqual(t, ferryOK, s, "nothing fits: %d", b)
	require.NotEmpty(t, msg)
}

// TestAdvisorNoisyDense: a noisy line observed at every size from 1 to 256. The prediction is the fitted
// line raised by its largest positive residual, so it is at or above every observation, and the
// recommendation never exceeds the true limit: the largest batch whose observed peak, and every smaller
// one's, fits the budget.
func TestAdvisorNoisyDense(t *testing.T) {
	r := newRand(t)
	for trial := 0; trial < 20; trial++ {
		fixed := float64(gib) + float64(r.Uint64N(4*gib))
		perSample := float64(8*mib) + float64(r.Uint64N(64*mib))
		noise := perSample * (0.1 + r.Float64()) // up to about one sample either way
		multiple := []int64{1, 4, 8}[r.IntN(3)]
		headroom := []float64{0, 0.1}[r.IntN(2)]
		a := newAdvisor(t, multiple)
		peaks := make([]float64, 257)
		for b := int64(1); b <= 256; b++ {
			peaks[b] = math.Round(fixed + perSample*float64(b) + noise*(2*r.Float64()-1))
			observe(t, a, b, uint64(peaks[b]))
		}
		f := model(t, a)
		require.Equal(t, int32(256), f.Observations)
		require.Greater(t, f.RSquared, 0.99)
		require.Less(t, f.RSquared, 1.0)
		var maxRes float64
		for b := 1; b <= 256; b++ {
			maxRes = max(maxRes, peaks[b]-(f.FixedBytes+f.PerSampleBytes*float64(b)))
		}
		require.Positive(t, f.MaxResidualBytes)
		require.InDelta(t, maxRes, f.MaxResidualBytes, 1, "the margin is the largest observation above the line")

		target := 40 + r.Float64()*180
		budget := uint64((fixed + perSample*target) / (1 - headroom))
		eff := float64(budget) * (1 - headroom)
		limit := int64(0)
		for b := 1; b <= 256 && peaks[b] <= eff; b++ {
			limit = int64(b)
		}
		got := recommend(t, a, budget, headroom)
		require.LessOrEqual(t, got, limit, "trial %d: above the true limit", trial)
		lower := limit - int64(math.Ceil(4*noise/perSample)) - 2*multiple
		require.GreaterOrEqual(t, got, lower, "trial %d: far below the true limit %d", trial, limit)
		if multiple > 1 {
			require.Zero(t, got%multiple)
		}
	}
}

// TestAdvisorNoisySparse: a few noisy observations. The margin is the largest residual above the fitted
// line, the recommendation is the documented formula over the returned model, and no size whose observed
// peak exceeded the budget is ever recommended.
func TestAdvisorNoisySparse(t *testing.T) {
	r := newRand(t)
	for trial := 0; trial < 50; trial++ {
		fixed := float64(512*mib) + float64(r.Uint64N(8*gib))
		perSample := float64(mib) + float64(r.Uint64N(256*mib))
		noise := perSample * 2 * r.Float64()
		sizes := []int64{16, 32, 64}
		if trial%2 == 1 {
			sizes = []int64{8, 24, 40, 72, 128}
		}
		a := newAdvisor(t, 8)
		peaks := map[int64]float64{}
		for _, b := range sizes {
			peaks[b] = math.Round(fixed + perSample*float64(b) + noise*(2*r.Float64()-1))
			observe(t, a, b, uint64(peaks[b]))
		}
		f := model(t, a)
		var maxRes float64
		for b, p := range peaks {
			maxRes = max(maxRes, p-(f.FixedBytes+f.PerSampleBytes*float64(b)))
		}
		require.InDelta(t, maxRes, f.MaxResidualBytes, 1)
		require.LessOrEqual(t, f.RSquared, 1.0)

		budget := uint64(fixed + perSample*(20+r.Float64()*200))
		raw, ok := fits(f.FixedBytes, f.MaxResidualBytes, f.PerSampleBytes, budget, 0)
		if raw < 1 {
			continue
		}
		got := recommend(t, a, budget, 0)
		if ok {
			require.Equal(t, roundDown(raw, 8), got, "trial %d", trial)
		}
		for b, p := range peaks {
			if p > float64(budget) {
				require.Less(t, got, b, "trial %d: size %d's observed peak exceeds the budget", trial, b)
			}
		}
	}
}

// TestAdvisorConvex: memory that grows faster than linearly. Within the observed range the line plus its
// margin stays above the curve, so the recommendation never exceeds the true limit.
func TestAdvisorConvex(t *testing.T) {
	const fixed, perSample, quad = float64(gib), float64(20 * mib), float64(mib / 2)
	truth := func(b float64) float64 { return fixed + perSample*b + quad*b*b }
	a := newAdvisor(t, 8)
	for _, b := range []int64{8, 16, 32, 64} {
		observe(t, a, b, uint64(truth(float64(b))))
	}
	f := model(t, a)
	require.Positive(t, f.MaxResidualBytes, "a convex curve lies above its line at the ends")
	require.Less(t, f.RSquared, 1.0)
	require.Greater(t, f.RSquared, 0.9)
	for target := 30.0; target <= 63; target += 3.3 {
		budget := uint64(truth(target))
		limit := int64(math.Floor(target))
		for truth(float64(limit+1)) <= float64(budget) {
			limit++
		}
		got := recommend(t, a, budget, 0)
		require.LessOrEqual(t, got, limit, "budget for %.1f samples", target)
		require.Zero(t, got%8)
	}
}

// TestAdvisorOOM: a reported OOM caps the recommendation below it; a repeated one backs off further.
func TestAdvisorOOM(t *testing.T) {
	const fixed, perSample = gib, 100 * mib
	budget := 16 * gib // (16384 - 1024) / 100 = 153.6 samples fit
	a := newAdvisor(t, 8)
	linear(t, a, fixed, perSample, 16, 32)
	require.Equal(t, int64(152), recommend(t, a, budget, 0))

	requireOK(t, func() int32 { return ferryAdvisorReportOOM(a, 100) })
	require.Equal(t, int64(100), model(t, a).OOMCeiling)
	require.Equal(t, int64(96), recommend(t, a, budget, 0), "the largest multiple below the OOM")
	require.Equal(t, int64(96), recommend(t, a, budget, 0), "recommending changes nothing")

	// The recommended size itself ran out of memory.
	requireOK(t, func() int32 { return ferryAdvisorReportOOM(a, 96) })
	require.Equal(t, int64(96), model(t, a).OOMCeiling)
	second := recommend(t, a, budget, 0)
	require.LessOrEqual(t, second, int64(88))
	require.Positive(t, second)

	// The size recommended after the OOM ran out too: the ceiling backs off further.
	requireOK(t, func() int32 { return ferryAdvisorReportOOM(a, second) })
	third := recommend(t, a, budget, 0)
	require.Less(t, third, second, "a repeated OOM lowers the ceiling")
	require.Positive(t, third)
	ceiling := model(t, a).OOMCeiling
	require.Equal(t, second, ceiling, "the smallest size reported")
	// The same size reported again: the ceiling stays.
	requireOK(t, func() int32 { return ferryAdvisorReportOOM(a, second) })
	require.Equal(t, third, recommend(t, a, budget, 0))

	// An OOM above the ceiling does not raise it.
	requireOK(t, func() int32 { return ferryAdvisorReportOOM(a, 1000) })
	require.LessOrEqual(t, recommend(t, a, budget, 0), third)
	require.LessOrEqual(t, model(t, a).OOMCeiling, ceiling)

	// A budget below the ceiling is the tighter bound.
	require.Equal(t, int64(40), recommend(t, a, fixed+45*perSample, 0))

	// Below one multiple: the largest batch below the OOM.
	b := newAdvisor(t, 8)
	linear(t, b, fixed, perSample, 16, 32)
	requireOK(t, func() int32 { return ferryAdvisorReportOOM(b, 5) })
	got := recommend(t, b, budget, 0)
	require.GreaterOrEqual(t, got, int64(1))
	require.Less(t, got, int64(5))
	// A batch of one ran out of memory: nothing fits.
	requireOK(t, func() int32 { return ferryAdvisorReportOOM(b, 1) })
	var n int64
	s, msg := call(t, func() int32 { return ferryAdvisorRecommend(b, budget, 0, &n) })
	require.NotEqual(t, ferryOK, s, "nothing below an OOM at batch 1: got %d", n)
	require.NotEmpty(t, msg)
	require.Equal(t, int64(1), model(t, b).OOMCeiling)

	// Reported before any observation: kept for later.
	c := newAdvisor(t, 8)
	requireOK(t, func() int32 { return ferryAdvisorReportOOM(c, 64) })
	linear(t, c, fixed, perSample, 16, 32)
	require.Equal(t, int64(56), recommend(t, c, budget, 0))
	for _, bad := range []int64{0, -1, math.MinInt64} {
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryAdvisorReportOOM(c, bad) }, "batch")
	}
	require.Equal(t, int64(64), model(t, c).OOMCeiling, "refused reports change nothing")
}

// TestAdvisorReduce: the reduce hook takes the minimum with a fake other rank, after the rounding and the
// OOM ceiling; a failing hook fails the recommendation; clearing it restores the local answer.
func TestAdvisorReduce(t *testing.T) {
	const fixed, perSample = gib, 100 * mib
	budget := 16 * gib
	a := newAdvisor(t, 8)
	linear(t, a, fixed, perSample, 16, 32)

	rank := setFakeRank(t, a, 24, 0)
	require.Equal(t, int64(24), recommend(t, a, budget, 0), "the other rank's smaller size wins")
	require.Equal(t, []int64{152}, rank.values(), "the hook gets this rank's recommendation")

	rank = setFakeRank(t, a, 1000, 0)
	require.Equal(t, int64(152), recommend(t, a, budget, 0), "this rank's smaller size wins")
	require.Equal(t, []int64{152}, rank.values())

	requireOK(t, func() int32 { return ferryAdvisorReportOOM(a, 100) })
	require.Equal(t, int64(96), recommend(t, a, budget, 0))
	require.Equal(t, []int64{96}, rank.values(), "the ceiling applies before the reduction")

	failing := setFakeRank(t, a, 24, 3)
	var b int64
	s, msg := call(t, func() int32 { return ferryAdvisorRecommend(a, budget, 0, &b) })
	require.NotEqual(t, ferryOK, s, "a failed reduction fails the recommendation")
	require.NotEmpty(t, msg)
	require.Len(t, failing.values(), 1)

	requireOK(t, func() int32 { return ferryAdvisorSetReduce(a, 0, 0) })
	require.Equal(t, int64(96), recommend(t, a, budget, 0), "no hook: the local answer")
	require.Empty(t, failing.values(), "a cleared hook is not called")
	require.Empty(t, rank.values())
}

// TestAdvisorInvalid: every bad input is refused with a message, and the advisor keeps working.
func TestAdvisorInvalid(t *testing.T) {
	var h advisorHandle
	for _, m := range []int64{0, -1, -8, math.MinInt64} {
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryAdvisorCreate(m, &h) }, "multiple")
		require.Zero(t, h)
	}
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryAdvisorCreate(8, nil) }, "NULL")

	a := newAdvisor(t, 8)
	for _, bad := range []int64{0, -1, math.MinInt64} {
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryAdvisorObserve(a, bad, gib) }, "batch")
	}
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryAdvisorObserve(a, 16, 0) }, "peak")

	f := advisorFit{Size: 56}
	var b int64
	// No observation, then one, then one size observed twice: fewer than two distinct sizes.
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryAdvisorModel(a, &f) })
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryAdvisorRecommend(a, 16*gib, 0, &b) })
	observe(t, a, 16, 2*gib)
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryAdvisorModel(a, &f) })
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryAdvisorRecommend(a, 16*gib, 0, &b) })
	observe(t, a, 16, 2*gib+mib)
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryAdvisorModel(a, &f) })
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryAdvisorRecommend(a, 16*gib, 0, &b) })

	// Two sizes: now it works; then every bad argument of recommend.
	observe(t, a, 32, 3*gib)
	f = model(t, a)
	require.Equal(t, int32(2), f.Observations, "distinct batch sizes")
	good := recommend(t, a, 16*gib, 0)
	for _, h := range []float64{-0.1, 1.0, 1.5, math.NaN(), math.Inf(1), math.Inf(-1)} {
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryAdvisorRecommend(a, 16*gib, h, &b) }, "headroom")
	}
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryAdvisorRecommend(a, 16*gib, 0, nil) }, "NULL")
	// The fit's fixed cost is about 1 GiB: budgets below it.
	for _, budget := range []uint64{0, 1, 512 * mib} {
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryAdvisorRecommend(a, budget, 0, &b) }, "budget")
	}
	// A budget above the fixed cost whose headroom brings it below.
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryAdvisorRecommend(a, 2*gib, 0.9, &b) }, "budget")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryAdvisorModel(a, nil) }, "NULL")
	require.Equal(t, good, recommend(t, a, 16*gib, 0), "the advisor works after all that")

	// Memory that falls, or stays flat, as the batch grows.
	for name, peaks := range map[string][2]uint64{"decreasing": {4 * gib, 3 * gib}, "flat": {3 * gib, 3 * gib}} {
		d := newAdvisor(t, 8)
		observe(t, d, 8, peaks[0])
		observe(t, d, 64, peaks[1])
		f := model(t, d)
		require.LessOrEqual(t, f.PerSampleBytes, 0.0, name)
		require.Equal(t, int32(2), f.Observations)
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryAdvisorRecommend(d, 16*gib, 0, &b) })
	}
}

// advisorCalls are the calls that take an advisor handle.
func advisorCalls() []handleCase {
	return []handleCase{
		{"ferry_advisor_observe", func(h uintptr) int32 { return ferryAdvisorObserve(advisorHandle(h), 8, gib) }},
		{"ferry_advisor_report_oom", func(h uintptr) int32 { return ferryAdvisorReportOOM(advisorHandle(h), 8) }},
		{"ferry_advisor_model", func(h uintptr) int32 { f := advisorFit{Size: 56}; return ferryAdvisorModel(advisorHandle(h), &f) }},
		{"ferry_advisor_recommend", func(h uintptr) int32 {
			var b int64
			return ferryAdvisorRecommend(advisorHandle(h), 16*gib, 0, &b)
		}},
		{"ferry_advisor_set_reduce", func(h uintptr) int32 { return ferryAdvisorSetReduce(advisorHandle(h), 0, 0) }},
		{"ferry_advisor_destroy", func(h uintptr) int32 { return ferryAdvisorDestroy(advisorHandle(h)) }},
	}
}

// memoryEngineCalls are the memory manager's calls that take an engine handle.
func memoryEngineCalls(a advisorHandle) []handleCase {
	return []handleCase{
		{"ferry_engine_set_pressure", func(h uintptr) int32 {
			o := pressureOptions{Size: 40, Metric: pressureEngineReserved, WarnBytes: 1, CriticalBytes: 2}
			return ferryEngineSetPressure(engineHandle(h), &o)
		}},
		{"ferry_memory_on_pressure", func(h uintptr) int32 {
			var id uint64
			return ferryMemoryOnPressure(engineHandle(h), pressureCallback(), 0, &id)
		}},
		{"ferry_memory_remove_callback", func(h uintptr) int32 { return ferryMemoryRemoveCallback(engineHandle(h), 1) }},
		{"ferry_memory_optimize", func(h uintptr) int32 {
			r := optimizeResult{Size: 40}
			return ferryMemoryOptimize(engineHandle(h), 0, &r)
		}},
		{"ferry_engine_set_advisor", func(h uintptr) int32 { return ferryEngineSetAdvisor(engineHandle(h), a) }},
	}
}

// TestMemoryHandlesInvalid: made-up, foreign, destroyed and NULL handles get FERRY_ERR_INVALID_HANDLE from
// every new call, and the live objects keep working.
func TestMemoryHandlesInvalid(t *testing.T) {
	r := newRand(t)
	e := newCPUEngine(t, 0)
	src := newMemorySource(t, r, 20, standardSpecs)
	a := newAdvisor(t, 8)
	linear(t, a, gib, 10*mib, 8, 16)
	want := recommend(t, a, 4*gib, 0)

	var deadA advisorHandle
	requireOK(t, func() int32 { return ferryAdvisorCreate(8, &deadA) })
	requireOK(t, func() int32 { return ferryAdvisorDestroy(deadA) })
	o := defaultOptions(t)
	o.Device = ferryDeviceCPU
	var deadE engineHandle
	requireOK(t, func() int32 { return ferryEngineCreate(&o, &deadE) })
	requireOK(t, func() int32 { return ferryEngineDestroy(deadE) })

	madeUp := []uintptr{0x1234, 0xdeadbeef, ^uintptr(0)}
	groups := []struct {
		name  string
		calls []handleCase
		bad   []uintptr
		own   uintptr
	}{
		{"advisor", advisorCalls(), append(madeUp, uintptr(e), uintptr(src.h), uintptr(deadA)), uintptr(a)},
		{"engine", memoryEngineCalls(a), append(madeUp, uintptr(a), uintptr(src.h), uintptr(deadE)), uintptr(e)},
	}
	for _, g := range groups {
		for _, c := range g.calls {
			t.Run(c.name, func(t *testing.T) {
				hs := append([]uintptr(nil), g.bad...)
				for _, bit := range []uint{0, 1, 8, 31, 32, 48, 63} {
					hs = append(hs, g.own^uintptr(1)<<bit)
				}
				for _, h := range hs {
					s, msg := call(t, func() int32 { return c.fn(h) })
					require.Equal(t, statusString(t, ferryErrInvalidHandle), statusString(t, s), "%s(%#x): %q", c.name, h, msg)
					require.Contains(t, msg, "handle")
				}
				if c.name == "ferry_advisor_destroy" {
					requireOK(t, func() int32 { return c.fn(0) })
				} else {
					requireStatus(t, ferryErrInvalidHandle, func() int32 { return c.fn(0) }, "NULL")
				}
			})
		}
	}
	// Foreign and stale advisors given to an engine.
	for _, h := range append(madeUp, uintptr(e), uintptr(src.h), uintptr(deadA)) {
		requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryEngineSetAdvisor(e, advisorHandle(h)) }, "handle")
	}
	// Double destroy.
	requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryAdvisorDestroy(deadA) }, "handle")
	requireOK(t, func() int32 { return ferryAdvisorDestroy(0) })
	// Everything live still works.
	require.Equal(t, want, recommend(t, a, 4*gib, 0))
	optimize(t, e, 0)
	requireUsable(t)
	// New advisors never bring a destroyed one back.
	fresh := newAdvisor(t, 8)
	require.NotEqual(t, deadA, fresh)
	requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryAdvisorObserve(deadA, 8, gib) }, "handle")
}

// TestAdvisorConcurrent: observations, recommendations and models from several goroutines at once.
func TestAdvisorConcurrent(t *testing.T) {
	a := newAdvisor(t, 8)
	linear(t, a, gib, 100*mib, 8, 16)
	var wg sync.WaitGroup
	errs := make(chan string, 64)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				b := int64(8 + (g*200+i)%120)
				if s := ferryAdvisorObserve(a, b, gib+100*mib*uint64(b)); s != ferryOK {
					errs <- "observe: " + strconv.Itoa(int(s))
					return
				}
				var n int64
				if s := ferryAdvisorRecommend(a, 16*gib, 0, &n); s != ferryOK || n != 152 {
					errs <- "recommend: status " + strconv.Itoa(int(s)) + ", batch " + strconv.FormatInt(n, 10)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	f := model(t, a)
	require.InDelta(t, float64(100*mib), f.PerSampleBytes, 1e-3)
	require.InDelta(t, 1.0, f.RSquared, 1e-12)
}

// ---------------------------------------------------------------------------------------------------
// Levels, optimize and the recommendation on the stand-in GPU (a child process)
// ---------------------------------------------------------------------------------------------------

const memoryFakeEnv = "FERRY_TEST_MEMORY_FAKE_CHILD"

// TestMemoryFakeGPU runs TestMemoryFakeGPUChild in a child process whose driver is the stand-in: one
// 80 GiB device with 70 GiB free, so device used is 10 GiB.
func TestMemoryFakeGPU(t *testing.T) {
	if os.Getenv(memoryFakeEnv) == "1" {
		t.Skip("in the child process")
	}
	out := runOnFakeDriver(t, "TestMemoryFakeGPUChild", memoryFakeEnv)
	for _, sub := range []string{"levels", "callbacks", "trim", "advisor"} {
		require.Contains(t, out, "--- PASS: TestMemoryFakeGPUChild/"+sub, "child did not run %s:\n%s", sub, out)
	}
}

// TestMemoryFakeGPUChild is the child of TestMemoryFakeGPU; it does nothing unless run by it.
func TestMemoryFakeGPUChild(t *testing.T) {
	if os.Getenv(memoryFakeEnv) != "1" {
		t.Skip("runs only as the child of TestMemoryFakeGPU")
	}
	require.Equal(t, int32(1), deviceCount(t))
	t.Run("levels", fakeLevels)
	t.Run("callbacks", fakeCallbacks)
	t.Run("trim", fakeTrim)
	t.Run("advisor", fakeAdvisor)
}

// requireLevel checks the level and thresholds of the cached and the live snapshot.
func requireLevel(t *testing.T, e engineHandle, level int32, warn, critical uint64, what string) {
	t.Helper()
	for _, s := range []memorySnapshot{check(t, e), checkLive(t, e)} {
		require.Equal(t, uint64(10*gib), s.DeviceUsedBytes, "the stand-in's device used")
		require.Equal(t, level, s.Level, what)
		require.InDelta(t, float64(warn), float64(s.WarnThresholdBytes), 1, what+": warn threshold")
		require.InDelta(t, float64(critical), float64(s.CriticalThresholdBytes), 1, what+": critical threshold")
	}
}

func fakeLevels(t *testing.T) {
	e := newEngine(t, 0, 0)
	requireLevel(t, e, pressureNone, 0, 0, "no thresholds")

	frac := func(metric int32, warn, critical float64) pressureOptions {
		o := pressureOpts(t)
		o.Metric = metric
		o.WarnFraction = warn
		o.CriticalFraction = critical
		return o
	}
	cases := []struct {
		name           string
		opts           pressureOptions
		level          int32
		warn, critical uint64
	}{
		{"bytes 5/20 GiB", bytesOpts(t, pressureDeviceUsed, 5*gib, 20*gib), pressureWarn, 5 * gib, 20 * gib},
		{"bytes 5/8 GiB", bytesOpts(t, pressureDeviceUsed, 5*gib, 8*gib), pressureCritical, 5 * gib, 8 * gib},
		{"none", pressureOpts(t), pressureNone, 0, 0},
		{"bytes 20/30 GiB", bytesOpts(t, pressureDeviceUsed, 20*gib, 30*gib), pressureNone, 20 * gib, 30 * gib},
		{"fraction 0.1/0.5", frac(pressureDeviceUsed, 0.1, 0.5), pressureWarn, 8 * gib, 40 * gib},
		{"fraction 0.05/0.1", frac(pressureDeviceUsed, 0.05, 0.1), pressureCritical, 4 * gib, 8 * gib},
		{"fraction 0.5/0.9", frac(pressureDeviceUsed, 0.5, 0.9), pressureNone, 40 * gib, 72 * gib},
		{"warn at exactly the used bytes", bytesOpts(t, pressureDeviceUsed, 10*gib, 0), pressureWarn, 10 * gib, 0},
		{"critical at exactly the used bytes", bytesOpts(t, pressureDeviceUsed, 0, 10*gib), pressureCritical, 0, 10 * gib},
		{"one byte above the used bytes", bytesOpts(t, pressureDeviceUsed, 10*gib+1, 0), pressureNone, 10*gib + 1, 0},
		{"warn in bytes, critical as a fraction", func() pressureOptions {
			o := bytesOpts(t, pressureDeviceUsed, 5*gib, 0)
			o.CriticalFraction = 0.5
			return o
		}(), pressureWarn, 5 * gib, 40 * gib},
		{"process used falls back to device used", bytesOpts(t, pressureProcessUsed, 5*gib, 20*gib), pressureWarn, 5 * gib, 20 * gib},
		{"engine reserved is 0", bytesOpts(t, pressureEngineReserved, 1, 2), pressureNone, 1, 2},
	}
	for _, c := range cases {
		setPressure(t, e, c.opts)
		requireLevel(t, e, c.level, c.warn, c.critical, c.name)
		r := optimize(t, e, 0)
		require.Equal(t, c.level, r.LevelBefore, c.name)
		require.Equal(t, c.level, r.LevelAfter, c.name)
	}

	// Refused: fractions outside 0..1, critical below warn. The thresholds before stay.
	setPressure(t, e, bytesOpts(t, pressureDeviceUsed, 5*gib, 20*gib))
	for _, f := range []float64{-0.1, 1.5, math.NaN(), math.Inf(1)} {
		o := frac(pressureDeviceUsed, f, 0)
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryEngineSetPressure(e, &o) }, "fraction")
		o = frac(pressureDeviceUsed, 0, f)
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryEngineSetPressure(e, &o) }, "fraction")
	}
	o := frac(pressureDeviceUsed, 0.5, 0.1)
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryEngineSetPressure(e, &o) }, "critical")
	o = bytesOpts(t, pressureDeviceUsed, 8*gib, 5*gib)
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryEngineSetPressure(e, &o) }, "critical")
	requireLevel(t, e, pressureWarn, 5*gib, 20*gib, "after refused calls")
}

func fakeCallbacks(t *testing.T) {
	e := newEngine(t, 0, 0)
	log := &callLog{}
	ids := []uint64{onPressure(t, e, log, 1, 0), onPressure(t, e, log, 2, 1), onPressure(t, e, log, 3, 0)}

	for _, c := range []struct {
		opts  pressureOptions
		level int32
	}{
		{bytesOpts(t, pressureDeviceUsed, 5*gib, 20*gib), pressureWarn},
		{bytesOpts(t, pressureDeviceUsed, 5*gib, 8*gib), pressureCritical},
		{pressureOpts(t), pressureNone},
	} {
		setPressure(t, e, c.opts)
		r := optimize(t, e, 32)
		require.Equal(t, c.level, r.LevelBefore)
		require.Equal(t, c.level, r.LevelAfter)
		require.Equal(t, int32(3), r.CallbacksCalled)
		require.Equal(t, int32(1), r.CallbacksFailed)
		require.Equal(t, [][2]int32{{1, c.level}, {2, c.level}, {3, c.level}}, log.take(), "in order, with the level")
	}
	requireOK(t, func() int32 { return ferryMemoryRemoveCallback(e, ids[0]) })
	setPressure(t, e, bytesOpts(t, pressureDeviceUsed, 5*gib, 8*gib))
	r := optimize(t, e, 32)
	require.Equal(t, int32(2), r.CallbacksCalled)
	require.Equal(t, [][2]int32{{2, pressureCritical}, {3, pressureCritical}}, log.take())
}

func fakeTrim(t *testing.T) {
	r := newRand(t)
	e := newEngine(t, 0, 0)
	setPressure(t, e, bytesOpts(t, pressureEngineReserved, 1, 0))
	s := check(t, e)
	require.Zero(t, s.EngineReservedBytes)
	require.Equal(t, int32(pressureNone), s.Level)
	require.Zero(t, optimize(t, e, 0).TrimmedBytes, "nothing to trim yet")

	src := newMemorySource(t, r, 64, standardSpecs)
	o := iterOptions(t, 16)
	var it iteratorHandle
	requireOK(t, func() int32 { return ferryIteratorCreate(e, src.h, &o, &it) })
	releaseBatch(t, next(t, it))
	s = check(t, e)
	require.NotZero(t, s.EngineReservedBytes, "the ring's device memory")
	require.Equal(t, int32(pressureWarn), s.Level, "engine reserved is at or above 1 byte")

	requireOK(t, func() int32 { return ferryIteratorDestroy(it) })
	s = check(t, e)
	reserved := s.EngineReservedBytes
	require.NotZero(t, reserved, "the pool keeps the ring's memory cached")
	require.Zero(t, s.EngineAllocatedBytes)
	require.Equal(t, int32(pressureWarn), s.Level)

	res := optimize(t, e, 16)
	require.GreaterOrEqual(t, res.TrimmedBytes, reserved, "the cached device memory (and pinned host memory) given back")
	require.Equal(t, int32(pressureWarn), res.LevelBefore)
	require.Equal(t, int32(pressureNone), res.LevelAfter, "trimmed back to 0 bytes reserved")
	s = check(t, e)
	require.Zero(t, s.EngineReservedBytes)
	require.Zero(t, s.HostPinnedBytes)
	require.Equal(t, int32(pressureNone), s.Level)
	require.Zero(t, optimize(t, e, 16).TrimmedBytes)
}

func fakeAdvisor(t *testing.T) {
	e := newEngine(t, 0, 0)
	require.Zero(t, optimize(t, e, 0).RecommendedBatchSize, "no advisor")

	var a advisorHandle
	requireOK(t, func() int32 { return ferryAdvisorCreate(8, &a) })
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			ferryAdvisorDestroy(a)
		}
	})
	requireOK(t, func() int32 { return ferryEngineSetAdvisor(e, a) })
	observe(t, a, 2, 9*gib)
	require.Zero(t, optimize(t, e, 0).RecommendedBatchSize, "one observation: no model yet")
	observe(t, a, 4, 17*gib) // fixed 1 GiB, 4 GiB per sample

	// No thresholds: the whole device. 70 or 80 GiB both give 16 at a multiple of 8.
	require.Equal(t, int64(16), optimize(t, e, 0).RecommendedBatchSize)
	require.Equal(t, int64(16), optimize(t, e, 8).RecommendedBatchSize, "level NONE: above the current size")

	// WARN below a 20 GiB critical threshold: at most (20 - 1) / 4 = 4, and never above the current size.
	setPressure(t, e, bytesOpts(t, pressureDeviceUsed, 5*gib, 20*gib))
	r := optimize(t, e, 16)
	require.Equal(t, int32(pressureWarn), r.LevelBefore)
	require.GreaterOrEqual(t, r.RecommendedBatchSize, int64(1))
	require.LessOrEqual(t, r.RecommendedBatchSize, int64(4))
	r = optimize(t, e, 2)
	require.GreaterOrEqual(t, r.RecommendedBatchSize, int64(1))
	require.LessOrEqual(t, r.RecommendedBatchSize, int64(2), "under pressure: never above the current size")

	// CRITICAL: never above the current size (0 when nothing fits).
	setPressure(t, e, bytesOpts(t, pressureDeviceUsed, 5*gib, 8*gib))
	r = optimize(t, e, 3)
	require.Equal(t, int32(pressureCritical), r.LevelBefore)
	require.GreaterOrEqual(t, r.RecommendedBatchSize, int64(0))
	require.LessOrEqual(t, r.RecommendedBatchSize, int64(3))

	// Detached, attached again, then destroyed while attached.
	setPressure(t, e, pressureOpts(t))
	requireOK(t, func() int32 { return ferryEngineSetAdvisor(e, 0) })
	require.Zero(t, optimize(t, e, 0).RecommendedBatchSize)
	requireOK(t, func() int32 { return ferryEngineSetAdvisor(e, a) })
	require.Equal(t, int64(16), optimize(t, e, 0).RecommendedBatchSize)
	requireOK(t, func() int32 { return ferryAdvisorDestroy(a) })
	destroyed = true
	for i := 0; i < 3; i++ {
		r = optimize(t, e, 16)
		require.Zero(t, r.RecommendedBatchSize, "the attached advisor was destroyed")
	}
}
