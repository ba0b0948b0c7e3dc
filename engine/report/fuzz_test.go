package report_test

// Fuzz targets for every parser of outside input: the .npy header and its Python-literal dictionary,
// whole .npy files, token shards (llm.c and flat), ragged offsets files, field specs and the names the
// options take, the transforms' output rules, and the JSON report reader and merger. `go test` replays
// the seed corpora under testdata/fuzz/<FuzzName>/; `go test -run '^$' -fuzz '^FuzzName$' ./engine`
// explores further. Each target checks invariants beyond "no panic": errors wrap the documented
// sentinels and name the problem, and accepted input reads back consistently or round-trips.

import (
	"bytes"
	"encoding/json"
	"sort"
	"testing"
	"unicode/utf8"

	"github.com/ferry-ml/ferry/engine/report"

	"github.com/ferry-ml/ferry/engine/internal/testutil"

	"github.com/ferry-ml/ferry/engine"

	"github.com/stretchr/testify/require"
)

// fuzzRequireJSON checks that b is valid JSON that holds valid UTF-8 only.
func fuzzRequireJSON(t *testing.T, b []byte) {
	t.Helper()
	require.True(t, json.Valid(b), "invalid JSON: %.200s", b)
	require.True(t, utf8.Valid(b))
}

// fuzzRequireHTML checks that b is a page of the HTML reports.
func fuzzRequireHTML(t *testing.T, b []byte, err error) {
	t.Helper()
	require.NoError(t, err)
	require.True(t, utf8.Valid(b))
	require.True(t, bytes.HasPrefix(bytes.TrimSpace(b), []byte("<!DOCTYPE html>")), "%.100s", b)
}

// FuzzReports reads arbitrary bytes as a JSON report file and merges it with a second report decoded
// from other arbitrary bytes. ReadReport refuses malformed JSON (ErrFormat) and other schemas
// (ErrInvalidArgument), naming the file. A report it accepts encodes to JSON that decodes to the same
// report, renders as HTML, and merges alone and with the other one; two reports of one rank are an
// ErrInvalidArgument error. The merged report encodes as valid JSON and renders as text and HTML.
func FuzzReports(f *testing.F) {
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, a, b []byte) {
		r, err := report.ReadReport(testutil.WriteFile(t, dir, "a.json", a))
		if err != nil {
			testutil.RequireWraps(t, err, engine.ErrFormat, engine.ErrInvalidArgument, engine.ErrIO)
			require.Contains(t, err.Error(), "a.json", "the error should name the file")
			_, err := report.MergeReports([]*report.Report{r})
			testutil.RequireWraps(t, err, engine.ErrInvalidArgument)
			return
		}
		require.Equal(t, report.ReportSchema, r.Schema)
		j, err := r.JSON()
		require.NoError(t, err)
		fuzzRequireJSON(t, j)
		var back report.Report
		require.NoError(t, json.Unmarshal(j, &back), "a report's own JSON does not decode: %.300s", j)
		j2, err := back.JSON()
		require.NoError(t, err)
		require.Equal(t, string(j), string(j2), "the report changed through JSON")
		h, err := r.HTML()
		fuzzRequireHTML(t, h, err)

		reports := []*report.Report{r}
		var other report.Report
		if json.Unmarshal(b, &other) == nil {
			reports = append(reports, &other)
		}
		m, err := report.MergeReports(reports)
		switch {
		case len(reports) == 2 && other.Schema != report.ReportSchema, len(reports) == 2 && other.Rank == r.Rank:
			testutil.RequireWraps(t, err, engine.ErrInvalidArgument)
			reports = reports[:1]
			m, err = report.MergeReports(reports)
		}
		require.NoError(t, err)
		require.Equal(t, len(reports), m.NumRanks)
		require.Len(t, m.Ranks, len(reports))
		require.True(t, sort.SliceIsSorted(m.Ranks, func(i, j int) bool { return m.Ranks[i].Rank < m.Ranks[j].Rank }))
		mj, err := m.JSON()
		require.NoError(t, err)
		fuzzRequireJSON(t, mj)
		require.NotEmpty(t, m.Text())
		mh, err := m.HTML()
		fuzzRequireHTML(t, mh, err)
	})
}
