package monitor

import (
	"cmp"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	_ "unsafe" // for go:linkname

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

// metricState is one metric's fold: the exact statistics, the sketch and the series.
type metricState struct {
	name      string
	n         uint64
	mean, m2  float64
	min, max  float64
	last      float64
	nonfinite uint64 // NaN and ±Inf values: counted, left out of the statistics
	first     uint64 // ns of the first value
	lastT     uint64
	sketch    *ddsketch.DDSketch
	mapping   mapping.IndexMapping
	series    series
}

// logEntry is one logged value.
type logEntry struct {
	id    uint32
	_     uint32
	ticks uint64
	v     float64
}

// heldEntry is a folded value waiting for the sinks: its stamp in ticks and in ns.
type heldEntry struct {
	id        MetricID
	ticks, ns uint64
	v         float64
}

// logShard is a single-producer ring: the goroutine pinned to one P writes, the folder reads.
type logShard struct {
	head atomic.Uint64
	_    [56]byte
	tail atomic.Uint64
	_    [56]byte
	buf  []logEntry
}

// EntrySource is a buffer of logged values outside the Monitor, drained with its own: the C API's
// per-thread rings. Drain calls fold for each pending value, in order, and marks them consumed.
type EntrySource interface {
	Drain(fold func(id MetricID, ticks uint64, v float64))
}

// push appends e to the ring; false when it is full. Only the ring's producer calls it.
func (s *logShard) push(e logEntry) bool {
	h := s.head.Load()
	if h-s.tail.Load() >= uint64(len(s.buf)) {
		return false
	}
	s.buf[h&uint64(len(s.buf)-1)] = e
	s.head.Store(h + 1)
	return true
}

//go:linkname procPin runtime.procPin
func procPin() int

//go:linkname procUnpin runtime.procUnpin
func procUnpin()

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
			fmt.Sscan(v, &opts.LocalRank)
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
			return fmt.Errorf("%w: metric name %q has %q; use letters, digits and . _ - / :", engine.ErrInvalidArgument, name, c)
		}
	}
	return nil
}

// Origin is the time, on MonotonicNow's clock, that reports count seconds from: the monitor's creation.
func (m *Monitor) Origin() uint64 { return m.t0 }

// NumMetrics is the number of interned metrics; IDs are 0..NumMetrics-1.
func (m *Monitor) NumMetrics() int { return int(m.nids.Load()) }

// MetricName is the name of id, or "" when id is unknown.
func (m *Monitor) MetricName(id MetricID) string {
	st := *m.states.Load()
	if int(id) >= len(st) {
		return ""
	}
	return st[id].name
}

// errUnknownMetric is returned for an ID that Metric did not give.
var errUnknownMetric = fmt.Errorf("%w: unknown metric id", engine.ErrInvalidArgument)

// Log records v for metric id, stamped now. It takes no lock and allocates nothing: the value goes
// into the calling P's ring, folded into the metric's summary in the background (within 100 ms) or
// at the next Summary or Report. A full ring is folded by the caller rather than dropped.
func (m *Monitor) Log(id MetricID, v float64) error {
	if uint32(id) >= m.nids.Load() {
		return fmt.Errorf("%w: %d (the monitor has %d metrics)", errUnknownMetric, id, m.nids.Load())
	}
	t := ticks()
	for {
		p := procPin()
		if p > m.shardMask { // GOMAXPROCS grew after NewMonitor: no ring of its own for this P
			procUnpin()
			return m.LogAt(id, m.clock.toNanos(t), v)
		}
		if m.shards[p].push(logEntry{id: uint32(id), ticks: t, v: v}) {
			procUnpin()
			return nil
		}
		procUnpin()
		m.Flush() // back-pressure: fold, then retry
	}
}

