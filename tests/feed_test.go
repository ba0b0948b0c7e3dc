package tests

import (
	"encoding/binary"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

// feedHandle mirrors ferry_feed.
type feedHandle uintptr

// feedOptions mirrors ferry_feed_options.
type feedOptions struct {
	Size          uint32
	Slots         int32
	Workers       int32
	TimeoutMS     uint32
	Transforms    uintptr
	NumTransforms int32
	Reserved      int32
	PinnedBudget  int64
}

// hostTensor mirrors ferry_host_tensor.
type hostTensor struct {
	Name  *byte
	DType int32
	NDim  int32
	Shape [9]int64
	Data  unsafe.Pointer
	Bytes int64
}

// pipelineStats mirrors ferry_pipeline_stats.
type pipelineStats struct {
	Size     uint32
	Reserved uint32
	Batches  uint64
	Samples  uint64
	Bytes    uint64
	StallNs  uint64
	Skipped  uint64
}

func TestFeedStructLayout(t *testing.T) {
	var fo feedOptions
	var ht hostTensor
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(ferry_feed_options)", unsafe.Sizeof(fo), 40},
		{"ferry_feed_options.transforms", unsafe.Offsetof(fo.Transforms), 16},
		{"ferry_feed_options.pinned_budget", unsafe.Offsetof(fo.PinnedBudget), 32},
		{"sizeof(ferry_host_tensor)", unsafe.Sizeof(ht), 104},
		{"ferry_host_tensor.shape", unsafe.Offsetof(ht.Shape), 16},
		{"ferry_host_tensor.data", unsafe.Offsetof(ht.Data), 88},
		{"ferry_host_tensor.bytes", unsafe.Offsetof(ht.Bytes), 96},
		{"sizeof(ferry_pipeline_stats)", unsafe.Sizeof(pipelineStats{}), 48},
		{"ferry_pipeline_stats.skipped", unsafe.Offsetof(pipelineStats{}.Skipped), 40},
	} {
		require.Equal(t, c.want, c.got, c.name)
	}
}

// newFeed opens a feed on e, destroyed when the test ends, with a ShiftTokens transform on "tokens".
func newFeed(t *testing.T, e engineHandle, c *cmem, slots int32, budget int64) feedHandle {
	t.Helper()
	var o feedOptions
	requireOK(t, func() int32 { return ferryFeedOptionsInit(&o) })
	require.Equal(t, uint32(40), o.Size)
	tr := (*transform)(c.alloc(int(unsafe.Sizeof(transform{}))))
	requireOK(t, func() int32 { return ferryTransformInit(tr, transformShiftTokens, c.cstring("tokens")) })
	o.Transforms, o.NumTransforms = uintptr(unsafe.Pointer(tr)), 1
	o.Slots, o.PinnedBudget = slots, budget
	var f feedHandle
	requireOK(t, func() int32 { return ferryFeedCreate(e, &o, &f) })
	t.Cleanup(func() { ferryFeedDestroy(f) })
	return f
}

// fedTensors is a batch of rows: "pixels" uint8 [rows, w] and "tokens" uint16 [rows, n+1] of fresh
// random bytes, in C memory.
func fedTensors(c *cmem, r interface{ Uint32() uint32 }, rows, w, n int) ([]hostTensor, []byte, []byte) {
	pix := unsafe.Slice((*byte)(c.alloc(rows*w)), rows*w)
	tok := unsafe.Slice((*byte)(c.alloc(rows*(n+1)*2)), rows*(n+1)*2)
	for _, b := range [][]byte{pix, tok} {
		for i := range b {
			b[i] = byte(r.Uint32())
		}
	}
	ts := []hostTensor{
		{Name: c.cstring("pixels"), DType: dtypeUint8, NDim: 2, Data: unsafe.Pointer(&pix[0]), Bytes: int64(len(pix))},
		{Name: c.cstring("tokens"), DType: dtypeUint16, NDim: 2, Data: unsafe.Pointer(&tok[0]), Bytes: int64(len(tok))},
	}
	ts[0].Shape[0], ts[0].Shape[1] = int64(rows), int64(w)
	ts[1].Shape[0], ts[1].Shape[1] = int64(rows), int64(n+1)
	return ts, pix, tok
}

