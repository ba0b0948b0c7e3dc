package tests

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func iota64(n int64) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = int64(i)
	}
	return out
}

// TestIteratorSequentialEpochs iterates a memory source in order for three epochs and checks every batch,
// field by field, against the caller's memory.
func TestIteratorSequentialEpochs(t *testing.T) {
	r := newRand(t)
	for _, dropLast := range []bool{false, true} {
		t.Run("drop_last="+strconv.FormatBool(dropLast), func(t *testing.T) {
			n := 150 + r.Int64N(150)
			batch := 7 + r.Int64N(14)
			if n%batch == 0 {
				n++ // a short last batch, which drop_last drops
			}
			src := newMemorySource(t, r, n, standardSpecs)
			e := newCPUEngine(t, 0)
			o := iterOptions(t, batch)
			o.Prefetch = 3
			if dropLast {
				o.Flags = iteratorDropLast
			}
			it := newIterator(t, e, src.h, o)
			wantLen := (n + batch - 1) / batch
			if dropLast {
				wantLen = n / batch
			}
			require.Equal(t, wantLen, iteratorLen(t, it))
			for epoch := uint64(0); epoch < 3; epoch++ {
				bs := runEpoch(t, it, epoch, standardSpecs, src.ref, cpuDevice, hostRead)
				require.Len(t, bs, int(wantLen))
				want := iota64(n)
				if dropLast {
					want = want[:wantLen*batch]
				}
				require.Equal(t, want, flatten(bs), "a sequential epoch visits the samples in order")
				for i, b := range bs {
					if int64(i) < wantLen-1 || dropLast {
						require.Len(t, b.indices, int(batch))
					} else {
						require.Len(t, b.indices, int(n-(wantLen-1)*batch), "the last batch is short")
					}
				}
			}
		})
	}
}

// TestIteratorDTypes hands out one field of every dtype and checks the DLPack type codes and bits.
func TestIteratorDTypes(t *testing.T) {
	r := newRand(t)
	var specs []fieldSpec
	for d := dtypeBool; d <= dtypeFloat64; d++ {
		shape := []int64{1 + r.Int64N(3), 1 + r.Int64N(4)}[:r.IntN(3)]
		specs = append(specs, fieldSpec{name: "f" + strconv.Itoa(int(d)), dtype: d, shape: shape})
	}
	src := newMemorySource(t, r, 40, specs)
	it := newIterator(t, newCPUEngine(t, 0), src.h, iterOptions(t, 16))
	runEpoch(t, it, 0, specs, src.ref, cpuDevice, hostRead)
}

// epochsOf runs epochs 0..count-1 and returns their indices.
func epochsOf(t *testing.T, it iteratorHandle, count int, specs []fieldSpec, ref refFunc) [][]epochBatch {
	t.Helper()
	var out [][]epochBatch
	for e := 0; e < count; e++ {
		out = append(out, runEpoch(t, it, uint64(e), specs, ref, cpuDevice, hostRead))
	}
	return out
}

func requirePermutation(t *testing.T, idx []int64, n int64) {
	t.Helper()
	s := slices.Clone(idx)
	slices.Sort(s)
	require.Equal(t, iota64(n), s, "an epoch is a permutation of the samples")
}

// TestIteratorShuffle checks that shuffled epochs are permutations, differ from each other and from the
// identity, and are a pure function of the seed and epoch.
func TestIteratorShuffle(t *testing.T) {
	r := newRand(t)
	n := 200 + r.Int64N(100)
	batch := 8 + r.Int64N(8)
	if n%batch == 0 {
		n++ // a short last batch, which drop_last drops
	}
	seed := r.Uint64()
	src := newMemorySource(t, r, n, standardSpecs)
	e := newCPUEngine(t, 0)
	o := iterOptions(t, batch)
	o.Flags = iteratorShuffle
	o.Seed = seed

	a := epochsOf(t, newIterator(t, e, src.h, o), 3, standardSpecs, src.ref)
	for ep, bs := range a {
		idx := flatten(bs)
		requirePermutation(t, idx, n)
		require.NotEqual(t, iota64(n), idx, "epoch %d is not shuffled", ep)
	}
	require.NotEqual(t, flatten(a[0]), flatten(a[1]), "each epoch has its own order")
	require.NotEqual(t, flatten(a[1]), flatten(a[2]))

	// A second iterator with the same seed and other workers and prefetch gives the same batches.
	o2 := o
	o2.Workers, o2.Prefetch = 1, 2
	require.Equal(t, a, epochsOf(t, newIterator(t, e, src.h, o2), 3, standardSpecs, src.ref))

	// Another seed gives another order.
	o3 := o
	o3.Seed = seed + 1
	other := epochsOf(t, newIterator(t, e, src.h, o3), 1, standardSpecs, src.ref)
	requirePermutation(t, flatten(other[0]), n)
	require.NotEqual(t, flatten(a[0]), flatten(other[0]))

	// With drop_last, each epoch has floor(n/batch) full batches of distinct samples.
	o4 := o
	o4.Flags |= iteratorDropLast
	dl := epochsOf(t, newIterator(t, e, src.h, o4), 2, standardSpecs, src.ref)
	for _, bs := range dl {
		require.Len(t, bs, int(n/batch))
		idx := flatten(bs)
		require.Len(t, idx, int(n/batch*batch))
		s := slices.Clone(idx)
		slices.Sort(s)
		require.Len(t, slices.Compact(s), len(idx), "samples repeat within a drop_last epoch")
	}
}

