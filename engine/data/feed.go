package data

import (
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-ml/ferry/engine"
)

// FeedOptions configures NewFeed. The zero value of each field selects its default.
type FeedOptions struct {
	// Slots is the number of staging slots the feed starts with: the batches queued for the consumer and
	// those it holds. When every slot is held, Push adds one (within PinnedBudget). Default 6.
	Slots int
	// Workers is the number of goroutines that copy a large batch into staging; default min(GOMAXPROCS, 8).
	Workers int
	// Transforms lays tensors out on the device right after the copy (on the host on the CPU engine), by
	// tensor name, as the iterator's do. Normalize flips and PadSequences need an iterator (a sample's index,
	// a variable-length source field) and are refused.
	Transforms map[string]Transform
	// PinnedBudget is the most memory (page-locked and device) the feed's slots may hold in all; 0 means a
	// quarter of physical memory; negative means no bound on the memory, but never more than Slots slots.
	PinnedBudget int64
	// Timeout bounds how long Push waits for a slot's previous copy to complete; default 5 minutes.
	Timeout time.Duration
}

// FeedTensor is one tensor of a batch given to Push: dense, row-major host memory.
type FeedTensor struct {
	Name  string // what a transform is keyed by
	DType DType
	Shape []int  // [rows, ...]: the batch's size is the first tensor's rows
	Data  []byte // the tensor's bytes, exactly
}

// Feed stages batches that the caller already has in host memory — those a Python DataLoader's worker
// processes made, say — onto the device: Push copies the tensors into a page-locked staging slot (several
// goroutines for a large batch), issues the host-to-device copy and the layout kernels on the feed's own
// stream, records the slot's event and returns the batch, whose consumer orders its stream on it with
// Batch.Wait. Slots are sized to the largest batch seen and grow when a batch is larger; when the caller
// holds every slot, the feed adds one within the pinned budget. On the CPU engine the batch stays in host
// memory (transformed there).
//
// Push must be called from one goroutine at a time; batches may be released from any goroutine; Close may
// be called from any goroutine.
type Feed struct {
	e         *engine.Engine
	opts      FeedOptions
	ring      *ring
	stream    Stream
	kern      *kernelSet // nil on the CPU engine, or when the kernels did not load (hostXform)
	hostXform bool
	held      int64 // bytes of every slot's buffers, under ring.mu

	mu     sync.Mutex // Push, Close
	closed atomic.Bool
	seq    int
	plans  map[string]feedPlan

	batches, samples, bytes, stallNs atomic.Uint64
}

// feedPlan is what Push does with a tensor of a given name, dtype and per-sample shape.
type feedPlan struct {
	p    fieldPlan
	outs []Field
}

// Defaults of FeedOptions.
const (
	DefaultFeedSlots = 6
	maxFeedSlots     = 1024
	maxFeedTensors   = 64
)

// NewFeed opens a feed on the engine. It allocates nothing but its stream until the first Push.
func NewFeed(e *engine.Engine, opts FeedOptions) (*Feed, error) {
	if e.Closed() {
		return nil, fmt.Errorf("%w: engine on device %d", engine.ErrClosed, e.Device())
	}
	if opts.Slots == 0 {
		opts.Slots = DefaultFeedSlots
	}
	if opts.Slots < 1 || opts.Slots > maxFeedSlots {
		return nil, fmt.Errorf("%w: slots %d must be 1..%d", engine.ErrInvalidArgument, opts.Slots, maxFeedSlots)
	}
	if opts.Workers < 0 || opts.Workers > maxWorkers {
		return nil, fmt.Errorf("%w: workers %d (0 picks a default; at most %d)", engine.ErrInvalidArgument, opts.Workers, maxWorkers)
	}
	if opts.Workers == 0 {
		opts.Workers = min(runtime.GOMAXPROCS(0), 8)
	}
	if opts.Timeout < 0 {
		return nil, fmt.Errorf("%w: timeout %v is negative", engine.ErrInvalidArgument, opts.Timeout)
	}
	if opts.Timeout == 0 {
		opts.Timeout = DefaultNextTimeout
	}
	for name, t := range opts.Transforms {
		if t == nil {
			return nil, fmt.Errorf("%w: the transform for tensor %q is nil", engine.ErrInvalidArgument, name)
		}
		tr := t.traits()
		if tr.needsLengths || tr.pads {
			return nil, fmt.Errorf("%w: %v for tensor %q pads a variable-length source field, which only an iterator has; "+
				"a fed batch's tensors are dense already", engine.ErrUnsupported, t, name)
		}
		if tr.flip > 0 {
			return nil, fmt.Errorf("%w: %v for tensor %q flips, which draws per (seed, epoch, sample index) inside an "+
				"iterator; flip in the pipeline that makes the batches", engine.ErrUnsupported, t, name)
		}
		if tr.decodes {
			return nil, fmt.Errorf("%w: %v for tensor %q decodes and crops inside an iterator (its boxes draw per "+
				"(seed, epoch, sample index), its errors name the sample); crop in the pipeline that makes the batches, "+
				"or read the files with ImageFolderSource or WebDatasetSource", engine.ErrUnsupported, t, name)
		}
	}
	opts.Transforms = cloneTransforms(opts.Transforms)
	if err := e.Hold(); err != nil {
		return nil, err
	}
	f := &Feed{e: e, opts: opts, plans: map[string]feedPlan{}}
	f.ring = &ring{e: e, timeout: opts.Timeout, holding: true}
	if e.GPU() {
		s, err := e.Context().StreamCreate()
		if err != nil {
			f.ring.unhold()
			return nil, err
		}
		f.stream = s
		if len(opts.Transforms) > 0 {
			if f.kern, err = kernelsOf(e); err != nil {
				f.hostXform = true
			}
		}
	} else {
		f.hostXform = true
	}
	if err := e.Adopt(f); err != nil {
		f.free()
		return nil, err
	}
	return f, nil
}

