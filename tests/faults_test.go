package tests

import (
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ebitengine/purego"
	"github.com/stretchr/testify/require"
)

// Fault injection through the C ABI: each case makes one thing fail and checks the status and the
// message a C caller sees, that no call waits without bound, that the engine's memory comes back, and
// that the library stays usable. The driver faults run on the engine's stand-in driver, whose
// environment switches inject them (engine/internal/testutil/testdata/fakecuda.c).

// faultChildEnv marks the child process of TestFaultFakeDriver.
const faultChildEnv = "FERRY_TEST_FAULT_FAKE_DRIVER_CHILD"

// faultBound is the longest any call under a fault may take before the test calls it a hang.
const faultBound = 10 * time.Second

// libcSetenv is the C library's setenv. The stand-in driver reads its switches with getenv inside the
// library, and this test binary's os.Setenv may change only Go's copy of the environment.
var libcSetenv = sync.OnceValues(func() (func(name, value string, overwrite int32) int32, error) {
	h, err := purego.Dlopen("libc.so.6", purego.RTLD_NOW|purego.RTLD_GLOBAL)
	if err != nil {
		return nil, err
	}
	var fn func(name, value string, overwrite int32) int32
	purego.RegisterLibFunc(&fn, h, "setenv")
	return fn, nil
})

// setSwitch sets a stand-in driver switch for the rest of the test, in Go's environment and in C's.
func setSwitch(t *testing.T, name, value string) {
	t.Helper()
	setenv, err := libcSetenv()
	require.NoError(t, err)
	old, had := os.LookupEnv(name)
	t.Setenv(name, value)
	require.Zero(t, setenv(name, value, 1))
	t.Cleanup(func() {
		if !had {
			old = ""
		}
		setenv(name, old, 1)
	})
}

// TestFaultUnreleasedBatches holds every batch of a ring that may not grow (a negative pinned budget):
// ferry_iterator_next returns FERRY_ERR_LIMIT at once with a message that says why, takes nothing, and
// releasing a batch lets it go on.
func TestFaultUnreleasedBatches(t *testing.T) {
	r := newRand(t)
	e := newCPUEngine(t, 0)
	src := newMemorySource(t, r, 80, standardSpecs)
	o := iterOptions(t, 8)
	o.Prefetch = 2
	o.PinnedBudget = -1
	it := newIterator(t, e, src.h, o)
	first, second := next(t, it), next(t, it)
	var b batchHandle = 0x5a5a
	start := time.Now()
	requireStatus(t, ferryErrLimit, func() int32 { return ferryIteratorNext(it, 0, &b) },
		"batch 2 of epoch 0", "2 batches of the ring are still held by the caller", "pinned budget", "release batches")
	require.Zero(t, b, "a failed ferry_iterator_next writes a NULL batch")
	require.Less(t, time.Since(start), faultBound)
	releaseBatch(t, first)
	third := next(t, it)
	info, _ := checkBatch(t, third, standardSpecs, src.ref, cpuDevice, hostRead)
	require.Equal(t, int64(2), info.Index, "the refused call took nothing")
	releaseBatch(t, second)
	releaseBatch(t, third)
	requireUsable(t)
}

// gatedSource is a callback source whose samples from `from` on wait until the returned function is called
// (a slow read: remote storage, a decoder), so that a ferry_iterator_next waits for data.
func gatedSource(t *testing.T, r *rand.Rand, n, from int64) (sourceHandle, *callbackSource, func()) {
	t.Helper()
	h, cs := newCallbackSource(t, n, standardSpecs, r.Uint64(), nil)
	gate := make(chan struct{})
	hook := func(index int64) {
		if index >= from {
			<-gate
		}
	}
	cs.hook.Store(&hook)
	var once sync.Once
	open := func() { once.Do(func() { close(gate) }) }
	t.Cleanup(open)
	return h, cs, open
}

