package main

// #include "exports.h"
import "C"

import (
	"fmt"
	"math"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/monitor"
)

const kindMonitor = uint64(C.FERRY_CAPI_KIND_MONITOR)

// monitorEntry is a monitor and its C side: its slot of the pure-C metric log.
type monitorEntry struct {
	m     *monitor.Monitor
	slot  uint32
	h     uint64
	mu    sync.Mutex // stopP, stopJ
	stopP func() error
	stopJ func() error
}

var monitors = newRegistry[*monitorEntry](kindMonitor, "ferry_monitor", C.FERRY_CAPI_MAX_MONITORS)

// cRings drains the monitor's per-thread C rings (see metric_log.c) into the engine's fold.
type cRings struct {
	slot uint32
	buf  []C.ferry_capi_mentry
}

func (r *cRings) Drain(fold func(id monitor.MetricID, ticks uint64, v float64)) {
	for {
		n := int(C.ferry_capi_monitor_take(C.uint32_t(r.slot), &r.buf[0], C.int(len(r.buf))))
		for _, e := range r.buf[:n] {
			fold(monitor.MetricID(e.id), uint64(e.ticks), float64(e.value))
		}
		if n < len(r.buf) {
			return
		}
	}
}

//export ferryMonitorFull
func ferryMonitorFull(h C.uint64_t) {
	defer func() { _ = recover() }() // never unwind into C
	if e, err := monitors.get(uint64(h)); err == nil {
		e.m.Flush()
	}
}

func defaultMonitorOptions() C.ferry_monitor_options {
	return C.ferry_monitor_options{size: C.uint32_t(unsafe.Sizeof(C.ferry_monitor_options{}))}
}

//export ferry_monitor_options_init
func ferry_monitor_options_init(opts *C.ferry_monitor_options) C.ferry_status {
	return call("ferry_monitor_options_init", func() error {
		if opts == nil {
			return errNull("opts")
		}
		*opts = defaultMonitorOptions()
		return nil
	})
}

func usToDuration(us C.int64_t) time.Duration {
	if us < 0 {
		return -1
	}
	if us > math.MaxInt64/1000 {
		return math.MaxInt64 // beyond any interval: the engine's range check refuses it
	}
	return time.Duration(us) * time.Microsecond
}

//export ferry_monitor_create
func ferry_monitor_create(opts *C.ferry_monitor_options, out *C.uintptr_t) C.ferry_status {
	return call("ferry_monitor_create", func() error {
		if out == nil {
			return errNull("monitor")
		}
		*out = 0
		o := defaultMonitorOptions()
		if opts != nil {
			if err := checkSize("ferry_monitor_options", opts.size, C.FERRY_CAPI_V1_MONITOR_OPTIONS); err != nil {
				return err
			}
			o = *opts
		}
		if o.flags&^C.FERRY_MONITOR_F_START != 0 {
			return fmt.Errorf("%w: ferry_monitor_options.flags %#x has unknown bits", engine.ErrInvalidArgument, uint32(o.flags))
		}
		mo := monitor.MonitorOptions{
			GPUInterval: usToDuration(o.gpu_interval_us), PCIeInterval: usToDuration(o.pcie_interval_us),
			SystemInterval: usToDuration(o.system_interval_us), SketchAccuracy: float64(o.sketch_accuracy),
			SeriesPoints: int(o.series_points), Rank: int(o.rank), LocalRank: int(o.local_rank),
		}
		if o.node != nil {
			mo.Node = C.GoString(o.node)
		}
		if o.num_disk_paths < 0 || o.num_disk_paths > 64 {
			return fmt.Errorf("%w: num_disk_paths is %d; it must be 0..64", engine.ErrInvalidArgument, int32(o.num_disk_paths))
		}
		if o.num_disk_paths > 0 {
			if o.disk_paths == nil {
				return errNull("disk_paths (num_disk_paths > 0)")
			}
			for i, p := range unsafe.Slice(o.disk_paths, int(o.num_disk_paths)) {
				if p == nil {
					return fmt.Errorf("%w: disk_paths[%d] is NULL", engine.ErrInvalidArgument, i)
				}
				mo.DiskPaths = append(mo.DiskPaths, C.GoString(p))
			}
		}
		m, err := monitor.NewMonitor(mo)
		if err != nil {
			return err
		}
		e := &monitorEntry{m: m}
		h, idx, err := monitors.add(e)
		if err != nil {
			_ = m.Close()
			return err
		}
		e.slot, e.h = idx, h
		m.AddEntrySource(&cRings{slot: idx, buf: make([]C.ferry_capi_mentry, 4096)})
		tsc, _ := monitor.UseTSC()
		useTSC := C.int(0)
		if tsc {
			useTSC = 1
		}
		C.ferry_capi_monitor_bind(C.uint32_t(idx), C.uint64_t(h), useTSC)
		if o.flags&C.FERRY_MONITOR_F_START != 0 {
			if err := m.Start(); err != nil {
				_ = destroyMonitor(e, idx) // the failure to start is the error to report
				return err
			}
		}
		*out = C.uintptr_t(h)
		return nil
	})
}

