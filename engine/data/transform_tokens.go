package data

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/ferry-ml/ferry/engine"
)

// ShiftTokens turns a window of SeqLen+1 tokens (uint16, uint32 or int32, [SeqLen+1] per sample) into the
// language-model pair: X, the first SeqLen tokens, and Y, the same shifted by one (the targets), both
// int64 [SeqLen]. Only the window's 2 or 4 bytes per token cross PCIe. X and Y default to "x" and "y".
//
// It also makes what Megatron's GPTDataset returns beside them, on the device: LossMask names a float32
// [SeqLen] loss mask (1, or 0 where the input is the EOD token when MaskEOD: Megatron's eod_mask_loss),
// and PositionIDs an int64 [SeqLen] of position ids (0..SeqLen-1, or restarting after each EOD input when
// ResetPositions: Megatron's reset_position_ids). Either is made only when named.
type ShiftTokens struct {
	X, Y string
	// LossMask names the loss-mask output; empty for none.
	LossMask string
	// PositionIDs names the position-id output; empty for none.
	PositionIDs string
	// EOD is the end-of-document token, for MaskEOD and ResetPositions.
	EOD int64
	// MaskEOD zeros the loss mask where the input token is EOD.
	MaskEOD bool
	// ResetPositions restarts the position ids after each EOD input token.
	ResetPositions bool
}