// TestFaultUnreleasedBatchesNextWait: ferry_iterator_next_wait gives FERRY_OK and a NULL batch for each
// slice that found nothing, and the slices together time out as ferry_iterator_next does.
func TestFaultUnreleasedBatchesNextWait(t *testing.T) {
	r := newRand(t)
	e := newCPUEngine(t, 0)
	src, cs, open := gatedSource(t, r, 80, 16)
	o := iterOptions(t, 8)
	o.Prefetch = 2
	o.Workers = 1
	o.TimeoutMS = 200
	it := newIterator(t, e, src, o)
	releaseBatch(t, next(t, it))
	releaseBatch(t, next(t, it))
	start := time.Now()
	empty := 0
	for {
		var b batchHandle = 0x5a5a
		s, msg := call(t, func() int32 { return ferryIteratorNextWait(it, 0, 20, &b) })
		require.Zero(t, b, "a call that gives no batch writes a NULL batch")
		if s == ferryOK {
			empty++
			require.Less(t, time.Since(start), faultBound, "the slices must not stretch timeout_ms")
			continue
		}
		require.Equal(t, ferryErrTimeout, s, msg)
		require.Contains(t, msg, "batch 2 of epoch 0 was not ready within 200ms")
		break
	}
	require.GreaterOrEqual(t, empty, 2)
	require.GreaterOrEqual(t, time.Since(start), 200*time.Millisecond)
	open()
	third := next(t, it)
	info := batchInfo(t, third)
	require.Equal(t, int64(2), info.Index, "the empty slices took nothing")
	idx := batchIndices(t, third, info.NumSamples)
	tensor := batchField(t, third, 0)
	size := requireTensor(t, tensor, standardSpecs[0], info.NumSamples, cpuDevice)
	var want []byte
	for _, i := range idx {
		want = append(want, cs.ref(0, i)...)
	}
	require.Equal(t, want, tensorBytes(tensor, size))
	deleteTensor(t, tensor)
	releaseBatch(t, third)
	requireUsable(t)
}

// TestFaultDestroyWakesNext destroys an iterator while another thread waits in ferry_iterator_next for a
// slow source, with batches held: the destroy returns once the samples being read finish, and the waiting
// call returns FERRY_ERR_CLOSED at once.
func TestFaultDestroyWakesNext(t *testing.T) {
	r := newRand(t)
	e := newCPUEngine(t, 0)
	src, _, open := gatedSource(t, r, 80, 16)
	o := iterOptions(t, 8)
	o.Prefetch = 2 // and the default timeout: minutes
	o.Workers = 1
	var it iteratorHandle
	requireOK(t, func() int32 { return ferryIteratorCreate(e, src, &o, &it) })
	held := []batchHandle{next(t, it), next(t, it)}
	type result struct {
		status int32
		msg    string
	}
	waiting := make(chan result, 1)
	go func() {
		var b batchHandle
		s, msg := call(t, func() int32 { return ferryIteratorNext(it, 0, &b) })
		waiting <- result{s, msg}
	}()
	time.Sleep(50 * time.Millisecond) // let the call grow the ring and block on the slow read
	destroyed := make(chan int32, 1)
	go func() { destroyed <- ferryIteratorDestroy(it) }()
	select {
	case got := <-waiting:
		require.Equal(t, statusString(t, ferryErrClosed), statusString(t, got.status), "last error: %q", got.msg)
		require.Contains(t, got.msg, "iterator")
	case <-time.After(faultBound):
		t.Fatalf("ferry_iterator_next did not return within %v after the destroy began", faultBound)
	}
	open() // the sample being read finishes, and the destroy returns
	select {
	case s := <-destroyed:
		require.Equal(t, statusString(t, ferryOK), statusString(t, s))
	case <-time.After(faultBound):
		t.Fatalf("ferry_iterator_destroy did not return within %v", faultBound)
	}
	for _, b := range held {
		requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryBatchRelease(b, 0) }, "destroyed iterator")
	}
	requireUsable(t)
}

// TestFaultFakeDriver injects driver faults through the C ABI on the stand-in driver.
func TestFaultFakeDriver(t *testing.T) {
	if os.Getenv(faultChildEnv) == "1" {
		t.Skip("in the child process")
	}
	out := runOnFakeDriver(t, "TestFaultFakeDriverChild", faultChildEnv)
	for _, sub := range []string{"out_of_memory_at_create", "a_bad_consumer_stream", "destroy_while_copies_are_in_flight"} {
		require.Contains(t, out, "--- PASS: TestFaultFakeDriverChild/"+sub, "child did not run %s:\n%s", sub, out)
	}
}