// TestIteratorSharding checks the ranks of a world against torch's DistributedSampler: rank r's i-th
// sample is the global order's position (r + i*world) mod n, the order padded by wrapping, or cut to a
// multiple of the world with drop_last.
func TestIteratorSharding(t *testing.T) {
	r := newRand(t)
	n := 100 + r.Int64N(50)
	world := int32(3)
	if n%int64(world) == 0 {
		n++
	}
	batch := 5 + r.Int64N(5)
	src := newMemorySource(t, r, n, standardSpecs[:2])
	e := newCPUEngine(t, 0)
	for _, flags := range []uint32{0, iteratorShuffle, iteratorShuffle | iteratorDropLast} {
		t.Run(fmt.Sprintf("flags=%#x", flags), func(t *testing.T) {
			o := iterOptions(t, n) // one batch: the whole global order
			o.Flags = flags &^ iteratorDropLast
			o.Seed = 42
			global := flatten(epochsOf(t, newIterator(t, e, src.h, o), 2, src.specs, src.ref)[1])
			require.Len(t, global, int(n))

			perRank := (n + int64(world) - 1) / int64(world)
			if flags&iteratorDropLast != 0 {
				perRank = n / int64(world)
			}
			seen := map[int64]int{}
			for rank := int32(0); rank < world; rank++ {
				o := iterOptions(t, batch)
				o.Flags, o.Seed, o.Rank, o.WorldSize = flags, 42, rank, world
				it := newIterator(t, e, src.h, o)
				wantBatches := (perRank + batch - 1) / batch
				if flags&iteratorDropLast != 0 {
					wantBatches = perRank / batch
				}
				require.Equal(t, wantBatches, iteratorLen(t, it))
				runEpoch(t, it, 0, src.specs, src.ref, cpuDevice, hostRead)
				got := flatten(runEpoch(t, it, 1, src.specs, src.ref, cpuDevice, hostRead))
				var want []int64
				for i := int64(0); i < perRank; i++ {
					want = append(want, global[(int64(rank)+i*int64(world))%n])
				}
				if flags&iteratorDropLast != 0 {
					want = want[:wantBatches*batch]
				}
				require.Equal(t, want, got, "rank %d of %d", rank, world)
				for _, i := range got {
					seen[i]++
				}
			}
			if flags&iteratorDropLast == 0 {
				require.Len(t, seen, int(n), "the ranks together cover every sample")
			}
		})
	}
}

// TestIteratorStateRestore restores a second iterator to random positions, ends of epochs included, and
// checks that the batches that follow equal the uninterrupted run's, bit for bit.
func TestIteratorStateRestore(t *testing.T) {
	r := newRand(t)
	n := 100 + r.Int64N(100)
	batch := 6 + r.Int64N(10)
	src := newMemorySource(t, r, n, standardSpecs)
	e := newCPUEngine(t, 0)
	o := iterOptions(t, batch)
	o.Flags = iteratorShuffle
	o.Seed = r.Uint64()
	o.Prefetch = 4
	want := epochsOf(t, newIterator(t, e, src.h, o), 3, standardSpecs, src.ref)
	nb := int64(len(want[0]))

	b := newIterator(t, e, src.h, o)
	for trial := 0; trial < 12; trial++ {
		epoch := uint64(r.IntN(2))
		pos := r.Int64N(nb + 1)
		if trial == 0 {
			pos = nb // the end of an epoch: FERRY_END_OF_EPOCH comes first
		}
		restore(t, b, epoch, pos)
		st := iteratorState(t, b)
		require.Equal(t, iteratorPosition{Size: st.Size, Epoch: epoch, Batch: pos}, st)
		for k := 0; k < 4; k++ {
			if pos == nb {
				requireEndOfEpoch(t, b)
				epoch, pos = epoch+1, 0
				continue
			}
			bh := next(t, b)
			info, idx := checkBatch(t, bh, standardSpecs, src.ref, cpuDevice, hostRead)
			releaseBatch(t, bh)
			require.Equal(t, want[epoch][pos], epochBatch{epoch: info.Epoch, index: info.Index, indices: idx},
				"after restore, epoch %d batch %d", epoch, pos)
			pos++
		}
	}

	// A batch held across a restore stays valid and unchanged, and the restored position holds.
	restore(t, b, 1, 2)
	held := next(t, b)
	tensor := batchField(t, held, 0)
	size := requireTensor(t, tensor, standardSpecs[0], int64(len(want[1][2].indices)), cpuDevice)
	restore(t, b, 0, 3)
	require.Equal(t, expected(src.ref, 0, want[1][2].indices), tensorBytes(tensor, size),
		"a tensor held across ferry_iterator_restore changed")
	checkBatch(t, held, standardSpecs, src.ref, cpuDevice, hostRead)
	releaseBatch(t, held)
	require.Equal(t, expected(src.ref, 0, want[1][2].indices), tensorBytes(tensor, size))
	deleteTensor(t, tensor)
	bh := next(t, b)
	info, idx := checkBatch(t, bh, standardSpecs, src.ref, cpuDevice, hostRead)
	releaseBatch(t, bh)
	require.Equal(t, want[0][3], epochBatch{epoch: info.Epoch, index: info.Index, indices: idx})

	// Positions out of range and bad sizes are refused and leave the iterator where it was.
	for _, p := range []iteratorPosition{
		{Size: 24, Epoch: 0, Batch: -1},
		{Size: 24, Epoch: 0, Batch: nb + 1},
		{Size: 0, Epoch: 0, Batch: 0},
		{Size: 23, Epoch: 0, Batch: 0},
	} {
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorRestore(b, &p) })
	}
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorRestore(b, nil) }, "NULL")
	st := iteratorState(t, b)
	require.Equal(t, iteratorPosition{Size: 24, Epoch: 0, Batch: 4}, st)
}

// TestIteratorRestoreWhileHolding restores while the caller holds one batch of a four-deep ring: the
// iterator goes on from the restored position with the other slots, it does not wait for that batch.
func TestIteratorRestoreWhileHolding(t *testing.T) {
	r := newRand(t)
	src := newMemorySource(t, r, 80, standardSpecs)
	e := newCPUEngine(t, 0)
	o := iterOptions(t, 5)
	o.Prefetch = 4
	o.TimeoutMS = 3000
	for _, restoreFirst := range []bool{false, true} {
		t.Run("restored_before_take="+strconv.FormatBool(restoreFirst), func(t *testing.T) {
			it := newIterator(t, e, src.h, o)
			if restoreFirst {
				restore(t, it, 0, 7)
			}
			held := next(t, it)
			info, idx := checkBatch(t, held, standardSpecs, src.ref, cpuDevice, hostRead)
			restore(t, it, 1, 2)
			for k := int64(0); k < 2; k++ {
				b := next(t, it)
				got := batchInfo(t, b)
				require.Equal(t, uint64(1), got.Epoch)
				require.Equal(t, 2+k, got.Index)
				releaseBatch(t, b)
			}
			// The held batch is unchanged.
			info2, idx2 := checkBatch(t, held, standardSpecs, src.ref, cpuDevice, hostRead)
			require.Equal(t, info, info2)
			require.Equal(t, idx, idx2)
			releaseBatch(t, held)
		})
	}
}