// LogMany records every value of vs for metric id with one timestamp (a batch's per-sample losses, a
// numpy array from Python). It folds them directly: the cost per value is the fold's.
func (m *Monitor) LogMany(id MetricID, vs []float64) error {
	if uint32(id) >= m.nids.Load() {
		return fmt.Errorf("%w: %d (the monitor has %d metrics)", errUnknownMetric, id, m.nids.Load())
	}
	if len(vs) == 0 {
		return nil
	}
	m.foldMu.Lock()
	defer m.foldMu.Unlock()
	m.takeLocked()
	// Stamped after the drain, with the same calibration as the values it folded: those came first.
	t := m.clock.toNanos(ticks())
	(*m.states.Load())[id].addBatch(t, vs)
	for _, k := range m.sinks {
		for _, v := range vs {
			k.put(id, t, v)
		}
		k.flush()
	}
	return nil
}

// LogManyAt records vs[i] for metric id at the CLOCK_MONOTONIC times ts[i] (ns): values a binding
// buffered with their own timestamps (Python's log_metric), folded at once.
func (m *Monitor) LogManyAt(id MetricID, vs []float64, ts []uint64) error {
	if uint32(id) >= m.nids.Load() {
		return fmt.Errorf("%w: %d (the monitor has %d metrics)", errUnknownMetric, id, m.nids.Load())
	}
	if len(vs) != len(ts) {
		return fmt.Errorf("%w: %d values and %d timestamps", engine.ErrInvalidArgument, len(vs), len(ts))
	}
	m.foldMu.Lock()
	defer m.foldMu.Unlock()
	m.takeLocked()
	(*m.states.Load())[id].addBatchAt(ts, vs)
	for _, k := range m.sinks {
		for i, v := range vs {
			k.put(id, ts[i], v)
		}
		k.flush()
	}
	return nil
}

// LogAt records v for metric id at the CLOCK_MONOTONIC time t (ns): for samplers and replays.
func (m *Monitor) LogAt(id MetricID, t uint64, v float64) error {
	if uint32(id) >= m.nids.Load() {
		return fmt.Errorf("%w: %d (the monitor has %d metrics)", errUnknownMetric, id, m.nids.Load())
	}
	m.foldMu.Lock()
	defer m.foldMu.Unlock()
	if len(m.sinks) > 0 {
		m.takeLocked() // the caller's values still in the rings reach the sinks first
	}
	(*m.states.Load())[id].add(t, v)
	for _, k := range m.sinks {
		k.put(id, t, v)
	}
	return nil
}

// AddEntrySource adds a buffer that every fold drains (the C API's per-thread rings).
func (m *Monitor) AddEntrySource(s EntrySource) {
	m.foldMu.Lock()
	m.sources = append(m.sources, s)
	m.foldMu.Unlock()
}

// Flush folds every pending value into the summaries.
func (m *Monitor) Flush() {
	m.foldMu.Lock()
	m.drainLocked()
	m.foldMu.Unlock()
}

// drainLocked folds the Go rings and the entry sources, gives the sinks what they may have (see
// takeLocked) and flushes them; foldMu is held.
func (m *Monitor) drainLocked() {
	m.takeLocked()
	for _, k := range m.sinks {
		k.flush()
	}
}

// takeLocked folds every pending value of the Go rings and the entry sources into the summaries, and
// gives the sinks, in stamp order, the values stamped at or before the fold's cut; foldMu is held.
//
// The rings are per P and per C thread, not per writer: a goroutine that moves to another P between two
// logs leaves its values in two rings, and a C thread may hold two rings of one monitor. Given to the
// sinks ring by ring, its later values could precede its earlier ones. So the sinks get them sorted by
// stamp (a writer's stamps increase). A fold also reads the rings one after another while writers go on:
// it may miss a value in a ring it already read and take the same writer's next value from a later
// ring. The cut, read before any ring, tells those apart: a value stamped at or before it was logged
// after its writer's earlier values were published, so before the cut was read, and this fold or an
// earlier one took them. Values stamped after it wait in m.held for a later fold. The summaries take
// every value at once: they do not depend on the order.
func (m *Monitor) takeLocked() {
	m.clock.calibrate()
	cut := ticks() // before any ring is read
	states := *m.states.Load()
	toSinks := len(m.sinks) > 0
	fold := func(id MetricID, t uint64, v float64) {
		if int(id) >= len(states) {
			return
		}
		ns := m.clock.toNanos(t)
		states[id].add(ns, v)
		if toSinks {
			m.held = append(m.held, heldEntry{id: id, ticks: t, ns: ns, v: v})
		}
	}
	for i := range m.shards {
		s := &m.shards[i]
		tail, head := s.tail.Load(), s.head.Load()
		for ; tail < head; tail++ {
			e := s.buf[tail&uint64(len(s.buf)-1)]
			fold(MetricID(e.id), e.ticks, e.v)
		}
		s.tail.Store(tail)
		if h := drainHook.Load(); h != nil {
			(*h)(m, i)
		}
	}
	for _, src := range m.sources {
		src.Drain(fold)
	}
	if !toSinks {
		return
	}
	h := m.held
	byTicks := func(a, b heldEntry) int { return cmp.Compare(a.ticks, b.ticks) }
	if !slices.IsSortedFunc(h, byTicks) {
		slices.SortStableFunc(h, byTicks)
	}
	n := sort.Search(len(h), func(i int) bool { return h[i].ticks > cut })
	for _, e := range h[:n] {
		for _, k := range m.sinks {
			k.put(e.id, e.ns, e.v)
		}
	}
	m.held = h[:copy(h, h[n:])]
}

