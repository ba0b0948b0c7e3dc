// Package testutil holds the helpers that the tests of several engine packages share: the GPU gate, a
// re-run of one test in a child process, and the stand-in CUDA driver and NVML built from C sources.
// Only test files import it.
package testutil

import (
	"bufio"
	_ "embed"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ferry-ml/ferry/engine/internal/cuda"
)

// RequireGPU skips the test when no CUDA device is visible, or fails it when FERRY_REQUIRE_GPU=1.
func RequireGPU(t testing.TB) {
	t.Helper()
	n, err := cuda.DeviceCount()
	if errors.Is(err, cuda.ErrNotLoaded) {
		n, err = 0, nil
	}
	require.NoError(t, err)
	if n > 0 {
		return
	}
	if os.Getenv("FERRY_REQUIRE_GPU") == "1" {
		why := "the driver reports no device"
		if err := cuda.Load(); err != nil {
			why = err.Error()
		}
		t.Fatalf("FERRY_REQUIRE_GPU=1 but no CUDA device is visible (%s)", why)
	}
	t.Skip("no CUDA device (set FERRY_REQUIRE_GPU=1 to fail instead)")
}

// RunIsolated re-runs the named test in a fresh process with extra environment, because the driver
// libraries are loaded once per process. It returns the child's combined output.
func RunIsolated(t testing.TB, name string, env ...string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+name+"$", "-test.v", "-test.count=1")
	cmd.Env = append(append(os.Environ(), "FERRY_ISOLATED_CHILD=1"), env...)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "child test %s failed:\n%s", name, out)
	require.Contains(t, string(out), "--- PASS: "+name, "child did not run %s:\n%s", name, out)
	return string(out)
}

// IsolatedChild skips the test unless it runs as the child of RunIsolated.
func IsolatedChild(t testing.TB) {
	t.Helper()
	if os.Getenv("FERRY_ISOLATED_CHILD") != "1" {
		t.Skip("runs only in a child process started by RunIsolated")
	}
}

// The stand-in libraries' sources, embedded so that a compiled test binary builds them anywhere.
var (
	//go:embed testdata/fakecuda.c
	fakeCUDA []byte
	//go:embed testdata/fakenvml.c
	fakeNVML []byte
)

// buildFake compiles a stand-in library from C source and returns its path.
func buildFake(t testing.TB, source []byte, file, name string) string {
	t.Helper()
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "cc"
	}
	dir := t.TempDir()
	src := filepath.Join(dir, file)
	require.NoError(t, os.WriteFile(src, source, 0o644))
	out := filepath.Join(dir, name)
	cmd := exec.Command(cc, "-std=c11", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", out, src)
	msg, err := cmd.CombinedOutput()
	require.NoError(t, err, "building %s: %s", file, msg)
	return out
}

// buildFakeDriver compiles the stand-in CUDA driver (testdata/fakecuda.c: its environment switches
// inject faults) and returns the library's path.
func buildFakeDriver(t testing.TB) string {
	return buildFake(t, fakeCUDA, "fakecuda.c", "libcuda.so.1")
}

// buildFakeNVML compiles the stand-in NVML (testdata/fakenvml.c) and returns the library's path.
func buildFakeNVML(t testing.TB) string {
	return buildFake(t, fakeNVML, "fakenvml.c", "libnvidia-ml.so.1")
}

// MiB is a mebibyte.
const MiB = 1 << 20

// FaultBound is how long a call may take under an injected fault before the test calls it a hang.
const FaultBound = 10 * time.Second

// Within runs fn and fails the test if it does not return within d.
func Within[T any](t testing.TB, d time.Duration, what string, fn func() T) T {
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

// RequireWraps fails the test unless err wraps one of sentinels with a message that says more than the
// sentinel does.
func RequireWraps(t testing.TB, err error, sentinels ...error) {
	t.Helper()
	require.Error(t, err)
	for _, s := range sentinels {
		if errors.Is(err, s) {
			require.Greater(t, len(err.Error()), len(s.Error())+2, "the error %q does not name the problem", err)
			return
		}
	}
	t.Fatalf("the error %q wraps none of %v", err, sentinels)
}

// CPUTime is the CPU time the process has used (user and system).
func CPUTime(b testing.TB) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// MemTotalFromProc reads MemTotal from /proc/meminfo, independently of the engine's own reader.
func MemTotalFromProc(t testing.TB) uint64 {
	t.Helper()
	f, err := os.Open("/proc/meminfo")
	require.NoError(t, err)
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, err := strconv.ParseUint(fields[1], 10, 64)
			require.NoError(t, err)
			return kb * 1024
		}
	}
	t.Fatal("MemTotal not found in /proc/meminfo")
	return 0
}

// WriteFile writes data to name in dir, replacing what was there, and returns its path. A fuzz worker runs
// its inputs one after another, so a target reuses one directory and a few names.
func WriteFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, data, 0o644))
	return p
}

// RunOnFakeDriver re-runs the named test in a child process (RunIsolated) on the stand-in CUDA driver,
// with the stand-in NVML when nvml is true and no NVML otherwise, and returns the child's output.
func RunOnFakeDriver(t testing.TB, name string, nvml bool, env ...string) string {
	t.Helper()
	nvmlLib := "/nonexistent/libnvidia-ml.so.1"
	if nvml {
		nvmlLib = buildFakeNVML(t)
	}
	return RunIsolated(t, name, append([]string{"FERRY_CUDA_LIBRARY=" + buildFakeDriver(t), "FERRY_NVML_LIBRARY=" + nvmlLib}, env...)...)
}

// ExactMeanStd returns the mean and the population standard deviation of vs computed in exact rational
// arithmetic and rounded to float64 (the deviation through a 200-bit square root): the reference that
// the streaming statistics are checked against.
func ExactMeanStd(vs []float64) (mean, std float64) {
	n := new(big.Rat).SetInt64(int64(len(vs)))
	sum := new(big.Rat)
	for _, v := range vs {
		sum.Add(sum, new(big.Rat).SetFloat64(v))
	}
	mu := new(big.Rat).Quo(sum, n)
	m2 := new(big.Rat)
	for _, v := range vs {
		d := new(big.Rat).Sub(new(big.Rat).SetFloat64(v), mu)
		m2.Add(m2, d.Mul(d, d))
	}
	m2.Quo(m2, n)
	mean, _ = mu.Float64()
	f := new(big.Float).SetPrec(200).SetRat(m2)
	std, _ = f.Sqrt(f).Float64()
	return mean, std
}
