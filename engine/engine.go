package engine

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/ferry-ml/ferry/engine/internal/cuda"
)

// DefaultSampleInterval is how often the background sampler refreshes the memory snapshot.
const DefaultSampleInterval = 100 * time.Millisecond

// MaxSampleInterval is the longest sample interval accepted.
const MaxSampleInterval = time.Minute

// Engine owns one device (or the CPU): the device's primary context, the memory accounting of the pools
// built on it, and a background sampler that keeps a memory snapshot fresh.
type Engine struct {
	device int
	gpu    bool
	ctx    cuda.Context
	nv     *nvmlDevice // nil when NVML is unavailable
	log    zerolog.Logger
	acct   Accounting

	hostPool *HostPool
	devPool  *DevicePool

	childMu  sync.Mutex
	children map[io.Closer]struct{} // iterators, closed before the engine

	thresholds atomic.Pointer[thresholds] // nil: none set

	cbMu         sync.Mutex // guards callbacks, nextCallback, advisor
	callbacks    []pressureCallback
	nextCallback uint64
	advisor      *Advisor

	snap atomic.Pointer[MemorySnapshot]

	mu       sync.Mutex // serializes sampling and publishing; guards seq and listener
	seq      uint64
	listener func(*MemorySnapshot)

	attachMu sync.Mutex
	attached map[any]any // per-engine state of other packages (Attach), in attachOrder
	order    []any

	closed atomic.Bool
	stop   chan struct{}
	done   chan struct{}

	holdMu   sync.Mutex
	holds    int  // Hold minus Unhold: objects whose memory may still be in use (batches a consumer holds)
	closing  bool // Close ran: the last Unhold finishes it
	torndown bool // the pools and the context are gone
}

type config struct {
	interval time.Duration
	log      *zerolog.Logger
}

// Option configures Open.
type Option func(*config) error

// WithSampleInterval sets how often the background sampler refreshes the snapshot (default 100 ms,
// 1 ms to 1 min). Zero turns the sampler off: the snapshot is then refreshed only by SampleNow.
func WithSampleInterval(d time.Duration) Option {
	return func(c *config) error {
		if d != 0 && (d < time.Millisecond || d > MaxSampleInterval) {
			return fmt.Errorf("%w: sample interval %v is outside 1ms..%v (0 turns the sampler off)",
				ErrInvalidArgument, d, MaxSampleInterval)
		}
		c.interval = d
		return nil
	}
}

// WithLogger replaces the engine's logger (by default zerolog to standard error, level from FERRY_LOG).
func WithLogger(l zerolog.Logger) Option {
	return func(c *config) error { c.log = &l; return nil }
}

// Open creates an engine on a CUDA device (its ordinal) or on the CPU (device CPU). On a GPU it retains
// the device's primary context, so ferry shares one context with PyTorch and other runtime-API users. It
// takes a first memory sample before returning.
func Open(device int, opts ...Option) (*Engine, error) {
	cfg := config{interval: DefaultSampleInterval}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if device < CPU {
		return nil, fmt.Errorf("%w: device %d (use a CUDA ordinal >= 0, or %d for the CPU)", ErrInvalidArgument, device, CPU)
	}
	e := &Engine{device: device, gpu: device != CPU, children: map[io.Closer]struct{}{}}
	e.hostPool, e.devPool = newHostPool(e), newDevicePool(e)
	if cfg.log != nil {
		e.log = *cfg.log
	} else {
		e.log = DefaultLogger()
	}
	e.log = e.log.With().Int("device", device).Logger()
	e.acct.onChange = e.republish

	if e.gpu {
		d, err := CUDADevice(device)
		if err != nil {
			return nil, err
		}
		if e.ctx, err = d.RetainPrimaryContext(); err != nil {
			return nil, err
		}
		uuid, err := d.UUID()
		if err == nil {
			e.nv, err = openNVMLDevice(formatUUID(uuid))
		}
		if err != nil {
			e.log.Info().Err(err).Msg("NVML unavailable: no per-process device memory")
		}
	}
	first, err := e.sample()
	if err != nil {
		_ = e.releaseContext() // the failed sample is the error to report
		return nil, err
	}
	e.mu.Lock()
	e.publishLocked(first)
	e.mu.Unlock()

	if cfg.interval > 0 {
		e.stop, e.done = make(chan struct{}), make(chan struct{})
		go e.samplerLoop(cfg.interval)
	}
	e.log.Debug().Dur("interval", cfg.interval).Msg("engine open")
	return e, nil
}

