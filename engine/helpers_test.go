package engine

import (
	"os"
	"os/exec"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// requireGPU skips the test when no CUDA device is visible, or fails it when FERRY_REQUIRE_GPU=1.
func requireGPU(t *testing.T) {
	t.Helper()
	n, err := DeviceCount()
	require.NoError(t, err)
	if n > 0 {
		return
	}
	if os.Getenv("FERRY_REQUIRE_GPU") == "1" {
		s, _ := System()
		t.Fatalf("FERRY_REQUIRE_GPU=1 but no CUDA device is visible (%s)", s.CUDAError)
	}
	t.Skip("no CUDA device (set FERRY_REQUIRE_GPU=1 to fail instead)")
}

// runIsolated re-runs the named test in a fresh process with extra environment, because the driver
// libraries are loaded once per process. It returns the child's combined output.
func runIsolated(t *testing.T, name string, env ...string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+name+"$", "-test.v", "-test.count=1")
	cmd.Env = append(append(os.Environ(), "FERRY_ISOLATED_CHILD=1"), env...)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "child test %s failed:\n%s", name, out)
	require.Contains(t, string(out), "--- PASS: "+name, "child did not run %s:\n%s", name, out)
	return string(out)
}

// isolatedChild skips the test unless it runs as the child of runIsolated.
func isolatedChild(t *testing.T) {
	t.Helper()
	if os.Getenv("FERRY_ISOLATED_CHILD") != "1" {
		t.Skip("runs only in a child process started by runIsolated")
	}
}
