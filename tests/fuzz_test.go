package tests

// FuzzCAPISequence drives the C API with short random programs decoded from the fuzz input: engines on
// the CPU, sources over small buffers and files, iterators, batches and their DLPack tensors, positions,
// monitors and metrics, called with live, destroyed, foreign, made-up and NULL handles, NULL pointers and
// option structs of random sizes and contents. The caller side keeps the C contract (buffers as large as
// the sizes it passes, valid or NULL pointers inside structs, each tensor deleted once), so anything that
// goes wrong is the library's: a crash, a status outside ferry.h, FERRY_ERR_INTERNAL (a recovered panic
// or an unmapped error), a failure without a message, or a library that no longer works afterwards.

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"unsafe"

	"github.com/ebitengine/purego"
	"github.com/stretchr/testify/require"
)

// Bounds of one fuzz program, so that every input runs in milliseconds and frees what it made.
const (
	capiFuzzMaxOps       = 64
	capiFuzzMaxEngines   = 3
	capiFuzzMaxSources   = 4
	capiFuzzMaxIterators = 3
	capiFuzzMaxMonitors  = 2
	capiFuzzMaxBatches   = 8
	capiFuzzMaxTensors   = 16
	capiFuzzMaxSamples   = 16      // num_samples of a memory source
	capiFuzzDataBytes    = 1 << 20 // the memory every memory source reads
	capiFuzzArenaBytes   = 1 << 18 // per-program C memory: options, names, arrays
	capiFuzzStructBytes  = 256     // room for any options or out struct, whatever its size field says
)

// capiFuzzShared is C memory and files that outlive one program: the bytes memory sources read (never
// written after setup), per-program C memory, and a small token file, offsets file and .npy file.
var capiFuzzShared struct {
	data              []byte
	arena             *cmem
	tokens, offs, npy *byte // C paths
	missing           *byte // a path that does not exist
	// monitor is a quiet monitor whose metric "loss" each check logs to: created once, since a new
	// monitor's first summary calibrates its clock for a millisecond.
	monitor monitorHandle
	loss    uint32
}

// capiFuzzSetup makes capiFuzzShared for one run of the fuzz target; its memory, files and monitor go at
// cleanup.
func capiFuzzSetup(f testing.TB) {
	s := &capiFuzzShared
	data := newCmem(f, capiFuzzDataBytes).buf
	for i := range data {
		data[i] = byte(i*131 + i>>8)
	}
	s.data, s.arena = data, newCmem(f, capiFuzzArenaBytes)
	dir := f.TempDir()
	tokens := filepath.Join(dir, "tokens.bin")
	require.NoError(f, os.WriteFile(tokens, data[:2*64], 0o644)) // 64 uint16 or 32 uint32 tokens
	offs := filepath.Join(dir, "offsets.npy")
	require.NoError(f, os.WriteFile(offs, npyBytes("<i8", false, []int64{4}, capiFuzzInt64s(0, 5, 5, 30)), 0o644))
	npy := filepath.Join(dir, "a.npy")
	require.NoError(f, os.WriteFile(npy, npyBytes("|u1", false, []int64{6, 2, 2, 3}, data[:72]), 0o644)) // 6 images
	s.tokens, s.offs, s.npy = cname(tokens), cname(offs), cname(npy)
	s.missing = cname(filepath.Join(dir, "missing.bin"))

	mo := monitorOptions{Size: uint32(unsafe.Sizeof(monitorOptions{})), GPUIntervalUS: -1, PCIeIntervalUS: -1, SystemIntervalUS: -1}
	require.Equal(f, ferryOK, ferryMonitorCreate(&mo, &s.monitor))
	f.Cleanup(func() { require.Equal(f, ferryOK, ferryMonitorDestroy(s.monitor)) })
	require.Equal(f, ferryOK, ferryMetricID(s.monitor, cname("loss"), &s.loss))
}

// capiFuzzInt64s encodes vs as little-endian int64.
func capiFuzzInt64s(vs ...int64) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint64(b, uint64(v))
	}
	return b
}

// capiFuzzReader hands out the fuzz input a piece at a time; past its end it gives zeros.
type capiFuzzReader struct{ b []byte }

// done reports whether the input is used up.
func (r *capiFuzzReader) done() bool { return len(r.b) == 0 }

