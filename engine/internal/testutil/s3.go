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

// S3Server is an S3-compatible server (moto's server mode) on a loopback port, for a test.
type S3Server struct {
	Endpoint string
	port     int
	cmd      *exec.Cmd
	t        testing.TB
}

// StartS3 starts an S3-compatible server (moto's server mode, from the Python environment on PATH) on a
// free loopback port for the test, points the environment at it (FERRY_S3_ENDPOINT, test credentials,
// a region) and returns its endpoint. Without moto the test is skipped, or fails when FERRY_REQUIRE_S3=1
// (make test sets it).
func StartS3(t testing.TB) string { return StartS3Server(t).Endpoint }

// StartS3Server is StartS3 with a handle that stops and restarts the server (on the same port; a
// restarted server has lost its buckets).
func StartS3Server(t testing.TB) *S3Server {
	t.Helper()
	if exec.Command("python3", "-c", "import moto.server").Run() != nil {
		if os.Getenv("FERRY_REQUIRE_S3") == "1" {
			t.Fatal("FERRY_REQUIRE_S3=1 but python3 has no moto (pip install 'moto[s3]' flask flask-cors)")
		}
		t.Skip("no S3 test server: python3 has no moto (pip install 'moto[s3]' flask flask-cors)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	s := &S3Server{Endpoint: fmt.Sprintf("http://127.0.0.1:%d", port), port: port, t: t}
	s.Start()
	t.Cleanup(s.Stop)
	for k, v := range map[string]string{"FERRY_S3_ENDPOINT": s.Endpoint, "AWS_ACCESS_KEY_ID": "test",
		"AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"} {
		t.Setenv(k, v)
	}
	return s
}

// Start starts the server and waits until it answers.
func (s *S3Server) Start() {
	s.t.Helper()
	s.cmd = exec.Command("python3", "-m", "moto.server", "-H", "127.0.0.1", "-p", fmt.Sprint(s.port))
	require.NoError(s.t, s.cmd.Start())
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(s.Endpoint + "/moto-api/")
		if err == nil {
			_ = resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("the S3 test server did not answer on %s: %v", s.Endpoint, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop stops the server; a stopped server is left alone.
func (s *S3Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}
