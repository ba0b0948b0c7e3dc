package data

import (
	"encoding/binary"
	"fmt"

	"github.com/ferry-ml/ferry/engine"

	"github.com/ferry-ml/ferry/engine/internal/cuda"
	"github.com/ferry-ml/ferry/kernels"
)

// kernelNames is every kernel the package looks up in the fatbin: each is named once, in the file that
// launches it, through kernelTable; a test checks each is in the fatbin.
var kernelNames []string

// kernel adds name to kernelNames and returns it.
func kernel(name string) string {
	kernelNames = append(kernelNames, name)
	return name
}

// kernelTable adds the kernels of t, a table from a transform's parameters to its kernels' names, to
// kernelNames, and returns t.
func kernelTable[K comparable](t map[K]string) map[K]string {
	for _, name := range t {
		kernel(name)
	}
	return t
}

// gatherKernel copies samples from registered source memory into a batch (kernels/gather.cu).
var gatherKernel = kernel("ferry_gather")

// kernelBlock is the threads per block of every launch.
const kernelBlock = 256

// kernelSet is the engine's module: the fatbin, loaded into the engine's context on first use and kept
// on the engine (engine.Attach), and its kernels. A load failure (no binary for this GPU, a driver too old
// for the PTX) is kept, so the engine falls back to host transforms and says why once.
type kernelSet struct {
	ctx    cuda.Context
	module cuda.Module
	funcs  map[string]cuda.Function
	sms    int
	err    error
}

type kernelsKey struct{}

// kernelsOf loads the engine's module if it is not loaded yet and returns it, or the reason it cannot load.
func kernelsOf(e *engine.Engine) (*kernelSet, error) {
	if !e.GPU() {
		return nil, fmt.Errorf("%w: kernels need a GPU engine", engine.ErrUnsupported)
	}
	v, err := e.Attach(kernelsKey{}, func() (any, error) { return loadKernels(e), nil })
	if err != nil {
		return nil, err
	}
	k := v.(*kernelSet)
	if k.err != nil {
		return nil, k.err
	}
	return k, nil
}

// loadKernels loads the fatbin into the engine's context and looks up every kernel.
func loadKernels(e *engine.Engine) *kernelSet {
	ctx := e.Context()
	k := &kernelSet{ctx: ctx}
	m, err := ctx.ModuleLoadData(kernels.Fatbin)
	if err != nil {
		k.err = fmt.Errorf("%w: loading ferry's kernels on device %d: %w", engine.ErrUnsupported, e.Device(), err)
		e.Logger().Warn().Err(err).Msg("kernels unavailable: layout transforms run on the host")
		return k
	}
	funcs := map[string]cuda.Function{}
	for _, name := range kernelNames {
		f, err := ctx.ModuleGetFunction(m, name)
		if err != nil {
			_ = ctx.ModuleUnload(m)
			k.err = fmt.Errorf("%w: kernel %s on device %d: %w", engine.ErrUnsupported, name, e.Device(), err)
			return k
		}
		funcs[name] = f
	}
	sms := 0
	if d, err := engine.CUDADevice(e.Device()); err == nil {
		sms, _ = d.Attribute(cuda.AttrMultiprocessorCount)
	}
	k.module, k.funcs, k.sms = m, funcs, max(sms, 1)
	e.Logger().Debug().Int("kernels", len(funcs)).Msg("kernels loaded")
	return k
}

// Close unloads the module; the engine is closing and nothing runs on its streams.
func (k *kernelSet) Close() error {
	if k.module == 0 {
		return nil
	}
	err := k.ctx.ModuleUnload(k.module)
	k.module = 0
	return err
}

// launch1D runs kernel name over n work items (one per thread, grid-stride beyond the grid's cap).
func (k *kernelSet) launch1D(e *engine.Engine, name string, n uint64, s Stream, params []byte) error {
	f, ok := k.funcs[name]
	if !ok {
		return fmt.Errorf("%w: no kernel %s", engine.ErrUnsupported, name)
	}
	if n == 0 {
		return nil
	}
	blocks := (n + kernelBlock - 1) / kernelBlock
	blocks = min(blocks, uint64(k.sms)*32)
	return e.Context().Launch(f, uint32(blocks), 1, kernelBlock, s, params)
}

// launchBlocks runs kernel name over a grid of blocks (the kernel loops when the grid is capped).
func (k *kernelSet) launchBlocks(e *engine.Engine, name string, blocks uint64, s Stream, params []byte) error {
	f, ok := k.funcs[name]
	if !ok {
		return fmt.Errorf("%w: no kernel %s", engine.ErrUnsupported, name)
	}
	if blocks == 0 {
		return nil
	}
	return e.Context().Launch(f, uint32(min(blocks, 1<<30)), 1, kernelBlock, s, params)
}

// launchPerSample runs kernel name over a grid of (blocks per sample, batch).
func (k *kernelSet) launchPerSample(e *engine.Engine, name string, perSample uint32, batch int, s Stream, params []byte) error {
	f, ok := k.funcs[name]
	if !ok {
		return fmt.Errorf("%w: no kernel %s", engine.ErrUnsupported, name)
	}
	if batch == 0 {
		return nil
	}
	if batch > 65535 {
		return fmt.Errorf("%w: a batch of %d samples is more than kernel %s takes (65535)", engine.ErrLimit, batch, name)
	}
	return e.Context().Launch(f, perSample, uint32(batch), kernelBlock, s, params)
}

// gatherParams is ferry_gather_params (kernels/params.h), packed byte for byte.
const gatherParamsSize = 40

type gatherParams struct {
	src, offsets, dst, bytes uint64
	batch, vec               uint32
}

func (p *gatherParams) pack(b []byte) []byte {
	b = b[:0]
	le := binary.LittleEndian
	for _, v := range []uint64{p.src, p.offsets, p.dst, p.bytes} {
		b = le.AppendUint64(b, v)
	}
	b = le.AppendUint32(b, p.batch)
	return le.AppendUint32(b, p.vec)
}
