package data

import (
	"encoding/binary"
	"fmt"

	"github.com/ferry-ml/ferry/engine"
)

// ShiftTokens turns a window of SeqLen+1 tokens (uint16 or uint32, [SeqLen+1] per sample) into the
// language-model pair: X, the first SeqLen tokens, and Y, the same shifted by one (the targets), both
// int64 [SeqLen]. Only the window's 2 or 4 bytes per token cross PCIe. X and Y default to "x" and "y".
type ShiftTokens struct {
	X, Y string
}

func (s ShiftTokens) String() string {
	x, y := s.names()
	return fmt.Sprintf("ShiftTokens(x=%q, y=%q)", x, y)
}

func (s ShiftTokens) names() (string, string) {
	x, y := s.X, s.Y
	if x == "" {
		x = "x"
	}
	if y == "" {
		y = "y"
	}
	return x, y
}

// Outputs implements Transform.
func (s ShiftTokens) Outputs(in Field) ([]Field, error) {
	if (in.DType != Uint16 && in.DType != Uint32) || len(in.Shape) != 1 || in.Shape[0] < 2 {
		return nil, fmt.Errorf("%w: ShiftTokens needs a uint16 or uint32 window [SeqLen+1] with SeqLen >= 1; %q is %v %v", engine.ErrInvalidArgument, in.Name, in.DType, in.Shape)
	}
	x, y := s.names()
	if x == y {
		return nil, fmt.Errorf("%w: ShiftTokens: x and y are both named %q", engine.ErrInvalidArgument, x)
	}
	n := in.Shape[0] - 1
	return []Field{{Name: x, DType: Int64, Shape: []int{n}}, {Name: y, DType: Int64, Shape: []int{n}}}, nil
}

// tokensOp is ShiftTokens bound to a window field.
type tokensOp struct {
	size, seq int // bytes per token, tokens per output row
	kernel    string
}

// tokenKernels are the ShiftTokens kernels (kernels/tokens.cu), by token type.
var tokenKernels = kernelTable(map[DType]string{Uint16: "ferry_tokens_u16", Uint32: "ferry_tokens_u32"})

func (s ShiftTokens) traits() traits { return traits{anyAlignment: true} }

func (s ShiftTokens) bind(in Field, _ bool) (op, error) {
	if _, err := s.Outputs(in); err != nil {
		return nil, err
	}
	return &tokensOp{size: in.DType.Size(), seq: in.Shape[0] - 1, kernel: tokenKernels[in.DType]}, nil
}

func (o *tokensOp) host(out [][]byte, in []byte, _ rowArgs) {
	shiftTokensHost(out[0], out[1], in, o.size, o.seq)
}

func (o *tokensOp) launch(k *kernelSet, e *engine.Engine, a launchArgs, buf []byte) ([]byte, error) {
	tp := tokensParams{src: a.src, offsets: a.offsets, x: a.dst[0], y: a.dst[1], batch: uint32(a.batch), seq: uint32(o.seq),
		stride: uint32(o.seq + 1)}
	buf = tp.pack(buf)
	return buf, k.launch1D(e, o.kernel, uint64(a.batch)*uint64(o.seq), a.stream, buf)
}

// tokensParams is ferry_tokens_params (kernels/params.h), packed byte for byte.
const tokensParamsSize = 48

type tokensParams struct {
	src, offsets, x, y uint64
	batch, seq, stride uint32
}

func (p *tokensParams) pack(b []byte) []byte {
	b = b[:0]
	le := binary.LittleEndian
	for _, v := range []uint64{p.src, p.offsets, p.x, p.y} {
		b = le.AppendUint64(b, v)
	}
	for _, v := range []uint32{p.batch, p.seq, p.stride, 0} {
		b = le.AppendUint32(b, v)
	}
	return b
}

// shiftTokensHost lays out one window: x[j] = src[j], y[j] = src[j+1].
func shiftTokensHost(x, y, src []byte, size, seq int) {
	for j := 0; j < seq; j++ {
		binary.LittleEndian.PutUint64(x[8*j:], uint64(readToken(src, size, j)))
		binary.LittleEndian.PutUint64(y[8*j:], uint64(readToken(src, size, j+1)))
	}
}