// u8 reads one byte.
func (r *capiFuzzReader) u8() uint8 {
	if len(r.b) == 0 {
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

// u32 reads 4 bytes, little-endian.
func (r *capiFuzzReader) u32() uint32 {
	var v uint32
	for i := 0; i < 4; i++ {
		v |= uint32(r.u8()) << (8 * i)
	}
	return v
}

// u64 reads 8 bytes, little-endian.
func (r *capiFuzzReader) u64() uint64 { return uint64(r.u32()) | uint64(r.u32())<<32 }

// capiFuzzPick returns one of vs, chosen by the next input byte.
func capiFuzzPick[T any](r *capiFuzzReader, vs ...T) T { return vs[int(r.u8())%len(vs)] }

// capiFuzzPickOr returns one of vs, or, for one byte value more, what random reads from the input.
func capiFuzzPickOr[T any](r *capiFuzzReader, random func() T, vs ...T) T {
	if i := int(r.u8()) % (len(vs) + 1); i < len(vs) {
		return vs[i]
	}
	return random()
}

// fill copies input bytes into b (zeros past the input's end).
func (r *capiFuzzReader) fill(b []byte) {
	n := copy(b, r.b)
	r.b = r.b[n:]
	clear(b[n:])
}

// cstr returns a NUL-terminated string of up to 24 input bytes, with any NUL inside ending it early.
func (r *capiFuzzReader) cstr(c *cmem) *byte {
	n := int(r.u8()) % 25
	p := (*byte)(c.alloc(n + 1))
	r.fill(unsafe.Slice(p, n+1)[:n])
	return p
}

// capiFuzzNames are the field and metric names programs use most: those the sources and transforms know,
// an empty one and one that is not allowed as a metric.
var capiFuzzNames = []string{"a", "b", "image", "tokens", "x", "y", "attention_mask", "lengths", "", "loss", "bad name"}

// name returns a name from capiFuzzNames (the first one for a zero byte), an arbitrary string, or NULL.
func (r *capiFuzzReader) name(c *cmem) *byte { return r.nameAt(c, 0) }

// nameAt is name with the list rotated by off, so that a zero byte gives the fields of one call
// different names.
func (r *capiFuzzReader) nameAt(c *cmem, off int) *byte {
	switch v := int(r.u8()); {
	case v < 200:
		return c.cstring(capiFuzzNames[(v+off)%len(capiFuzzNames)])
	case v < 240:
		return r.cstr(c)
	}
	return nil
}

// Handle kinds, in the top byte of every handle (capi/registry.go).
const (
	capiFuzzKindEngine   = 0x45
	capiFuzzKindSource   = 0x53
	capiFuzzKindIterator = 0x49
	capiFuzzKindMonitor  = 0x4d
	capiFuzzKindBatch    = 0x42
)

// capiFuzzTensor is a tensor handed out and not yet deleted, with a copy of its bytes when it is in host
// memory: a live tensor's memory neither changes (its slot is not refilled) nor goes away (destroying its
// iterator or engine does not unmap it) until its deleter runs.
type capiFuzzTensor struct {
	p    *dlManagedTensor
	want []byte
}

// bytes is the tensor's memory now (nil when it has none in host memory).
func (tn capiFuzzTensor) bytes() []byte {
	if tn.want == nil {
		return nil
	}
	return unsafe.Slice((*byte)(tn.p.DLTensor.Data), len(tn.want))
}

// delete checks that the tensor's memory is intact, then calls its deleter.
func (p *capiFuzzProgram) delete(tn capiFuzzTensor) {
	p.t.Helper()
	require.Equal(p.t, tn.want, tn.bytes(), "a live tensor's memory changed (after its iterator or engine was destroyed?)")
	purego.SyscallN(tn.p.Deleter, uintptr(unsafe.Pointer(tn.p)))
}

// capiFuzzProgram is the state of one program: what it made and has not destroyed, the handles it
// destroyed (stale from then on), and whether an engine, iterator or batch runs on the CPU, where a
// stream argument is ignored and may be any value.
type capiFuzzProgram struct {
	t         *testing.T
	r         *capiFuzzReader
	c         *cmem
	engines   []uintptr
	sources   []uintptr
	iterators []uintptr
	batches   []uintptr
	monitors  []uintptr
	tensors   []capiFuzzTensor
	stale     []uintptr
	cpu       map[uintptr]bool
	timeouts  int // FERRY_ERR_TIMEOUT from next: each cost up to 50 ms
}

// check runs one call and checks its status: one of ferry.h's, never FERRY_ERR_INTERNAL, with a message
// in ferry_last_error() when it failed. The caller has locked the OS thread.
func (p *capiFuzzProgram) check(what string, s int32) int32 {
	p.t.Helper()
	if s < ferryOK || s > ferryEndOfEpoch {
		msg, _ := goString(ferryLastError())
		p.t.Fatalf("%s returned status %d (last error %q)", what, s, msg)
	}
	if s != ferryOK && s != ferryEndOfEpoch {
		msg, err := goString(ferryLastError())
		require.NoError(p.t, err)
		require.NotEmpty(p.t, msg, "%s failed with status %d and no message", what, s)
	}
	return s
}

// handle picks a handle for a call that takes one of kind: mostly a live one, else a destroyed one, a
// live one of another kind, NULL, or a made-up value (with the right kind byte or not).
func (p *capiFuzzProgram) handle(kind uint64, live []uintptr) uintptr {
	switch p.r.u8() % 8 {
	case 0, 1, 2, 3:
		if len(live) > 0 {
			return live[int(p.r.u8())%len(live)]
		}
	case 4:
		if len(p.stale) > 0 {
			return p.stale[int(p.r.u8())%len(p.stale)]
		}
	case 5:
		all := [][]uintptr{p.engines, p.sources, p.iterators, p.batches, p.monitors}
		if l := all[int(p.r.u8())%len(all)]; len(l) > 0 {
			return l[int(p.r.u8())%len(l)]
		}
	case 6:
		return 0
	}
	v := p.r.u64()
	if v&1 == 0 {
		v = kind<<56 | v&(1<<56-1)
	}
	if v == uint64(capiFuzzShared.monitor) {
		v ^= 1 << 32 // the check's monitor is not the program's to use
	}
	return uintptr(v)
}

// rarely is true for one input byte value in n, never for a zero byte: programs decode so that zero
// bytes make the valid call, and other values the unusual ones.
func (p *capiFuzzProgram) rarely(n uint8) bool { return p.r.u8()%n == n-1 }

// out returns n zeroed bytes of C memory for an out parameter, or NULL now and then.
func (p *capiFuzzProgram) out(n int) unsafe.Pointer {
	if p.rarely(16) {
		return nil
	}
	return p.c.alloc(n)
}

// sized returns capiFuzzStructBytes of C memory for a size-prefixed struct whose current size is full:
// zeroed or filled with input bytes, with a size field that is mostly full and otherwise any value.
func (p *capiFuzzProgram) sized(full uint32, v1 uint32) unsafe.Pointer {
	ptr := p.c.alloc(capiFuzzStructBytes)
	if p.rarely(4) {
		p.r.fill(unsafe.Slice((*byte)(ptr), capiFuzzStructBytes))
	}
	size := full
	switch p.r.u8() % 8 {
	case 1:
		size = v1
	case 2:
		size = v1 - 1
	case 3:
		size = capiFuzzPick(p.r, uint32(0), 4, full+8, capiFuzzStructBytes, math.MaxUint32)
	case 4:
		size = p.r.u32()
	}
	*(*uint32)(ptr) = size
	return ptr
}

// capiFuzzRemove drops h from list.
func capiFuzzRemove(list []uintptr, h uintptr) []uintptr {
	for i, x := range list {
		if x == h {
			return append(list[:i], list[i+1:]...)
		}
	}
	return list
}

// destroyed remembers h, which a call just destroyed, as a stale handle for later calls.
func (p *capiFuzzProgram) destroyed(h uintptr) {
	if h != 0 && len(p.stale) < 64 {
		p.stale = append(p.stale, h)
	}
}

// shape fills a field's shape: mostly small dimensions, so that any accepted field of up to 8 of them
// fits capiFuzzMaxSamples samples in the shared data, else dimensions that no field may have.
func (p *capiFuzzProgram) shape(fl *field) {
	fl.NDim = capiFuzzPick(p.r, int32(0), 1, 2, 3, 8, 9, -1)
	for d := range fl.Shape {
		fl.Shape[d] = capiFuzzPick(p.r, int64(1), 2, 3, 1, 2, 3, 0, -1, 1<<31+1, 1<<40, 1<<62, math.MaxInt64, math.MinInt64)
	}
}

// sourceMemory calls ferry_source_memory with up to two fields over the shared data.
func (p *capiFuzzProgram) sourceMemory() {
	var fs [2]field
	for k := range fs {
		fs[k].Name = p.r.nameAt(p.c, k)
		fs[k].DType = capiFuzzPick(p.r, dtypeUint8, dtypeInt32, dtypeFloat64, dtypeBool, dtypeBfloat16, 0, 14, -1)
		p.shape(&fs[k])
	}
	arr := (*field)(p.c.alloc(int(unsafe.Sizeof(fs))))
	*(*[2]field)(unsafe.Pointer(arr)) = fs
	if p.rarely(16) {
		arr = nil
	}
	nf := capiFuzzPick(p.r, int32(1), 2, 1, 2, 0, -1, 1025, math.MinInt32)
	ptrs := (*[2]uintptr)(p.c.alloc(16))
	for k := range ptrs {
		if !p.rarely(16) {
			ptrs[k] = uintptr(unsafe.Pointer(&capiFuzzShared.data[0]))
		}
	}
	data := &ptrs[0]
	if p.rarely(16) {
		data = nil
	}
	n := int64(1 + int(p.r.u8())%capiFuzzMaxSamples)
	if p.rarely(8) {
		n = capiFuzzPick(p.r, int64(0), -1, math.MinInt64)
	}
	out := (*sourceHandle)(p.out(8))
	if p.check("ferry_source_memory", ferrySourceMemory(n, arr, nf, data, out)) == ferryOK {
		p.sources = append(p.sources, uintptr(*out))
	}
}

// sourceTokens calls ferry_source_tokens on the token file, another file, a missing one or NULL.
func (p *capiFuzzProgram) sourceTokens() {
	o := (*tokenOptions)(p.sized(uint32(unsafe.Sizeof(tokenOptions{})), 32))
	if p.r.u8()%2 == 0 {
		o.Format = capiFuzzPick(p.r, int32(tokensUint16), tokensUint32, tokensLLMC, 0, 4)
		o.SeqLen = capiFuzzPick(p.r, int64(1), 3, 7, 31, 63, 64, 0, -1, math.MaxInt64)
		o.Flags = capiFuzzPick(p.r, uint32(0), tokensRandom, tokensWindow, tokensRandom|tokensWindow, 0x80)
	}
	var opts *tokenOptions
	if !p.rarely(16) {
		opts = o
	}
	path := capiFuzzPick(p.r, capiFuzzShared.tokens, capiFuzzShared.tokens, capiFuzzShared.missing, capiFuzzShared.npy, nil)
	out := (*sourceHandle)(p.out(8))
	if p.check("ferry_source_tokens", ferrySourceTokens(path, opts, out)) == ferryOK {
		p.sources = append(p.sources, uintptr(*out))
	}
}

// sourceRagged calls ferry_source_ragged_tokens with the token and offsets files in any order, or NULL.
func (p *capiFuzzProgram) sourceRagged() {
	o := (*raggedOptions)(p.sized(uint32(unsafe.Sizeof(raggedOptions{})), 24))
	if p.r.u8()%2 == 0 {
		o.Format = capiFuzzPick(p.r, int32(tokensUint16), tokensUint32, tokensLLMC, 0)
		o.MaxLen = capiFuzzPick(p.r, int64(1), 4, 8, 30, 0, -1, 1<<30, math.MaxInt64)
	}
	o.FieldName = p.r.name(p.c) // a pointer: valid or NULL, never input bytes
	var opts *raggedOptions
	if !p.rarely(16) {
		opts = o
	}
	tp := capiFuzzPick(p.r, capiFuzzShared.tokens, capiFuzzShared.missing, capiFuzzShared.offs, nil)
	op := capiFuzzPick(p.r, capiFuzzShared.offs, capiFuzzShared.npy, capiFuzzShared.tokens, nil)
	out := (*sourceHandle)(p.out(8))
	if p.check("ferry_source_ragged_tokens", ferrySourceRaggedTokens(tp, op, opts, out)) == ferryOK {
		p.sources = append(p.sources, uintptr(*out))
	}
}

// sourceNpy calls ferry_source_npy with up to two names and paths.
func (p *capiFuzzProgram) sourceNpy() {
	names := (*[2]*byte)(p.c.alloc(16))
	paths := (*[2]*byte)(p.c.alloc(16))
	for k := 0; k < 2; k++ {
		names[k] = p.r.nameAt(p.c, k)
		paths[k] = capiFuzzPick(p.r, capiFuzzShared.npy, capiFuzzShared.npy, capiFuzzShared.tokens, capiFuzzShared.missing, nil)
	}
	count := capiFuzzPick(p.r, int32(1), 2, 0, -1, 1<<20)
	out := (*sourceHandle)(p.out(8))
	if p.check("ferry_source_npy", ferrySourceNpy(&names[0], &paths[0], count, out)) == ferryOK {
		p.sources = append(p.sources, uintptr(*out))
	}
}

// engineCreate calls ferry_engine_create with random options.
func (p *capiFuzzProgram) engineCreate() {
	o := (*engineOptions)(p.sized(uint32(unsafe.Sizeof(engineOptions{})), 16))
	if o.Size == uint32(unsafe.Sizeof(engineOptions{})) && !p.rarely(4) {
		*o = engineOptions{Size: o.Size, SampleIntervalMS: capiFuzzPick(p.r, uint32(0), 0, 1, 100, 60001), Flags: capiFuzzPick(p.r, uint32(0), 0, 0, 1)}
	}
	// Only the CPU and devices that cannot exist: no GPU engine even on a host with one.
	o.Device = capiFuzzPick(p.r, ferryDeviceCPU, ferryDeviceCPU, ferryDeviceCPU, -2, 1<<30, math.MinInt32)
	out := (*engineHandle)(p.out(8))
	if p.check("ferry_engine_create", ferryEngineCreate(o, out)) == ferryOK {
		p.engines = append(p.engines, uintptr(*out))
		p.cpu[uintptr(*out)] = true
	}
}

// transforms builds an array of up to two transforms, from ferry_transform_init or input bytes, whose
// pointers are names or NULL; it returns the array and a count that never exceeds it unless the library
// must refuse it unread.
func (p *capiFuzzProgram) transforms() (uintptr, int32) {
	const n = 2
	arr := unsafe.Slice((*transform)(p.c.alloc(n*int(unsafe.Sizeof(transform{})))), n)
	for i := range arr {
		tr := &arr[i]
		if p.r.u8()%2 == 0 {
			kind := capiFuzzPick(p.r, transformNormalize, transformShiftTokens, transformPadSequences, 0, 9)
			p.check("ferry_transform_init", ferryTransformInit(tr, kind, p.r.name(p.c)))
		} else {
			p.r.fill(unsafe.Slice((*byte)(unsafe.Pointer(tr)), unsafe.Sizeof(*tr)))
			tr.Kind = capiFuzzPick(p.r, transformNormalize, transformShiftTokens, transformPadSequences, tr.Kind)
		}
		tr.Field = uintptr(unsafe.Pointer(p.r.name(p.c)))
		tr.XName = uintptr(unsafe.Pointer(p.r.name(p.c)))
		tr.YName = uintptr(unsafe.Pointer(p.r.name(p.c)))
		tr.MaskName = uintptr(unsafe.Pointer(p.r.name(p.c)))
		tr.LengthsName = uintptr(unsafe.Pointer(p.r.name(p.c)))
	}
	ptr := uintptr(unsafe.Pointer(&arr[0]))
	if p.rarely(16) {
		ptr = 0
	}
	return ptr, capiFuzzPick(p.r, int32(0), 1, 2, 1, -1, 1025)
}

// iteratorCreate calls ferry_iterator_create with random options, engine and source.
func (p *capiFuzzProgram) iteratorCreate() {
	o := (*iteratorOptions)(p.sized(uint32(unsafe.Sizeof(iteratorOptions{})), 48))
	if o.Size == uint32(unsafe.Sizeof(iteratorOptions{})) && !p.rarely(4) {
		*o = iteratorOptions{Size: o.Size, Flags: capiFuzzPick(p.r, uint32(0), iteratorShuffle, iteratorDropLast, 3, 4),
			Seed: uint64(p.r.u8()), Staging: capiFuzzPick(p.r, stagingAuto, stagingGather, stagingDMA, stagingMapped, 4, -1),
			PinnedBudget: capiFuzzPick(p.r, int64(0), -1, 1<<20)}
	}
	// What bounds the iterator's memory, threads and waits is always chosen here: a ring of at most
	// 8 batches of 8 samples, and Next waiting at most 50 ms when the caller holds the slot it needs.
	o.BatchSize = capiFuzzPick(p.r, int64(1), 2, 3, 5, 8, 0, -1, 1<<24+1, math.MinInt64)
	o.Workers = capiFuzzPick(p.r, int32(0), 1, 2, -1, 65)
	o.Prefetch = capiFuzzPick(p.r, int32(0), 2, 3, 8, 1, 65, -2)
	o.TimeoutMS = 50 - uint32(p.r.u8())%50
	rw := capiFuzzPick(p.r, [2]int32{0, 1}, [2]int32{0, 1}, [2]int32{1, 2}, [2]int32{0, 2}, [2]int32{2, 3}, [2]int32{2, 2},
		[2]int32{-1, 1}, [2]int32{0, -1}, [2]int32{0, 0})
	o.Rank, o.WorldSize = rw[0], rw[1]
	o.Transforms, o.NumTransforms = p.transforms()
	var opts *iteratorOptions
	if !p.rarely(16) {
		opts = o
	}
	eh := p.handle(capiFuzzKindEngine, p.engines)
	sh := p.handle(capiFuzzKindSource, p.sources)
	out := (*iteratorHandle)(p.out(8))
	if p.check("ferry_iterator_create", ferryIteratorCreate(engineHandle(eh), sourceHandle(sh), opts, out)) == ferryOK {
		p.iterators = append(p.iterators, uintptr(*out))
		p.cpu[uintptr(*out)] = p.cpu[eh]
	}
}

// monitorCreate calls ferry_monitor_create with random options.
func (p *capiFuzzProgram) monitorCreate() {
	o := (*monitorOptions)(p.sized(uint32(unsafe.Sizeof(monitorOptions{})), 72))
	if o.Size == uint32(unsafe.Sizeof(monitorOptions{})) && !p.rarely(4) {
		*o = monitorOptions{Size: o.Size, GPUIntervalUS: -1, PCIeIntervalUS: -1, SystemIntervalUS: -1}
	}
	o.Flags = capiFuzzPick(p.r, uint32(0), 0, 0, monitorFStart, 2, o.Flags)
	// The samplers run at most every 10 ms, and each metric keeps at most 4096 points.
	for _, iv := range []*int64{&o.GPUIntervalUS, &o.PCIeIntervalUS, &o.SystemIntervalUS} {
		*iv = capiFuzzPick(p.r, int64(-1), -1, 0, 10_000, 9_999, 100_000, 1<<62)
	}
	o.SeriesPoints = capiFuzzPick(p.r, int32(0), 16, 64, 4096, 15, 1<<20+1, -1)
	o.Node = uintptr(unsafe.Pointer(p.r.name(p.c)))
	paths := (*[2]uintptr)(p.c.alloc(16))
	for k := range paths {
		paths[k] = uintptr(unsafe.Pointer(capiFuzzPick(p.r, cname("/"), capiFuzzShared.missing, capiFuzzShared.tokens, nil)))
	}
	o.DiskPaths = capiFuzzPick(p.r, uintptr(unsafe.Pointer(&paths[0])), 0)
	o.NumDiskPaths = capiFuzzPick(p.r, int32(0), 1, 2, -1, 65)
	var opts *monitorOptions
	if !p.rarely(8) {
		opts = o
	}
	out := (*monitorHandle)(p.out(8))
	if p.check("ferry_monitor_create", ferryMonitorCreate(opts, out)) == ferryOK {
		p.monitors = append(p.monitors, uintptr(*out))
	}
}

// stream is a consumer stream for a call on h: NULL, or any value where h runs on the CPU and ignores it.
func (p *capiFuzzProgram) stream(h uintptr) uintptr {
	if p.cpu[h] && p.rarely(2) {
		return uintptr(p.r.u64())
	}
	return 0
}

// step decodes and runs one call.
func (p *capiFuzzProgram) step() {
	r := p.r
	switch op := r.u8() % 40; op {
	case 0, 1:
		if len(p.engines) < capiFuzzMaxEngines {
			p.engineCreate()
		}
	case 2:
		h := p.handle(capiFuzzKindEngine, p.engines)
		if p.check("ferry_engine_destroy", ferryEngineDestroy(engineHandle(h))) == ferryOK {
			p.engines = capiFuzzRemove(p.engines, h)
			p.destroyed(h)
		}
	case 3:
		h := p.handle(capiFuzzKindEngine, p.engines)
		ptr := p.sized(uint32(unsafe.Sizeof(memorySnapshot{})), 160)
		if p.rarely(16) {
			ptr = nil
		}
		if r.u8()%2 == 0 {
			p.check("ferry_memory_check", ferryMemoryCheck(engineHandle(h), (*memorySnapshot)(ptr)))
		} else {
			p.check("ferry_memory_check_live", ferryMemoryCheckLive(engineHandle(h), (*memorySnapshot)(ptr)))
		}
	case 4:
		h := p.handle(capiFuzzKindEngine, p.engines)
		p.check("ferry_engine_device", ferryEngineDevice(engineHandle(h), (*int32)(p.out(4))))
		p.check("ferry_engine_sample_now", ferryEngineSampleNow(engineHandle(h)))
	case 5, 6, 7:
		if len(p.sources) < capiFuzzMaxSources {
			p.sourceMemory()
		}
	case 8:
		if len(p.sources) < capiFuzzMaxSources {
			capiFuzzPick(r, p.sourceTokens, p.sourceRagged, p.sourceNpy)()
		}
	case 9:
		h := p.handle(capiFuzzKindSource, p.sources)
		p.check("ferry_source_len", ferrySourceLen(sourceHandle(h), (*int64)(p.out(8))))
		p.check("ferry_source_num_fields", ferrySourceNumFields(sourceHandle(h), (*int32)(p.out(4))))
		idx := capiFuzzPick(r, int32(0), 1, 2, -1, math.MaxInt32)
		p.check("ferry_source_field", ferrySourceField(sourceHandle(h), idx, (*field)(p.out(int(unsafe.Sizeof(field{}))))))
	case 10:
		h := p.handle(capiFuzzKindSource, p.sources)
		if p.check("ferry_source_destroy", ferrySourceDestroy(sourceHandle(h))) == ferryOK {
			p.sources = capiFuzzRemove(p.sources, h)
			p.destroyed(h)
		}
	case 11, 12, 13:
		if len(p.iterators) < capiFuzzMaxIterators {
			p.iteratorCreate()
		}
	case 14, 15, 16, 17:
		if len(p.batches) >= capiFuzzMaxBatches || p.timeouts >= 3 {
			return
		}
		h := p.handle(capiFuzzKindIterator, p.iterators)
		out := (*batchHandle)(p.out(8))
		switch p.check("ferry_iterator_next", ferryIteratorNext(iteratorHandle(h), p.stream(h), out)) {
		case ferryOK:
			p.batches = append(p.batches, uintptr(*out))
			p.cpu[uintptr(*out)] = p.cpu[h]
		case ferryErrTimeout:
			p.timeouts++
		}
	case 18:
		h := p.handle(capiFuzzKindIterator, p.iterators)
		if p.check("ferry_iterator_destroy", ferryIteratorDestroy(iteratorHandle(h))) == ferryOK {
			p.iterators = capiFuzzRemove(p.iterators, h)
			p.destroyed(h)
		}
	case 19:
		h := p.handle(capiFuzzKindIterator, p.iterators)
		st := (*iteratorPositionV2)(p.sized(uint32(unsafe.Sizeof(iteratorPositionV2{})), 24))
		if p.rarely(16) {
			st = nil
		}
		p.check("ferry_iterator_state", ferryIteratorState(iteratorHandle(h), (*iteratorPosition)(unsafe.Pointer(st))))
	case 20, 21:
		h := p.handle(capiFuzzKindIterator, p.iterators)
		st := (*iteratorPositionV2)(p.sized(uint32(unsafe.Sizeof(iteratorPositionV2{})), 24))
		if r.u8()%2 == 0 {
			// Mostly a position the iterator gave, perhaps moved a little.
			p.check("ferry_iterator_state", ferryIteratorState(iteratorHandle(h), (*iteratorPosition)(unsafe.Pointer(st))))
			st.Batch += int64(int8(r.u8())) % 3
			st.Consumed += int64(int8(r.u8())) % 3
			st.WorldSize += int64(r.u8() % 2)
		}
		if p.rarely(16) {
			st = nil
		}
		p.check("ferry_iterator_restore", ferryIteratorRestore(iteratorHandle(h), (*iteratorPosition)(unsafe.Pointer(st))))
	case 22:
		h := p.handle(capiFuzzKindIterator, p.iterators)
		epoch := capiFuzzPickOr(r, r.u64, 0, 1, 2, math.MaxUint64)
		consumed := capiFuzzPickOr(r, func() int64 { return int64(r.u64()) }, 0, 1, 5, 16, 17, -1, math.MaxInt64)
		p.check("ferry_iterator_restore_elastic", ferryIteratorRestoreElastic(iteratorHandle(h), epoch, consumed))
	case 23:
		h := p.handle(capiFuzzKindIterator, p.iterators)
		p.check("ferry_iterator_set_epoch", ferryIteratorSetEpoch(iteratorHandle(h), capiFuzzPickOr(r, r.u64, 0, 1, 7, math.MaxUint64)))
	case 24:
		h := p.handle(capiFuzzKindIterator, p.iterators)
		p.check("ferry_iterator_len", ferryIteratorLen(iteratorHandle(h), (*int64)(p.out(8))))
		p.check("ferry_iterator_num_fields", ferryIteratorNumFields(iteratorHandle(h), (*int32)(p.out(4))))
		idx := capiFuzzPick(r, int32(0), 1, 2, 3, -1, math.MinInt32)
		p.check("ferry_iterator_field", ferryIteratorField(iteratorHandle(h), idx, (*field)(p.out(int(unsafe.Sizeof(field{}))))))
		why := (*byte)(p.out(64))
		p.check("ferry_iterator_staging", ferryIteratorStaging(iteratorHandle(h), (*int32)(p.out(4)), why, capiFuzzPick(r, uint32(64), 1, 0, 16)))
	case 25:
		h := p.handle(capiFuzzKindBatch, p.batches)
		bp := (*batchProperties)(p.sized(uint32(unsafe.Sizeof(batchProperties{})), 32))
		if p.rarely(16) {
			bp = nil
		}
		p.check("ferry_batch_info", ferryBatchInfo(batchHandle(h), bp))
		idx := (*int64)(p.out(16 * 8))
		p.check("ferry_batch_indices", ferryBatchIndices(batchHandle(h), idx, capiFuzzPick(r, int64(16), 8, 1, 0, -1, math.MinInt64)))
	case 26, 27:
		if len(p.tensors) >= capiFuzzMaxTensors {
			return
		}
		h := p.handle(capiFuzzKindBatch, p.batches)
		out := (**dlManagedTensor)(p.out(8))
		var s int32
		if r.u8()%2 == 0 {
			s = p.check("ferry_batch_field", ferryBatchField(batchHandle(h), capiFuzzPick(r, int32(0), 1, 2, 3, -1, math.MaxInt32), out))
		} else {
			s = p.check("ferry_batch_field_by_name", ferryBatchFieldByName(batchHandle(h), r.name(p.c), out))
		}
		if s == ferryOK {
			tensor := *out
			require.NotNil(p.t, tensor)
			require.NotZero(p.t, tensor.Deleter)
			dl := &tensor.DLTensor
			require.True(p.t, dl.NDim >= 1 && dl.NDim <= 9, "ndim %d", dl.NDim)
			n := int64(1)
			for _, d := range unsafe.Slice(dl.Shape, dl.NDim) {
				require.GreaterOrEqual(p.t, d, int64(0))
				n *= d
			}
			tn := capiFuzzTensor{p: tensor}
			if n > 0 && dl.DeviceType == kDLCPU {
				b := unsafe.Slice((*byte)(dl.Data), n*int64(dl.DType.Bits)/8)
				_ = b[0] + b[len(b)-1] // the memory is there
				tn.want = append([]byte(nil), b...)
			}
			p.tensors = append(p.tensors, tn)
		}
	case 28:
		if len(p.tensors) > 0 {
			i := int(r.u8()) % len(p.tensors)
			p.delete(p.tensors[i])
			p.tensors = append(p.tensors[:i], p.tensors[i+1:]...)
		}
	case 29:
		h := p.handle(capiFuzzKindBatch, p.batches)
		p.check("ferry_batch_wait", ferryBatchWait(batchHandle(h), p.stream(h)))
	case 30, 31:
		h := p.handle(capiFuzzKindBatch, p.batches)
		if p.check("ferry_batch_release", ferryBatchRelease(batchHandle(h), p.stream(h))) == ferryOK {
			p.batches = capiFuzzRemove(p.batches, h)
			p.destroyed(h)
		}
	case 32:
		if len(p.monitors) < capiFuzzMaxMonitors {
			p.monitorCreate()
		}
	case 33:
		h := p.handle(capiFuzzKindMonitor, p.monitors)
		if p.check("ferry_monitor_destroy", ferryMonitorDestroy(monitorHandle(h))) == ferryOK {
			p.monitors = capiFuzzRemove(p.monitors, h)
			p.destroyed(h)
		}
	case 34:
		h := p.handle(capiFuzzKindMonitor, p.monitors)
		p.check("ferry_metric_id", ferryMetricID(monitorHandle(h), r.name(p.c), (*uint32)(p.out(4))))
	case 35:
		h := p.handle(capiFuzzKindMonitor, p.monitors)
		id := capiFuzzPick(r, uint32(0), 1, 2, 100, math.MaxUint32)
		v := capiFuzzPickOr(r, func() float64 { return math.Float64frombits(r.u64()) }, 1.5, -2, 0, math.NaN(), math.Inf(1))
		p.check("ferry_metric_log", ferryMetricLog(monitorHandle(h), id, v))
		vals := (*float64)(p.c.alloc(8 * 8))
		ts := (*uint64)(p.c.alloc(8 * 8))
		for i := range 8 {
			*(*float64)(unsafe.Add(unsafe.Pointer(vals), 8*i)) = math.Float64frombits(r.u64())
			*(*uint64)(unsafe.Add(unsafe.Pointer(ts), 8*i)) = capiFuzzPickOr(r, r.u64, 0, 1, math.MaxUint64)
		}
		count := capiFuzzPick(r, int64(0), 1, 8, -1, 1<<31+1)
		if p.rarely(16) {
			vals = nil
		}
		if r.u8()%2 == 0 {
			p.check("ferry_metric_log_many", ferryMetricLogMany(monitorHandle(h), id, vals, count))
		} else {
			p.check("ferry_metric_log_many_at", ferryMetricLogManyAt(monitorHandle(h), id, vals, ts, count))
		}
	case 36:
		h := p.handle(capiFuzzKindMonitor, p.monitors)
		ms := (*metricSummary)(p.sized(uint32(unsafe.Sizeof(metricSummary{})), 112))
		if p.rarely(16) {
			ms = nil
		}
		p.check("ferry_metric_summary_get", ferryMetricSummaryGet(monitorHandle(h), capiFuzzPick(r, uint32(0), 1, 7, math.MaxUint32), ms))
	case 37:
		h := p.handle(capiFuzzKindMonitor, p.monitors)
		const room = 1 << 14
		buf := (*byte)(p.out(room))
		length := (*uint64)(p.out(8))
		s := p.check("ferry_monitor_report_json", ferryMonitorReportJSON(monitorHandle(h), buf, capiFuzzPick(r, uint64(room), 0, 1, 64), length))
		if s == ferryOK && buf != nil && length != nil {
			require.Less(p.t, *length, uint64(room))
			require.Zero(p.t, *(*byte)(unsafe.Add(unsafe.Pointer(buf), *length)), "the report is not NUL-terminated")
		}
	case 38:
		h := p.handle(capiFuzzKindMonitor, p.monitors)
		if r.u8()%2 == 0 {
			p.check("ferry_monitor_start", ferryMonitorStart(monitorHandle(h)))
		} else {
			p.check("ferry_monitor_stop", ferryMonitorStop(monitorHandle(h)))
		}
	case 39:
		h := p.handle(capiFuzzKindMonitor, p.monitors)
		it := p.handle(capiFuzzKindIterator, p.iterators)
		p.check("ferry_monitor_attach_iterator", ferryMonitorAttachIterator(monitorHandle(h), r.name(p.c), iteratorHandle(it)))
	}
}

// finish gives back what the program still holds, in the order a careful caller would, or (as the input
// picks) with the tensors deleted last, after their iterators and engines were destroyed, and checks
// that every destroy of a handle it made succeeds (or finds it already gone: a made-up handle may have
// named it), that a handle destroyed twice is refused, and that the tensors' memory stayed intact.
func (p *capiFuzzProgram) finish() {
	tensorsLast := p.r.u8()%2 == 1
	deleteTensors := func() {
		for _, tn := range p.tensors {
			p.delete(tn)
		}
		p.tensors = nil
	}
	if !tensorsLast {
		deleteTensors()
	}
	gone := func(what string, s int32) {
		p.t.Helper()
		if s != ferryOK && s != ferryErrInvalidHandle && s != ferryErrClosed {
			p.t.Fatalf("%s at the end: status %d", what, s)
		}
	}
	for _, h := range p.batches {
		gone("ferry_batch_release", ferryBatchRelease(batchHandle(h), 0))
	}
	for _, h := range p.iterators {
		gone("ferry_iterator_destroy", ferryIteratorDestroy(iteratorHandle(h)))
	}
	for _, h := range p.monitors {
		gone("ferry_monitor_destroy", ferryMonitorDestroy(monitorHandle(h)))
	}
	for _, h := range p.sources {
		gone("ferry_source_destroy", ferrySourceDestroy(sourceHandle(h)))
	}
	for _, h := range p.engines {
		gone("ferry_engine_destroy", ferryEngineDestroy(engineHandle(h)))
	}
	for _, h := range p.engines {
		require.Equal(p.t, ferryErrInvalidHandle, ferryEngineDestroy(engineHandle(h)), "an engine destroyed twice")
	}
	deleteTensors()
	p.batches, p.iterators, p.monitors, p.sources, p.engines = nil, nil, nil, nil, nil
}

// capiFuzzWorks runs a small valid program and checks its results: a new CPU engine, memory source and
// iterator, one epoch compared with the source's bytes, and two values logged to a metric and summarized.
func capiFuzzWorks(t *testing.T, c *cmem) {
	t.Helper()
	data := capiFuzzShared.data
	eo := engineOptions{Size: uint32(unsafe.Sizeof(engineOptions{})), Device: ferryDeviceCPU}
	var e engineHandle
	require.Equal(t, ferryOK, ferryEngineCreate(&eo, &e), "ferry_engine_create after the program")
	specs := []fieldSpec{{name: "a", dtype: dtypeUint8, shape: []int64{3}}, {name: "b", dtype: dtypeInt32}}
	var src sourceHandle
	ptrs := c.pointers([][]byte{data[:15], data[100:120]})
	require.Equal(t, ferryOK, ferrySourceMemory(5, c.fields(specs), 2, ptrs, &src))
	o := iteratorOptions{Size: uint32(unsafe.Sizeof(iteratorOptions{})), BatchSize: 2, Workers: 1, Prefetch: 2,
		WorldSize: 1, TimeoutMS: 10_000}
	var it iteratorHandle
	require.Equal(t, ferryOK, ferryIteratorCreate(e, src, &o, &it))
	for i := 0; i < 3; i++ {
		var b batchHandle
		require.Equal(t, ferryOK, ferryIteratorNext(it, 0, &b), "batch %d", i)
		var tensor *dlManagedTensor
		require.Equal(t, ferryOK, ferryBatchField(b, 0, &tensor))
		n := min(2, 5-2*i)
		require.Equal(t, data[6*i:6*i+3*n], tensorBytes(tensor, 3*n), "batch %d", i)
		purego.SyscallN(tensor.Deleter, uintptr(unsafe.Pointer(tensor)))
		require.Equal(t, ferryOK, ferryBatchRelease(b, 0))
	}
	var b batchHandle
	require.Equal(t, ferryEndOfEpoch, ferryIteratorNext(it, 0, &b))
	require.Equal(t, ferryOK, ferryIteratorDestroy(it))
	require.Equal(t, ferryOK, ferrySourceDestroy(src))
	require.Equal(t, ferryOK, ferryEngineDestroy(e))

	m, id := capiFuzzShared.monitor, capiFuzzShared.loss
	before := metricSummary{Size: uint32(unsafe.Sizeof(metricSummary{}))}
	require.Equal(t, ferryOK, ferryMetricSummaryGet(m, id, &before))
	require.Equal(t, ferryOK, ferryMetricLog(m, id, 1.5))
	require.Equal(t, ferryOK, ferryMetricLog(m, id, 2.5))
	after := metricSummary{Size: uint32(unsafe.Sizeof(metricSummary{}))}
	require.Equal(t, ferryOK, ferryMetricSummaryGet(m, id, &after))
	require.Equal(t, before.Count+2, after.Count)
	require.Equal(t, [3]float64{1.5, 2.5, 2.5}, [3]float64{after.Min, after.Max, after.Last})
	require.Equal(t, 2.0, after.Mean)
}

// FuzzCAPISequence runs the program the input encodes (see the file's comment), then checks that the
// library still works.
func FuzzCAPISequence(f *testing.F) {
	capiFuzzSetup(f)
	f.Fuzz(func(t *testing.T, program []byte) {
		runtime.LockOSThread() // ferry_last_error is per thread
		defer runtime.UnlockOSThread()
		c := capiFuzzShared.arena
		c.off = 0
		clear(c.buf)
		p := &capiFuzzProgram{t: t, r: &capiFuzzReader{b: program}, c: c, cpu: map[uintptr]bool{}}
		defer p.finish()
		for i := 0; i < capiFuzzMaxOps && !p.r.done(); i++ {
			if c.off > capiFuzzArenaBytes-(1<<15) {
				break // room for the largest step is kept
			}
			p.step()
		}
		p.finish()
		capiFuzzWorks(t, c)
	})
}

// TestCAPIRefusesOverflowingShapes is the C API's regression test of the shape overflow that the engine's
// FuzzFieldValidate seed showed: a field whose shape multiplies past the int range wrapped around to a
// small or zero size and was accepted. Each such shape is now FERRY_ERR_INVALID_ARGUMENT, naming the
// 2 GiB limit, and the library stays usable.
func TestCAPIRefusesOverflowingShapes(t *testing.T) {
	c := newCmem(t, 1<<16)
	data := make([]byte, 64)
	for _, shape := range [][]int64{{1 << 62, 4}, {1<<62 + 1, 4}, {1 << 62, 2}, {1 << 32, 1 << 32}} {
		var src sourceHandle
		specs := []fieldSpec{{name: "x", dtype: dtypeUint8, shape: shape}}
		requireStatus(t, ferryErrInvalidArgument, func() int32 {
			return ferrySourceMemory(1, c.fields(specs), 1, c.pointers([][]byte{data}), &src)
		}, "2 GiB")
		require.Zero(t, src)
	}
	tokens := tempFile(t, "tokens.bin", make([]byte, 64))
	offsets := tempFile(t, "offsets.npy", npyBytes("<i8", false, []int64{2}, capiFuzzInt64s(0, 4)))
	o := raggedOptionsFor(t, tokensUint16, math.MaxInt64, nil)
	var src sourceHandle
	requireStatus(t, ferryErrInvalidArgument, func() int32 {
		return ferrySourceRaggedTokens(cname(tokens), cname(offsets), &o, &src)
	}, "2 GiB")
	require.Zero(t, src)
	requireUsable(t)
}
