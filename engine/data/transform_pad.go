package data

import (
	"encoding/binary"
	"fmt"

	"github.com/ferry-ml/ferry/engine"
)

// PadSequences lays out a variable-length field (a source implementing Ragged, such as RaggedTokenSource)
// as int64 tokens padded with PadValue, an attention mask (bool: true for a token) and the lengths
// (int64). By default the batch is padded to its longest sample ([B, longest]); with Fixed, to the field's
// full length. The outputs are the field's name, Mask ("attention_mask" by default) and Lengths
// ("lengths" by default).
type PadSequences struct {
	PadValue      int64
	Fixed         bool
	Mask, Lengths string
}

func (p PadSequences) String() string {
	m, l := p.names()
	return fmt.Sprintf("PadSequences(pad=%d, fixed=%v, mask=%q, lengths=%q)", p.PadValue, p.Fixed, m, l)
}

func (p PadSequences) names() (string, string) {
	m, l := p.Mask, p.Lengths
	if m == "" {
		m = "attention_mask"
	}
	if l == "" {
		l = "lengths"
	}
	return m, l
}

// Outputs implements Transform. The token and mask fields' length is the field's maximum; a batch padded
// to its longest sample has a shorter second dimension.
func (p PadSequences) Outputs(in Field) ([]Field, error) {
	if (in.DType != Uint16 && in.DType != Uint32) || len(in.Shape) != 1 {
		return nil, fmt.Errorf("%w: PadSequences needs a uint16 or uint32 sequence field [MaxLen]; %q is %v %v", engine.ErrInvalidArgument, in.Name, in.DType, in.Shape)
	}
	m, l := p.names()
	if m == l || m == in.Name || l == in.Name {
		return nil, fmt.Errorf("%w: PadSequences: the names %q, %q and %q must differ", engine.ErrInvalidArgument, in.Name, m, l)
	}
	n := in.Shape[0]
	return []Field{{Name: in.Name, DType: Int64, Shape: []int{n}}, {Name: m, DType: Bool, Shape: []int{n}}, {Name: l, DType: Int64}}, nil
}

// padOp is PadSequences bound to a variable-length field.
type padOp struct {
	p      PadSequences
	size   int // bytes per token
	kernel string
}

// padKernels are the PadSequences kernels (kernels/pad.cu), by token type.
var padKernels = kernelTable(map[DType]string{Uint16: "ferry_pad_u16", Uint32: "ferry_pad_u32"})

func (p PadSequences) traits() traits {
	return traits{pads: true, fullWidth: p.Fixed, anyAlignment: true, needsLengths: true}
}

func (p PadSequences) bind(in Field, ragged bool) (op, error) {
	if _, err := p.Outputs(in); err != nil {
		return nil, err
	}
	if !ragged {
		return nil, fmt.Errorf("%w: PadSequences on field %q needs a source whose field %q has variable length (a Ragged source such as RaggedTokenSource)", engine.ErrInvalidArgument, in.Name, in.Name)
	}
	return &padOp{p: p, size: in.DType.Size(), kernel: padKernels[in.DType]}, nil
}

func (o *padOp) host(out [][]byte, in []byte, r rowArgs) {
	padHost(out[0], out[1], out[2], in, o.size, r.n, r.width, o.p.PadValue)
}

func (o *padOp) launch(k *kernelSet, e *engine.Engine, a launchArgs, buf []byte) ([]byte, error) {
	if a.offsets == 0 || a.lengths == 0 {
		return buf, fmt.Errorf("%w: PadSequences needs the samples' offsets and lengths", engine.ErrInvalidArgument)
	}
	pp := padParams{src: a.src, offsets: a.offsets, lengths: a.lengths, tokens: a.dst[0], mask: a.dst[1],
		lengthsOut: a.dst[2], padValue: o.p.PadValue, batch: uint32(a.batch), maxlen: uint32(a.width)}
	buf = pp.pack(buf)
	return buf, k.launch1D(e, o.kernel, max(uint64(a.batch)*uint64(a.width), uint64(a.batch)), a.stream, buf)
}

// padParams is ferry_pad_params (kernels/params.h), packed byte for byte.
const padParamsSize = 64

type padParams struct {
	src, offsets, lengths, tokens, mask, lengthsOut uint64
	padValue                                        int64
	batch, maxlen                                   uint32
}

func (p *padParams) pack(b []byte) []byte {
	b = b[:0]
	le := binary.LittleEndian
	for _, v := range []uint64{p.src, p.offsets, p.lengths, p.tokens, p.mask, p.lengthsOut, uint64(p.padValue)} {
		b = le.AppendUint64(b, v)
	}
	b = le.AppendUint32(b, p.batch)
	return le.AppendUint32(b, p.maxlen)
}

// padHost lays out one sequence of n tokens padded to width: tokens int64, mask bool, length int64.
func padHost(tokens, mask, length, src []byte, size, n, width int, pad int64) {
	for j := 0; j < width; j++ {
		v, m := pad, byte(0)
		if j < n {
			v, m = readToken(src, size, j), 1
		}
		binary.LittleEndian.PutUint64(tokens[8*j:], uint64(v))
		mask[j] = m
	}
	binary.LittleEndian.PutUint64(length, uint64(n))
}
