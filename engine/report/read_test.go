package report_test

import (
	"os"
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

// A report file larger than half the memory available is refused before it is read, instead of the
// runtime failing to allocate it (the file here is sparse: it takes no disk space).
func TestReadReportRefusesAFileTooLargeToRead(t *testing.T) {
	_, avail, err := engine.HostMemory()
	require.NoError(t, err)
	p := filepath.Join(t.TempDir(), "huge.json")
	f, err := os.Create(p)
	require.NoError(t, err)
	require.NoError(t, f.Truncate(int64(avail/2)+1<<20))
	require.NoError(t, f.Close())
	_, err = report.ReadReport(p)
	require.ErrorIs(t, err, engine.ErrLimit)
	require.Contains(t, err.Error(), p)
	require.Contains(t, err.Error(), "memory available")
}
