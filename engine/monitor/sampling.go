package monitor

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/ferry-ml/ferry/engine/internal/objstore"

	"github.com/ferry-ml/ferry/engine"

	"github.com/rs/zerolog"
)

// samplerSet is the running background samplers of a monitor.
type samplerSet struct {
	stop chan struct{}
	wg   sync.WaitGroup
}

// Pipeline is what the monitor reads of an input pipeline (a data.Iterator), and all it reads: running
// totals, the batches waiting ready, and whether it closed. Its methods must be safe to call from any
// goroutine.
type Pipeline interface {
	// Counters are running totals: batches and samples delivered, bytes of source data in them (what
	// crossed to the device on a GPU), and the time the consumer waited for data.
	Counters() (batches, samples, bytes uint64, stall time.Duration)
	// QueueDepth is the number of prefetched batches ready to be taken.
	QueueDepth() int
	// Closed reports whether the pipeline was closed; the monitor then drops it.
	Closed() bool
}

// pipelineCounters is a Pipeline's Counters at one time.
type pipelineCounters struct {
	batches, samples, bytes uint64
	stall                   time.Duration
	t                       time.Time
}

func readCounters(p Pipeline) pipelineCounters {
	var c pipelineCounters
	c.batches, c.samples, c.bytes, c.stall = p.Counters()
	c.t = time.Now()
	return c
}

// pipelineWatch is a pipeline the monitor reports on, with its counters at the previous sample.
type pipelineWatch struct {
	name string
	p    Pipeline
	prev pipelineCounters
}

// Start starts the background samplers: NVML for the GPUs (GPUInterval, and PCIe throughput at
// PCIeInterval), gopsutil for the host (SystemInterval), and the attached iterators' pipeline figures
// (at SystemInterval). Their readings are logged as metrics: gpu<N>/..., system/..., disk/<path>/...,
// pipeline/<name>/... A sampler that cannot start (no NVML) is left out and logged. Start on a running
// monitor does nothing.
func (m *Monitor) Start() error {
	if m.closed.Load() {
		return fmt.Errorf("%w: monitor", engine.ErrClosed)
	}
	m.pipeMu.Lock()
	defer m.pipeMu.Unlock()
	if m.samplers != nil {
		return nil
	}
	set := &samplerSet{stop: make(chan struct{})}
	if m.opts.GPUInterval > 0 {
		devices := m.opts.Devices
		if devices == nil {
			n, _ := engine.DeviceCount()
			for d := 0; d < n; d++ {
				devices = append(devices, d)
			}
		}
		for _, d := range devices {
			g, err := NewGPUSampler(d)
			if err != nil {
				m.log.Info().Err(err).Int("gpu", d).Msg("GPU sampler unavailable")
				continue
			}
			// The slow fields (throttle reasons, ECC, processes) about once a second, the rest every interval.
			slowEvery := max(1, int(time.Second/m.opts.GPUInterval))
			n := 0
			gl := m.log.With().Int("gpu", d).Logger()
			health := &sampleHealth{log: gl, what: "GPU sample"}
			set.every(m.opts.GPUInterval, func() {
				fields := GPUFastFields
				if n%slowEvery == 0 {
					fields |= GPUSlowFields
				}
				n++
				m.sampleGPU(g, fields, health)
			})
			if m.opts.PCIeInterval > 0 {
				pcie := &sampleHealth{log: gl, what: "GPU PCIe throughput sample"}
				set.every(m.opts.PCIeInterval, func() { m.samplePCIe(g, pcie) })
			}
		}
	}
	if m.opts.SystemInterval > 0 {
		sys, err := NewSystemSampler(m.opts.DiskPaths)
		if err != nil {
			m.log.Info().Err(err).Msg("system sampler unavailable")
		} else {
			health := &sampleHealth{log: m.log, what: "system sample"}
			set.every(m.opts.SystemInterval, func() { m.sampleSystem(sys, health) })
		}
		set.every(m.opts.SystemInterval, m.samplePipelines)
	}
	m.samplers = set
	return nil
}

// every runs fn now and then every d until the set stops, on a goroutine locked to its OS thread: the
// samplers' cgo calls then never hand their P to another thread, which costs more than the calls.
func (s *samplerSet) every(d time.Duration, fn func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			fn()
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
}

// sampleHealth logs one background sampler's failures without flooding the log: the first failure after a
// success as a warning, repeats at debug level, and the recovery at info level. One sampler goroutine
// owns it.
type sampleHealth struct {
	log     zerolog.Logger
	what    string
	failing bool
}

func (h *sampleHealth) update(err error) {
	switch {
	case err != nil && !h.failing:
		h.failing = true
		h.log.Warn().Err(err).Msg(h.what + " failed; what it could not read is left out (never logged as zero) until it recovers")
	case err != nil:
		h.log.Debug().Err(err).Msg(h.what + " failed")
	case h.failing:
		h.failing = false
		h.log.Info().Msg(h.what + " recovered")
	}
}