// TestFeed pushes host batches of changing shapes through the C ABI on the CPU engine: the batch's fields
// are the tensors and the transform's outputs, value for value; held batches grow the feed; a negative
// budget refuses at once; bad tensors are refused by name; stats count what was staged.
func TestFeed(t *testing.T) {
	r := newRand(t)
	e := newCPUEngine(t, 0)
	c := newCmem(t, 1<<24)
	f := newFeed(t, e, c, 2, 0)
	var held []batchHandle
	var want [][]byte
	total := uint64(0)
	for i := range 10 {
		rows, w, n := 1+r.IntN(20), 1+r.IntN(50), 1+r.IntN(30)
		ts, pix, tok := fedTensors(c, r, rows, w, n)
		var b batchHandle
		requireOK(t, func() int32 { return ferryFeedPush(f, &ts[0], int32(len(ts)), &b) })
		total += uint64(rows)
		info := batchInfo(t, b)
		require.Equal(t, int32(3), info.NumFields, "pixels, x, y")
		require.Equal(t, int64(rows), info.NumSamples)
		require.Equal(t, int64(i), info.Index)
		for k, name := range []string{"pixels", "x", "y"} {
			buf := make([]byte, 16)
			requireOK(t, func() int32 { return ferryBatchFieldName(b, int32(k), &buf[0], 16) })
			require.Equal(t, name+"\x00", string(buf[:len(name)+1]))
		}
		for k, want := range []int32{0, 1, 1} { // pixels from tensor 0; x and y from tensor 1
			var o int32 = -1
			requireOK(t, func() int32 { return ferryBatchFieldOrigin(b, int32(k), &o) })
			require.Equal(t, want, o)
		}
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryBatchFieldOrigin(b, 0, nil) }, "NULL")
		small := make([]byte, 3)
		requireStatus(t, ferryErrLimit, func() int32 { return ferryBatchFieldName(b, 0, &small[0], 3) }, "needs 7 bytes")
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryBatchFieldName(b, 3, &small[0], 3) }, "index 3")
		var x, y []byte
		for row := range rows {
			for j := range n {
				x = binary.LittleEndian.AppendUint64(x, uint64(binary.LittleEndian.Uint16(tok[(row*(n+1)+j)*2:])))
				y = binary.LittleEndian.AppendUint64(y, uint64(binary.LittleEndian.Uint16(tok[(row*(n+1)+j+1)*2:])))
			}
		}
		for k, w := range [][]byte{append([]byte(nil), pix...), x, y} {
			tensor := batchField(t, b, k)
			got := tensorBytes(tensor, len(w))
			require.Equal(t, w, got, "batch %d field %d", i, k)
			deleteTensor(t, tensor)
		}
		idx := make([]int64, rows)
		requireStatus(t, ferryErrUnsupported, func() int32 { return ferryBatchIndices(b, &idx[0], int64(rows)) }, "feed")
		held = append(held, b) // every batch kept: the feed grows past its two slots
		want = append(want, x)
	}
	for i, b := range held {
		tensor := batchField(t, b, 1)
		require.Equal(t, want[i], tensorBytes(tensor, len(want[i])), "held batch %d changed", i)
		deleteTensor(t, tensor)
		releaseBatch(t, b)
	}
	var st pipelineStats
	st.Size = uint32(unsafe.Sizeof(st))
	requireOK(t, func() int32 { return ferryFeedAddStall(f, 1500) })
	requireOK(t, func() int32 { return ferryFeedStats(f, &st) })
	require.Equal(t, uint64(10), st.Batches)
	require.Equal(t, total, st.Samples)
	require.Equal(t, uint64(1500), st.StallNs)

	// Bad tensors: each refused by name, and the feed goes on.
	ts, _, _ := fedTensors(c, r, 4, 3, 2)
	var b batchHandle = 0x5a5a
	bad := func(change func(ts []hostTensor), words ...string) {
		t.Helper()
		cp := append([]hostTensor(nil), ts...)
		change(cp)
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryFeedPush(f, &cp[0], int32(len(cp)), &b) }, words...)
		require.Zero(t, b)
	}
	bad(func(ts []hostTensor) { ts[1].Name = nil }, "tensors[1].name is NULL")
	bad(func(ts []hostTensor) { ts[0].NDim = 0 }, `tensor "pixels" has ndim 0`)
	bad(func(ts []hostTensor) { ts[0].NDim = 10 }, "ndim 10")
	bad(func(ts []hostTensor) { ts[0].Bytes-- }, `tensor "pixels"`, "11 were given")
	bad(func(ts []hostTensor) { ts[0].Data = nil }, "NULL data")
	bad(func(ts []hostTensor) { ts[1].Shape[0] = 3 }, `tensor "tokens" of uint16 [3 3] is 18 bytes; 24 were given`)
	bad(func(ts []hostTensor) { ts[1].DType = 77 }, "dtype")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryFeedPush(f, nil, 2, &b) }, "NULL")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryFeedPush(f, &ts[0], 0, &b) }, "num_tensors")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryFeedPush(f, &ts[0], 2, nil) }, "NULL")
	requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryFeedPush(feedHandle(e), &ts[0], 2, &b) })
	requireOK(t, func() int32 { return ferryFeedPush(f, &ts[0], 2, &b) })
	releaseBatch(t, b)

	// No budget to grow by: the slots the caller holds make the next push fail at once.
	g := newFeed(t, e, c, 2, -1)
	var h1, h2, h3 batchHandle
	requireOK(t, func() int32 { return ferryFeedPush(g, &ts[0], 2, &h1) })
	requireOK(t, func() int32 { return ferryFeedPush(g, &ts[0], 2, &h2) })
	requireStatus(t, ferryErrLimit, func() int32 { return ferryFeedPush(g, &ts[0], 2, &h3) }, "still held by the caller")
	releaseBatch(t, h1)
	requireOK(t, func() int32 { return ferryFeedPush(g, &ts[0], 2, &h3) })
	// Destroyed with batches held: their tensors stay valid until deleted.
	tensor := batchField(t, h2, 0)
	releaseBatch(t, h2)
	requireOK(t, func() int32 { return ferryFeedDestroy(g) })
	require.Equal(t, unsafe.Slice((*byte)(ts[0].Data), 12), tensorBytes(tensor, 12))
	deleteTensor(t, tensor)
	requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryBatchRelease(h3, 0) }, "destroyed")
	requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryFeedPush(g, &ts[0], 2, &b) })
	requireUsable(t)
}

