package data

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"github.com/ferry-ml/ferry/engine"
)

// stage copies the batch into slot s and issues its device work.
func (f *Feed) stage(s *slot, tensors []FeedTensor, plans []feedPlan, outs []Field) error {
	if f.e.GPU() && s.copied != 0 {
		// The slot's previous copy must be done before its staging is overwritten (it usually long is).
		if err := poll(f.opts.Timeout, func() error { return f.e.Context().EventQuery(s.copied) }, nil,
			"the previous copy from this staging slot"); err != nil {
			return err
		}
	}
	if err := f.copyIn(s, tensors); err != nil {
		return err
	}
	if f.hostXform {
		f.transformOnHost(s, tensors, plans, outs)
	}
	if !f.e.GPU() {
		return nil
	}
	if testHookFeedIssue != nil {
		testHookFeedIssue(f, s)
	}
	return f.issue(s, tensors, plans, outs)
}

// testHookFeedIssue, when set by a test, runs before each batch's device work (tests poison outputs there).
var testHookFeedIssue func(*Feed, *slot)

// copyIn copies every tensor into the slot's staging, in chunks on several goroutines when the batch is
// large, each under the fault guard.
func (f *Feed) copyIn(s *slot, tensors []FeedTensor) error {
	const chunk = 1 << 20
	type piece struct{ dst, src []byte }
	total := 0
	for _, t := range tensors {
		total += len(t.Data)
	}
	var pieces []piece
	for k, t := range tensors {
		dst := s.host[k].Bytes()[:len(t.Data)]
		step := len(t.Data)
		if total >= 4*chunk && f.opts.Workers > 1 {
			step = max(chunk, (total+f.opts.Workers-1)/f.opts.Workers)
		}
		for off := 0; off < len(t.Data); off += step {
			end := min(off+step, len(t.Data))
			pieces = append(pieces, piece{dst[off:end], t.Data[off:end]})
		}
	}
	workers := min(f.opts.Workers, len(pieces))
	if workers <= 1 {
		for _, p := range pieces {
			if err := guardedCopy(p.dst, p.src); err != nil {
				return err
			}
		}
		return nil
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(pieces) || errs[w] != nil {
					return
				}
				errs[w] = guardedCopy(pieces[i].dst, pieces[i].src)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// guardedCopy copies src to dst, turning a fault on src (mapped memory whose file was truncated) into an
// ErrIO error instead of a crash.
func guardedCopy(dst, src []byte) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: reading the batch's memory faulted (a file mapping truncated or changed while in use?): %v",
				engine.ErrIO, r)
		}
	}()
	copy(dst, src)
	return nil
}

// transformOnHost lays transformed tensors out in the slot's host outputs, sample by sample.
func (f *Feed) transformOnHost(s *slot, tensors []FeedTensor, plans []feedPlan, outs []Field) {
	g := 0
	for k := range tensors {
		p := plans[k].p
		if p.t == nil {
			g += len(plans[k].outs)
			continue
		}
		in := s.host[k].Bytes()
		ib := p.in.Bytes()
		out := make([][]byte, len(plans[k].outs))
		for r := range tensors[k].Shape[0] {
			for j := range out {
				ob := outs[g+j].Bytes()
				out[j] = s.hostOut[g+j].Bytes()[r*ob : (r+1)*ob]
			}
			p.op.host(out, in[r*ib:(r+1)*ib], rowArgs{})
		}
		g += len(plans[k].outs)
	}
}

// issue queues the slot's device work on the feed's stream from a locked thread: the wait for the
// consumer's release of the slot's last batch, the copies, the layout kernels and the slot's event.
func (f *Feed) issue(s *slot, tensors []FeedTensor, plans []feedPlan, outs []Field) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ctx := f.e.Context()
	if err := ctx.Push(); err == nil {
		defer func() { _ = ctx.Pop() }()
	}
	if s.mustWaitRels {
		if err := ctx.StreamWaitEvent(f.stream, s.released); err != nil {
			return err
		}
		s.mustWaitRels = false
	}
	g := 0
	for k, t := range tensors {
		p := plans[k].p
		rows := t.Shape[0]
		switch {
		case len(t.Data) == 0:
		case p.t == nil:
			if err := ctx.MemcpyHtoDAsync(s.dev[g].Ptr(), s.host[k].Pointer(), len(t.Data), f.stream); err != nil {
				return err
			}
		case f.hostXform:
			for j := range plans[k].outs {
				n := rows * outs[g+j].Bytes()
				if err := ctx.MemcpyHtoDAsync(s.dev[g+j].Ptr(), s.hostOut[g+j].Pointer(), n, f.stream); err != nil {
					return err
				}
			}
		default:
			if err := ctx.MemcpyHtoDAsync(s.devIn[k].Ptr(), s.host[k].Pointer(), len(t.Data), f.stream); err != nil {
				return err
			}
			dst := make([]uint64, len(plans[k].outs))
			for j := range dst {
				dst[j] = uint64(s.dev[g+j].Ptr())
			}
			var err error
			s.params, err = p.op.launch(f.kern, f.e, launchArgs{batch: rows, src: uint64(s.devIn[k].Ptr()),
				aligned: p.in.Bytes()%16 == 0, dst: dst, stream: f.stream}, s.params)
			if err != nil {
				return err
			}
		}
		g += len(plans[k].outs)
	}
	return ctx.EventRecord(s.copied, f.stream)
}
