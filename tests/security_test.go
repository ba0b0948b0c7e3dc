package tests

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// listTree returns every path under dir.
func listTree(t *testing.T, dir string) []string {
	var out []string
	require.NoError(t, filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if p != dir {
			out = append(out, p)
		}
		return err
	}))
	return out
}

// TestLibraryWritesNothingUnlessAsked runs an engine, an iterator over a whole epoch and a monitor
// (metrics logged, summarized, the JSON report read into memory) with the working directory, HOME and
// TMPDIR pointed at empty directories: none of them gets a file. Files appear only where a report or a
// stream is asked for.
func TestLibraryWritesNothingUnlessAsked(t *testing.T) {
	cwd, home, tmp := t.TempDir(), t.TempDir(), t.TempDir()
	old, err := os.Getwd()
	require.NoError(t, err)
	require.NoError(t, os.Chdir(cwd))
	defer func() { require.NoError(t, os.Chdir(old)) }()
	t.Setenv("HOME", home)
	t.Setenv("TMPDIR", tmp)

	r := newRand(t)
	e := newCPUEngine(t, 10)
	src := newMemorySource(t, r, 40, standardSpecs)
	it := newIterator(t, e, src.h, iterOptions(t, 8))
	for i := 0; i < 5; i++ {
		releaseBatch(t, next(t, it))
	}
	m := newQuietMonitor(t)
	id := metricID(t, m, "loss")
	for i := 0; i < 10000; i++ {
		requireOK(t, func() int32 { return ferryMetricLog(m, id, float64(i)) })
	}
	require.EqualValues(t, 10000, summaryOf(t, m, id).Count)
	var n uint64
	requireStatus(t, ferryErrLimit, func() int32 { return ferryMonitorReportJSON(m, nil, 0, &n) })
	require.Positive(t, n)
	for _, d := range []string{cwd, home, tmp} {
		require.Empty(t, listTree(t, d), "the library wrote into %s unasked", d)
	}

	// Asked: a report where it is asked for, and nothing else.
	report := filepath.Join(cwd, "r.json")
	requireOK(t, func() int32 { return ferryMonitorWriteReport(m, cname(report)) })
	require.Equal(t, []string{report}, listTree(t, cwd))
	fi, err := os.Stat(report)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o644), fi.Mode().Perm())
	require.Empty(t, listTree(t, home))
	require.Empty(t, listTree(t, tmp))
}
