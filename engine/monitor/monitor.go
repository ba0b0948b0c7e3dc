package monitor

import (
	"fmt"
	"math"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-ml/ferry/engine"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/DataDog/sketches-go/ddsketch/mapping"
	"github.com/DataDog/sketches-go/ddsketch/store"
	"github.com/rs/zerolog"
)

// Defaults and limits of MonitorOptions.
const (
	DefaultGPUInterval    = 100 * time.Millisecond
	MinSampleInterval     = 10 * time.Millisecond
	DefaultPCIeInterval   = time.Second
	DefaultSystemInterval = time.Second
	DefaultSketchAccuracy = 0.005
	DefaultSeriesPoints   = 512
	MaxMetrics            = 1 << 16
	maxMetricName         = 256
	sketchBins            = 2048
	logRingEntries        = 4096 // per shard
	drainInterval         = 100 * time.Millisecond
)

// MetricID names an interned metric; Monitor.Metric gives it.
type MetricID uint32

// MonitorOptions configures NewMonitor. The zero value of each field selects its default.
type MonitorOptions struct {
	// GPUInterval is how often NVML samples the GPUs (default 100 ms, at least 10 ms); negative turns
	// the GPU sampler off. PCIeInterval is the PCIe throughput's own cadence (default 1 s): NVML's
	// counter blocks for about 20 ms a reading.
	GPUInterval, PCIeInterval time.Duration
	// Devices are the GPUs to sample; nil samples every GPU.
	Devices []int
	// SystemInterval is how often gopsutil samples the host (default 1 s); negative turns it off.
	SystemInterval time.Duration
	// DiskPaths are the paths whose file systems and block devices the system sampler reads.
	DiskPaths []string
	// SketchAccuracy is the quantile sketch's relative accuracy (default 0.005: a quantile is within
	// 0.5 % of a value of the right rank).
	SketchAccuracy float64
	// SeriesPoints bounds each metric's time series (default 512): when full, neighbouring points merge,
	// so the series covers the whole run at a coarser step.
	SeriesPoints int
	// Labels identify the process in reports and Prometheus: rank, local rank, node. Rank and LocalRank
	// default to RANK and LOCAL_RANK from the environment when set.
	Rank, LocalRank int
	Node            string
	// Logger replaces the default logger.
	Logger *zerolog.Logger
}

// Monitor records metrics: values logged from any thread at nanosecond cost, folded in the background
// into exact summaries (count, mean, min, max, std by Welford), streaming quantiles (DDSketch) and a
// bounded time series per metric; GPU, host and pipeline samplers that log into the same metrics; and
// reports (JSON, HTML, JSONL, Prometheus).
//
// Log, LogMany, Metric, Summary, Series and Report are safe from any goroutine; Close from one.
type Monitor struct {
	opts  MonitorOptions
	log   zerolog.Logger
	clock *tickClock
	start time.Time
	t0    uint64 // MonotonicNow at creation

	names  sync.Map // name -> MetricID
	nameMu sync.Mutex
	nids   atomic.Uint32
	states atomic.Pointer[[]*metricState] // by MetricID; grows under nameMu

	shards    []logShard // Go callers, one per P
	shardMask int

	foldMu  sync.Mutex // folds: the metrics' summaries and the rings' tails
	sources []EntrySource
	sinks   []sink // under foldMu: JSONL and others, fed by folds
	// held are values folded into the summaries but not yet given to the sinks (stamped after the
	// fold's cut; see takeLocked); under foldMu, empty while there is no sink.
	held []heldEntry

	samplers *samplerSet
	pipeMu   sync.Mutex
	pipes    []*pipelineWatch
	// pipeSampleMu serializes pipeline samples: the sampler's and those a report takes.
	pipeSampleMu sync.Mutex

	closed  atomic.Bool
	stop    chan struct{}
	drained chan struct{}
}

// NewMonitor creates a monitor. Sampling starts with Start; logging works at once.
func NewMonitor(opts MonitorOptions) (*Monitor, error) {
	if opts.GPUInterval == 0 {
		opts.GPUInterval = DefaultGPUInterval
	}
	if opts.PCIeInterval == 0 {
		opts.PCIeInterval = DefaultPCIeInterval
	}
	if opts.SystemInterval == 0 {
		opts.SystemInterval = DefaultSystemInterval
	}
	for _, c := range []struct {
		name string
		d    time.Duration
	}{{"GPU", opts.GPUInterval}, {"PCIe", opts.PCIeInterval}, {"system", opts.SystemInterval}} {
		if c.d > 0 && (c.d < MinSampleInterval || c.d > engine.MaxSampleInterval) {
			return nil, fmt.Errorf("%w: %s sample interval %v is outside %v..%v (negative turns it off)",
				engine.ErrInvalidArgument, c.name, c.d, MinSampleInterval, engine.MaxSampleInterval)
		}
	}
	if opts.SketchAccuracy == 0 {
		opts.SketchAccuracy = DefaultSketchAccuracy
	}
	if !(opts.SketchAccuracy > 0 && opts.SketchAccuracy < 0.5) {
		return nil, fmt.Errorf("%w: sketch accuracy %g must be in (0, 0.5)", engine.ErrInvalidArgument, opts.SketchAccuracy)
	}
	if opts.SeriesPoints == 0 {
		opts.SeriesPoints = DefaultSeriesPoints
	}
	if opts.SeriesPoints < 16 || opts.SeriesPoints > 1<<20 {
		return nil, fmt.Errorf("%w: series points %d must be 16..%d", engine.ErrInvalidArgument, opts.SeriesPoints, 1<<20)
	}
	if opts.Rank == 0 && opts.LocalRank == 0 {
		if r, _, ok, err := engine.RankFromEnv(); err == nil && ok {
			opts.Rank = r
		}
		if v, ok := engine.LookupEnv("LOCAL_RANK"); ok {
			_, _ = fmt.Sscan(v, &opts.LocalRank) // not a number: local rank 0, as before LOCAL_RANK was read
		}
	}
	m := &Monitor{opts: opts, clock: newTickClock(), start: time.Now(), t0: engine.MonotonicNow(),
		stop: make(chan struct{}), drained: make(chan struct{})}
	if opts.Logger != nil {
		m.log = *opts.Logger
	} else {
		m.log = engine.DefaultLogger()
	}
	m.log = m.log.With().Str("component", "monitor").Logger()
	n := 1
	for n < runtime.GOMAXPROCS(0) {
		n <<= 1
	}
	m.shards = make([]logShard, n)
	m.shardMask = n - 1
	for i := range m.shards {
		m.shards[i].buf = make([]logEntry, logRingEntries)
	}
	empty := []*metricState{}
	m.states.Store(&empty)
	go m.drainLoop()
	return m, nil
}

