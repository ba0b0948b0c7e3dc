//go:build soak

package data

// The soak: many iterator lifetimes and one long pipeline, on the CPU engine and on the stand-in driver
// (in a child process, so that its page-locked and device pools are exercised), with the process's
// resident memory, the engine's pools, goroutines and file descriptors read at the start, at points in
// between and at the end. They must stay flat. It is behind the soak build tag, so CI never runs it:
//
//	go test -tags soak -run Soak -timeout 30m -v ./engine
//
// FERRY_SOAK_CYCLES (default 10000) sets the iterator lifetimes per engine, FERRY_SOAK_DURATION (default
// 2m, a Go duration) the pipeline's run per engine, FERRY_SOAK_RSS_SLACK_MIB (default 16) how far the
// resident memory may drift from its value after the warm-up, and FERRY_SOAK_HEAP_SLACK_KIB (default
// 1024) how far the live Go heap may.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/testutil"

	"github.com/ebitengine/purego"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
)

// soakConfig is the soak's size, from the environment.
type soakConfig struct {
	cycles    int
	duration  time.Duration
	rssSlack  uint64 // bytes
	heapSlack uint64 // bytes
}

// soakSettings reads the soak's size from the environment, with the defaults of the file's comment.
func soakSettings(t *testing.T) soakConfig {
	t.Helper()
	c := soakConfig{cycles: 10000, duration: 2 * time.Minute, rssSlack: 16 << 20, heapSlack: 1 << 20}
	if s := os.Getenv("FERRY_SOAK_CYCLES"); s != "" {
		n, err := strconv.Atoi(s)
		require.NoError(t, err, "FERRY_SOAK_CYCLES")
		require.Positive(t, n, "FERRY_SOAK_CYCLES")
		c.cycles = n
	}
	if s := os.Getenv("FERRY_SOAK_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		require.NoError(t, err, "FERRY_SOAK_DURATION")
		require.Positive(t, d, "FERRY_SOAK_DURATION")
		c.duration = d
	}
	if s := os.Getenv("FERRY_SOAK_RSS_SLACK_MIB"); s != "" {
		n, err := strconv.ParseUint(s, 10, 32)
		require.NoError(t, err, "FERRY_SOAK_RSS_SLACK_MIB")
		c.rssSlack = n << 20
	}
	if s := os.Getenv("FERRY_SOAK_HEAP_SLACK_KIB"); s != "" {
		n, err := strconv.ParseUint(s, 10, 32)
		require.NoError(t, err, "FERRY_SOAK_HEAP_SLACK_KIB")
		c.heapSlack = n << 10
	}
	return c
}

// fakeProbe reads the stand-in driver's own counters: host ranges registered and primary-context
// references. Both are invisible to the engine's accounting.
type fakeProbe struct {
	registered func() int32
	retained   func() int32
}

// openFakeProbe binds the probe to the stand-in driver the engine loads (FERRY_CUDA_LIBRARY): dlopen of
// the same path returns the same library, so the counters are the engine's.
func openFakeProbe(t *testing.T) *fakeProbe {
	t.Helper()
	path := os.Getenv("FERRY_CUDA_LIBRARY")
	require.NotEmpty(t, path, "the stand-in driver's path")
	h, err := purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_LOCAL)
	require.NoError(t, err)
	t.Cleanup(func() { _ = purego.Dlclose(h) })
	p := &fakeProbe{}
	purego.RegisterLibFunc(&p.registered, h, "fakecuda_registered")
	purego.RegisterLibFunc(&p.retained, h, "fakecuda_retained")
	return p
}

// soakFigures is one reading of what must stay flat.
type soakFigures struct {
	point      string
	done       int // iterator lifetimes, or batches
	elapsed    time.Duration
	rss        uint64 // VmRSS, bytes
	heap       uint64 // live Go heap after a collection (runtime.MemStats.HeapAlloc), bytes
	pinned     uint64 // MemorySnapshot.HostPinned
	allocated  uint64 // MemorySnapshot.EngineAllocated
	reserved   uint64 // MemorySnapshot.EngineReserved
	goroutines int
	fds        int
	registered int // host ranges registered with the stand-in driver; -1 without it
	// standIn is the memory the stand-in driver keeps by design for the streams and events created so far
	// (see standInHandleBytes); 0 without it.
	standIn  uint64
	retained int // primary-context references held in the stand-in driver; -1 without it
}

