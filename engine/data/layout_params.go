package data

import (
	"encoding/binary"
	"math"
)

// The kernels' parameter blocks, packed byte for byte as kernels/params.h lays them out (little-endian,
// natural alignment). TestKernelParamsLayout compiles params.h and checks every size and offset.

const (
	imageParamsSize  = 88
	tokensParamsSize = 48
	gatherParamsSize = 40
	padParamsSize    = 64

	// imageTileBytes is the shared-memory tile of the image kernels' tiled path (kTileBytes in image.cu).
	imageTileBytes = 16384
)

type imageParams struct {
	src, offsets, flip, dst uint64
	batch, h, w, c, rows    uint32
	planar                  uint32 // 1: the input is [C, H, W]
	scale, bias             [maxChannels]float32
}

func (p *imageParams) pack(b []byte) []byte {
	b = b[:0]
	le := binary.LittleEndian
	b = le.AppendUint64(b, p.src)
	b = le.AppendUint64(b, p.offsets)
	b = le.AppendUint64(b, p.flip)
	b = le.AppendUint64(b, p.dst)
	for _, v := range []uint32{p.batch, p.h, p.w, p.c, p.planar, p.rows} {
		b = le.AppendUint32(b, v)
	}
	for _, v := range p.scale {
		b = le.AppendUint32(b, math.Float32bits(v))
	}
	for _, v := range p.bias {
		b = le.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

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
