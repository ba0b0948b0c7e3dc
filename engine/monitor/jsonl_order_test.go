package monitor

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ferry-ml/ferry/engine"

	"github.com/stretchr/testify/require"
)

// shardedMonitor is a quiet monitor with at least two Go rings (GOMAXPROCS is raised to 2 while it is
// created when it is lower).
func shardedMonitor(t *testing.T) (*Monitor, MetricID) {
	t.Helper()
	if runtime.GOMAXPROCS(0) < 2 {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	}
	m := quietMonitor(t, MonitorOptions{})
	require.GreaterOrEqual(t, len(m.shards), 2)
	id, err := m.Metric("loss")
	require.NoError(t, err)
	return m, id
}

// streamValues returns the values of the JSON lines in b, in order.
func streamValues(t *testing.T, b *bytes.Buffer) []float64 {
	t.Helper()
	var out []float64
	sc := bufio.NewScanner(b)
	for sc.Scan() {
		var line struct {
			Value float64 `json:"value"`
		}
		require.NoError(t, json.Unmarshal(sc.Bytes(), &line), sc.Text())
		out = append(out, line.Value)
	}
	return out
}

func upTo(n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = float64(i)
	}
	return out
}

// pushTo writes v into Go ring i as Log does on the P of that index: it stands for a goroutine that logs
// on P i (the test's goroutine is the only one that logs to these monitors).
func pushTo(t *testing.T, m *Monitor, i int, id MetricID, v float64) {
	t.Helper()
	require.True(t, m.shards[i].push(logEntry{id: uint32(id), ticks: ticks(), v: v}))
}

// TestMonitorJSONLPerWriterOrder checks that every value one writer logs after StreamJSONL returned is
// in the stream once, in the order it was logged, when the writer's values are spread over several
// rings: a goroutine that moves to another P between two logs, a fold that reads the rings while the
// writer moves, a C thread with two rings, and Log followed by LogAt.
func TestMonitorJSONLPerWriterOrder(t *testing.T) {
	t.Run("goroutine moves to a lower P", func(t *testing.T) {
		m, id := shardedMonitor(t)
		require.NoError(t, m.Log(id, 0.5)) // before the stream: not in it
		var buf bytes.Buffer
		stop, err := m.StreamJSONL(&buf)
		require.NoError(t, err)
		// The writer logs 0..62 on the last P, then 63..99 on P 0, with no fold in between (one fold takes
		// both runs): the fold must not write them ring by ring.
		m.foldMu.Lock()
		last := len(m.shards) - 1
		for i := 0; i < 63; i++ {
			pushTo(t, m, last, id, float64(i))
		}
		for i := 63; i < 100; i++ {
			pushTo(t, m, 0, id, float64(i))
		}
		m.foldMu.Unlock()
		for i := 100; i < 120; i++ {
			require.NoError(t, m.Log(id, float64(i)))
		}
		require.NoError(t, stop())
		require.Equal(t, upTo(120), streamValues(t, &buf))
	})

	t.Run("fold reads the rings while the writer moves", func(t *testing.T) {
		m, id := shardedMonitor(t)
		var buf bytes.Buffer
		stop, err := m.StreamJSONL(&buf)
		require.NoError(t, err)
		// A fold takes ring 0 (empty) and pauses; the writer logs 0 on P 0, then 1 on P 1; the fold goes on
		// to ring 1 and takes 1 without 0, which the next fold takes.
		var armed atomic.Bool
		paused, resume := make(chan struct{}), make(chan struct{})
		hook := func(mm *Monitor, shard int) {
			if mm == m && shard == 0 && armed.CompareAndSwap(true, false) {
				close(paused)
				<-resume
			}
		}
		drainHook.Store(&hook)
		defer drainHook.Store(nil)
		armed.Store(true)
		folded := make(chan struct{})
		go func() {
			m.Flush()
			close(folded)
		}()
		<-paused // this fold or the background one
		pushTo(t, m, 0, id, 0)
		pushTo(t, m, 1, id, 1)
		close(resume)
		<-folded
		for i := 2; i < 10; i++ {
			require.NoError(t, m.Log(id, float64(i)))
		}
		require.NoError(t, stop())
		require.Equal(t, upTo(10), streamValues(t, &buf))
	})

	t.Run("C thread with two rings", func(t *testing.T) {
		m, id := shardedMonitor(t)
		src := &twoRingSource{}
		m.AddEntrySource(src)
		var buf bytes.Buffer
		stop, err := m.StreamJSONL(&buf)
		require.NoError(t, err)
		src.log(id, 10)
		require.NoError(t, stop())
		require.Equal(t, upTo(10), streamValues(t, &buf))
	})

	t.Run("Log then LogAt", func(t *testing.T) {
		m, id := shardedMonitor(t)
		var buf bytes.Buffer
		stop, err := m.StreamJSONL(&buf)
		require.NoError(t, err)
		for i := 0; i < 5; i++ {
			pushTo(t, m, 0, id, float64(i)) // as Log does
			require.NoError(t, m.LogAt(id, engine.MonotonicNow(), float64(i)+0.5))
		}
		require.NoError(t, stop())
		require.Equal(t, []float64{0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5}, streamValues(t, &buf))
	})

	t.Run("goroutines that move between Ps", func(t *testing.T) {
		m, _ := shardedMonitor(t)
		const writers, n = 8, 2000
		ids := make([]MetricID, writers)
		for w := range ids {
			var err error
			ids[w], err = m.Metric(fmt.Sprintf("w%d", w))
			require.NoError(t, err)
		}
		var buf bytes.Buffer
		stop, err := m.StreamJSONL(&buf)
		require.NoError(t, err)
		var wg sync.WaitGroup
		for w := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < n; i++ {
					if err := m.Log(ids[w], float64(i)); err != nil {
						t.Error(err)
						return
					}
					if i%7 == 0 {
						runtime.Gosched() // another P may run it next
					}
				}
			}()
		}
		wg.Wait()
		require.NoError(t, stop())
		next := map[string]float64{}
		sc := bufio.NewScanner(&buf)
		for sc.Scan() {
			var line struct {
				Metric string  `json:"metric"`
				Value  float64 `json:"value"`
			}
			require.NoError(t, json.Unmarshal(sc.Bytes(), &line), sc.Text())
			require.Equal(t, next[line.Metric], line.Value, line.Metric)
			next[line.Metric]++
		}
		for w := range ids {
			require.Equal(t, float64(n), next[fmt.Sprintf("w%d", w)])
		}
	})
}

// twoRingSource is a C thread's values in two rings of the C API, drained newest ring first: what the C
// side does when a thread's ring was evicted from its cache while it still held values and the thread
// was given a new one.
type twoRingSource struct {
	mu       sync.Mutex
	old, cur []logEntry
}

// log logs 0..n-1: the first half into the old ring, the rest into the new one.
func (s *twoRingSource) log(id MetricID, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 0; i < n; i++ {
		e := logEntry{id: uint32(id), ticks: ticks(), v: float64(i)}
		if i < n/2 {
			s.old = append(s.old, e)
		} else {
			s.cur = append(s.cur, e)
		}
	}
}

func (s *twoRingSource) Drain(fold func(id MetricID, ticks uint64, v float64)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range append(s.cur, s.old...) {
		fold(MetricID(e.id), e.ticks, e.v)
	}
	s.old, s.cur = nil, nil
}