// TestFaultFakeDriverChild is the child of TestFaultFakeDriver; it does nothing unless run by it.
func TestFaultFakeDriverChild(t *testing.T) {
	if os.Getenv(faultChildEnv) != "1" {
		t.Skip("runs only as the child of TestFaultFakeDriver")
	}
	r := newRand(t)
	gpu := device{kDLCUDA, 0}
	e := newEngine(t, 0, 0)
	src := newMemorySource(t, r, 100, standardSpecs)
	opts := func(timeoutMS uint32) iteratorOptions {
		o := iterOptions(t, 8)
		o.Prefetch = 3
		o.Staging = stagingGather
		o.TimeoutMS = timeoutMS
		return o
	}
	base := check(t, e).EngineAllocatedBytes

	t.Run("out of memory at create", func(t *testing.T) {
		for _, sw := range []string{"FAKECUDA_FAIL_ALLOC", "FAKECUDA_FAIL_HOSTALLOC"} {
			e := newEngine(t, 0, 0) // empty pools: the ring's memory must come from the driver
			setSwitch(t, sw, "1")
			o := opts(0)
			it := iteratorHandle(0x5a5a)
			requireStatus(t, ferryErrOutOfMemory, func() int32 { return ferryIteratorCreate(e, src.h, &o, &it) },
				"the iterator's ring of 3 batches of 8 samples", "CUDA_ERROR_OUT_OF_MEMORY")
			require.Zero(t, it, "a failed create writes a NULL iterator")
			s := check(t, e)
			require.Zero(t, s.EngineAllocatedBytes, "%s: the partial ring went back", sw)
			require.Equal(t, uint64(1), s.EngineAllocFailures, sw)
			setSwitch(t, sw, "0")
			it = newIterator(t, e, src.h, opts(0))
			b := next(t, it)
			checkBatch(t, b, standardSpecs, src.ref, gpu, hostRead)
			releaseBatch(t, b)
			requireOK(t, func() int32 { return ferryIteratorDestroy(it) })
			requireOK(t, func() int32 { return ferryEngineDestroy(e) })
		}
	})

	t.Run("a bad consumer stream", func(t *testing.T) {
		setSwitch(t, "FAKECUDA_STRICT_STREAMS", "1")
		it := newIterator(t, e, src.h, opts(0))
		b := batchHandle(0x5a5a)
		requireStatus(t, ferryErrCUDA, func() int32 { return ferryIteratorNext(it, 0xdead, &b) },
			"consumer stream 0xdead", "CUDA_ERROR_INVALID_HANDLE")
		require.Zero(t, b)
		b = next(t, it)
		info, _ := checkBatch(t, b, standardSpecs, src.ref, gpu, hostRead)
		require.Equal(t, int64(0), info.Index, "the refused batch is still the next one")
		requireStatus(t, ferryErrCUDA, func() int32 { return ferryBatchRelease(b, 0xdead) },
			"could not be ordered", "CUDA_ERROR_INVALID_HANDLE")
		requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryBatchRelease(b, 0) }, "stale")
		b = next(t, it)
		info, _ = checkBatch(t, b, standardSpecs, src.ref, gpu, hostRead)
		require.Equal(t, int64(1), info.Index)
		releaseBatch(t, b)
		requireOK(t, func() int32 { return ferryIteratorDestroy(it) })
		require.Equal(t, base, check(t, e).EngineAllocatedBytes)
	})

	t.Run("destroy while copies are in flight", func(t *testing.T) {
		setSwitch(t, "FAKECUDA_BUSY_MS", "-1") // the copies never complete
		it := newIterator(t, e, src.h, opts(150))
		releaseBatch(t, next(t, it))
		start := time.Now()
		requireStatus(t, ferryErrTimeout, func() int32 { return ferryIteratorDestroy(it) },
			"copies in flight did not complete within 150ms")
		require.Less(t, time.Since(start), faultBound)
		requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryIteratorDestroy(it) })
		setSwitch(t, "FAKECUDA_BUSY_MS", "0")
		require.Equal(t, base, check(t, e).EngineAllocatedBytes, "the ring went back all the same")
	})
	requireUsable(t)
}
