package monitor

import (
	"cmp"
	"fmt"
	"slices"
	"sort"
	"sync/atomic"
	"time"
	_ "unsafe" // for go:linkname

	"github.com/ferry-ml/ferry/engine"
)

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