// Device returns the engine's CUDA ordinal, or CPU.
func (e *Engine) Device() int { return e.device }

// Accounting returns the engine's memory accounting, which its pools update.
func (e *Engine) Accounting() *Accounting { return &e.acct }

// HostPool is the engine's host (pinned on a GPU) memory pool.
func (e *Engine) HostPool() *HostPool { return e.hostPool }

// DevicePool is the engine's device memory pool.
func (e *Engine) DevicePool() *DevicePool { return e.devPool }

// Trim gives the memory cached by both pools back to the system and returns the bytes released: the
// engine's own empty-cache.
func (e *Engine) Trim() (uint64, error) {
	h, err1 := e.hostPool.Trim()
	var d uint64
	var err2 error
	if e.gpu {
		d, err2 = e.devPool.Trim()
	}
	return h + d, errors.Join(err1, err2)
}

// GPU reports whether the engine runs on a CUDA device (false for the CPU engine).
func (e *Engine) GPU() bool { return e.gpu }

// Context is the device's primary context (zero on the CPU engine). Calls through it make it current
// inside the same C call, so it may be used from any goroutine.
func (e *Engine) Context() cuda.Context { return e.ctx }

// Logger is the engine's logger.
func (e *Engine) Logger() *zerolog.Logger { return &e.log }

// Closed reports whether Close has been called.
func (e *Engine) Closed() bool { return e.closed.Load() }

// Attach returns the value kept on the engine under key, creating it with create on its first use; the
// other packages of ferry keep their per-engine state this way (the kernel module, registered host
// memory). A value that is an io.Closer is closed when the engine closes, after the objects it adopted
// and its pools, before its context is released; values are closed in the reverse order of creation.
// A failed create is not kept: the next call tries again. Attach is safe for concurrent use.
func (e *Engine) Attach(key any, create func() (any, error)) (any, error) {
	e.attachMu.Lock()
	defer e.attachMu.Unlock()
	if v, ok := e.attached[key]; ok {
		return v, nil
	}
	if e.closed.Load() {
		return nil, fmt.Errorf("%w: engine on device %d", ErrClosed, e.device)
	}
	v, err := create()
	if err != nil {
		return nil, err
	}
	if e.attached == nil {
		e.attached = map[any]any{}
	}
	e.attached[key] = v
	e.order = append(e.order, key)
	return v, nil
}

// closeAttached closes the attached values that are closers, newest first.
func (e *Engine) closeAttached() []error {
	e.attachMu.Lock()
	defer e.attachMu.Unlock()
	var errs []error
	for i := len(e.order) - 1; i >= 0; i-- {
		if c, ok := e.attached[e.order[i]].(io.Closer); ok {
			errs = append(errs, c.Close())
		}
	}
	e.attached, e.order = nil, nil
	return errs
}

// Adopt registers c to be closed when the engine closes, before its pools and context go. It fails with
// ErrClosed once the engine is closing.
func (e *Engine) Adopt(c io.Closer) error {
	e.childMu.Lock()
	defer e.childMu.Unlock()
	if e.closed.Load() {
		return fmt.Errorf("%w: engine on device %d", ErrClosed, e.device)
	}
	e.children[c] = struct{}{}
	return nil
}

// Disown forgets c (it closed itself).
func (e *Engine) Disown(c io.Closer) {
	e.childMu.Lock()
	delete(e.children, c)
	e.childMu.Unlock()
}

