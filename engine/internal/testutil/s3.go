package testutil

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// StartS3 starts an S3-compatible server (moto's server mode, from the Python environment on PATH) on a
// free loopback port for the test, points the environment at it (FERRY_S3_ENDPOINT, test credentials,
// a region, a cache folder of the test's own) and returns its endpoint. Without moto the test is skipped,
// or fails when FERRY_REQUIRE_S3=1 (make test sets it).
func StartS3(t testing.TB) string {
	t.Helper()
	if exec.Command("python3", "-c", "import moto.server").Run() != nil {
		if os.Getenv("FERRY_REQUIRE_S3") == "1" {
			t.Fatal("FERRY_REQUIRE_S3=1 but python3 has no moto (pip install 'moto[server]')")
		}
		t.Skip("no S3 test server: python3 has no moto (pip install 'moto[server]')")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	cmd := exec.Command("python3", "-m", "moto.server", "-H", "127.0.0.1", "-p", fmt.Sprint(port))
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	endpoint := fmt.Sprintf("http://127.0.0.1:%d", port)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(endpoint + "/moto-api/")
		if err == nil {
			_ = resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the S3 test server did not answer on %s: %v", endpoint, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for k, v := range map[string]string{"FERRY_S3_ENDPOINT": endpoint, "AWS_ACCESS_KEY_ID": "test",
		"AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"} {
		t.Setenv(k, v)
	}
	return endpoint
}
