package engine

import (
	"io"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDefaultLoggerLevelAndFormat(t *testing.T) {
	t.Setenv("FERRY_LOG", "")
	t.Setenv("FERRY_LOG_LEVEL", "debug")
	t.Setenv("FERRY_LOG_FORMAT", "")
	require.Equal(t, "debug", DefaultLogger().GetLevel().String())
	t.Setenv("FERRY_LOG_LEVEL", "")
	t.Setenv("FERRY_LOG", "error")
	require.Equal(t, "error", DefaultLogger().GetLevel().String(), "FERRY_LOG is the older name")
	t.Setenv("FERRY_LOG", "nonsense")
	require.Equal(t, "warn", DefaultLogger().GetLevel().String(), "an unknown level keeps the default")
	t.Setenv("FERRY_LOG_FORMAT", "console")
	require.Equal(t, "warn", DefaultLogger().GetLevel().String())
}

// stderrOf runs fn with standard error redirected into a pipe and returns what fn wrote there.
func stderrOf(t *testing.T, fn func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	require.NoError(t, err)
	saved := os.Stderr
	os.Stderr = w
	fn()
	os.Stderr = saved
	require.NoError(t, w.Close())
	out, err := io.ReadAll(r)
	require.NoError(t, err)
	return string(out)
}

// TestDefaultLoggerWarnsOnceOfAnUnknownLevel: an unknown FERRY_LOG_LEVEL was ignored silently; it is now
// named on standard error once, with the accepted levels, however many loggers are made.
func TestDefaultLoggerWarnsOnceOfAnUnknownLevel(t *testing.T) {
	t.Setenv("FERRY_LOG", "")
	t.Setenv("FERRY_LOG_FORMAT", "")
	out := stderrOf(t, func() {
		t.Setenv("FERRY_LOG_LEVEL", "verbose-please")
		for range 3 {
			require.Equal(t, "warn", DefaultLogger().GetLevel().String())
		}
		t.Setenv("FERRY_LOG_LEVEL", "info")
		DefaultLogger()
	})
	require.Equal(t, 1, strings.Count(out, "\n"), "one line: %s", out)
	for _, s := range []string{`"FERRY_LOG_LEVEL":"verbose-please"`, "unknown log level", "trace, debug, info, warn, error"} {
		require.Contains(t, out, s)
	}
}

// TestDefaultLoggerWarnsOnceOfAnUnknownFormat: an unknown FERRY_LOG_FORMAT fell back to JSON silently; it
// is now named on standard error once, with the accepted formats, and JSON is used.
func TestDefaultLoggerWarnsOnceOfAnUnknownFormat(t *testing.T) {
	t.Setenv("FERRY_LOG", "")
	t.Setenv("FERRY_LOG_LEVEL", "")
	out := stderrOf(t, func() {
		t.Setenv("FERRY_LOG_FORMAT", "yaml-please")
		for range 3 {
			DefaultLogger()
		}
		t.Setenv("FERRY_LOG_FORMAT", "JSON")
		DefaultLogger()
	})
	require.Equal(t, 1, strings.Count(out, "\n"), "one line: %s", out)
	for _, s := range []string{`"FERRY_LOG_FORMAT":"yaml-please"`, "unknown log format", "json and console"} {
		require.Contains(t, out, s)
	}
}