// Stop stops the background samplers; logged metrics stay. Start may be called again.
func (m *Monitor) Stop() error {
	m.pipeMu.Lock()
	set := m.samplers
	m.samplers = nil
	m.pipeMu.Unlock()
	if set != nil {
		close(set.stop)
		set.wg.Wait()
	}
	return nil
}

// Sampling reports whether the background samplers run.
func (m *Monitor) Sampling() bool {
	m.pipeMu.Lock()
	defer m.pipeMu.Unlock()
	return m.samplers != nil
}

// logNamed logs v at t under name, interning the name on first use.
func (m *Monitor) logNamed(name string, t uint64, v float64) {
	id, err := m.Metric(name)
	if err != nil {
		if !errors.Is(err, engine.ErrClosed) {
			m.log.Debug().Err(err).Str("metric", name).Msg("sampler metric")
		}
		return
	}
	_ = m.LogAt(id, t, v)
}

// sampleGPU logs the fields of one GPU sample that the device gave; a failed query leaves its fields out
// and the others are logged.
func (m *Monitor) sampleGPU(g *GPUSampler, fields GPUField, h *sampleHealth) {
	s, err := g.SampleFields(fields)
	h.update(err)
	p := fmt.Sprintf("gpu%d/", g.Device())
	put := func(f GPUField, name string, v float64) {
		if s.Has(f) { // an absent field is never logged as zero
			m.logNamed(p+name, s.Time, v)
		}
	}
	put(GPUUtilization, "utilization_percent", float64(s.UtilizationPercent))
	put(GPUMemoryUtilization, "memory_utilization_percent", float64(s.MemoryUtilizationPercent))
	put(GPUMemory, "memory_used_bytes", float64(s.MemoryUsed))
	put(GPUMemory, "memory_total_bytes", float64(s.MemoryTotal))
	put(GPUTemperature, "temperature_celsius", float64(s.TemperatureC))
	put(GPUPower, "power_watts", s.PowerWatts)
	put(GPUSMClock, "sm_clock_mhz", float64(s.SMClockMHz))
	put(GPUMemoryClock, "memory_clock_mhz", float64(s.MemoryClockMHz))
	put(GPUThrottleReasons, "throttle_reasons", float64(s.ThrottleReasons))
	put(GPUECCCorrected, "ecc_corrected_errors", float64(s.ECCCorrected))
	put(GPUECCUncorrected, "ecc_uncorrected_errors", float64(s.ECCUncorrected))
	if s.Has(GPUProcesses) {
		if self, ok := s.Self(); ok && self.MemoryOK {
			m.logNamed(p+"process_memory_bytes", s.Time, float64(self.MemoryUsed))
		}
		m.logNamed(p+"processes", s.Time, float64(len(s.Processes)))
	}
}

func (m *Monitor) samplePCIe(g *GPUSampler, h *sampleHealth) {
	rx, tx, ok, err := g.SamplePCIe()
	h.update(err)
	if err != nil || !ok {
		return
	}
	t := engine.MonotonicNow()
	p := fmt.Sprintf("gpu%d/", g.Device())
	m.logNamed(p+"pcie_rx_bytes_per_second", t, rx)
	m.logNamed(p+"pcie_tx_bytes_per_second", t, tx)
}

// sampleSystem logs the fields of one host sample; a path that could not be read leaves its fields out and
// the others are logged.
func (m *Monitor) sampleSystem(sys *SystemSampler, h *sampleHealth) {
	s, err := sys.Sample()
	h.update(err)
	put := func(f SystemField, name string, v float64) {
		if s.Has(f) {
			m.logNamed("system/"+name, s.Time, v)
		}
	}
	put(SysCPUPercent, "cpu_percent", s.CPUPercent)
	put(SysProcessCPUPercent, "process_cpu_percent", s.ProcessCPUPercent)
	put(SysProcessRSS, "process_rss_bytes", float64(s.ProcessRSS))
	put(SysMemoryPercent, "memory_percent", s.MemoryPercent)
	put(SysMemoryUsed, "memory_used_bytes", float64(s.MemoryUsed))
	put(SysLoad1, "load1", s.Load1)
	put(SysLoad5, "load5", s.Load5)
	put(SysLoad15, "load15", s.Load15)
	for _, d := range s.Disks {
		p := "disk/" + metricPathName(d.Path) + "/"
		dput := func(f DiskField, name string, v float64) {
			if d.Has(f) {
				m.logNamed(p+name, s.Time, v)
			}
		}
		dput(DiskUsedPercent, "used_percent", d.UsedPercent)
		dput(DiskUsed, "used_bytes", float64(d.Used))
		dput(DiskReadRate, "read_bytes_per_second", d.ReadBytesPerSec)
		dput(DiskWriteRate, "write_bytes_per_second", d.WriteBytesPerSec)
	}
}