// rssBytes reads VmRSS from /proc/self/status.
func rssBytes(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			require.NoError(t, err, "VmRSS line %q", line)
			return kb << 10
		}
	}
	require.FailNow(t, "no VmRSS line in /proc/self/status")
	return 0
}

// openFDs counts the process's open file descriptors, less the one that lists them. It takes the least of
// three readings a millisecond apart, since the engine's sampler opens /proc/meminfo for a moment every
// interval; a leaked descriptor stays in all three.
func openFDs(t *testing.T) int {
	t.Helper()
	least := -1
	for range 3 {
		entries, err := os.ReadDir("/proc/self/fd")
		require.NoError(t, err)
		if n := len(entries) - 1; least < 0 || n < least {
			least = n
		}
		time.Sleep(time.Millisecond)
	}
	return least
}

// settledGoroutines waits (at most a second) for the goroutine count to reach want, since a goroutine that
// has signalled its WaitGroup may still be on its way out, and returns the count it saw last.
func settledGoroutines(want int) int {
	deadline := time.Now().Add(time.Second)
	for {
		n := runtime.NumGoroutine()
		if n == want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(time.Millisecond)
	}
}

// readFigures takes a reading after a full collection that returns freed memory to the system, so that
// RSS shows what is live rather than when the collector last ran. e and probe may be nil.
func readFigures(t *testing.T, point string, done int, start time.Time, e *engine.Engine, probe *fakeProbe, wantGoroutines int) soakFigures {
	t.Helper()
	runtime.GC()
	debug.FreeOSMemory()
	f := soakFigures{point: point, done: done, elapsed: time.Since(start), registered: -1, retained: -1}
	f.goroutines = settledGoroutines(wantGoroutines)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	f.heap = ms.HeapAlloc
	f.rss = rssBytes(t)
	f.fds = openFDs(t)
	if e != nil {
		s := e.MemoryCheck()
		f.pinned, f.allocated, f.reserved = s.HostPinned, s.EngineAllocated, s.EngineReserved
	}
	if probe != nil {
		f.registered, f.retained = int(probe.registered()), int(probe.retained())
	}
	return f
}

// soakTable formats the readings as an aligned table.
func soakTable(title, unit string, rows []soakFigures) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s\n", title)
	w := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "point\t%s\telapsed\tRSS MiB\tGo heap KiB\tpinned B\tdev alloc B\tdev reserved B\tgoroutines\tfds\tregistered\tctx refs\tstand-in kept KiB\t\n", unit)
	for _, r := range rows {
		fmt.Fprintf(w, "%s\t%d\t%.1fs\t%.2f\t%.0f\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t\n", r.point, r.done, r.elapsed.Seconds(),
			float64(r.rss)/(1<<20), float64(r.heap)/(1<<10), r.pinned, r.allocated, r.reserved, r.goroutines, r.fds, orDash(r.registered), orDash(r.retained), kept(r))
	}
	_ = w.Flush()
	return sb.String()
}

// kept is what the stand-in driver keeps by design for the handles created so far, in KiB.
func kept(r soakFigures) string {
	if r.registered < 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", float64(r.standIn)/(1<<10))
}

// orDash formats n, or a dash when it is negative (not measured).
func orDash(n int) string {
	if n < 0 {
		return "-"
	}
	return strconv.Itoa(n)
}

// standInHandleBytes is the memory the stand-in driver keeps for each stream and event: it never frees a
// destroyed one, so that a stale handle never aliases a new one, and each is a 16-byte object, 32 bytes of
// malloc's heap. Iterator lifetimes on the stand-in therefore grow the resident memory by this much per
// handle, which is no leak of the engine's; the soak allows for exactly that.
const standInHandleBytes = 32