// Metric interns name and returns its ID; the same name always gives the same ID. Names are 1..256
// bytes of letters, digits and . _ - / : (Prometheus names are derived from them).
func (m *Monitor) Metric(name string) (MetricID, error) {
	if id, ok := m.names.Load(name); ok {
		return id.(MetricID), nil
	}
	if err := checkMetricName(name); err != nil {
		return 0, err
	}
	if m.closed.Load() {
		return 0, fmt.Errorf("%w: monitor", engine.ErrClosed)
	}
	m.nameMu.Lock()
	defer m.nameMu.Unlock()
	if id, ok := m.names.Load(name); ok {
		return id.(MetricID), nil
	}
	old := *m.states.Load()
	if len(old) >= MaxMetrics {
		return 0, fmt.Errorf("%w: a monitor holds at most %d metrics", engine.ErrLimit, MaxMetrics)
	}
	// The cubically interpolated mapping gives the same accuracy guarantee as the logarithmic one
	// without a logarithm per value (a third of the cost), for about 1 % more bins.
	mp, err := mapping.NewCubicallyInterpolatedMapping(m.opts.SketchAccuracy)
	if err != nil {
		return 0, fmt.Errorf("%w: sketch: %v", engine.ErrInvalidArgument, err)
	}
	sk := ddsketch.NewDDSketch(mp, store.NewCollapsingLowestDenseStore(sketchBins), store.NewCollapsingLowestDenseStore(sketchBins))
	st := &metricState{name: name, sketch: sk, mapping: mp, min: math.Inf(1), max: math.Inf(-1)}
	st.series.init(m.opts.SeriesPoints)
	grown := append(append(make([]*metricState, 0, len(old)+1), old...), st)
	id := MetricID(len(old))
	m.foldMu.Lock() // folds index the slice: publish it between folds
	m.states.Store(&grown)
	m.foldMu.Unlock()
	m.nids.Store(uint32(len(grown)))
	m.names.Store(name, id)
	return id, nil
}

func checkMetricName(name string) error {
	if name == "" || len(name) > maxMetricName {
		return fmt.Errorf("%w: metric name %q must be 1..%d bytes", engine.ErrInvalidArgument, name, maxMetricName)
	}
	for _, c := range name {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("._-/:", c)
		if !ok {
			return fmt.Errorf("%w: metric name %q has %q; use letters, digits and the characters . _ - / : only", engine.ErrInvalidArgument, name, c)
		}
	}
	return nil
}

// Origin is the time, on MonotonicNow's clock, that reports count seconds from: the monitor's creation.
func (m *Monitor) Origin() uint64 { return m.t0 }

// NumMetrics is the number of interned metrics; IDs are 0..NumMetrics-1.
func (m *Monitor) NumMetrics() int { return int(m.nids.Load()) }

// LookupMetric returns the ID of the metric named name without creating it: an ErrInvalidArgument
// error for a name no one has logged or registered (a typo would otherwise create an empty metric).
func (m *Monitor) LookupMetric(name string) (MetricID, error) {
	if id, ok := m.names.Load(name); ok {
		return id.(MetricID), nil
	}
	if err := checkMetricName(name); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%w: no metric is named %q (a metric exists once it is logged or registered)",
		engine.ErrInvalidArgument, name)
}

// MetricName is the name of id, or "" when id is unknown.
func (m *Monitor) MetricName(id MetricID) string {
	st := *m.states.Load()
	if int(id) >= len(st) {
		return ""
	}
	return st[id].name
}

// Names returns the interned metric names, sorted.
func (m *Monitor) Names() []string {
	st := *m.states.Load()
	out := make([]string, len(st))
	for i, s := range st {
		out[i] = s.name
	}
	sort.Strings(out)
	return out
}

// Close stops the samplers and the background fold, folds what is pending, and refuses new metrics.
// Summaries and reports still work after Close. A second Close returns ErrClosed.
func (m *Monitor) Close() error {
	if !m.closed.CompareAndSwap(false, true) {
		return fmt.Errorf("%w: monitor was already closed", engine.ErrClosed)
	}
	err := m.Stop()
	close(m.stop)
	<-m.drained
	m.Flush()
	return err
}

func f64bits(f float64) uint64     { return math.Float64bits(f) }
func f64frombits(b uint64) float64 { return math.Float64frombits(b) }