func destroyMonitor(e *monitorEntry, idx uint32) error {
	C.ferry_capi_monitor_unbind(C.uint32_t(idx))
	e.mu.Lock()
	var err error
	if e.stopP != nil {
		err = e.stopP()
		e.stopP = nil
	}
	if e.stopJ != nil {
		if jerr := e.stopJ(); err == nil {
			err = jerr
		}
		e.stopJ = nil
	}
	e.mu.Unlock()
	if cerr := e.m.Close(); err == nil {
		err = cerr
	}
	monitors.release(idx)
	return err
}

//export ferry_monitor_destroy
func ferry_monitor_destroy(h C.uintptr_t) C.ferry_status {
	return call("ferry_monitor_destroy", func() error {
		if h == 0 {
			return nil
		}
		e, idx, err := monitors.take(uint64(h))
		if err != nil {
			return err
		}
		return destroyMonitor(e, idx)
	})
}

//export ferry_monitor_start
func ferry_monitor_start(h C.uintptr_t) C.ferry_status {
	return call("ferry_monitor_start", func() error {
		e, err := monitors.get(uint64(h))
		if err != nil {
			return err
		}
		return e.m.Start()
	})
}

//export ferry_monitor_stop
func ferry_monitor_stop(h C.uintptr_t) C.ferry_status {
	return call("ferry_monitor_stop", func() error {
		e, err := monitors.get(uint64(h))
		if err != nil {
			return err
		}
		return e.m.Stop()
	})
}

//export ferry_metric_id
func ferry_metric_id(h C.uintptr_t, name *C.char, id *C.uint32_t) C.ferry_status {
	return metricByName("ferry_metric_id", h, name, id, func(e *monitorEntry, n string) (monitor.MetricID, error) {
		mid, err := e.m.Metric(n)
		if err == nil {
			C.ferry_capi_monitor_set_metrics(C.uint32_t(e.slot), C.uint32_t(e.m.NumMetrics()))
		}
		return mid, err
	})
}

//export ferry_metric_find
func ferry_metric_find(h C.uintptr_t, name *C.char, id *C.uint32_t) C.ferry_status {
	return metricByName("ferry_metric_find", h, name, id, func(e *monitorEntry, n string) (monitor.MetricID, error) {
		return e.m.LookupMetric(n)
	})
}

// metricByName checks the arguments of a metric look-up by name, runs it, and writes the ID.
func metricByName(fn string, h C.uintptr_t, name *C.char, id *C.uint32_t,
	lookup func(e *monitorEntry, name string) (monitor.MetricID, error)) C.ferry_status {
	return call(fn, func() error {
		e, err := monitors.get(uint64(h))
		if err != nil {
			return err
		}
		if name == nil {
			return errNull("name")
		}
		if id == nil {
			return errNull("id")
		}
		mid, err := lookup(e, C.GoString(name))
		if err != nil {
			return err
		}
		*id = C.uint32_t(mid)
		return nil
	})
}

// valuesCount checks a batch of values passed to the ferry_metric_log_many calls: 0 for an empty
// batch, which needs no pointer.
func valuesCount(values *C.double, count C.int64_t) (int, error) {
	if count < 0 || count > 1<<31 {
		return 0, fmt.Errorf("%w: count is %d; it must be 0..%d", engine.ErrInvalidArgument, int64(count), 1<<31)
	}
	if count > 0 && values == nil {
		return 0, errNull("values")
	}
	return int(count), nil
}

//export ferry_metric_log_many
func ferry_metric_log_many(h C.uintptr_t, id C.uint32_t, values *C.double, count C.int64_t) C.ferry_status {
	return call("ferry_metric_log_many", func() error {
		e, err := monitors.get(uint64(h))
		if err != nil {
			return err
		}
		if n, err := valuesCount(values, count); n == 0 || err != nil {
			return err
		}
		return e.m.LogMany(monitor.MetricID(id), unsafe.Slice((*float64)(unsafe.Pointer(values)), int(count)))
	})
}

//export ferry_metric_log_many_at
func ferry_metric_log_many_at(h C.uintptr_t, id C.uint32_t, values *C.double, ts *C.uint64_t, count C.int64_t) C.ferry_status {
	return call("ferry_metric_log_many_at", func() error {
		e, err := monitors.get(uint64(h))
		if err != nil {
			return err
		}
		if n, err := valuesCount(values, count); n == 0 || err != nil {
			return err
		}
		if ts == nil {
			return errNull("timestamps_ns")
		}
		return e.m.LogManyAt(monitor.MetricID(id), unsafe.Slice((*float64)(unsafe.Pointer(values)), int(count)),
			unsafe.Slice((*uint64)(unsafe.Pointer(ts)), int(count)))
	})
}