// TestIteratorSetEpoch checks that set_epoch starts the epoch from its first batch, mid-epoch too, and
// that far epochs are reached in O(1) with the same batches a restore gives.
func TestIteratorSetEpoch(t *testing.T) {
	r := newRand(t)
	n := 60 + r.Int64N(60)
	src := newMemorySource(t, r, n, standardSpecs)
	e := newCPUEngine(t, 0)
	o := iterOptions(t, 10)
	o.Flags = iteratorShuffle
	o.Seed = r.Uint64()
	a := newIterator(t, e, src.h, o)
	b := newIterator(t, e, src.h, o)

	for _, epoch := range []uint64{3, 0, 1 << 40, 7} {
		// a: partway into some epoch, then set_epoch; b: restore to the epoch's start.
		for k := 0; k < 2; k++ {
			releaseBatch(t, next(t, a))
		}
		requireOK(t, func() int32 { return ferryIteratorSetEpoch(a, epoch) })
		require.Equal(t, iteratorPosition{Size: 24, Epoch: epoch}, iteratorState(t, a))
		restore(t, b, epoch, 0)
		ea := runEpoch(t, a, epoch, standardSpecs, src.ref, cpuDevice, hostRead)
		eb := runEpoch(t, b, epoch, standardSpecs, src.ref, cpuDevice, hostRead)
		require.Equal(t, ea, eb)
		requirePermutation(t, flatten(ea), n)
	}
}

// kept is a tensor of field 0 kept past its batch, and the bytes it must hold.
type kept struct {
	tensor *dlManagedTensor
	want   []byte
	size   int
}

// keepField checks that b is batch index of its epoch and takes its field 0's tensor, with the reference.
func keepField(t *testing.T, b batchHandle, src *memSource, index int64) kept {
	t.Helper()
	info := batchInfo(t, b)
	require.Equal(t, index, info.Index)
	idx := batchIndices(t, b, info.NumSamples)
	tensor := batchField(t, b, 0)
	size := requireTensor(t, tensor, standardSpecs[0], info.NumSamples, cpuDevice)
	return kept{tensor, expected(src.ref, 0, idx), size}
}

// TestBatchRefcount checks that a tensor keeps its batch: readable after ferry_batch_release, and its ring
// slot is not refilled until its deleter runs. With no pinned budget to grow by, a ring whose every slot is
// held refuses the next batch at once (FERRY_ERR_LIMIT), and goes on when a tensor is deleted.
func TestBatchRefcount(t *testing.T) {
	r := newRand(t)
	src := newMemorySource(t, r, 64, standardSpecs)
	e := newCPUEngine(t, 0)
	o := iterOptions(t, 4)
	o.Prefetch = 2
	o.PinnedBudget = -1
	it := newIterator(t, e, src.h, o)

	var keep []kept
	for i := int64(0); i < 2; i++ {
		b := next(t, it)
		keep = append(keep, keepField(t, b, src, i))
		releaseBatch(t, b)
		// The handle is gone; the tensor is not.
		p := batchProperties{Size: 32}
		requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryBatchInfo(b, &p) }, "released")
		requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryBatchRelease(b, 0) })
	}
	// Both slots of the ring are held by tensors: the next batch cannot be gathered.
	var b batchHandle
	requireStatus(t, ferryErrLimit, func() int32 { return ferryIteratorNext(it, 0, &b) }, "batch 2",
		"2 batches of the ring are still held by the caller", "pinned budget")
	require.Zero(t, b)
	for _, k := range keep {
		require.Equal(t, k.want, tensorBytes(k.tensor, k.size), "a tensor changed after ferry_batch_release")
	}
	require.Equal(t, iteratorPosition{Size: 24, Epoch: 0, Batch: 2}, iteratorState(t, it), "a refusal does not advance")

	// Deleting the first batch's tensor frees its slot: batch 2 comes, then stalls again on the second.
	deleteTensor(t, keep[0].tensor)
	b = next(t, it)
	info, _ := checkBatch(t, b, standardSpecs, src.ref, cpuDevice, hostRead)
	require.Equal(t, int64(2), info.Index)
	require.Equal(t, keep[1].want, tensorBytes(keep[1].tensor, keep[1].size))
	releaseBatch(t, b)
	requireStatus(t, ferryErrLimit, func() int32 { return ferryIteratorNext(it, 0, &b) }, "batch 3")
	deleteTensor(t, keep[1].tensor)
	for i := int64(3); i < 16; i++ {
		b = next(t, it)
		info, _ := checkBatch(t, b, standardSpecs, src.ref, cpuDevice, hostRead)
		require.Equal(t, i, info.Index)
		releaseBatch(t, b)
	}
	requireEndOfEpoch(t, it)

	// Several tensors of one batch, deleted in any order after the release, and from other threads.
	b = next(t, it)
	var ts []*dlManagedTensor
	for k := range standardSpecs {
		ts = append(ts, batchField(t, b, k), batchFieldByName(t, b, standardSpecs[k].name))
	}
	releaseBatch(t, b)
	var wg sync.WaitGroup
	for _, tensor := range ts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			deleteTensor(t, tensor)
		}()
	}
	wg.Wait()
	for i := int64(1); i < 16; i++ {
		b = next(t, it)
		releaseBatch(t, b)
	}
	requireEndOfEpoch(t, it)
}

// TestHeldBatchesGrowTheRing keeps a tensor of every batch of an epoch from a ring of two: each batch comes
// at once (the ring grows within the default pinned budget), and every tensor keeps its contents until its
// deleter runs; the next epoch runs on the slots given back.
func TestHeldBatchesGrowTheRing(t *testing.T) {
	r := newRand(t)
	src := newMemorySource(t, r, 64, standardSpecs)
	e := newCPUEngine(t, 0)
	o := iterOptions(t, 4)
	o.Prefetch = 2
	it := newIterator(t, e, src.h, o)
	var keep []kept
	for i := int64(0); i < 16; i++ {
		b := next(t, it)
		keep = append(keep, keepField(t, b, src, i))
		releaseBatch(t, b)
	}
	requireEndOfEpoch(t, it)
	for i, k := range keep {
		require.Equal(t, k.want, tensorBytes(k.tensor, k.size), "held batch %d changed", i)
		deleteTensor(t, k.tensor)
	}
	runEpoch(t, it, 1, standardSpecs, src.ref, cpuDevice, hostRead)
}

