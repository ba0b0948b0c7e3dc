package data

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/monitor"

	"github.com/stretchr/testify/require"
)

// TestMultiGPUEnginesAreIndependent runs an engine and an iterator with device transforms on every GPU
// at once: each delivers its own batches, checked against the host reference, and each engine's memory
// figures count only its own pools. A monitor with no device list samples every GPU. It needs two GPUs
// (FERRY_REQUIRE_GPUS=2 makes it fail instead of skipping with fewer).
func TestMultiGPUEnginesAreIndependent(t *testing.T) {
	n, err := engine.DeviceCount()
	require.NoError(t, err)
	if n < 2 {
		if os.Getenv("FERRY_REQUIRE_GPUS") == "2" {
			t.Fatalf("FERRY_REQUIRE_GPUS=2 but %d CUDA devices are visible", n)
		}
		t.Skip("needs two GPUs")
	}
	engines := make([]*engine.Engine, 2)
	for d := range engines {
		engines[d], err = engine.Open(d, engine.WithSampleInterval(0))
		require.NoError(t, err)
		defer engines[d].Close()
	}
	base := []uint64{engines[0].MemoryCheck().EngineReserved, engines[1].MemoryCheck().EngineReserved}
	mon, err := monitor.NewMonitor(monitor.MonitorOptions{GPUInterval: 20 * time.Millisecond, SystemInterval: -1})
	require.NoError(t, err)
	defer mon.Close()
	require.NoError(t, mon.Start())

	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for d, e := range engines {
		wg.Add(1)
		go func(d int, e *engine.Engine) {
			defer wg.Done()
			src, data := transformSource(t, 4096)
			norm := Normalize{Mean: []float32{0.5}, Std: []float32{0.25}, DType: Float16, Flip: 0.5}
			it, err := NewIterator(e, src, IteratorOptions{BatchSize: 64, Shuffle: true, Seed: uint64(d), Staging: StagingMapped,
				Transforms: map[string]Transform{"image": norm}})
			if err != nil {
				errs <- err
				return
			}
			defer it.Close()
			fields := src.Fields()
			for epoch := 0; epoch < 3; epoch++ {
				for {
					b, err := it.Next(context.Background(), 0)
					if errors.Is(err, io.EOF) {
						break
					}
					if err != nil {
						errs <- err
						return
					}
					out := make([]byte, b.Fields[0].Bytes)
					if err := e.Context().MemcpyDtoH(out, b.Fields[0].Device); err != nil {
						errs <- err
						return
					}
					var want []byte
					for _, i := range b.Indices {
						want = append(want, refNormalize(norm, fields[0], data[0][i*fields[0].Bytes():(i+1)*fields[0].Bytes()],
							flipSample(0.5, uint64(d), b.Epoch, i))...)
					}
					if err := closeEnough(Float16, want, out); err != nil {
						errs <- fmt.Errorf("GPU %d, epoch %d batch %d: %w", d, b.Epoch, b.Index, err)
						return
					}
					_ = b.Release(0)
				}
			}
			if got := e.MemoryCheck().EngineReserved; got <= base[d] {
				errs <- errors.New("the engine's reservation did not grow while its iterator ran")
			}
		}(d, e)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	time.Sleep(100 * time.Millisecond)
	r := mon.Report()
	require.Contains(t, r.GPUMetrics, "0")
	require.Contains(t, r.GPUMetrics, "1")
	require.Contains(t, r.GPUMetrics["1"], "utilization_percent")
}

// closeEnough is requireClose for float16 and bfloat16 as an error, for goroutines other than the test's.
func closeEnough(d DType, want, got []byte) error {
	if len(want) != len(got) {
		return fmt.Errorf("%d bytes, want %d", len(got), len(want))
	}
	eps := 1.0 / 1024
	if d == BFloat16 {
		eps = 1.0 / 128
	}
	for i := 0; i < len(want)/d.Size(); i++ {
		w, g := decode(d, want, i), decode(d, got, i)
		if math.Abs(w-g) > eps*math.Max(math.Abs(w), 1e-3) {
			return fmt.Errorf("element %d: want %v, got %v", i, w, g)
		}
	}
	return nil
}
