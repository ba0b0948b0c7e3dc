package report

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/fileio"
)

// ReportSchema names the JSON report's schema; it changes only when a field's meaning changes.
const ReportSchema = "ferry.report/1"

// Float is a float64 that JSON encodes as null when it is NaN or infinite.
type Float float64

// MarshalJSON implements json.Marshaler.
func (f Float) MarshalJSON() ([]byte, error) {
	if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
		return []byte("null"), nil
	}
	return json.Marshal(float64(f))
}

// UnmarshalJSON implements json.Unmarshaler: null reads back as NaN, the value MarshalJSON writes as
// null, so that a decoded report tells an absent value from a zero.
func (f *Float) UnmarshalJSON(b []byte) error {
	if string(bytes.TrimSpace(b)) == "null" {
		*f = Float(math.NaN())
		return nil
	}
	var v float64
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("%w: %.40s is not a number", engine.ErrFormat, b)
	}
	*f = Float(v)
	return nil
}

// MetricReport is one metric in a report: its summary and its time series.
type MetricReport struct {
	Count     uint64 `json:"count"`
	NonFinite uint64 `json:"nonfinite,omitempty"`
	Mean      Float  `json:"mean"`
	Min       Float  `json:"min"`
	Max       Float  `json:"max"`
	Std       Float  `json:"std"`
	Last      Float  `json:"last"`
	P50       Float  `json:"p50"`
	P90       Float  `json:"p90"`
	P99       Float  `json:"p99"`
	P999      Float  `json:"p999"`
	// FirstS and LastS are when the first and last values were logged, in seconds since the monitor
	// started.
	FirstS Float `json:"first_s"`
	LastS  Float `json:"last_s"`
	// Series is the time series, oldest first: [seconds since start, mean, min, max, count] per point.
	Series [][5]Float `json:"series"`
}

// Report is everything a monitor knows, grouped as the seed's report was: training metrics (those the
// program logs), GPU metrics by device, system metrics, and pipeline metrics by iterator.
type Report struct {
	Schema    string  `json:"schema"`
	Ferry     string  `json:"ferry_version"`
	Created   string  `json:"created"` // RFC 3339, UTC
	Started   string  `json:"started"`
	DurationS float64 `json:"duration_s"`
	Host      string  `json:"host"`
	PID       int     `json:"pid"`
	Rank      int     `json:"rank"`
	LocalRank int     `json:"local_rank"`
	Node      string  `json:"node,omitempty"`
	Clock     string  `json:"clock"` // how values were stamped: "tsc" or "monotonic"

	TrainingMetrics map[string]*MetricReport            `json:"training_metrics"`
	GPUMetrics      map[string]map[string]*MetricReport `json:"gpu_metrics"` // by device ordinal
	SystemMetrics   map[string]*MetricReport            `json:"system_metrics"`
	PipelineMetrics map[string]map[string]*MetricReport `json:"pipeline_metrics"` // by iterator name
}

// ClassifyMetric sorts a metric name into its report group: "gpu<N>/x" -> ("gpu", "N", "x");
// "pipeline/<name>/x" -> ("pipeline", name, x); "system/x" -> ("system", "", "x"); "disk/..." ->
// ("system", "", "disk/..."); anything else is a training metric.
func ClassifyMetric(name string) (group, key, rest string) {
	head, tail, ok := strings.Cut(name, "/")
	switch {
	case ok && strings.HasPrefix(head, "gpu") && len(head) > 3 && strings.Trim(head[3:], "0123456789") == "":
		return "gpu", head[3:], tail
	case ok && head == "pipeline":
		if k, r, ok := strings.Cut(tail, "/"); ok {
			return "pipeline", k, r
		}
	case ok && head == "system":
		return "system", "", tail
	case ok && head == "disk":
		return "system", "", name
	}
	return "", "", name
}

// JSON encodes the report, indented.
func (r *Report) JSON() ([]byte, error) { return json.MarshalIndent(r, "", "  ") }

// MetricNames lists the report's training metrics, sorted.
func (r *Report) MetricNames() []string { return sortedKeys(r.TrainingMetrics) }

// WriteJSON writes the report as JSON to path (see writeFileSafely).
func (r *Report) WriteJSON(path string) error { return writeRendered(path, r.JSON) }

// ReadReport reads the JSON report a monitor wrote (Report.WriteJSON) from path. A file that cannot be
// read is an ErrIO error, one that is not JSON an ErrFormat error, and one of another schema or not a
// regular file (a named pipe is refused at once, not waited on) an ErrInvalidArgument error; each names
// the file.
func ReadReport(path string) (*Report, error) {
	f, fi, err := fileio.OpenRegular(path)
	var notRegular *fileio.NotRegularError
	if errors.As(err, &notRegular) {
		return nil, fmt.Errorf("%w: reading the report: %v", engine.ErrInvalidArgument, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: reading the report %s: %v", engine.ErrIO, path, err)
	}
	// The file is read whole and decoded: refuse one that cannot fit, rather than fail inside the runtime.
	if _, avail, err := engine.HostMemory(); err == nil && uint64(fi.Size()) > avail/2 {
		_ = f.Close()
		return nil, fmt.Errorf("%w: the report %s is %d bytes, more than half the %d bytes of memory available to read it",
			engine.ErrLimit, path, fi.Size(), avail)
	}
	b, err := io.ReadAll(f)
	_ = f.Close()
	if err != nil {
		return nil, fmt.Errorf("%w: reading the report %s: %v", engine.ErrIO, path, err)
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: %s is not a JSON report: %v", engine.ErrFormat, path, err)
	}
	if r.Schema != ReportSchema {
		return nil, fmt.Errorf("%w: %s has the schema %q; a ferry report has %q", engine.ErrInvalidArgument, path, r.Schema, ReportSchema)
	}
	return &r, nil
}

// writeRendered renders a report with render and writes the result to path (see writeFileSafely).
func writeRendered(path string, render func() ([]byte, error)) error {
	b, err := render()
	if err != nil {
		return err
	}
	return writeFileSafely(path, b)
}

// writeFileSafely writes data to path: created 0644 through a temporary file in the same directory and
// renamed over path, so a reader never sees half a file; a symbolic link at path is replaced, never
// followed. The directory must exist.
func writeFileSafely(path string, data []byte) error {
	if path == "" {
		return fmt.Errorf("%w: empty path", engine.ErrInvalidArgument)
	}
	dir := filepath.Dir(path)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return fmt.Errorf("%w: %s: the directory %s does not exist", engine.ErrInvalidArgument, path, dir)
	}
	if fi, err := os.Lstat(path); err == nil && fi.IsDir() {
		// The rename would fail with "file exists" and name the temporary file, not the problem.
		return fmt.Errorf("%w: %s is a directory; give the path of a file to write", engine.ErrInvalidArgument, path)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("%w: %v", engine.ErrIO, err)
	}
	name := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(name, path)
	}
	if err != nil {
		_ = os.Remove(name)
		return fmt.Errorf("%w: writing %s: %v", engine.ErrIO, path, err)
	}
	return nil
}
