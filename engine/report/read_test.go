package report_test

import (
	"path/filepath"
	"testing"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/testutil"
	"github.com/ferry-ml/ferry/engine/report"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// A report path that is a named pipe (or a directory) is refused at once: reading a pipe that no process
// writes would wait for ever, and `ferry report merge` would hang.
func TestReadReportRefusesWhatIsNotAFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "report.json")
	require.NoError(t, unix.Mkfifo(fifo, 0o600))
	for _, p := range []string{fifo, dir} {
		err := testutil.Within(t, testutil.FaultBound, "ReadReport", func() error {
			_, err := report.ReadReport(p)
			return err
		})
		require.ErrorIs(t, err, engine.ErrInvalidArgument)
		require.Contains(t, err.Error(), p+" is not a regular file")
	}
	_, err := report.MergeReportFiles(fifo)
	require.ErrorIs(t, err, engine.ErrInvalidArgument)
}