//export ferry_metric_summary_get
func ferry_metric_summary_get(h C.uintptr_t, id C.uint32_t, out *C.ferry_metric_summary) C.ferry_status {
	return call("ferry_metric_summary_get", func() error {
		e, err := monitors.get(uint64(h))
		if err != nil {
			return err
		}
		if out == nil {
			return errNull("out")
		}
		if err := checkSize("ferry_metric_summary", out.size, C.FERRY_CAPI_V1_METRIC_SUMMARY); err != nil {
			return err
		}
		s, err := e.m.Summary(monitor.MetricID(id))
		if err != nil {
			return err
		}
		size := out.size
		*out = C.ferry_metric_summary{size: size, count: C.uint64_t(s.Count), nonfinite: C.uint64_t(s.NonFinite),
			mean: C.double(s.Mean), min: C.double(s.Min), max: C.double(s.Max), std: C.double(s.Std), last: C.double(s.Last),
			p50: C.double(s.P50), p90: C.double(s.P90), p99: C.double(s.P99), p999: C.double(s.P999),
			first_ns: C.uint64_t(s.First), last_ns: C.uint64_t(s.LastTime)}
		return nil
	})
}

//export ferry_monitor_report_json
func ferry_monitor_report_json(h C.uintptr_t, buf *C.char, capacity C.uint64_t, length *C.uint64_t) C.ferry_status {
	return call("ferry_monitor_report_json", func() error {
		e, err := monitors.get(uint64(h))
		if err != nil {
			return err
		}
		if length == nil {
			return errNull("length")
		}
		js, err := e.m.Report().JSON()
		if err != nil {
			return fmt.Errorf("encoding the report: %w", err) // FERRY_ERR_INTERNAL
		}
		*length = C.uint64_t(len(js))
		if buf == nil || uint64(capacity) < uint64(len(js))+1 {
			return fmt.Errorf("%w: the report is %d bytes; pass a buffer of at least %d", engine.ErrLimit, len(js), len(js)+1)
		}
		dst := unsafe.Slice((*byte)(unsafe.Pointer(buf)), len(js)+1)
		copy(dst, js)
		dst[len(js)] = 0
		return nil
	})
}

//export ferry_monitor_write_report
func ferry_monitor_write_report(h C.uintptr_t, path *C.char) C.ferry_status {
	return call("ferry_monitor_write_report", func() error {
		e, err := monitors.get(uint64(h))
		if err != nil {
			return err
		}
		p, err := cPath(path)
		if err != nil {
			return err
		}
		r := e.m.Report()
		if lower := strings.ToLower(p); strings.HasSuffix(lower, ".html") || strings.HasSuffix(lower, ".htm") {
			return r.WriteHTML(p)
		}
		return r.WriteJSON(p)
	})
}

//export ferry_monitor_stream_jsonl
func ferry_monitor_stream_jsonl(h C.uintptr_t, path *C.char) C.ferry_status {
	return call("ferry_monitor_stream_jsonl", func() error {
		e, err := monitors.get(uint64(h))
		if err != nil {
			return err
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		if path == nil {
			if e.stopJ == nil {
				return nil
			}
			err := e.stopJ()
			e.stopJ = nil
			return err
		}
		if e.stopJ != nil {
			return fmt.Errorf("%w: the monitor already streams JSON lines (pass NULL to stop it first)", engine.ErrInvalidArgument)
		}
		stop, err := e.m.StreamJSONLFile(C.GoString(path))
		if err != nil {
			return err
		}
		e.stopJ = stop
		return nil
	})
}

//export ferry_monitor_serve_prometheus
func ferry_monitor_serve_prometheus(h C.uintptr_t, addr *C.char, bound *C.char, boundLen C.uint32_t) C.ferry_status {
	return call("ferry_monitor_serve_prometheus", func() error {
		e, err := monitors.get(uint64(h))
		if err != nil {
			return err
		}
		a := ""
		if addr != nil {
			a = C.GoString(addr)
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.stopP != nil {
			return fmt.Errorf("%w: the monitor already serves Prometheus metrics", engine.ErrInvalidArgument)
		}
		got, stop, err := e.m.ServePrometheus(a)
		if err != nil {
			return err
		}
		e.stopP = stop
		if bound != nil && boundLen > 0 {
			setString(unsafe.Slice(bound, int(min(uint32(boundLen), 1<<12))), got.String())
		}
		return nil
	})
}

//export ferry_monitor_attach_iterator
func ferry_monitor_attach_iterator(h C.uintptr_t, name *C.char, ih C.uintptr_t) C.ferry_status {
	return call("ferry_monitor_attach_iterator", func() error {
		e, err := monitors.get(uint64(h))
		if err != nil {
			return err
		}
		it, err := iterators.get(uint64(ih))
		if err != nil {
			return err
		}
		if name == nil {
			return errNull("name")
		}
		return e.m.AttachIterator(C.GoString(name), it)
	})
}

//export ferry_monitor_attach_feed
func ferry_monitor_attach_feed(h C.uintptr_t, name *C.char, fh C.uintptr_t) C.ferry_status {
	return call("ferry_monitor_attach_feed", func() error {
		e, err := monitors.get(uint64(h))
		if err != nil {
			return err
		}
		f, err := feeds.get(uint64(fh))
		if err != nil {
			return err
		}
		if name == nil {
			return errNull("name")
		}
		return e.m.AttachIterator(C.GoString(name), f)
	})
}