// TestTensorWait: ferry_tensor_wait orders a stream for as long as the tensor lives (after
// ferry_batch_release, and after the iterator is destroyed: the tensor keeps its batch), and refuses NULL and
// tensors that ferry did not make.
func TestTensorWait(t *testing.T) {
	r := newRand(t)
	src := newMemorySource(t, r, 64, standardSpecs)
	e := newCPUEngine(t, 0)
	o := iterOptions(t, 4)
	var it iteratorHandle
	requireOK(t, func() int32 { return ferryIteratorCreate(e, src.h, &o, &it) })
	b := next(t, it)
	info := batchInfo(t, b)
	want := expected(src.ref, 0, batchIndices(t, b, info.NumSamples))
	tensor := batchField(t, b, 0)
	size := requireTensor(t, tensor, standardSpecs[0], info.NumSamples, cpuDevice)
	requireOK(t, func() int32 { return ferryTensorWait(tensor, 0) })
	releaseBatch(t, b)
	requireOK(t, func() int32 { return ferryTensorWait(tensor, 0) })
	requireOK(t, func() int32 { return ferryIteratorDestroy(it) })
	requireOK(t, func() int32 { return ferryTensorWait(tensor, 0) })
	require.Equal(t, want, tensorBytes(tensor, size))
	deleteTensor(t, tensor)
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryTensorWait(nil, 0) }, "NULL")
	var foreign dlManagedTensor // no ferry deleter
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryTensorWait(&foreign, 0) }, "not made by ferry")
	requireUsable(t)
}

// TestIteratorCreateInvalid covers every way to get ferry_iterator_create wrong.
func TestIteratorCreateInvalid(t *testing.T) {
	r := newRand(t)
	src := newMemorySource(t, r, 10, standardSpecs)
	e := newCPUEngine(t, 0)
	tests := []struct {
		name   string
		modify func(o *iteratorOptions)
		words  []string
	}{
		{"size=0", func(o *iteratorOptions) { o.Size = 0 }, []string{"size"}},
		{"size=4", func(o *iteratorOptions) { o.Size = 4 }, []string{"size"}},
		{"size=47", func(o *iteratorOptions) { o.Size = 47 }, []string{"size"}},
		{"flags=0x4", func(o *iteratorOptions) { o.Flags = 0x4 }, []string{"flags"}},
		{"flags=0x80000000", func(o *iteratorOptions) { o.Flags = 0x80000001 }, []string{"flags"}},
		{"batch_size=0", func(o *iteratorOptions) { o.BatchSize = 0 }, []string{"batch_size"}},
		{"batch_size=-3", func(o *iteratorOptions) { o.BatchSize = -3 }, []string{"batch_size"}},
		{"prefetch=1", func(o *iteratorOptions) { o.Prefetch = 1 }, []string{"prefetch"}},
		{"prefetch=65", func(o *iteratorOptions) { o.Prefetch = 65 }, []string{"prefetch"}},
		{"prefetch=-1", func(o *iteratorOptions) { o.Prefetch = -1 }, []string{"prefetch"}},
		{"workers=-1", func(o *iteratorOptions) { o.Workers = -1 }, []string{"workers"}},
		{"workers=1000", func(o *iteratorOptions) { o.Workers = 1000 }, []string{"workers"}},
		{"rank=world", func(o *iteratorOptions) { o.Rank, o.WorldSize = 2, 2 }, []string{"rank"}},
		{"rank=-1", func(o *iteratorOptions) { o.Rank, o.WorldSize = -1, 2 }, []string{"rank"}},
		{"world_size=-1", func(o *iteratorOptions) { o.WorldSize = -1 }, []string{"worldsize"}},
		{"drop_last with too few samples", func(o *iteratorOptions) { o.BatchSize, o.Flags = 11, iteratorDropLast }, []string{"batch"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := iterOptions(t, 4)
			tt.modify(&o)
			it := iteratorHandle(0x5a5a)
			requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorCreate(e, src.h, &o, &it) }, tt.words...)
			require.Zero(t, it, "a failed create writes a NULL handle")
		})
	}
	o := iterOptions(t, 4)
	var it iteratorHandle
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorCreate(e, src.h, nil, &it) }, "NULL")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorCreate(e, src.h, &o, nil) }, "NULL")
	requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryIteratorCreate(0, src.h, &o, &it) }, "NULL")
	requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryIteratorCreate(e, 0, &o, &it) }, "NULL")
	requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryIteratorCreate(engineHandle(src.h), src.h, &o, &it) }, "handle")
	requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryIteratorCreate(e, sourceHandle(e), &o, &it) }, "handle")

	// A larger size (a newer header) works, with the bytes past the known struct ignored.
	g := newGuardBuf(unsafe.Sizeof(iteratorOptions{}))
	*(*iteratorOptions)(g.ptr()) = iterOptions(t, 3)
	g.setSize(unsafe.Sizeof(iteratorOptions{}) + 32)
	requireOK(t, func() int32 { return ferryIteratorCreate(e, src.h, (*iteratorOptions)(g.ptr()), &it) })
	require.Equal(t, int64(4), iteratorLen(t, it))
	requireOK(t, func() int32 { return ferryIteratorDestroy(it) })
}