// requireFlat checks the readings after the warm-up against the warm-up's: goroutines, descriptors,
// page-locked and device bytes and the stand-in driver's counters exactly, the live Go heap within
// cfg.heapSlack, and resident memory within cfg.rssSlack plus what the stand-in keeps by design.
func requireFlat(t *testing.T, warm soakFigures, rows []soakFigures, cfg soakConfig) {
	t.Helper()
	for _, r := range rows {
		require.Equal(t, warm.goroutines, r.goroutines, "goroutines at %s", r.point)
		require.Equal(t, warm.fds, r.fds, "open file descriptors at %s", r.point)
		require.Equal(t, warm.pinned, r.pinned, "page-locked bytes at %s", r.point)
		require.Equal(t, warm.allocated, r.allocated, "device bytes handed out at %s", r.point)
		require.Equal(t, warm.reserved, r.reserved, "device bytes reserved at %s", r.point)
		require.Equal(t, warm.registered, r.registered, "host ranges registered at %s", r.point)
		require.Equal(t, warm.retained, r.retained, "context references at %s", r.point)
		require.LessOrEqual(t, r.heap, warm.heap+cfg.heapSlack, "live Go heap at %s grew from %d to %d bytes (slack %d)",
			r.point, warm.heap, r.heap, cfg.heapSlack)
		allowed := warm.rss + cfg.rssSlack + (r.standIn - warm.standIn)
		require.LessOrEqual(t, r.rss, allowed, "RSS at %s grew from %d to %d bytes (slack %d, stand-in driver %d)",
			r.point, warm.rss, r.rss, cfg.rssSlack, r.standIn-warm.standIn)
	}
}

// soakFields is the layout of the soak's samples: an HWC u8 image, a token window and a label.
func soakFields(h, w, window int) []Field {
	return []Field{
		{Name: "image", DType: Uint8, Shape: []int{h, w, 3}},
		{Name: "window", DType: Uint16, Shape: []int{window}},
		{Name: "label", DType: Int64},
	}
}

// soakSource is an in-memory source of n samples of fresh pseudo-random bytes from seed.
func soakSource(t *testing.T, n int, fields []Field, seed uint64) (*MemorySource, [][]byte) {
	t.Helper()
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	rng := rand.NewChaCha8(key)
	data := make([][]byte, len(fields))
	for i, f := range fields {
		data[i] = make([]byte, n*f.Bytes())
		_, _ = rng.Read(data[i])
	}
	src, err := NewMemorySource(n, fields, data)
	require.NoError(t, err)
	return src, data
}

// soakNormalize is the image transform of the soak's transformed runs.
var soakNormalize = Normalize{Mean: []float32{0.485, 0.456, 0.406}, Std: []float32{0.229, 0.224, 0.225}, DType: Float16, Flip: 0.5}

// soakTransforms normalizes the image and shifts the token window into x and y.
func soakTransforms() map[string]Transform {
	return map[string]Transform{"image": soakNormalize, "window": ShiftTokens{}}
}

// requireSoakBatch checks a batch against the host reference, output field by output field.
func requireSoakBatch(t *testing.T, e *engine.Engine, b *Batch, fields []Field, data [][]byte, transformed bool, seed uint64) {
	t.Helper()
	want := map[string][]byte{}
	for _, i := range b.Indices {
		for f, fl := range fields {
			sample := data[f][i*fl.Bytes() : (i+1)*fl.Bytes()]
			switch {
			case transformed && fl.Name == "image":
				want["image"] = append(want["image"], refNormalize(soakNormalize, fl, sample, flipSample(soakNormalize.Flip, seed, b.Epoch, i))...)
			case transformed && fl.Name == "window":
				for j := 0; j+1 < fl.Shape[0]; j++ {
					want["x"] = binary.LittleEndian.AppendUint64(want["x"], uint64(binary.LittleEndian.Uint16(sample[2*j:])))
					want["y"] = binary.LittleEndian.AppendUint64(want["y"], uint64(binary.LittleEndian.Uint16(sample[2*j+2:])))
				}
			default:
				want[fl.Name] = append(want[fl.Name], sample...)
			}
		}
	}
	got := batchContents(t, e, b)
	require.Len(t, got, len(want), "batch fields")
	for g, bf := range b.Fields {
		requireClose(t, bf.DType, want[bf.Name], got[g], fmt.Sprintf("epoch %d batch %d field %s", b.Epoch, b.Index, bf.Name))
	}
}

