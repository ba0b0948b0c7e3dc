package tests

import (
	"bytes"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// heldTensor is one field of a batch, exported as a DLPack tensor, and what it must hold.
type heldTensor struct {
	tensor *dlManagedTensor
	n      int
	want   []byte
}

// takeTensors exports every field of b and records the bytes each must hold.
func takeTensors(t *testing.T, b batchHandle, src *memSource, dev device) []heldTensor {
	t.Helper()
	info := batchInfo(t, b)
	idx := batchIndices(t, b, info.NumSamples)
	var out []heldTensor
	for k, spec := range src.specs {
		tensor := batchField(t, b, k)
		out = append(out, heldTensor{tensor, requireTensor(t, tensor, spec, info.NumSamples, dev), expected(src.ref, k, idx)})
	}
	return out
}

// tensorsOutliveChecks destroys an iterator, and then its engine, while DLPack tensors of its batches are
// alive: the tensors stay readable (the memory they point to must not be unmapped under them), and their
// deleters, run afterwards, free it without crashing.
func tensorsOutliveChecks(t *testing.T, device int32, dev device, read readFunc) {
	for _, releaseFirst := range []bool{false, true} {
		for _, destroyEngine := range []bool{false, true} {
			t.Run(fmt.Sprintf("release first %v, engine destroyed %v", releaseFirst, destroyEngine), func(t *testing.T) {
				r := newRand(t)
				src := newMemorySource(t, r, 100, standardSpecs)
				e := newEngine(t, device, 0)
				o := iterOptions(t, 10)
				o.Prefetch = 3
				var it iteratorHandle
				requireOK(t, func() int32 { return ferryIteratorCreate(e, src.h, &o, &it) })
				var tensors []heldTensor
				var handles []batchHandle
				for range 2 {
					b := next(t, it)
					tensors = append(tensors, takeTensors(t, b, src, dev)...)
					if releaseFirst {
						releaseBatch(t, b) // the tensors alone hold the batch now
					} else {
						handles = append(handles, b)
					}
				}
				requireOK(t, func() int32 { return ferryIteratorDestroy(it) })
				if destroyEngine {
					requireOK(t, func() int32 { return ferryEngineDestroy(e) })
				}
				for i, h := range tensors {
					require.True(t, bytes.Equal(h.want, read(t, h.tensor, h.n)), "tensor %d after the destroy", i)
				}
				for _, h := range tensors {
					deleteTensor(t, h.tensor)
				}
				// A handle kept past the destroy: its release says the iterator is gone, and drops the last
				// reference all the same.
				for _, b := range handles {
					requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryBatchRelease(b, 0) }, "destroyed iterator")
				}
				requireUsable(t)
			})
		}
	}
}

// TestTensorsOutliveIteratorAndEngine is the C side of "closing a loader never unmaps memory a live tensor
// uses" on the CPU engine.
func TestTensorsOutliveIteratorAndEngine(t *testing.T) {
	tensorsOutliveChecks(t, ferryDeviceCPU, cpuDevice, hostRead)
}

// TestGPUTensorsOutliveIteratorAndEngine is the same with device memory (and the page-locked ring).
func TestGPUTensorsOutliveIteratorAndEngine(t *testing.T) {
	requireGPU(t)
	d := openCUDA(t)
	tensorsOutliveChecks(t, 0, device{kDLCUDA, 0}, d.read)
}

// residentBytes is the process's resident memory (VmRSS), after the Go heap gave its free memory back.
func residentBytes(t *testing.T) int64 {
	t.Helper()
	debug.FreeOSMemory()
	b, err := os.ReadFile("/proc/self/status")
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmRSS:" {
			kib, err := strconv.ParseInt(f[1], 10, 64)
			require.NoError(t, err)
			return kib << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// TestTensorDeleterAfterEngineDestroyFrees checks that the memory kept for tensors past their engine's
// destroy is freed by their deleters: many engine lifetimes, each ending with a 4 MiB tensor alive past
// the destroys, leave the resident memory flat (a leak would add 4 MiB per cycle).
func TestTensorDeleterAfterEngineDestroyFrees(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("needs /proc/self/status")
	}
	const sample, batch, cycles = 1 << 20, 4, 50
	r := newRand(t)
	src := newMemorySource(t, r, 2*batch, []fieldSpec{{name: "big", dtype: dtypeUint8, shape: []int64{sample}}})
	cycle := func() {
		e := newEngine(t, ferryDeviceCPU, 0)
		o := iterOptions(t, batch)
		o.Prefetch = 2
		var it iteratorHandle
		requireOK(t, func() int32 { return ferryIteratorCreate(e, src.h, &o, &it) })
		b := next(t, it)
		tensors := takeTensors(t, b, src, cpuDevice)
		releaseBatch(t, b)
		requireOK(t, func() int32 { return ferryIteratorDestroy(it) })
		requireOK(t, func() int32 { return ferryEngineDestroy(e) })
		for _, h := range tensors {
			require.True(t, bytes.Equal(h.want, tensorBytes(h.tensor, h.n)), "the tensor after the destroys")
			deleteTensor(t, h.tensor)
		}
	}
	for range 3 {
		cycle()
	}
	before := residentBytes(t)
	for range cycles {
		cycle()
	}
	grown := residentBytes(t) - before
	require.Less(t, grown, int64(cycles*batch*sample/4),
		"resident memory grew by %d MiB over %d cycles: the rings of destroyed engines were not freed", grown>>20, cycles)
}