// drainHook, when set (by tests only), runs in every fold after it took shard i's entries.
var drainHook atomic.Pointer[func(m *Monitor, shard int)]

func (m *Monitor) drainLoop() {
	defer close(m.drained)
	t := time.NewTicker(drainInterval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			m.Flush()
		}
	}
}

// add folds one value: Welford's update, the sketch and the series. Non-finite values are counted apart.
func (s *metricState) add(t uint64, v float64) {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		s.nonfinite++
		return
	}
	if s.n == 0 || t < s.first {
		s.first = t
	}
	s.n++
	d := v - s.mean
	s.mean += d / float64(s.n)
	s.m2 += d * (v - s.mean)
	s.min = math.Min(s.min, v)
	s.max = math.Max(s.max, v)
	if t >= s.lastT { // rings fold one after another: the last value is the latest, not the last folded
		s.last, s.lastT = v, t
	}
	_ = s.sketch.Add(v)
	s.series.add(t, v)
}

// addBatchAt folds values with their own timestamps (in time order, as a buffer collects them): the
// statistics and the sketch as addBatch does, and one series point per run of values that fall in the
// same series interval.
func (s *metricState) addBatchAt(ts []uint64, vs []float64) {
	start := 0
	for i := 1; i <= len(vs); i++ {
		if i < len(vs) && s.series.sameStep(ts[start], ts[i]) {
			continue
		}
		s.addBatchSpan(ts[start], ts[i-1], vs[start:i])
		start = i
	}
}

// addBatch folds values that share the timestamp t: their statistics are computed apart, two passes
// with no division per value, and merged (Chan et al.'s parallel update); the series gets one point.
func (s *metricState) addBatch(t uint64, vs []float64) { s.addBatchSpan(t, t, vs) }

// addBatchSpan folds values logged between first and last (one series interval).
func (s *metricState) addBatchSpan(first, last uint64, vs []float64) {
	var n uint64
	sum, lo, hi := 0.0, math.Inf(1), math.Inf(-1)
	lastV := math.NaN()
	// The sketch's own Add, less its per-value checks: indexable values go straight to their store.
	pos, neg := s.sketch.GetPositiveValueStore(), s.sketch.GetNegativeValueStore()
	minIdx, maxIdx := s.mapping.MinIndexableValue(), s.mapping.MaxIndexableValue()
	for _, v := range vs {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			s.nonfinite++
			continue
		}
		n++
		sum += v
		lo, hi = math.Min(lo, v), math.Max(hi, v)
		lastV = v
		switch {
		case v > minIdx && v <= maxIdx:
			pos.Add(s.mapping.Index(v))
		case v < -minIdx && v >= -maxIdx:
			neg.Add(s.mapping.Index(-v))
		default:
			_ = s.sketch.Add(v) // zero, and the rare value beyond the mapping's range
		}
	}
	if n == 0 {
		return
	}
	mean := sum / float64(n)
	m2 := 0.0
	for _, v := range vs {
		if !math.IsNaN(v) && !math.IsInf(v, 0) {
			d := v - mean
			m2 += d * d
		}
	}
	if s.n == 0 || first < s.first {
		s.first = first
	}
	total := s.n + n
	d := mean - s.mean
	s.m2 += m2 + d*d*float64(s.n)*float64(n)/float64(total)
	s.mean += d * float64(n) / float64(total)
	s.n = total
	s.min, s.max = math.Min(s.min, lo), math.Max(s.max, hi)
	if last >= s.lastT {
		s.last, s.lastT = lastV, last
	}
	s.series.addPoint(first, SeriesPoint{Count: n, Mean: mean, Min: lo, Max: hi, Last: lastV})
}