// soakNext returns the next batch, failing the test on an error or when it takes longer than 30 seconds.
func soakNext(t *testing.T, it *Iterator) *Batch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := it.Next(ctx, 0)
	require.NoError(t, err)
	return b
}

// soakCycle is one iterator lifetime on a fresh small source of five batches an epoch, two batches taken,
// in one of four patterns that together cover the staging paths, the transforms, a restore and a close
// with a batch still held. It returns the streams and events the iterator created on a GPU engine.
func soakCycle(t *testing.T, e *engine.Engine, i int) (handles int) {
	const n, batch = 160, 32
	fields := soakFields(8, 8, 9)
	src, data := soakSource(t, n, fields, uint64(i))
	defer func() { require.NoError(t, src.Close()) }()
	seed := uint64(i)
	opts := IteratorOptions{BatchSize: batch, Shuffle: i%2 == 0, Seed: seed, Workers: 1 + i%3, Prefetch: 2 + i%3,
		Timeout: 30 * time.Second}
	pattern := i % 4
	transformed := pattern == 1 || pattern == 3
	if transformed {
		opts.Transforms = soakTransforms()
	}
	opts.Staging = []Staging{StagingGather, StagingAuto, StagingDMA, StagingMapped}[pattern]
	it, err := NewIterator(e, src, opts)
	require.NoError(t, err)
	if e.GPU() {
		handles = 1 + 2*it.Options().Prefetch // the iterator's stream, and two events per ring slot
	}
	closed := false
	defer func() {
		if !closed {
			_ = it.Close()
		}
	}()

	b := soakNext(t, it)
	require.Equal(t, 0, b.Index)
	require.Equal(t, batch, b.Size())
	requireSoakBatch(t, e, b, fields, data, transformed, seed)
	switch pattern {
	case 0, 1:
		b2 := soakNext(t, it)
		require.Equal(t, 1, b2.Index)
		require.NoError(t, b2.Release(0))
		require.NoError(t, b.Release(0))
	case 2:
		// Close with a batch still held: the batch stays readable until its late Release frees it.
		require.NoError(t, b.Release(0))
		held := soakNext(t, it)
		require.Equal(t, 1, held.Index)
		require.NoError(t, it.Close())
		closed = true
		require.True(t, held.IteratorClosed())
		requireSoakBatch(t, e, held, fields, data, transformed, seed)
		require.NoError(t, held.Release(0))
		err := held.Release(0)
		require.ErrorIs(t, err, engine.ErrInvalidArgument)
		require.Contains(t, err.Error(), "already released")
		// On a GPU the slot is freed once the release's event completes, off the releasing goroutine.
		for deadline := time.Now().Add(30 * time.Second); e.Holds() != 0 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		require.Zero(t, e.Holds(), "the held slot was freed")
	case 3:
		// A restore mid-epoch restarts the pipeline at another position.
		require.NoError(t, b.Release(0))
		require.NoError(t, it.Restore(IteratorState{Epoch: 1, Batch: 3}))
		b2 := soakNext(t, it)
		require.Equal(t, uint64(1), b2.Epoch)
		require.Equal(t, 3, b2.Index)
		requireSoakBatch(t, e, b2, fields, data, transformed, seed)
		require.NoError(t, b2.Release(0))
	}
	if !closed {
		require.NoError(t, it.Close())
		closed = true
	}
	_, err = it.Next(context.Background(), 0)
	require.ErrorIs(t, err, engine.ErrClosed, "a closed iterator says so")
	return handles
}

