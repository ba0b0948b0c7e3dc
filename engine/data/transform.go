package data

import (
	"encoding/binary"
	"fmt"

	"github.com/ferry-ml/ferry/engine"
)

// Transform is a layout op on one field of a batch. On a GPU it runs as a kernel on the iterator's stream
// right after the batch crosses PCIe (fused with the gather when the source memory is mapped), so only the
// source's compact bytes cross; on the CPU engine, and wherever the kernels cannot load, the same op runs
// on the host. The host code is the reference the kernels are tested against. The implementations are
// Normalize, ShiftTokens and PadSequences, one file each (transform_<name>.go, with its kernel's
// parameter block and its kernels' names); the interface is sealed, so the iterator relies on nothing
// but these methods.
type Transform interface {
	// Outputs are the fields the transform makes from the source field in, per sample. It returns an
	// error naming the problem when the transform does not apply to in.
	Outputs(in Field) ([]Field, error)
	String() string

	// traits are what the iterator plans by: flips, padding, alignment.
	traits() traits
	// bind checks the transform against the source field in (ragged: in is the source's variable-length
	// field) and returns the op the iterator runs for it.
	bind(in Field, ragged bool) (op, error)
}

// traits are a transform's properties that the iterator plans staging and metadata by.
type traits struct {
	flip         float64 // the probability that a sample flips left-right (Normalize), or 0
	pads         bool    // lays a variable-length field out to a width (PadSequences)
	fullWidth    bool    // pads to the field's full length, not to the batch's longest sample
	anyAlignment bool    // its kernel reads samples element by element: unaligned samples cost nothing
	needsLengths bool    // needs each sample's length, which only an iterator has
	decodes      bool    // its input is encoded images, read into the worker's buffer (see image_device.go)
}

// op is a transform bound to one source field: its host reference and its kernel launch.
type op interface {
	// host lays out one sample on the host: in is the sample's source field, out the sample's slice of
	// each output field, in Outputs order.
	host(out [][]byte, in []byte, r rowArgs)
	// launch runs the op's kernel over a batch on a.stream; buf is scratch for the parameter block,
	// returned for reuse.
	launch(k *kernelSet, e *engine.Engine, a launchArgs, buf []byte) ([]byte, error)
}

// hostErrOp is an op whose host form can fail on a sample (an image that does not decode): the iterator
// calls hostErr instead of host and fails the batch with the error.
type hostErrOp interface {
	hostErr(out [][]byte, in []byte, r rowArgs) error
}

// rowArgs are one sample's inputs to a host transform beyond its bytes.
type rowArgs struct {
	flip  bool // flip the sample left-right
	n     int  // a variable-length sample's length, at most width
	width int  // the padded length of a variable-length field in this batch
	// The iterator's seed, the epoch and the sample's index: what a random crop is a function of.
	seed, epoch uint64
	index       int
}

// launchArgs are a layout kernel's inputs beyond its plan.
type launchArgs struct {
	batch          int
	src, offsets   uint64 // offsets: 0 for samples contiguous at src
	aligned        bool   // every sample starts 16-byte aligned
	flips, lengths uint64 // device addresses of the flips (uint8) and lengths (uint32), or 0
	width          int    // PadSequences: the padded length
	dst            []uint64
	stream         Stream
}

// flipSample decides whether sample idx of epoch flips: a pure function of (seed, epoch, idx), so that a
// resumed or resharded run flips the same samples.
func flipSample(prob float64, seed, epoch uint64, idx int) bool {
	if prob <= 0 {
		return false
	}
	if prob >= 1 {
		return true
	}
	h := mix64(mix64(seed^0x6a09e667f3bcc909) ^ mix64(epoch+0x3c6ef372fe94f82b) ^ uint64(idx)*0x9e3779b97f4a7c15)
	return float64(h>>11)/(1<<53) < prob
}

// readTokenOf reads token j of a little-endian sequence of token type dt: uint16, uint32 or int32 (sign
// extended).
func readTokenOf(src []byte, dt DType, j int) int64 {
	if dt == Int32 {
		return int64(int32(binary.LittleEndian.Uint32(src[4*j:])))
	}
	return readToken(src, dt.Size(), j)
}

// readToken reads token j of a little-endian uint16 or uint32 sequence.
func readToken(src []byte, size, j int) int64 {
	if size == 2 {
		return int64(binary.LittleEndian.Uint16(src[2*j:]))
	}
	return int64(binary.LittleEndian.Uint32(src[4*j:]))
}

// LaunchTransform runs t's kernel, on the engine's device, on stream over batch samples of the field in that lie one after another
// at src (device memory, or page-locked host memory, which kernels read across PCIe), writing each of t's
// outputs ([batch, ...] each, in Outputs order) at the device addresses dst. It is the iterator's layout
// step on its own, for data already on the device. Normalize runs without flips; PadSequences needs the
// iterator (it takes per-sample lengths). The host does not wait.
func LaunchTransform(e *engine.Engine, t Transform, in Field, batch int, src engine.DevicePtr, dst []engine.DevicePtr, stream Stream) error {
	if e.Closed() {
		return fmt.Errorf("%w: engine on device %d", engine.ErrClosed, e.Device())
	}
	if err := in.Validate(); err != nil {
		return err
	}
	if t == nil {
		return fmt.Errorf("%w: transform is nil", engine.ErrInvalidArgument)
	}
	if t.traits().needsLengths {
		return fmt.Errorf("%w: %v runs inside an iterator (it needs each sample's length)", engine.ErrUnsupported, t)
	}
	if batch <= 0 {
		return fmt.Errorf("%w: batch %d must be positive", engine.ErrInvalidArgument, batch)
	}
	p, outs, err := newFieldPlan(in, t, false)
	if err != nil {
		return err
	}
	if len(dst) != len(outs) {
		return fmt.Errorf("%w: %v makes %d outputs; %d destinations were given", engine.ErrInvalidArgument, t, len(outs), len(dst))
	}
	d := make([]uint64, len(dst))
	for i, x := range dst {
		if x == 0 || src == 0 {
			return fmt.Errorf("%w: a source or destination address is 0", engine.ErrInvalidArgument)
		}
		d[i] = uint64(x)
	}
	k, err := kernelsOf(e)
	if err != nil {
		return err
	}
	_, err = p.op.launch(k, e, launchArgs{batch: batch, src: uint64(src), aligned: in.Bytes()%16 == 0, dst: d, stream: stream}, nil)
	return err
}