// OnSnapshot registers fn to be called with every snapshot the engine publishes, starting with the
// current one before OnSnapshot returns. Calls are serialized and never run after Close returns. fn must
// not call back into the engine. A nil fn removes the listener.
func (e *Engine) OnSnapshot(fn func(*MemorySnapshot)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.listener = fn
	if fn != nil {
		s := *e.snap.Load()
		fn(&s)
	}
}

// Close stops the sampler, closes what was built on the engine (iterators), and frees the pools and the
// device context. When something still holds the engine (Hold: batches a consumer keeps past its
// iterator's Close), the pools and the context are freed by the last Unhold instead; Close does not wait.
// It returns ErrClosed when called again.
func (e *Engine) Close() error {
	if !e.closed.CompareAndSwap(false, true) {
		return fmt.Errorf("%w: engine on device %d was already closed", ErrClosed, e.device)
	}
	if e.stop != nil {
		close(e.stop)
		<-e.done
	}
	// Close what was built on the engine (iterators), then its pools, then its context.
	e.childMu.Lock()
	children := make([]io.Closer, 0, len(e.children))
	for c := range e.children {
		children = append(children, c)
	}
	e.childMu.Unlock()
	var errs []error
	for _, c := range children {
		if err := c.Close(); err != nil && !errors.Is(err, ErrClosed) {
			errs = append(errs, err)
		}
	}
	// Wait for any publish in flight, then drop the listener so none runs after Close.
	e.mu.Lock()
	e.listener = nil
	e.mu.Unlock()
	// Memory handed out stays valid while anything points at it: when an object built on the engine still
	// holds it (an iterator whose batches a consumer keeps, e.g. as DLPack tensors), the pools and the
	// context go with the last Unhold instead of now. Close does not wait for that.
	e.holdMu.Lock()
	e.closing = true
	held := e.holds
	e.holdMu.Unlock()
	if held > 0 {
		e.log.Debug().Int("holds", held).Msg("engine closed; its memory is freed when the batches still held are released")
		return errors.Join(errs...)
	}
	return errors.Join(append(errs, e.teardown())...)
}

// teardown frees the pools, the attached values and the context: the second half of Close, run once
// nothing holds the engine.
func (e *Engine) teardown() error {
	e.holdMu.Lock()
	if e.torndown {
		e.holdMu.Unlock()
		return nil
	}
	e.torndown = true
	e.holdMu.Unlock()
	errs := []error{e.hostPool.close()}
	if e.gpu {
		errs = append(errs, e.devPool.close())
	}
	errs = append(errs, e.closeAttached()...)
	errs = append(errs, e.releaseContext())
	return errors.Join(errs...)
}

// Hold keeps the engine's pools, attached values and context alive past Close until the matching
// Unhold. An object built on the engine holds it while memory it handed out may still be in use (an
// iterator holds it until every batch is released, also after the iterator was closed). Hold fails with
// ErrClosed once Close was called. Safe for concurrent use.
func (e *Engine) Hold() error {
	e.holdMu.Lock()
	defer e.holdMu.Unlock()
	if e.closing || e.closed.Load() {
		return fmt.Errorf("%w: engine on device %d", ErrClosed, e.device)
	}
	e.holds++
	return nil
}

// Holds is the number of holds not yet dropped (Hold): after Close, non-zero while batches still held
// keep the engine's memory.
func (e *Engine) Holds() int {
	e.holdMu.Lock()
	defer e.holdMu.Unlock()
	return e.holds
}

// Unhold drops a hold taken by Hold. The last one after Close frees what Close left (the pools and the
// context), on the calling goroutine; its errors are logged, there being no caller to return them to.
func (e *Engine) Unhold() {
	e.holdMu.Lock()
	if e.holds <= 0 {
		e.holdMu.Unlock()
		e.log.Error().Msg("engine Unhold without a Hold")
		return
	}
	e.holds--
	last := e.holds == 0 && e.closing
	e.holdMu.Unlock()
	if last {
		if err := e.teardown(); err != nil {
			e.log.Warn().Err(err).Msg("freeing the engine's memory after its last batch was released")
		}
	}
}

func (e *Engine) releaseContext() error {
	if !e.gpu {
		return nil
	}
	return e.ctx.Release()
}