// TestNewOptionsInit checks the defaults of the new options structs and that init writes nothing past them.
func TestNewOptionsInit(t *testing.T) {
	g := newGuardBuf(unsafe.Sizeof(iteratorOptions{}))
	requireOK(t, func() int32 { return ferryIteratorOptionsInit((*iteratorOptions)(g.ptr())) })
	g.requireUntouchedFrom(t, unsafe.Sizeof(iteratorOptions{}))
	require.Equal(t, iteratorOptions{Size: 80}, *(*iteratorOptions)(g.ptr()))

	g = newGuardBuf(unsafe.Sizeof(tokenOptions{}))
	requireOK(t, func() int32 { return ferryTokenOptionsInit((*tokenOptions)(g.ptr())) })
	g.requireUntouchedFrom(t, unsafe.Sizeof(tokenOptions{}))
	require.Equal(t, tokenOptions{Size: 32, Format: tokensUint16}, *(*tokenOptions)(g.ptr()))

	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorOptionsInit(nil) }, "NULL")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryTokenOptionsInit(nil) }, "NULL")
}

// TestNewStructSizes checks the size rule of ferry_iterator_state and ferry_batch_info.
func TestNewStructSizes(t *testing.T) {
	r := newRand(t)
	src := newMemorySource(t, r, 20, standardSpecs)
	it := newIterator(t, newCPUEngine(t, 0), src.h, iterOptions(t, 5))
	b := next(t, it)
	defer releaseBatch(t, b)
	cases := []struct {
		name     string
		v1, size uintptr // the first version's size, the current one
		call     func(p unsafe.Pointer) int32
	}{
		{"ferry_iterator_state", unsafe.Sizeof(iteratorPosition{}), unsafe.Sizeof(iteratorPositionV2{}), func(p unsafe.Pointer) int32 {
			return ferryIteratorState(it, (*iteratorPosition)(p))
		}},
		{"ferry_batch_info", unsafe.Sizeof(batchProperties{}), unsafe.Sizeof(batchProperties{}), func(p unsafe.Pointer) int32 {
			return ferryBatchInfo(b, (*batchProperties)(p))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// A caller built against the first version passes its size and gets only its fields.
			g1 := newGuardBuf(c.v1)
			g1.setSize(c.v1)
			requireOK(t, func() int32 { return c.call(g1.ptr()) })
			g1.requireUntouchedFrom(t, c.v1)
			for _, size := range []uintptr{0, 4, c.v1 - 1} {
				g := newGuardBuf(c.size)
				g.setSize(size)
				requireStatus(t, ferryErrInvalidArgument, func() int32 { return c.call(g.ptr()) }, "size")
				g.requireUntouchedFrom(t, 4)
			}
			for _, size := range []uintptr{c.size, c.size + 32} {
				g := newGuardBuf(c.size)
				g.setSize(size)
				requireOK(t, func() int32 { return c.call(g.ptr()) })
				g.requireUntouchedFrom(t, c.size)
				require.Equal(t, uint32(size), *(*uint32)(g.ptr()), "the size field is kept")
			}
			requireStatus(t, ferryErrInvalidArgument, func() int32 { return c.call(nil) }, "NULL")
		})
	}
	info := batchInfo(t, b)
	require.Equal(t, batchProperties{Size: 32, NumFields: int32(len(standardSpecs)), Epoch: 0, Index: 0, NumSamples: 5}, info)
	require.Equal(t, iteratorPosition{Size: 24, Epoch: 0, Batch: 1}, iteratorState(t, it))
}

// TestBatchInvalidArguments covers field indices and names a batch does not have, NULL pointers and a
// short indices buffer.
func TestBatchInvalidArguments(t *testing.T) {
	r := newRand(t)
	src := newMemorySource(t, r, 20, standardSpecs)
	it := newIterator(t, newCPUEngine(t, 0), src.h, iterOptions(t, 5))
	b := next(t, it)
	defer releaseBatch(t, b)

	for _, k := range []int32{-1, int32(len(standardSpecs)), 1000, -1 << 31} {
		tensor := (*dlManagedTensor)(unsafe.Pointer(&[80]byte{}))
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryBatchField(b, k, &tensor) }, "index", strconv.Itoa(int(k)))
		require.Nil(t, tensor, "a failed ferry_batch_field writes NULL")
	}
	var tensor *dlManagedTensor
	words := []string{"nosuchfield"}
	for _, s := range standardSpecs {
		words = append(words, s.name) // the message lists the fields there are
	}
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryBatchFieldByName(b, cname("nosuchfield"), &tensor) }, words...)
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryBatchFieldByName(b, cname("Image"), &tensor) }, "Image")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryBatchFieldByName(b, cname(""), &tensor) })
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryBatchFieldByName(b, nil, &tensor) }, "NULL")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryBatchFieldByName(b, cname("label"), nil) }, "NULL")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryBatchField(b, 0, nil) }, "NULL")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryBatchInfo(b, nil) }, "NULL")

	idx := make([]int64, 5)
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryBatchIndices(b, &idx[0], 4) }, "capacity")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryBatchIndices(b, nil, 5) }, "NULL")
	requireOK(t, func() int32 { return ferryBatchIndices(b, &idx[0], 5) })
	require.Equal(t, iota64(5), idx)

	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorLen(it, nil) }, "NULL")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorNext(it, 0, nil) }, "NULL")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorState(it, nil) }, "NULL")

	// Wait and release with a stream argument are no-ops on the CPU engine.
	requireOK(t, func() int32 { return ferryBatchWait(b, 0) })
	requireOK(t, func() int32 { return ferryBatchWait(b, 0x1234) })
	// The batch still works after all that.
	checkBatch(t, b, standardSpecs, src.ref, cpuDevice, hostRead)
}

// handleCase is a call that takes one handle.
type handleCase struct {
	name string
	fn   func(h uintptr) int32
}

func sourceCalls() []handleCase {
	return []handleCase{
		{"ferry_source_len", func(h uintptr) int32 { var n int64; return ferrySourceLen(sourceHandle(h), &n) }},
		{"ferry_source_num_fields", func(h uintptr) int32 { var n int32; return ferrySourceNumFields(sourceHandle(h), &n) }},
		{"ferry_source_field", func(h uintptr) int32 { var f field; return ferrySourceField(sourceHandle(h), 0, &f) }},
		{"ferry_source_destroy", func(h uintptr) int32 { return ferrySourceDestroy(sourceHandle(h)) }},
	}
}