// cloneTransforms copies m, so that a caller changing it later changes nothing here.
func cloneTransforms(m map[string]Transform) map[string]Transform {
	out := make(map[string]Transform, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (f *Feed) engine() *engine.Engine { return f.e }

func (f *Feed) isClosed() bool { return f.closed.Load() }

func (f *Feed) release(s *slot, consumer Stream) error { return f.ring.release(s, consumer) }

// plan returns the plan of tensor t (its transform bound to its dtype and per-sample shape).
func (f *Feed) plan(t *FeedTensor) (feedPlan, error) {
	key := fmt.Sprintf("%s\x00%d\x00%v", t.Name, t.DType, t.Shape[1:])
	if p, ok := f.plans[key]; ok {
		return p, nil
	}
	in := Field{Name: t.Name, DType: t.DType, Shape: slices.Clone(t.Shape[1:])}
	if err := in.Validate(); err != nil {
		return feedPlan{}, err
	}
	p, outs, err := newFieldPlan(in, f.opts.Transforms[t.Name], false)
	if err != nil {
		return feedPlan{}, err
	}
	fp := feedPlan{p: p, outs: outs}
	if len(f.plans) < 4096 {
		f.plans[key] = fp
	}
	return fp, nil
}

// checkFeedTensors validates a batch given to Push.
func checkFeedTensors(tensors []FeedTensor) error {
	if len(tensors) == 0 || len(tensors) > maxFeedTensors {
		return fmt.Errorf("%w: a batch of %d tensors (1..%d)", engine.ErrInvalidArgument, len(tensors), maxFeedTensors)
	}
	for k := range tensors {
		t := &tensors[k]
		if t.Name == "" {
			return fmt.Errorf("%w: tensor %d has no name", engine.ErrInvalidArgument, k)
		}
		if len(t.Shape) == 0 {
			return fmt.Errorf("%w: tensor %q has no dimensions; its first is the batch", engine.ErrInvalidArgument, t.Name)
		}
		if !t.DType.Valid() {
			return fmt.Errorf("%w: tensor %q has an unknown dtype %d", engine.ErrInvalidArgument, t.Name, int(t.DType))
		}
		n := t.DType.Size()
		for _, d := range t.Shape {
			if d < 0 || (d > 0 && n > (1<<62)/d) {
				return fmt.Errorf("%w: tensor %q has shape %v", engine.ErrInvalidArgument, t.Name, t.Shape)
			}
			n *= d
		}
		if n != len(t.Data) {
			return fmt.Errorf("%w: tensor %q of %v %v is %d bytes; %d were given", engine.ErrInvalidArgument, t.Name,
				t.DType, t.Shape, n, len(t.Data))
		}
	}
	return nil
}

// Push stages one batch and returns it, held by the caller until Release: the copy into staging is done
// when Push returns (the caller may reuse its memory), and on a GPU the device work is queued on the
// feed's stream; Batch.Wait orders a consumer's stream on it. Memory that faults while read (a file
// mapping truncated under the caller) is an ErrIO error. Beyond the pinned budget Push returns an
// ErrLimit error naming the budget and the batches held.
func (f *Feed) Push(tensors []FeedTensor) (*Batch, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed.Load() {
		return nil, fmt.Errorf("%w: feed", engine.ErrClosed)
	}
	if err := checkFeedTensors(tensors); err != nil {
		return nil, err
	}
	plans := make([]feedPlan, len(tensors))
	var err error
	var outs []Field
	for k := range tensors {
		if plans[k], err = f.plan(&tensors[k]); err != nil {
			return nil, err
		}
		outs = append(outs, plans[k].outs...)
	}
	s, err := f.take(tensors, plans, outs)
	if err != nil {
		return nil, err
	}
	if err := f.stage(s, tensors, plans, outs); err != nil {
		f.putBack(s)
		return nil, err
	}
	rows := tensors[0].Shape[0]
	b := &Batch{Index: f.seq, OnGPU: f.e.GPU(), owner: f, s: s, size: rows, Fields: make([]BatchField, len(outs))}
	staged := 0
	g := 0
	for k, t := range tensors {
		staged += len(t.Data)
		rows := t.Shape[0]
		for range plans[k].outs {
			o := outs[g]
			shape := append([]int{rows}, o.Shape...)
			bf := BatchField{Field: o, From: k, Shape: shape, Bytes: rows * o.Bytes()}
			if plans[k].p.t != nil && f.hostXform {
				bf.Host = s.hostOut[g].Bytes()[:bf.Bytes]
			} else if plans[k].p.t == nil {
				bf.Host = s.host[k].Bytes()[:bf.Bytes]
			}
			if f.e.GPU() {
				bf.Device = s.dev[g].Ptr()
			}
			b.Fields[g] = bf
			g++
		}
	}
	f.seq++
	s.held.Store(true)
	f.batches.Add(1)
	f.samples.Add(uint64(rows))
	f.bytes.Add(uint64(staged))
	return b, nil
}

// take returns a free slot whose buffers fit the batch: a spare, resized where too small, or a new one,
// within the budget.
func (f *Feed) take(tensors []FeedTensor, plans []feedPlan, outs []Field) (*slot, error) {
	r := f.ring
	r.mu.Lock()
	var s *slot
	if n := len(r.spares); n > 0 {
		s, r.spares = r.spares[n-1], r.spares[:n-1]
	} else if f.opts.PinnedBudget < 0 && len(r.all) >= f.opts.Slots {
		held := r.heldLocked()
		r.mu.Unlock()
		return nil, fmt.Errorf("%w: all %d staging slots of the feed are still held by the caller (%d batches), and the "+
			"pinned budget is negative (no more than %d slots): release batches when done with them (a batch stays "+
			"held until it is released and every tensor taken from it is freed)", engine.ErrLimit, len(r.all), held, f.opts.Slots)
	}
	r.mu.Unlock()
	if s == nil {
		var err error
		if s, err = f.newSlot(); err != nil {
			return nil, err
		}
	}
	gpu := f.e.GPU()
	need := f.fitHost
	needDev := f.fitDevice
	g := 0
	for k, t := range tensors {
		p := plans[k].p
		if err := need(&s.host, k, len(t.Data)); err != nil {
			f.putBack(s)
			return nil, err
		}
		if gpu && p.t != nil && !f.hostXform {
			if err := needDev(&s.devIn, k, len(t.Data)); err != nil {
				f.putBack(s)
				return nil, err
			}
		}
		for range plans[k].outs {
			m := t.Shape[0] * outs[g].Bytes()
			if p.t != nil && f.hostXform {
				if err := need(&s.hostOut, g, m); err != nil {
					f.putBack(s)
					return nil, err
				}
			}
			if gpu {
				if err := needDev(&s.dev, g, m); err != nil {
					f.putBack(s)
					return nil, err
				}
			}
			g++
		}
	}
	return s, nil
}

// newSlot makes an empty slot with its events, owned by the ring.
func (f *Feed) newSlot() (*slot, error) {
	s := &slot{}
	if f.e.GPU() {
		var err error
		if s.copied, err = f.e.Context().EventCreate(); err != nil {
			return nil, err
		}
		if s.released, err = f.e.Context().EventCreate(); err != nil {
			f.ring.freeSlot(s)
			return nil, err
		}
	}
	f.ring.mu.Lock()
	f.ring.all = append(f.ring.all, s)
	f.ring.mu.Unlock()
	return s, nil
}

// putBack returns a slot that Push took but did not hand out.
func (f *Feed) putBack(s *slot) {
	f.ring.mu.Lock()
	f.ring.spares = append(f.ring.spares, s)
	f.ring.mu.Unlock()
}

// grow accounts for delta more bytes of slot buffers, refusing beyond the budget.
func (f *Feed) grow(delta int) error {
	budget := f.opts.PinnedBudget
	if budget == 0 {
		budget = defaultPinnedBudget()
	}
	r := f.ring
	r.mu.Lock()
	defer r.mu.Unlock()
	if budget > 0 && f.held+int64(delta) > budget {
		held := r.heldLocked()
		noun, verb := "batches", "are"
		if held == 1 {
			noun, verb = "batch", "is"
		}
		return fmt.Errorf("%w: staging this batch needs %d more bytes (page-locked and device memory) than the feed's "+
			"%d slots hold (%d bytes), past its pinned budget of %d bytes; %d %s of the feed %s still held by the caller: "+
			"release batches when done with them (a batch stays held until it is released and every tensor taken "+
			"from it is freed), or raise the pinned budget", engine.ErrLimit, delta, len(r.all), f.held, budget, held, noun, verb)
	}
	f.held += int64(delta)
	return nil
}

// fitHost makes (*bufs)[i] a host buffer of at least n bytes.
func (f *Feed) fitHost(bufs *[]*engine.HostBuffer, i, n int) error {
	return fitBuffer(f, bufs, i, n, f.e.HostPool().Alloc, f.e.HostPool().Free)
}

// fitDevice makes (*bufs)[i] a device buffer of at least n bytes.
func (f *Feed) fitDevice(bufs *[]*engine.DeviceBuffer, i, n int) error {
	return fitBuffer(f, bufs, i, n, f.e.DevicePool().Alloc, f.e.DevicePool().Free)
}

// fitBuffer makes (*bufs)[i] a buffer of at least n bytes (one, for an empty tensor): kept when large
// enough, else replaced by a larger one within the feed's budget.
func fitBuffer[B interface {
	comparable
	Len() int
}](f *Feed, bufs *[]B, i, n int, alloc func(int) (B, error), free func(B)) error {
	var none B
	for len(*bufs) <= i {
		*bufs = append(*bufs, none)
	}
	n = max(n, 1)
	old := (*bufs)[i]
	have := 0
	if old != none {
		if have = old.Len(); have >= n {
			return nil
		}
	}
	if err := f.grow(n - have); err != nil {
		return err
	}
	b, err := alloc(n)
	if err != nil {
		_ = f.grow(have - n)
		return err
	}
	if old != none {
		free(old)
	}
	(*bufs)[i] = b
	return nil
}

// AddStall adds d to the time a consumer waited for the feed's batches (Stats.Stall): a binding that
// prefetches batches into a queue of its own measures its waits and reports them here.
func (f *Feed) AddStall(d time.Duration) {
	if d > 0 {
		f.stallNs.Add(uint64(d))
	}
}

// Stats returns what the feed has staged so far, and the stall its consumer reported.
func (f *Feed) Stats() IteratorStats {
	return IteratorStats{Batches: f.batches.Load(), Samples: f.samples.Load(), Bytes: f.bytes.Load(),
		Stall: time.Duration(f.stallNs.Load())}
}

// Counters are the running totals of Stats, as the monitor reads a pipeline (monitor.Pipeline).
func (f *Feed) Counters() (batches, samples, bytes uint64, stall time.Duration) {
	st := f.Stats()
	return st.Batches, st.Samples, st.Bytes, st.Stall
}

// QueueDepth is 0: the feed's queue, if any, is its caller's.
func (f *Feed) QueueDepth() int { return 0 }

// Closed reports whether Close has been called.
func (f *Feed) Closed() bool { return f.closed.Load() }

// Slots is the number of staging slots the feed holds now.
func (f *Feed) Slots() int {
	f.ring.mu.Lock()
	defer f.ring.mu.Unlock()
	return len(f.ring.all)
}

// Close waits (bounded) for the copies in flight and frees the slots the caller does not hold; a batch
// still held stays valid (a DLPack tensor over it too) until its release frees it. A second Close returns
// ErrClosed.
func (f *Feed) Close() error {
	if !f.closed.CompareAndSwap(false, true) {
		return fmt.Errorf("%w: feed was already closed", engine.ErrClosed)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var err error
	if f.stream != 0 {
		err = poll(f.opts.Timeout, func() error { return f.e.Context().StreamQuery(f.stream) }, nil, "copies in flight")
	}
	f.free()
	f.e.Disown(f)
	return err
}

// free returns the slots (those not held) and the stream.
func (f *Feed) free() {
	done := f.ring.close()
	if f.stream != 0 {
		_ = f.e.Context().StreamDestroy(f.stream)
		f.stream = 0
	}
	if done {
		f.ring.unhold()
	}
}