// TestIteratorStats: ferry_iterator_stats counts the batches and samples handed out.
func TestIteratorStats(t *testing.T) {
	r := newRand(t)
	src := newMemorySource(t, r, 64, standardSpecs)
	e := newCPUEngine(t, 0)
	it := newIterator(t, e, src.h, iterOptions(t, 8))
	for range 3 {
		releaseBatch(t, next(t, it))
	}
	var st pipelineStats
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorStats(it, &st) }, "size")
	st.Size = uint32(unsafe.Sizeof(st))
	requireOK(t, func() int32 { return ferryIteratorStats(it, &st) })
	require.Equal(t, uint64(3), st.Batches)
	require.Equal(t, uint64(24), st.Samples)
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorStats(it, nil) }, "NULL")
}

// TestIteratorNextTensors: one call hands out every field of the batch; the tensors hold the batch (a ring
// that may not grow goes on once they are deleted), the epoch ends with FERRY_END_OF_EPOCH, and bad
// arguments are refused without taking a batch.
func TestIteratorNextTensors(t *testing.T) {
	r := newRand(t)
	src := newMemorySource(t, r, 64, standardSpecs)
	e := newCPUEngine(t, 0)
	o := iterOptions(t, 8)
	o.Prefetch = 2
	o.PinnedBudget = -1
	it := newIterator(t, e, src.h, o)
	n := len(standardSpecs)
	tensors := make([]*dlManagedTensor, n)
	var info batchProperties
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorNextTensors(it, 0, 0, &tensors[0], int32(n), &info) }, "size")
	info.Size = uint32(unsafe.Sizeof(info))
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorNextTensors(it, 0, 0, &tensors[0], int32(n-1), &info) }, "capacity")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorNextTensors(it, 0, 0, nil, int32(n), &info) }, "NULL")
	for epoch := range 2 {
		for i := int64(0); i < 8; i++ {
			requireOK(t, func() int32 { return ferryIteratorNextTensors(it, 0, 0, &tensors[0], int32(n), &info) })
			require.Equal(t, int32(n), info.NumFields)
			require.Equal(t, i, info.Index, "nothing was skipped by the refused calls")
			require.Equal(t, uint64(epoch), info.Epoch)
			idx := make([]int64, 8)
			for k := range idx {
				idx[k] = i*8 + int64(k)
			}
			for k, tensor := range tensors {
				size := requireTensor(t, tensor, standardSpecs[k], info.NumSamples, cpuDevice)
				require.Equal(t, expected(src.ref, k, idx), tensorBytes(tensor, size))
				deleteTensor(t, tensor) // the last deleter gives the slot back: the fixed ring goes on
			}
		}
		requireStatus(t, ferryEndOfEpoch, func() int32 { return ferryIteratorNextTensors(it, 0, 5, &tensors[0], int32(n), &info) })
		require.Zero(t, info.NumFields)
	}
	requireUsable(t)
}