// metricPathName turns a path into a metric name part: "/data/imagenet" -> "data_imagenet".
func metricPathName(p string) string {
	var b strings.Builder
	for _, c := range strings.Trim(p, "/") {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' {
			b.WriteRune(c)
		} else {
			b.WriteByte('_')
		}
	}
	if b.Len() == 0 {
		return "root"
	}
	return b.String()
}

// AttachIterator reports the pipeline p (a data.Iterator) under pipeline/<name>/...: batches/s, host-to-device bytes/s (the source
// bytes that crossed), queue depth (prefetched batches ready) and data stall (the share of wall time
// Next waited for data: whether training is input-bound), sampled at SystemInterval while the monitor
// runs, and once more when a report is taken (over the time since the last sample, when that is
// reportSampleAge or more), so a run shorter than the interval has its figures too. A closed iterator is
// dropped.
func (m *Monitor) AttachIterator(name string, p Pipeline) error {
	if p == nil {
		return fmt.Errorf("%w: iterator is nil", engine.ErrInvalidArgument)
	}
	if err := checkMetricName(name); err != nil || strings.Contains(name, "/") {
		return fmt.Errorf("%w: pipeline name %q: use letters, digits and the characters . _ - : only", engine.ErrInvalidArgument, name)
	}
	m.pipeMu.Lock()
	defer m.pipeMu.Unlock()
	for _, w := range m.pipes {
		if w.name == name {
			return fmt.Errorf("%w: a pipeline named %q is already attached", engine.ErrInvalidArgument, name)
		}
	}
	m.pipes = append(m.pipes, &pipelineWatch{name: name, p: p, prev: readCounters(p)})
	return nil
}

// reportSampleAge is the shortest time since a pipeline's last sample for which a report samples it again:
// rates over a shorter time are mostly noise.
const reportSampleAge = 50 * time.Millisecond

func (m *Monitor) samplePipelines() { m.samplePipelinesOlderThan(0) }

// samplePipelinesOlderThan samples the attached iterators whose last sample is minAge old or older.
func (m *Monitor) samplePipelinesOlderThan(minAge time.Duration) {
	m.pipeSampleMu.Lock()
	defer m.pipeSampleMu.Unlock()
	m.pipeMu.Lock()
	pipes := append([]*pipelineWatch(nil), m.pipes...)
	m.pipeMu.Unlock()
	for _, w := range pipes {
		if w.p.Closed() {
			m.detach(w)
			continue
		}
		c := readCounters(w.p)
		dt := c.t.Sub(w.prev.t).Seconds()
		if dt <= 0 || c.t.Sub(w.prev.t) < minAge {
			continue
		}
		t := engine.MonotonicNow()
		p := "pipeline/" + w.name + "/"
		m.logNamed(p+"batches_per_second", t, float64(c.batches-w.prev.batches)/dt)
		m.logNamed(p+"samples_per_second", t, float64(c.samples-w.prev.samples)/dt)
		m.logNamed(p+"h2d_bytes_per_second", t, float64(c.bytes-w.prev.bytes)/dt)
		m.logNamed(p+"data_stall_percent", t, 100*(c.stall-w.prev.stall).Seconds()/dt)
		m.logNamed(p+"queue_depth", t, float64(w.p.QueueDepth()))
		if sk, ok := w.p.(interface{ Skipped() uint64 }); ok {
			m.logNamed(p+"samples_skipped", t, float64(sk.Skipped()))
		}
		w.prev = c
	}
	m.sampleStorage()
}

// sampleStorage logs the object store's counters, process-wide (storage/s3/...), once anything was
// fetched or found in the object cache, and each ranged GET's duration since the last sample as a sample
// of storage/s3/fetch_seconds (whose summary gives the latency quantiles).
func (m *Monitor) sampleStorage() {
	st := &objstore.Stats
	req, hits, misses := st.Requests.Load(), st.Hits.Load(), st.Misses.Load()
	if req == 0 && hits == 0 && misses == 0 {
		return
	}
	t := engine.MonotonicNow()
	objstore.DrainLatencies(func(s float64) { m.logNamed("storage/s3/fetch_seconds", t, s) })
	m.logNamed("storage/s3/retries", t, float64(st.Retries.Load()))
	m.logNamed("storage/s3/requests", t, float64(req))
	m.logNamed("storage/s3/bytes_fetched", t, float64(st.BytesFetched.Load()))
	m.logNamed("storage/s3/cache_hits", t, float64(hits))
	m.logNamed("storage/s3/cache_misses", t, float64(misses))
}

func (m *Monitor) detach(w *pipelineWatch) {
	m.pipeMu.Lock()
	defer m.pipeMu.Unlock()
	for i, x := range m.pipes {
		if x == w {
			m.pipes = append(m.pipes[:i], m.pipes[i+1:]...)
			return
		}
	}
}