func iteratorCalls() []handleCase {
	return []handleCase{
		{"ferry_iterator_next", func(h uintptr) int32 {
			var b batchHandle
			s := ferryIteratorNext(iteratorHandle(h), 0, &b)
			if b != 0 {
				ferryBatchRelease(b, 0)
			}
			return s
		}},
		{"ferry_iterator_next_wait", func(h uintptr) int32 {
			var b batchHandle
			s := ferryIteratorNextWait(iteratorHandle(h), 0, 1000, &b)
			if b != 0 {
				ferryBatchRelease(b, 0)
			}
			return s
		}},
		{"ferry_iterator_len", func(h uintptr) int32 { var n int64; return ferryIteratorLen(iteratorHandle(h), &n) }},
		{"ferry_iterator_state", func(h uintptr) int32 {
			p := iteratorPosition{Size: 24}
			return ferryIteratorState(iteratorHandle(h), &p)
		}},
		{"ferry_iterator_restore", func(h uintptr) int32 {
			p := iteratorPosition{Size: 24}
			return ferryIteratorRestore(iteratorHandle(h), &p)
		}},
		{"ferry_iterator_set_epoch", func(h uintptr) int32 { return ferryIteratorSetEpoch(iteratorHandle(h), 1) }},
		{"ferry_iterator_destroy", func(h uintptr) int32 { return ferryIteratorDestroy(iteratorHandle(h)) }},
	}
}

func batchCalls() []handleCase {
	return []handleCase{
		{"ferry_batch_info", func(h uintptr) int32 { p := batchProperties{Size: 32}; return ferryBatchInfo(batchHandle(h), &p) }},
		{"ferry_batch_indices", func(h uintptr) int32 {
			idx := make([]int64, 64)
			return ferryBatchIndices(batchHandle(h), &idx[0], 64)
		}},
		{"ferry_batch_field", func(h uintptr) int32 {
			var tensor *dlManagedTensor
			return ferryBatchField(batchHandle(h), 0, &tensor)
		}},
		{"ferry_batch_field_by_name", func(h uintptr) int32 {
			var tensor *dlManagedTensor
			return ferryBatchFieldByName(batchHandle(h), cname("label"), &tensor)
		}},
		{"ferry_batch_wait", func(h uintptr) int32 { return ferryBatchWait(batchHandle(h), 0) }},
		{"ferry_batch_release", func(h uintptr) int32 { return ferryBatchRelease(batchHandle(h), 0) }},
	}
}

// TestNewHandlesInvalid passes every new handle-taking call made-up values, handles of the other types,
// and destroyed or released handles of its own type: each returns FERRY_ERR_INVALID_HANDLE.
func TestNewHandlesInvalid(t *testing.T) {
	r := newRand(t)
	e := newCPUEngine(t, 0)
	src := newMemorySource(t, r, 20, standardSpecs)
	it := newIterator(t, e, src.h, iterOptions(t, 5))
	live := next(t, it)
	defer releaseBatch(t, live)

	// Destroyed and released handles of each type.
	deadSrc := newMemorySource(t, r, 5, standardSpecs[:1])
	requireOK(t, func() int32 { return ferrySourceDestroy(deadSrc.h) })
	var deadIt iteratorHandle
	o := iterOptions(t, 5)
	requireOK(t, func() int32 { return ferryIteratorCreate(e, src.h, &o, &deadIt) })
	requireOK(t, func() int32 { return ferryIteratorDestroy(deadIt) })
	released := next(t, it)
	releaseBatch(t, released)

	type named struct {
		name string
		h    uintptr
	}
	madeUp := []named{{"0x1234", 0x1234}, {"0xdeadbeef", 0xdeadbeef}, {"all-ones", ^uintptr(0)}}
	groups := []struct {
		name    string
		calls   []handleCase
		own     uintptr
		foreign []named
		dead    named
	}{
		{"source", sourceCalls(), uintptr(src.h),
			[]named{{"engine", uintptr(e)}, {"iterator", uintptr(it)}, {"batch", uintptr(live)}},
			named{"destroyed", uintptr(deadSrc.h)}},
		{"iterator", iteratorCalls(), uintptr(it),
			[]named{{"engine", uintptr(e)}, {"source", uintptr(src.h)}, {"batch", uintptr(live)}},
			named{"destroyed", uintptr(deadIt)}},
		{"batch", batchCalls(), uintptr(live),
			[]named{{"engine", uintptr(e)}, {"source", uintptr(src.h)}, {"iterator", uintptr(it)}},
			named{"released", uintptr(released)}},
	}
	for _, g := range groups {
		for _, c := range g.calls {
			t.Run(c.name, func(t *testing.T) {
				hs := append(append(slices.Clone(madeUp), g.foreign...), g.dead)
				for _, bit := range []uint{0, 1, 8, 31, 32, 48, 63} {
					hs = append(hs, named{"bit" + strconv.Itoa(int(bit)) + "-flipped", g.own ^ uintptr(1)<<bit})
				}
				for _, h := range hs {
					s, msg := call(t, func() int32 { return c.fn(h.h) })
					require.Equal(t, statusString(t, ferryErrInvalidHandle), statusString(t, s), "%s: %s (%q)", c.name, h.name, msg)
					require.Contains(t, msg, "handle", "%s: %s", c.name, h.name)
				}
				if strings.HasSuffix(c.name, "_destroy") {
					requireOK(t, func() int32 { return c.fn(0) })
				} else {
					requireStatus(t, ferryErrInvalidHandle, func() int32 { return c.fn(0) }, "NULL")
				}
			})
		}
	}
	// Everything live still works.
	checkBatch(t, live, standardSpecs, src.ref, cpuDevice, hostRead)
	require.Equal(t, int64(4), iteratorLen(t, it))
	var n int64
	requireOK(t, func() int32 { return ferrySourceLen(src.h, &n) })
	require.Equal(t, int64(20), n)
	var e2 int32
	requireOK(t, func() int32 { return ferryEngineDevice(e, &e2) })
	// Engine calls refuse the new handle types.
	for _, h := range []uintptr{uintptr(src.h), uintptr(it), uintptr(live)} {
		requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryEngineDevice(engineHandle(h), &e2) }, "handle")
	}
}

