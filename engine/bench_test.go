package engine

import (
	"testing"
)

// benchEngine opens an engine on GPU 0 when there is one, else on the CPU.
func benchEngine(b *testing.B) *Engine {
	b.Helper()
	device := CPU
	if n, _ := DeviceCount(); n > 0 {
		device = 0
	}
	e, err := Open(device)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = e.Close() })
	return e
}

// BenchmarkMemoryCheck is the snapshot read from Go: an atomic load and a copy.
func BenchmarkMemoryCheck(b *testing.B) {
	e := benchEngine(b)
	b.ReportAllocs()
	var sink uint64
	for b.Loop() {
		sink += e.MemoryCheck().DeviceFree
	}
	_ = sink
}

// BenchmarkMemoryCheckLive queries the driver (cuMemGetInfo) on a GPU, or the host on the CPU engine.
func BenchmarkMemoryCheckLive(b *testing.B) {
	e := benchEngine(b)
	for b.Loop() {
		if _, err := e.MemoryCheckLive(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSample is one full sample: driver, NVML per-process query and host.
func BenchmarkSample(b *testing.B) {
	e := benchEngine(b)
	for b.Loop() {
		if err := e.SampleNow(); err != nil {
			b.Fatal(err)
		}
	}
}
