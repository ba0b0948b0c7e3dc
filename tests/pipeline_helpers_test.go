package tests

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/ebitengine/purego"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// dtypeSize is the element size of each ferry_dtype.
var dtypeSize = map[int32]int{
	dtypeBool: 1, dtypeUint8: 1, dtypeInt8: 1, dtypeUint16: 2, dtypeInt16: 2, dtypeUint32: 4, dtypeInt32: 4,
	dtypeUint64: 8, dtypeInt64: 8, dtypeFloat16: 2, dtypeBfloat16: 2, dtypeFloat32: 4, dtypeFloat64: 8,
}

// dtypeDLPack is the DLPack code each ferry_dtype is handed out with.
var dtypeDLPack = map[int32]uint8{
	dtypeBool: kDLBool, dtypeUint8: kDLUInt, dtypeInt8: kDLInt, dtypeUint16: kDLUInt, dtypeInt16: kDLInt,
	dtypeUint32: kDLUInt, dtypeInt32: kDLInt, dtypeUint64: kDLUInt, dtypeInt64: kDLInt, dtypeFloat16: kDLFloat,
	dtypeBfloat16: kDLBfloat, dtypeFloat32: kDLFloat, dtypeFloat64: kDLFloat,
}

// fieldSpec is a field as the tests describe it; cmem.fields turns specs into a ferry_field array.
type fieldSpec struct {
	name   string
	dtype  int32
	shape  []int64
	offset int64
}

// bytes is the size of one sample of the field.
func (f fieldSpec) bytes() int {
	n := dtypeSize[f.dtype]
	for _, s := range f.shape {
		n *= int(s)
	}
	return n
}

// cmem is memory outside the Go heap, from an anonymous mapping, the way a C caller's memory is: it
// does not move and the garbage collector never looks at it. Everything handed to the library that
// holds pointers (field arrays, pointer arrays, strings) is built here.
type cmem struct {
	buf []byte
	off int
}

func newCmem(t testing.TB, size int) *cmem {
	t.Helper()
	buf, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	require.NoError(t, err)
	t.Cleanup(func() { _ = unix.Munmap(buf) })
	return &cmem{buf: buf}
}

// alloc returns n zeroed bytes aligned to 16.
func (m *cmem) alloc(n int) unsafe.Pointer {
	m.off = (m.off + 15) &^ 15
	if m.off+n > len(m.buf) {
		panic(fmt.Sprintf("cmem: %d bytes requested, %d left", n, len(m.buf)-m.off))
	}
	p := unsafe.Pointer(&m.buf[m.off])
	m.off += n
	return p
}

// cstring copies s with a NUL terminator.
func (m *cmem) cstring(s string) *byte {
	p := m.alloc(len(s) + 1)
	copy(unsafe.Slice((*byte)(p), len(s)+1), s)
	return (*byte)(p)
}

// fields builds a ferry_field array.
func (m *cmem) fields(specs []fieldSpec) *field {
	if len(specs) == 0 {
		return (*field)(m.alloc(int(unsafe.Sizeof(field{}))))
	}
	arr := unsafe.Slice((*field)(m.alloc(len(specs)*int(unsafe.Sizeof(field{})))), len(specs))
	for i, s := range specs {
		arr[i] = field{Name: m.cstring(s.name), DType: s.dtype, NDim: int32(len(s.shape)), Offset: s.offset}
		copy(arr[i].Shape[:], s.shape)
	}
	return &arr[0]
}

// strings builds a const char* array.
func (m *cmem) strings(ss []string) **byte {
	arr := unsafe.Slice((**byte)(m.alloc(max(1, len(ss))*8)), max(1, len(ss)))
	for i, s := range ss {
		arr[i] = m.cstring(s)
	}
	return &arr[0]
}

// pointers builds a const void* array from the first byte of each buffer (a nil buffer gives NULL).
func (m *cmem) pointers(bufs [][]byte) *uintptr {
	arr := unsafe.Slice((*uintptr)(m.alloc(max(1, len(bufs))*8)), max(1, len(bufs)))
	for i, b := range bufs {
		if b != nil {
			arr[i] = uintptr(unsafe.Pointer(&b[0]))
		}
	}
	return &arr[0]
}

var cnames struct {
	sync.Mutex
	arena *cmem
	m     map[string]*byte
}