// TestDoubleDestroy destroys a source and an iterator twice.
func TestDoubleDestroy(t *testing.T) {
	r := newRand(t)
	e := newCPUEngine(t, 0)
	src := newMemorySource(t, r, 20, standardSpecs)
	var it iteratorHandle
	o := iterOptions(t, 5)
	requireOK(t, func() int32 { return ferryIteratorCreate(e, src.h, &o, &it) })
	b := next(t, it)
	releaseBatch(t, b)
	requireOK(t, func() int32 { return ferryIteratorDestroy(it) })
	requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryIteratorDestroy(it) }, "handle")
	requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryBatchRelease(b, 0) }, "handle")
	requireOK(t, func() int32 { return ferrySourceDestroy(src.h) })
	requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferrySourceDestroy(src.h) }, "handle")
	requireOK(t, func() int32 { return ferrySourceDestroy(0) })
	requireOK(t, func() int32 { return ferryIteratorDestroy(0) })

	// New handles never bring the old ones back.
	src2 := newMemorySource(t, r, 20, standardSpecs)
	it2 := newIterator(t, e, src2.h, o)
	require.NotEqual(t, src.h, src2.h)
	require.NotEqual(t, it, it2)
	var n int64
	requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferrySourceLen(src.h, &n) }, "handle")
	requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryIteratorLen(it, &n) }, "handle")
	runEpoch(t, it2, 0, standardSpecs, src2.ref, cpuDevice, hostRead)
}

// TestEngineDestroyClosesIterators destroys the engine under a live iterator: the iterator's calls then
// fail cleanly, a batch taken before can still be released and its tensor deleted, and the handles can
// still be destroyed.
func TestEngineDestroyClosesIterators(t *testing.T) {
	r := newRand(t)
	src := newMemorySource(t, r, 50, standardSpecs)
	o := defaultOptions(t)
	o.Device = ferryDeviceCPU
	var e engineHandle
	requireOK(t, func() int32 { return ferryEngineCreate(&o, &e) })
	it := newIterator(t, e, src.h, iterOptions(t, 5))
	held := next(t, it)
	tensor := batchField(t, held, 1)
	releaseBatch(t, next(t, it))

	requireOK(t, func() int32 { return ferryEngineDestroy(e) })

	closed := func(name string, s int32) {
		t.Helper()
		require.Contains(t, []string{"FERRY_ERR_CLOSED", "FERRY_ERR_INVALID_HANDLE"}, statusString(t, s), name)
	}
	for i := 0; i < 3; i++ {
		var b batchHandle
		closed("ferry_iterator_next", ferryIteratorNext(it, 0, &b))
		require.Zero(t, b)
		p := iteratorPosition{Size: 24}
		closed("ferry_iterator_restore", ferryIteratorRestore(it, &p))
		closed("ferry_iterator_set_epoch", ferryIteratorSetEpoch(it, 2))
	}
	// Queries of the iterator may still answer; they must not crash.
	var n int64
	_ = ferryIteratorLen(it, &n)
	p := iteratorPosition{Size: 24}
	_ = ferryIteratorState(it, &p)

	// The batch taken before: its release and its tensor's deleter must not crash.
	s := ferryBatchRelease(held, 0)
	require.Contains(t, []string{"FERRY_OK", "FERRY_ERR_CLOSED", "FERRY_ERR_INVALID_HANDLE"}, statusString(t, s),
		"ferry_batch_release of a batch whose engine was destroyed")
	deleteTensor(t, tensor)

	requireOK(t, func() int32 { return ferryIteratorDestroy(it) })
	requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryIteratorDestroy(it) }, "handle")
	// A new iterator on the destroyed engine is refused.
	var it2 iteratorHandle
	io := iterOptions(t, 5)
	requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryIteratorCreate(e, src.h, &io, &it2) }, "handle")
	// The source outlives both and still serves a new engine.
	it3 := newIterator(t, newCPUEngine(t, 0), src.h, iterOptions(t, 5))
	runEpoch(t, it3, 0, standardSpecs, src.ref, cpuDevice, hostRead)
}

// TestBatchReleaseAfterIteratorDestroy releases a batch after its iterator was destroyed: the batch
// became invalid, so the release says so with FERRY_ERR_INVALID_HANDLE (or FERRY_ERR_CLOSED). With a
// tensor still out, the release only drops the handle's reference and may succeed; the tensor's deleter
// must still be callable.
func TestBatchReleaseAfterIteratorDestroy(t *testing.T) {
	r := newRand(t)
	src := newMemorySource(t, r, 30, standardSpecs)
	e := newCPUEngine(t, 0)
	for _, withTensor := range []bool{false, true} {
		t.Run("tensor="+strconv.FormatBool(withTensor), func(t *testing.T) {
			o := iterOptions(t, 5)
			var it iteratorHandle
			requireOK(t, func() int32 { return ferryIteratorCreate(e, src.h, &o, &it) })
			held := next(t, it)
			var tensor *dlManagedTensor
			if withTensor {
				tensor = batchField(t, held, 2)
			}
			requireOK(t, func() int32 { return ferryIteratorDestroy(it) })
			s, msg := call(t, func() int32 { return ferryBatchRelease(held, 0) })
			want := []string{"FERRY_ERR_INVALID_HANDLE", "FERRY_ERR_CLOSED"}
			if withTensor {
				want = append(want, "FERRY_OK")
			}
			require.Contains(t, want, statusString(t, s), "ferry_batch_release after ferry_iterator_destroy (last error %q)", msg)
			if tensor != nil {
				deleteTensor(t, tensor)
			}
			p := batchProperties{Size: 32}
			requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryBatchInfo(held, &p) })
		})
	}
	requireUsable(t)
}

// TestIteratorNextDuringDestroy takes batches on one goroutine and queries the iterator on others while
// another goroutine destroys it: every call completes or returns FERRY_ERR_INVALID_HANDLE or
// FERRY_ERR_CLOSED, and once a goroutine has seen a failure it never sees OK again.
func TestIteratorNextDuringDestroy(t *testing.T) {
	defer goleak.VerifyNone(t)
	r := newRand(t)
	src := newMemorySource(t, r, 97, standardSpecs)
	e := newCPUEngine(t, 0)
	for round := 0; round < 8; round++ {
		o := iterOptions(t, 4)
		o.Flags = iteratorShuffle
		o.Prefetch = int32(2 + round%3)
		var it iteratorHandle
		requireOK(t, func() int32 { return ferryIteratorCreate(e, src.h, &o, &it) })
		hammerIteratorDestroy(t, it, round%2 == 1)
	}
	requireUsable(t)
	runEpoch(t, newIterator(t, e, src.h, iterOptions(t, 10)), 0, standardSpecs, src.ref, cpuDevice, hostRead)
}