// soakCycles runs cfg.cycles iterator lifetimes on one engine and checks that the figures stay flat.
func soakCycles(t *testing.T, device int, probe *fakeProbe) {
	cfg := soakSettings(t)
	start := time.Now()
	before := readFigures(t, "before open", 0, start, nil, probe, runtime.NumGoroutine())
	e, err := engine.Open(device, engine.WithLogger(zerolog.Nop()))
	require.NoError(t, err)
	open := readFigures(t, "engine open", 0, start, e, probe, before.goroutines+1)
	rows := []soakFigures{before, open}

	warmup := min(max(cfg.cycles/10, 8), cfg.cycles)
	step := max(cfg.cycles/8, 1)
	var warm soakFigures
	handles := 0
	for i := 1; i <= cfg.cycles; i++ {
		handles += soakCycle(t, e, i-1)
		switch {
		case i == warmup:
			warm = readFigures(t, "warm-up", i, start, e, probe, open.goroutines)
			warm.standIn = uint64(handles) * standInHandleBytes
			rows = append(rows, warm)
		case i > warmup && (i%step == 0 || i == cfg.cycles):
			r := readFigures(t, "cycles", i, start, e, probe, open.goroutines)
			r.standIn = uint64(handles) * standInHandleBytes
			rows = append(rows, r)
		}
	}
	end := rows[len(rows)-1]
	require.NoError(t, e.Close())
	final := readFigures(t, "engine closed", cfg.cycles, start, nil, probe, before.goroutines)
	final.standIn = uint64(handles) * standInHandleBytes
	rows = append(rows, final)
	t.Log("\n" + soakTable(fmt.Sprintf("iterator create/destroy soak, device %d, %d cycles, %.1f cycles/s",
		device, cfg.cycles, float64(cfg.cycles)/end.elapsed.Seconds()), "cycles", rows))

	require.Equal(t, open.goroutines, warm.goroutines, "goroutines after the warm-up, no iterator open")
	require.Equal(t, open.fds, warm.fds, "file descriptors after the warm-up")
	require.Zero(t, warm.allocated, "no device bytes handed out with no iterator open")
	if probe != nil {
		require.Zero(t, warm.registered, "no host range stays registered with no iterator open")
		require.Equal(t, open.retained, warm.retained, "context references after the warm-up")
	}
	requireFlat(t, warm, rows[3:len(rows)-1], cfg)
	require.Equal(t, before.goroutines, final.goroutines, "goroutines after the engine closed")
	require.Equal(t, before.fds, final.fds, "file descriptors after the engine closed")
	require.Equal(t, before.retained, final.retained, "context references after the engine closed")
}