// cname returns a C copy of s that lives as long as the process.
func cname(s string) *byte {
	cnames.Lock()
	defer cnames.Unlock()
	if p, ok := cnames.m[s]; ok {
		return p
	}
	if cnames.arena == nil || cnames.arena.off+len(s)+32 > len(cnames.arena.buf) {
		buf, err := unix.Mmap(-1, 0, 1<<16, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
		if err != nil {
			panic(err)
		}
		cnames.arena = &cmem{buf: buf}
		if cnames.m == nil {
			cnames.m = map[string]*byte{}
		}
	}
	p := cnames.arena.cstring(s)
	cnames.m[s] = p
	return p
}

// newRand returns a generator with a fresh seed, logged so that a failure can be replayed.
func newRand(t testing.TB) *rand.Rand {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("FERRY_TEST_SEED"); s != "" {
		_, err := fmt.Sscan(s, &seed)
		require.NoError(t, err)
	}
	t.Logf("random seed %d (set FERRY_TEST_SEED to replay)", seed)
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

func fillRandom(r *rand.Rand, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(r.Uint32())
	}
}

// mappedRandom returns n random bytes of anonymous mapped memory, unmapped at cleanup (after the
// sources and iterators created later, since cleanups run last-in first-out).
func mappedRandom(t testing.TB, r *rand.Rand, n int) []byte {
	t.Helper()
	buf, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	require.NoError(t, err)
	t.Cleanup(func() { _ = unix.Munmap(buf) })
	fillRandom(r, buf)
	return buf
}

// refFunc gives the expected bytes of field k of sample i.
type refFunc func(k int, i int64) []byte

// memSource is a memory source over random caller memory, with its reference.
type memSource struct {
	h     sourceHandle
	n     int64
	specs []fieldSpec
	data  [][]byte
}

func (m *memSource) ref(k int, i int64) []byte {
	b := m.specs[k].bytes()
	return m.data[k][int(i)*b : int(i+1)*b]
}

// newMemorySource creates a memory source of n samples with random contents.
func newMemorySource(t testing.TB, r *rand.Rand, n int64, specs []fieldSpec) *memSource {
	t.Helper()
	m := &memSource{n: n, specs: specs}
	for _, s := range specs {
		m.data = append(m.data, mappedRandom(t, r, int(n)*s.bytes()))
	}
	c := newCmem(t, 1<<16)
	requireOK(t, func() int32 {
		return ferrySourceMemory(n, c.fields(specs), int32(len(specs)), c.pointers(m.data), &m.h)
	})
	require.NotZero(t, m.h)
	destroyAtCleanup(t, m.h)
	return m
}

// destroyAtCleanup destroys the source at cleanup; a test may have destroyed it already.
func destroyAtCleanup(t testing.TB, h sourceHandle) {
	t.Cleanup(func() {
		if s := ferrySourceDestroy(h); s != ferryOK && s != ferryErrInvalidHandle {
			t.Errorf("ferry_source_destroy: %s", statusString(t, s))
		}
	})
}

// standardSpecs are fields of several types and ranks.
var standardSpecs = []fieldSpec{
	{name: "image", dtype: dtypeUint8, shape: []int64{3, 4, 5}},
	{name: "label", dtype: dtypeInt64},
	{name: "weights", dtype: dtypeFloat32, shape: []int64{7}},
	{name: "mask", dtype: dtypeBool, shape: []int64{2, 3}},
}

// iterOptions returns options filled by ferry_iterator_options_init, with one rank (the environment's
// RANK and WORLD_SIZE do not apply) and the given batch size.
func iterOptions(t testing.TB, batch int64) iteratorOptions {
	t.Helper()
	var o iteratorOptions
	requireOK(t, func() int32 { return ferryIteratorOptionsInit(&o) })
	o.BatchSize = batch
	o.WorldSize = 1
	return o
}

// newIterator creates an iterator and destroys it at cleanup.
func newIterator(t testing.TB, e engineHandle, s sourceHandle, o iteratorOptions) iteratorHandle {
	t.Helper()
	var it iteratorHandle
	requireOK(t, func() int32 { return ferryIteratorCreate(e, s, &o, &it) })
	require.NotZero(t, it)
	t.Cleanup(func() {
		if s := ferryIteratorDestroy(it); s != ferryOK && s != ferryErrInvalidHandle {
			t.Errorf("ferry_iterator_destroy: %s", statusString(t, s))
		}
	})
	return it
}

func iteratorLen(t testing.TB, it iteratorHandle) int64 {
	t.Helper()
	var n int64 = -1
	requireOK(t, func() int32 { return ferryIteratorLen(it, &n) })
	return n
}

func iteratorState(t testing.TB, it iteratorHandle) iteratorPosition {
	t.Helper()
	p := iteratorPosition{Size: uint32(unsafe.Sizeof(iteratorPosition{}))}
	requireOK(t, func() int32 { return ferryIteratorState(it, &p) })
	return p
}

func restore(t testing.TB, it iteratorHandle, epoch uint64, batch int64) {
	t.Helper()
	p := iteratorPosition{Size: uint32(unsafe.Sizeof(iteratorPosition{})), Epoch: epoch, Batch: batch}
	requireOK(t, func() int32 { return ferryIteratorRestore(it, &p) })
}

// next calls ferry_iterator_next, which must return a batch.
func next(t testing.TB, it iteratorHandle) batchHandle {
	t.Helper()
	var b batchHandle
	requireOK(t, func() int32 { return ferryIteratorNext(it, 0, &b) })
	require.NotZero(t, b, "ferry_iterator_next returned OK with a NULL batch")
	return b
}

// requireEndOfEpoch calls ferry_iterator_next, which must return FERRY_END_OF_EPOCH and a NULL batch.
func requireEndOfEpoch(t testing.TB, it iteratorHandle) {
	t.Helper()
	b := batchHandle(0x5a5a)
	requireStatus(t, ferryEndOfEpoch, func() int32 { return ferryIteratorNext(it, 0, &b) })
	require.Zero(t, b, "FERRY_END_OF_EPOCH must write a NULL batch")
}

func batchInfo(t testing.TB, b batchHandle) batchProperties {
	t.Helper()
	p := batchProperties{Size: uint32(unsafe.Sizeof(batchProperties{}))}
	requireOK(t, func() int32 { return ferryBatchInfo(b, &p) })
	return p
}

func batchIndices(t testing.TB, b batchHandle, n int64) []int64 {
	t.Helper()
	idx := make([]int64, n)
	requireOK(t, func() int32 { return ferryBatchIndices(b, &idx[0], n) })
	return idx
}

func releaseBatch(t testing.TB, b batchHandle) {
	t.Helper()
	requireOK(t, func() int32 { return ferryBatchRelease(b, 0) })
}

// batchField returns field k of b as a DLPack tensor; the caller calls deleteTensor.
func batchField(t testing.TB, b batchHandle, k int) *dlManagedTensor {
	t.Helper()
	var tensor *dlManagedTensor
	requireOK(t, func() int32 { return ferryBatchField(b, int32(k), &tensor) })
	require.NotNil(t, tensor)
	return tensor
}

func batchFieldByName(t testing.TB, b batchHandle, name string) *dlManagedTensor {
	t.Helper()
	var tensor *dlManagedTensor
	requireOK(t, func() int32 { return ferryBatchFieldByName(b, cname(name), &tensor) })
	require.NotNil(t, tensor)
	return tensor
}

// deleteTensor calls the tensor's deleter through its C function pointer, as a DLPack consumer does.
func deleteTensor(t testing.TB, tensor *dlManagedTensor) {
	t.Helper()
	require.NotZero(t, tensor.Deleter, "DLManagedTensorVersioned.deleter is NULL")
	purego.SyscallN(tensor.Deleter, uintptr(unsafe.Pointer(tensor)))
}

// tensorBytes is the tensor's memory, read as host memory.
func tensorBytes(tensor *dlManagedTensor, n int) []byte {
	return unsafe.Slice((*byte)(tensor.DLTensor.Data), n)
}

// device is where tensors are expected: kDLCPU 0 on the CPU engine, kDLCUDA ordinal on a GPU.
type device struct {
	typ int32
	id  int32
}

var cpuDevice = device{kDLCPU, 0}

// requireTensor checks a tensor's DLPack metadata for field spec in a batch of n samples and returns the
// number of bytes it spans.
func requireTensor(t testing.TB, tensor *dlManagedTensor, spec fieldSpec, n int64, dev device) int {
	t.Helper()
	require.Equal(t, uint32(1), tensor.VersionMajor, "DLPack major version")
	require.Equal(t, uint32(0), tensor.VersionMinor, "DLPack minor version")
	require.NotZero(t, tensor.Deleter)
	require.Zero(t, tensor.Flags&2, "DLPACK_FLAG_BITMASK_IS_COPIED: the tensor is the batch itself")
	dl := &tensor.DLTensor
	require.NotNil(t, dl.Data, "field %q: data is NULL", spec.name)
	require.Equal(t, dev.typ, dl.DeviceType, "field %q: device type", spec.name)
	require.Equal(t, dev.id, dl.DeviceID, "field %q: device id", spec.name)
	require.Equal(t, int32(1+len(spec.shape)), dl.NDim, "field %q: ndim", spec.name)
	require.Equal(t, dlDataType{Code: dtypeDLPack[spec.dtype], Bits: uint8(8 * dtypeSize[spec.dtype]), Lanes: 1}, dl.DType,
		"field %q: dtype", spec.name)
	require.NotNil(t, dl.Shape)
	require.Equal(t, append([]int64{n}, spec.shape...), append([]int64(nil), unsafe.Slice(dl.Shape, dl.NDim)...),
		"field %q: shape", spec.name)
	require.Nil(t, dl.Strides, "field %q: strides must be NULL (compact row-major)", spec.name)
	require.Zero(t, dl.ByteOffset)
	return int(n) * spec.bytes()
}

// expected is the reference content of field k for the given samples.
func expected(ref refFunc, k int, indices []int64) []byte {
	var out []byte
	for _, i := range indices {
		out = append(out, ref(k, i)...)
	}
	return out
}

// readFunc reads n bytes of a tensor's memory; tensorBytes for host memory.
type readFunc func(t testing.TB, tensor *dlManagedTensor, n int) []byte

func hostRead(_ testing.TB, tensor *dlManagedTensor, n int) []byte {
	return append([]byte(nil), tensorBytes(tensor, n)...)
}

// checkBatch checks a batch against the reference: its info, and every field's tensor, taken by index
// and by name, metadata and bytes. It returns the batch's info and indices. The batch is not released.
func checkBatch(t testing.TB, b batchHandle, specs []fieldSpec, ref refFunc, dev device, read readFunc) (batchProperties, []int64) {
	t.Helper()
	info := batchInfo(t, b)
	require.Equal(t, int32(len(specs)), info.NumFields)
	require.Greater(t, info.NumSamples, int64(0))
	idx := batchIndices(t, b, info.NumSamples)
	for k, spec := range specs {
		for _, byName := range []bool{false, true} {
			var tensor *dlManagedTensor
			if byName {
				tensor = batchFieldByName(t, b, spec.name)
			} else {
				tensor = batchField(t, b, k)
			}
			n := requireTensor(t, tensor, spec, info.NumSamples, dev)
			got := read(t, tensor, n)
			want := expected(ref, k, idx)
			if !bytes.Equal(want, got) {
				deleteTensor(t, tensor)
				t.Fatalf("batch %d of epoch %d, field %q (by name: %v): the bytes differ from the samples %v",
					info.Index, info.Epoch, spec.name, byName, firstFew(idx))
			}
			deleteTensor(t, tensor)
		}
	}
	return info, idx
}

func firstFew(idx []int64) string {
	if len(idx) > 8 {
		return fmt.Sprint(idx[:8]) + "…"
	}
	return fmt.Sprint(idx)
}

// epochBatch is one batch as an epoch run saw it.
type epochBatch struct {
	epoch   uint64
	index   int64
	indices []int64
}

// runEpoch takes batches until FERRY_END_OF_EPOCH, checking each against the reference and the
// position sequence, and releases them.
func runEpoch(t testing.TB, it iteratorHandle, epoch uint64, specs []fieldSpec, ref refFunc, dev device, read readFunc) []epochBatch {
	t.Helper()
	n := iteratorLen(t, it)
	var out []epochBatch
	for i := int64(0); i < n; i++ {
		st := iteratorState(t, it)
		require.Equal(t, iteratorPosition{Size: st.Size, Epoch: epoch, Batch: i}, st, "ferry_iterator_state before batch %d", i)
		b := next(t, it)
		info, idx := checkBatch(t, b, specs, ref, dev, read)
		require.Equal(t, epoch, info.Epoch)
		require.Equal(t, i, info.Index)
		out = append(out, epochBatch{epoch: info.Epoch, index: info.Index, indices: idx})
		releaseBatch(t, b)
	}
	st := iteratorState(t, it)
	require.Equal(t, iteratorPosition{Size: st.Size, Epoch: epoch, Batch: n}, st, "ferry_iterator_state at the epoch's end")
	requireEndOfEpoch(t, it)
	st = iteratorState(t, it)
	require.Equal(t, iteratorPosition{Size: st.Size, Epoch: epoch + 1, Batch: 0}, st, "ferry_iterator_state after FERRY_END_OF_EPOCH")
	return out
}

// flatten concatenates the indices of an epoch's batches.
func flatten(bs []epochBatch) []int64 {
	var out []int64
	for _, b := range bs {
		out = append(out, b.indices...)
	}
	return out
}

// tempFile writes data to a new file in the test's directory and returns its path.
func tempFile(t testing.TB, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(p, data, 0o644))
	return p
}