// Summary is a metric's statistics: exact count, mean, min, max, std (population) and last value;
// p50..p999 from the sketch, each within its relative accuracy of a value of that rank.
type Summary struct {
	Name                      string
	Count                     uint64
	NonFinite                 uint64 // NaN and ±Inf values logged, left out of the rest
	Mean, Min, Max, Std, Last float64
	P50, P90, P99, P999       float64
	First, LastTime           uint64 // CLOCK_MONOTONIC ns of the first and last value
}

func (s *metricState) summary() Summary {
	out := Summary{Name: s.name, Count: s.n, NonFinite: s.nonfinite, First: s.first, LastTime: s.lastT}
	if s.n == 0 {
		nan := math.NaN()
		out.Mean, out.Min, out.Max, out.Std, out.Last = nan, nan, nan, nan, nan
		out.P50, out.P90, out.P99, out.P999 = nan, nan, nan, nan
		return out
	}
	out.Mean, out.Min, out.Max, out.Last = s.mean, s.min, s.max, s.last
	out.Std = math.Sqrt(s.m2 / float64(s.n))
	q, err := s.sketch.GetValuesAtQuantiles([]float64{0.5, 0.9, 0.99, 0.999})
	if err == nil {
		// The sketch's value is within its relative accuracy; clamp it into the exact range.
		for i := range q {
			q[i] = math.Min(math.Max(q[i], s.min), s.max)
		}
		out.P50, out.P90, out.P99, out.P999 = q[0], q[1], q[2], q[3]
	}
	return out
}

// Summary folds pending values and returns the metric's summary. Its cost does not depend on how many
// values were logged.
func (m *Monitor) Summary(id MetricID) (Summary, error) {
	if uint32(id) >= m.nids.Load() {
		return Summary{}, fmt.Errorf("%w: %d (the monitor has %d metrics)", errUnknownMetric, id, m.nids.Load())
	}
	m.foldMu.Lock()
	defer m.foldMu.Unlock()
	m.drainLocked()
	return (*m.states.Load())[id].summary(), nil
}

// Series returns the metric's time series (oldest first).
func (m *Monitor) Series(id MetricID) ([]SeriesPoint, error) {
	if uint32(id) >= m.nids.Load() {
		return nil, fmt.Errorf("%w: %d (the monitor has %d metrics)", errUnknownMetric, id, m.nids.Load())
	}
	m.foldMu.Lock()
	defer m.foldMu.Unlock()
	m.drainLocked()
	return (*m.states.Load())[id].series.points(), nil
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

// sink receives every folded value, under the fold lock, in the order each writer logged them (a
// goroutine, a C thread, a sampler).
type sink interface {
	put(id MetricID, t uint64, v float64)
	flush()
}

func (m *Monitor) addSink(k sink) {
	m.foldMu.Lock()
	m.drainLocked() // values logged before the sink existed are not sent to it
	m.sinks = append(m.sinks, k)
	m.foldMu.Unlock()
}

func (m *Monitor) removeSink(k sink) {
	m.foldMu.Lock()
	m.drainLocked()
	for i, x := range m.sinks {
		if x == k {
			m.sinks = append(m.sinks[:i], m.sinks[i+1:]...)
			break
		}
	}
	if len(m.sinks) == 0 {
		m.held = nil // logged while the last sink was being removed: for no one
	}
	m.foldMu.Unlock()
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