func hammerIteratorDestroy(t *testing.T, it iteratorHandle, holdTensors bool) {
	t.Helper()
	var (
		wg        sync.WaitGroup
		started   sync.WaitGroup
		destroyed atomic.Bool
		oks       atomic.Int64
		fails     atomic.Int64
		bad       = make(chan string, 16)
	)
	statusOK := func(s int32) string { str, _ := goString(ferryStatusString(s)); return str }
	loop := func(name string, fn func() int32) {
		defer wg.Done()
		sawFail := false
		for i := 0; ; i++ {
			if i == 20 {
				started.Done()
			}
			done := destroyed.Load()
			switch s := fn(); s {
			case ferryOK, ferryEndOfEpoch:
				if sawFail || done {
					bad <- name + ": " + statusOK(s) + " after the iterator was destroyed"
					if i < 20 {
						started.Done()
					}
					return
				}
				oks.Add(1)
			case ferryErrInvalidHandle, ferryErrClosed:
				sawFail = true
				fails.Add(1)
				if done {
					if i < 20 {
						started.Done()
					}
					return
				}
			default:
				bad <- name + ": unexpected " + statusOK(s)
				if i < 20 {
					started.Done()
				}
				return
			}
		}
	}
	nextFn := func() int32 {
		var b batchHandle
		s := ferryIteratorNext(it, 0, &b)
		if s != ferryOK {
			return s
		}
		var tensor *dlManagedTensor
		if holdTensors {
			// A batch whose iterator is destroyed meanwhile becomes invalid: INVALID_HANDLE is right then.
			if fs := ferryBatchField(b, 0, &tensor); fs != ferryOK && fs != ferryErrInvalidHandle {
				bad <- "ferry_batch_field: " + statusOK(fs)
			}
		}
		// A batch taken just before the destroy may be refused (TestBatchReleaseAfterIteratorDestroy
		// checks how); here it only must not crash.
		_ = ferryBatchRelease(b, 0)
		if tensor != nil {
			deleteTensor(t, tensor)
		}
		return s
	}
	started.Add(3)
	wg.Add(3)
	go loop("ferry_iterator_next", nextFn)
	go loop("ferry_iterator_state", func() int32 { p := iteratorPosition{Size: 24}; return ferryIteratorState(it, &p) })
	go loop("ferry_iterator_len", func() int32 { var n int64; return ferryIteratorLen(it, &n) })
	started.Wait()
	s := ferryIteratorDestroy(it)
	destroyed.Store(true)
	wg.Wait()
	close(bad)
	var msgs []string
	for m := range bad {
		msgs = append(msgs, m)
	}
	require.Empty(t, msgs)
	require.Equal(t, "FERRY_OK", statusOK(s))
	require.Greater(t, oks.Load(), int64(0))
	require.Greater(t, fails.Load(), int64(0))
}

// TestIteratorElasticPosition covers the appended position fields and ferry_iterator_restore_elastic:
// four ranks in one process consume part of an epoch, every rank reports the same global position, and
// three ranks restored from it see every remaining sample exactly once.
func TestIteratorElasticPosition(t *testing.T) {
	r := newRand(t)
	const n = 960
	src := newMemorySource(t, r, n, standardSpecs)
	e := newCPUEngine(t, 0)
	open := func(rank, world int32) iteratorHandle {
		o := iterOptions(t, 10)
		o.Flags = iteratorShuffle
		o.Seed = 7
		o.Rank, o.WorldSize = rank, world
		return newIterator(t, e, src.h, o)
	}
	var before []iteratorHandle
	for rank := int32(0); rank < 4; rank++ {
		before = append(before, open(rank, 4))
	}
	seen := map[int64]int{}
	for step := 0; step < 6; step++ {
		for _, it := range before {
			b := next(t, it)
			for _, i := range batchIndices(t, b, batchInfo(t, b).NumSamples) {
				seen[i]++
			}
			releaseBatch(t, b)
		}
	}
	var pos []iteratorPositionV2
	for _, it := range before {
		p := iteratorPositionV2{iteratorPosition: iteratorPosition{Size: uint32(unsafe.Sizeof(iteratorPositionV2{}))}}
		requireOK(t, func() int32 { return ferryIteratorState(it, &p.iteratorPosition) })
		pos = append(pos, p)
	}
	for _, p := range pos {
		require.Equal(t, pos[0], p, "every rank reports the same position")
	}
	require.Equal(t, int64(240), pos[0].Consumed)
	require.Equal(t, int64(4), pos[0].WorldSize)
	require.Equal(t, int64(6), pos[0].Batch)

	// The exact restore refuses a position from another world size, and says what to use.
	three := open(0, 3)
	p := pos[0]
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorRestore(three, &p.iteratorPosition) },
		"ferry_iterator_restore_elastic")
	requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryIteratorRestoreElastic(three, 0, n+1) }, "consumed")
	requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryIteratorRestoreElastic(0, 0, 0) })

	after := []iteratorHandle{three, open(1, 3), open(2, 3)}
	for _, it := range after {
		requireOK(t, func() int32 { return ferryIteratorRestoreElastic(it, p.Epoch, p.Consumed) })
	}
	for {
		ended := 0
		for _, it := range after {
			var b batchHandle
			st := ferryIteratorNext(it, 0, &b)
			if st == ferryEndOfEpoch {
				ended++
				continue
			}
			require.Equal(t, ferryOK, st)
			for _, i := range batchIndices(t, b, batchInfo(t, b).NumSamples) {
				seen[i]++
			}
			releaseBatch(t, b)
		}
		if ended == len(after) {
			break
		}
		require.Zero(t, ended)
	}
	require.Len(t, seen, n)
	for i, c := range seen {
		require.Equal(t, 1, c, "sample %d", i)
	}
}
