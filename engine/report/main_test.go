package report_test

import (
	"cmp"
	"testing"

	"github.com/ferry-ml/ferry/engine/monitor"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// quietMonitor is a monitor with the samplers off, closed when the test ends.
func quietMonitor(t testing.TB, opts monitor.MonitorOptions) *monitor.Monitor {
	t.Helper()
	opts.GPUInterval, opts.SystemInterval = cmp.Or(opts.GPUInterval, -1), cmp.Or(opts.SystemInterval, -1)
	m, err := monitor.NewMonitor(opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = m.Close() })
	return m
}
