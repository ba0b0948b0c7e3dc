package monitor

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"sync"
	"syscall"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/fileio"
)

// jsonlSink writes every logged value as one JSON line: {"t": seconds since the monitor started,
// "metric": name, "value": v} (value null when not finite).
type jsonlSink struct {
	m   *Monitor
	w   *bufio.Writer
	err error
	buf []byte
}

func (k *jsonlSink) put(id MetricID, t uint64, v float64) {
	if k.err != nil {
		return
	}
	b := append(k.buf[:0], `{"t":`...)
	b = strconv.AppendFloat(b, float64(int64(t-k.m.t0))/1e9, 'f', 9, 64)
	b = append(b, `,"metric":`...)
	b = strconv.AppendQuote(b, k.m.MetricName(id))
	b = append(b, `,"value":`...)
	if math.IsNaN(v) || math.IsInf(v, 0) {
		b = append(b, "null"...)
	} else {
		b = strconv.AppendFloat(b, v, 'g', -1, 64)
	}
	b = append(b, "}\n"...)
	k.buf = b
	_, k.err = k.w.Write(b)
}

func (k *jsonlSink) flush() {
	if k.err == nil {
		k.err = k.w.Flush()
	}
}

// StreamJSONL writes every value logged from now on to w as JSON lines ({"t": seconds since the monitor
// started, "metric": name, "value": v}), once each and in the order each writer (goroutine, C thread)
// logged them, flushed at each fold (every 100 ms; a value logged while a fold runs waits for the next
// one). The returned function stops the stream, flushes and returns the first write error.
func (m *Monitor) StreamJSONL(w io.Writer) (stop func() error, err error) {
	if w == nil {
		return nil, fmt.Errorf("%w: writer is nil", engine.ErrInvalidArgument)
	}
	k := &jsonlSink{m: m, w: bufio.NewWriterSize(w, 64<<10)}
	m.addSink(k)
	var once sync.Once
	return func() error {
		once.Do(func() { m.removeSink(k) })
		k.flush()
		return k.err
	}, nil
}

// StreamJSONLFile streams to the file at path (see StreamJSONL), created with mode 0644 or truncated. A
// symbolic link at path is refused (O_NOFOLLOW), never followed. A named pipe is written to when a
// process reads it, and refused at once when none does (the open would otherwise wait for one for ever).
// The returned function stops the stream and closes the file.
func (m *Monitor) StreamJSONLFile(path string) (stop func() error, err error) {
	if path == "" {
		return nil, fmt.Errorf("%w: empty path", engine.ErrInvalidArgument)
	}
	f, err := fileio.OpenWrite(path, os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%w: opening %s for the JSONL stream: %v", engine.ErrIO, path, err)
	}
	stopStream, err := m.StreamJSONL(f)
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return func() error {
		err := stopStream()
		if cerr := f.Close(); err == nil && cerr != nil && !errors.Is(cerr, os.ErrClosed) {
			err = cerr
		}
		return err
	}, nil
}