// soakPipeline runs one iterator with transforms for cfg.duration, two batches held at a time (released
// in alternating order), every 64th batch checked against the host reference and a restore every 1000
// batches, and checks that the figures stay flat while it runs and return once it is closed.
func soakPipeline(t *testing.T, device int, probe *fakeProbe) {
	cfg := soakSettings(t)
	const n, batch, seed = 4096, 128, 42
	fields := soakFields(32, 32, 65)
	src, data := soakSource(t, n, fields, seed)
	defer func() { require.NoError(t, src.Close()) }()

	start := time.Now()
	before := readFigures(t, "before open", 0, start, nil, probe, runtime.NumGoroutine())
	e, err := engine.Open(device, engine.WithLogger(zerolog.Nop()))
	require.NoError(t, err)
	defer func() { _ = e.Close() }()
	open := readFigures(t, "engine open", 0, start, e, probe, before.goroutines+1)

	it, err := NewIterator(e, src, IteratorOptions{BatchSize: batch, Shuffle: true, Seed: seed, Workers: 2, Prefetch: 4,
		Timeout: 30 * time.Second, Transforms: soakTransforms()})
	require.NoError(t, err)
	pipelineGoroutines := runtime.NumGoroutine() // settled below, at the warm-up reading

	rows := []soakFigures{before, open}
	var warm soakFigures
	warmAt := cfg.duration / 10
	step := cfg.duration / 8
	next := warmAt + step
	deadline := start.Add(cfg.duration)
	var held []*Batch
	batches, restores, checked := 0, 0, 0
	for time.Now().Before(deadline) {
		b, err := it.Next(context.Background(), 0)
		if errors.Is(err, io.EOF) {
			continue // the next call starts the next epoch
		}
		require.NoError(t, err)
		batches++
		if batches%64 == 0 {
			requireSoakBatch(t, e, b, fields, data, true, seed)
			checked++
		}
		held = append(held, b)
		if len(held) == 2 {
			first, second := held[0], held[1]
			if batches%2 == 0 {
				first, second = second, first
			}
			require.NoError(t, first.Release(0))
			require.NoError(t, second.Release(0))
			held = held[:0]
		}
		if batches%1000 == 0 {
			st := it.State()
			require.NoError(t, it.Restore(st))
			require.Equal(t, st, it.State())
			restores++
		}
		if since := time.Since(start); warm.point == "" && since >= warmAt {
			warm = readFigures(t, "warm-up", batches, start, e, probe, pipelineGoroutines)
			pipelineGoroutines = warm.goroutines
			rows = append(rows, warm)
		} else if warm.point != "" && since >= next {
			rows = append(rows, readFigures(t, "running", batches, start, e, probe, pipelineGoroutines))
			next += step
		}
	}
	for _, b := range held {
		require.NoError(t, b.Release(0))
	}
	st := it.Stats()
	rows = append(rows, readFigures(t, "end of run", batches, start, e, probe, pipelineGoroutines))
	require.NoError(t, it.Close())
	closedIt := readFigures(t, "iterator closed", batches, start, e, probe, open.goroutines)
	require.NoError(t, e.Close())
	final := readFigures(t, "engine closed", batches, start, nil, probe, before.goroutines)
	rows = append(rows, closedIt, final)
	if e.GPU() {
		for i := 2; i < len(rows); i++ { // the iterator's stream and two events per ring slot, made once
			rows[i].standIn = uint64(1+2*it.Options().Prefetch) * standInHandleBytes
		}
	}
	t.Log("\n" + soakTable(fmt.Sprintf("pipeline soak with transforms, device %d, %v: %d batches (%.0f/s, %.1f MB/s of source data), %d checked, %d restores, stall %v",
		device, cfg.duration, batches, float64(batches)/cfg.duration.Seconds(), float64(st.Bytes)/cfg.duration.Seconds()/1e6,
		checked, restores, st.Stall.Round(time.Millisecond)), "batches", rows))

	require.NotEmpty(t, warm.point, "the run reached its warm-up reading")
	require.Greater(t, batches, 64, "the pipeline delivered batches")
	require.Equal(t, uint64(batches), st.Batches)
	require.Greater(t, warm.goroutines, open.goroutines, "the pipeline's goroutines run")
	requireFlat(t, warm, rows[3:len(rows)-2], cfg)
	require.Equal(t, open.goroutines, closedIt.goroutines, "goroutines after the iterator closed")
	require.Equal(t, open.fds, closedIt.fds, "file descriptors after the iterator closed")
	require.Zero(t, closedIt.allocated, "no device bytes handed out after the iterator closed")
	require.Equal(t, warm.pinned, closedIt.pinned, "the ring's page-locked memory stays cached in the pool")
	if probe != nil {
		require.Equal(t, 0, closedIt.registered, "no host range stays registered")
	}
	require.Equal(t, before.goroutines, final.goroutines, "goroutines after the engine closed")
	require.Equal(t, before.fds, final.fds, "file descriptors after the engine closed")
	require.Equal(t, before.retained, final.retained, "context references after the engine closed")
}

// TestSoakIteratorCycles creates and destroys iterators on the CPU engine.
func TestSoakIteratorCycles(t *testing.T) { soakCycles(t, engine.CPU, nil) }

// TestSoakPipeline runs one pipeline with transforms on the CPU engine.
func TestSoakPipeline(t *testing.T) { soakPipeline(t, engine.CPU, nil) }

// TestSoakFakeDriver runs both soaks on the stand-in driver in a child process, so that the page-locked
// host pool, the device pool and the registration of source memory are exercised.
func TestSoakFakeDriver(t *testing.T) {
	out := testutil.RunOnFakeDriver(t, "TestSoakFakeDriverChild", false)
	require.Contains(t, out, "fake driver soak passed")
	t.Log("\n" + out)
}

// TestSoakFakeDriverChild is TestSoakFakeDriver's child, with the stand-in driver loaded.
func TestSoakFakeDriverChild(t *testing.T) {
	testutil.IsolatedChild(t)
	probe := openFakeProbe(t)
	t.Run("cycles", func(t *testing.T) { soakCycles(t, 0, probe) })
	t.Run("pipeline", func(t *testing.T) { soakPipeline(t, 0, probe) })
	require.False(t, t.Failed())
	t.Log("fake driver soak passed")
}
