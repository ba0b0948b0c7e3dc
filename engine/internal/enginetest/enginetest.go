// Package enginetest opens engines for the tests and benchmarks of the packages built on the engine
// (the core package's own tests keep their copies: it cannot import this package). Only test files
// import it.
package enginetest

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferry-ml/ferry/engine"
)

// OpenCPU opens a CPU engine that the test closes when it ends.
func OpenCPU(t testing.TB, opts ...engine.Option) *engine.Engine {
	t.Helper()
	e, err := engine.Open(engine.CPU, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = e.Close() })
	return e
}

// BenchEngine opens an engine on GPU 0 when there is one, else on the CPU.
func BenchEngine(b *testing.B) *engine.Engine {
	b.Helper()
	device := engine.CPU
	if n, _ := engine.DeviceCount(); n > 0 {
		device = 0
	}
	e, err := engine.Open(device)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = e.Close() })
	return e
}