func (s ShiftTokens) String() string {
	x, y := s.names()
	out := fmt.Sprintf("ShiftTokens(x=%q, y=%q", x, y)
	if s.LossMask != "" {
		out += fmt.Sprintf(", loss_mask=%q", s.LossMask)
	}
	if s.PositionIDs != "" {
		out += fmt.Sprintf(", position_ids=%q", s.PositionIDs)
	}
	if s.MaskEOD || s.ResetPositions {
		out += fmt.Sprintf(", eod=%d, mask_eod=%v, reset_positions=%v", s.EOD, s.MaskEOD, s.ResetPositions)
	}
	return out + ")"
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

// Outputs implements Transform: x and y, then the loss mask and the position ids when named.
func (s ShiftTokens) Outputs(in Field) ([]Field, error) {
	if (in.DType != Uint16 && in.DType != Uint32 && in.DType != Int32) || len(in.Shape) != 1 || in.Shape[0] < 2 {
		return nil, fmt.Errorf("%w: ShiftTokens needs a uint16, uint32 or int32 window [SeqLen+1] with SeqLen >= 1; %q is %v %v", engine.ErrInvalidArgument, in.Name, in.DType, in.Shape)
	}
	x, y := s.names()
	if x == y {
		return nil, fmt.Errorf("%w: ShiftTokens: x and y are both named %q", engine.ErrInvalidArgument, x)
	}
	names := map[string]bool{x: true}
	n := in.Shape[0] - 1
	out := []Field{{Name: x, DType: Int64, Shape: []int{n}}}
	for _, o := range []struct {
		name string
		dt   DType
	}{{y, Int64}, {s.LossMask, Float32}, {s.PositionIDs, Int64}} {
		if o.name == "" {
			continue
		}
		if names[o.name] {
			return nil, fmt.Errorf("%w: ShiftTokens: two outputs are named %q", engine.ErrInvalidArgument, o.name)
		}
		names[o.name] = true
		out = append(out, Field{Name: o.name, DType: o.dt, Shape: []int{n}})
	}
	if s.MaskEOD && s.LossMask == "" {
		return nil, fmt.Errorf("%w: ShiftTokens: MaskEOD needs a LossMask output to mask", engine.ErrInvalidArgument)
	}
	if s.ResetPositions && s.PositionIDs == "" {
		return nil, fmt.Errorf("%w: ShiftTokens: ResetPositions needs a PositionIDs output to reset", engine.ErrInvalidArgument)
	}
	return out, nil
}

// tokensOp is ShiftTokens bound to a window field.
type tokensOp struct {
	dt        DType
	seq       int // tokens per output row
	kernel    string
	mask, pos bool // the loss mask is output 2 when made; the position ids follow it
	flags     uint32
	eod       int64
}

// posOut is the index of the position-id output: after x, y and the loss mask when there is one.
func (o *tokensOp) posOut() int {
	if o.mask {
		return 3
	}
	return 2
}

// tokenKernels are the ShiftTokens kernels (kernels/tokens.cu), by token type.
var tokenKernels = kernelTable(map[DType]string{Uint16: "ferry_tokens_u16", Uint32: "ferry_tokens_u32", Int32: "ferry_tokens_i32"})

// positionsKernel writes position ids that restart after each EOD (kernels/tokens.cu); its blocks hold
// kernelBlock threads, the size of its shared scan.
var positionsKernel = kernel("ferry_positions")

// The kernel's flags (kernels/params.h).
const (
	tokensMaskEOD        = 1
	tokensResetPositions = 2
)

func (s ShiftTokens) traits() traits { return traits{anyAlignment: true} }

func (s ShiftTokens) bind(in Field, _ bool) (op, error) {
	if _, err := s.Outputs(in); err != nil {
		return nil, err
	}
	o := &tokensOp{dt: in.DType, seq: in.Shape[0] - 1, kernel: tokenKernels[in.DType], mask: s.LossMask != "",
		pos: s.PositionIDs != "", eod: s.EOD}
	if s.MaskEOD {
		o.flags |= tokensMaskEOD
	}
	if s.ResetPositions {
		o.flags |= tokensResetPositions
	}
	return o, nil
}

func (o *tokensOp) host(out [][]byte, in []byte, _ rowArgs) {
	shiftTokensHost(out[0], out[1], in, o.dt, o.seq)
	if o.mask {
		maskHost(out[2], in, o.dt, o.seq, o.eod, o.flags&tokensMaskEOD != 0)
	}
	if o.pos {
		positionsHost(out[o.posOut()], in, o.dt, o.seq, o.eod, o.flags&tokensResetPositions != 0)
	}
}

func (o *tokensOp) launch(k *kernelSet, e *engine.Engine, a launchArgs, buf []byte) ([]byte, error) {
	tp := tokensParams{src: a.src, offsets: a.offsets, x: a.dst[0], y: a.dst[1], batch: uint32(a.batch), seq: uint32(o.seq),
		stride: uint32(o.seq + 1), flags: o.flags, eod: o.eod}
	if o.mask {
		tp.mask = a.dst[2]
	}
	if o.pos {
		tp.pos = a.dst[o.posOut()]
	}
	buf = tp.pack(buf)
	if err := k.launch1D(e, o.kernel, uint64(a.batch)*uint64(o.seq), a.stream, buf); err != nil {
		return buf, err
	}
	if !o.pos || o.flags&tokensResetPositions == 0 {
		return buf, nil
	}
	pp := positionsParams{x: a.dst[0], pos: tp.pos, eod: o.eod, batch: uint32(a.batch), seq: uint32(o.seq)}
	buf = pp.pack(buf)
	return buf, k.launchBlocks(e, positionsKernel, uint64(a.batch), a.stream, buf)
}

// tokensParams is ferry_tokens_params (kernels/params.h), packed byte for byte.
const tokensParamsSize = 72

type tokensParams struct {
	src, offsets, x, y        uint64
	batch, seq, stride, flags uint32
	mask, pos                 uint64
	eod                       int64
}

func (p *tokensParams) pack(b []byte) []byte {
	b = b[:0]
	le := binary.LittleEndian
	for _, v := range []uint64{p.src, p.offsets, p.x, p.y} {
		b = le.AppendUint64(b, v)
	}
	for _, v := range []uint32{p.batch, p.seq, p.stride, p.flags} {
		b = le.AppendUint32(b, v)
	}
	for _, v := range []uint64{p.mask, p.pos, uint64(p.eod)} {
		b = le.AppendUint64(b, v)
	}
	return b
}

// positionsParams is ferry_positions_params (kernels/params.h), packed byte for byte.
const positionsParamsSize = 32

type positionsParams struct {
	x, pos     uint64
	eod        int64
	batch, seq uint32
}

func (p *positionsParams) pack(b []byte) []byte {
	b = b[:0]
	le := binary.LittleEndian
	b = le.AppendUint64(b, p.x)
	b = le.AppendUint64(b, p.pos)
	b = le.AppendUint64(b, uint64(p.eod))
	b = le.AppendUint32(b, p.batch)
	return le.AppendUint32(b, p.seq)
}

// shiftTokensHost lays out one window: x[j] = src[j], y[j] = src[j+1].
func shiftTokensHost(x, y, src []byte, dt DType, seq int) {
	for j := 0; j < seq; j++ {
		binary.LittleEndian.PutUint64(x[8*j:], uint64(readTokenOf(src, dt, j)))
		binary.LittleEndian.PutUint64(y[8*j:], uint64(readTokenOf(src, dt, j+1)))
	}
}

// maskHost is the loss mask of one window: 0 where maskEOD and the input is eod, else 1.
func maskHost(mask, src []byte, dt DType, seq int, eod int64, maskEOD bool) {
	for j := 0; j < seq; j++ {
		v := float32(1)
		if maskEOD && readTokenOf(src, dt, j) == eod {
			v = 0
		}
		binary.LittleEndian.PutUint32(mask[4*j:], math.Float32bits(v))
	}
}

// positionsHost is the position ids of one window: j, or with reset j-(i+1) for the last EOD input i < j.
func positionsHost(pos, src []byte, dt DType, seq int, eod int64, reset bool) {
	start := 0
	for j := 0; j < seq; j++ {
		binary.LittleEndian.PutUint64(pos[8*j:], uint64(j-start))
		if reset && readTokenOf(src, dt, j) == eod {
			start = j + 1
		}
	}
}
