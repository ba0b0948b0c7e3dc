package data

import (
	"encoding/binary"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/enginetest"
	"github.com/ferry-ml/ferry/engine/internal/testutil"
)

// fedBatch is a batch made on the host for a feed: a uint8 image [rows, h, w, 3], int64 labels and a uint16
// token window [rows, t+1], filled with fresh random bytes.
type fedBatch struct {
	rows, h, w, t int
	image         []byte
	label         []byte
	tokens        []byte
}

func newFedBatch(r *rand.Rand, rows, h, w, t int) fedBatch {
	b := fedBatch{rows: rows, h: h, w: w, t: t, image: make([]byte, rows*h*w*3), label: make([]byte, rows*8),
		tokens: make([]byte, rows*(t+1)*2)}
	for _, buf := range [][]byte{b.image, b.label, b.tokens} {
		for i := range buf {
			buf[i] = byte(r.Uint32())
		}
	}
	return b
}

func (b fedBatch) tensors() []FeedTensor {
	return []FeedTensor{
		{Name: "image", DType: Uint8, Shape: []int{b.rows, b.h, b.w, 3}, Data: b.image},
		{Name: "label", DType: Int64, Shape: []int{b.rows}, Data: b.label},
		{Name: "tokens", DType: Uint16, Shape: []int{b.rows, b.t + 1}, Data: b.tokens},
	}
}

var feedNorm = Normalize{Mean: []float32{0.485, 0.456, 0.406}, Std: []float32{0.229, 0.224, 0.225}, DType: Float16}

// want is what the feed's batch of b must hold: the normalized image (CHW float16), the labels as given,
// and the window shifted into int64 x and y.
func (b fedBatch) want() [][]byte {
	in := Field{Name: "image", DType: Uint8, Shape: []int{b.h, b.w, 3}}
	var img []byte
	ib := in.Bytes()
	for r := range b.rows {
		img = append(img, refNormalize(feedNorm, in, b.image[r*ib:(r+1)*ib], false)...)
	}
	var x, y []byte
	for r := range b.rows {
		for j := range b.t {
			x = binary.LittleEndian.AppendUint64(x, uint64(binary.LittleEndian.Uint16(b.tokens[(r*(b.t+1)+j)*2:])))
			y = binary.LittleEndian.AppendUint64(y, uint64(binary.LittleEndian.Uint16(b.tokens[(r*(b.t+1)+j+1)*2:])))
		}
	}
	return [][]byte{img, b.label, x, y}
}

// feedContents is the batch's fields as host bytes, after the batch's device work (read on the legacy
// stream, which Wait orders).
func feedContents(t *testing.T, e *engine.Engine, b *Batch) [][]byte {
	t.Helper()
	require.NoError(t, b.Wait(0))
	return batchContents(t, e, b)
}

func openFeed(t *testing.T, e *engine.Engine, opts FeedOptions) *Feed {
	t.Helper()
	if opts.Transforms == nil {
		opts.Transforms = map[string]Transform{"image": feedNorm, "tokens": ShiftTokens{}}
	}
	f, err := NewFeed(e, opts)
	require.NoError(t, err)
	return f
}

// poisonFeed fills a feed's device outputs with 0xFF before each batch's device work, so that a kernel or
// copy that skips an element shows.
func poisonFeed(t *testing.T) {
	testHookFeedIssue = func(f *Feed, s *slot) {
		for _, d := range s.dev {
			if d != nil {
				require.NoError(t, f.e.Context().MemsetD8(d.Ptr(), 0xFF, d.Len()))
			}
		}
	}
	t.Cleanup(func() { testHookFeedIssue = nil })
}

// feedChecks runs on any engine.
func feedChecks(t *testing.T, e *engine.Engine) {
	if e.GPU() {
		poisonFeed(t)
	}
	r := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))

	t.Run("batches of changing shapes equal the reference, and slots grow to the largest", func(t *testing.T) {
		base := memoryBase(t, e)
		f := openFeed(t, e, FeedOptions{Slots: 2})
		for i := range 24 {
			rows := 1 + r.IntN(40)
			if i%6 == 5 {
				rows = 3 // a short last batch
			}
			fb := newFedBatch(r, rows, 2+r.IntN(30), 2+r.IntN(30), 1+r.IntN(50))
			b, err := f.Push(fb.tensors())
			require.NoError(t, err, "batch %d", i)
			require.Equal(t, rows, b.Size())
			require.Equal(t, i, b.Index)
			names := []string{}
			for _, bf := range b.Fields {
				names = append(names, bf.Name)
			}
			require.Equal(t, []string{"image", "label", "x", "y"}, names)
			require.Equal(t, []int{rows, 3, fb.h, fb.w}, b.Fields[0].Shape)
			require.Equal(t, []int{rows, fb.t}, b.Fields[3].Shape)
			require.Equal(t, fb.want(), feedContents(t, e, b), "batch %d", i)
			require.NoError(t, b.Release(0))
		}
		require.LessOrEqual(t, f.Slots(), 3, "a loop that releases each batch needs no more slots")
		st := f.Stats()
		require.Equal(t, uint64(24), st.Batches)
		require.NoError(t, f.Close())
		requireMemoryBack(t, e, base)
	})

	t.Run("held batches grow the feed and keep their contents", func(t *testing.T) {
		base := memoryBase(t, e)
		f := openFeed(t, e, FeedOptions{Slots: 2})
		var held []*Batch
		var wants [][][]byte
		for range 12 {
			fb := newFedBatch(r, 8, 6, 5, 7)
			b, err := f.Push(fb.tensors())
			require.NoError(t, err)
			held = append(held, b)
			wants = append(wants, fb.want())
		}
		require.Equal(t, 12, f.Slots())
		for i, b := range held {
			require.Equal(t, wants[i], feedContents(t, e, b), "held batch %d", i)
			require.NoError(t, b.Release(0))
		}
		for range 12 {
			b, err := f.Push(newFedBatch(r, 8, 6, 5, 7).tensors())
			require.NoError(t, err)
			require.NoError(t, b.Release(0))
		}
		require.Equal(t, 12, f.Slots(), "released slots are reused")
		require.NoError(t, f.Close())
		requireMemoryBack(t, e, base)
	})

	t.Run("beyond the budget Push fails at once and the feed stays usable", func(t *testing.T) {
		base := memoryBase(t, e)
		f := openFeed(t, e, FeedOptions{Slots: 2, PinnedBudget: -1})
		fb := newFedBatch(r, 4, 3, 3, 3)
		a, err := f.Push(fb.tensors())
		require.NoError(t, err)
		b, err := f.Push(fb.tensors())
		require.NoError(t, err)
		start := time.Now()
		_, err = f.Push(fb.tensors())
		require.ErrorIs(t, err, engine.ErrLimit)
		require.Less(t, time.Since(start), testutil.FaultBound)
		require.Contains(t, err.Error(), "all 2 staging slots of the feed are still held by the caller")
		require.NoError(t, a.Release(0))
		c, err := f.Push(fb.tensors())
		require.NoError(t, err)
		require.Equal(t, fb.want(), feedContents(t, e, c))
		require.NoError(t, b.Release(0))
		require.NoError(t, c.Release(0))
		require.NoError(t, f.Close())

		f = openFeed(t, e, FeedOptions{PinnedBudget: 64 << 10})
		big := newFedBatch(r, 64, 32, 32, 3) // 196 KiB of image alone
		_, err = f.Push(big.tensors())
		require.ErrorIs(t, err, engine.ErrLimit)
		require.Contains(t, err.Error(), "past its pinned budget of 65536 bytes")
		small, err := f.Push(fb.tensors())
		require.NoError(t, err, "a batch within the budget goes on")
		require.Equal(t, fb.want(), feedContents(t, e, small))
		require.NoError(t, small.Release(0))
		require.NoError(t, f.Close())
		requireMemoryBack(t, e, base)
	})

	t.Run("bad batches are refused by name and lose nothing", func(t *testing.T) {
		f := openFeed(t, e, FeedOptions{})
		defer func() { require.NoError(t, f.Close()) }()
		fb := newFedBatch(r, 4, 3, 3, 3)
		bad := func(change func([]FeedTensor) []FeedTensor, words ...string) {
			t.Helper()
			_, err := f.Push(change(fb.tensors()))
			require.Error(t, err)
			for _, w := range words {
				require.Contains(t, err.Error(), w)
			}
		}
		bad(func(ts []FeedTensor) []FeedTensor { return nil }, "a batch of 0 tensors")
		bad(func(ts []FeedTensor) []FeedTensor { ts[0].Data = ts[0].Data[1:]; return ts }, `tensor "image"`, "107 were given")
		bad(func(ts []FeedTensor) []FeedTensor { ts[2].DType = 99; return ts }, "unknown dtype")
		bad(func(ts []FeedTensor) []FeedTensor { ts[1].Name = ""; return ts }, "tensor 1 has no name")
		bad(func(ts []FeedTensor) []FeedTensor { ts[1].Shape = nil; return ts }, `tensor "label" has no dimensions`)
		bad(func(ts []FeedTensor) []FeedTensor { ts[0].Shape = []int{4, 3, 3, 3, 1, 1, 1, 1, 1, 1}; return ts }, "image")
		bad(func(ts []FeedTensor) []FeedTensor { // ShiftTokens needs at least two tokens
			ts[2].Shape = []int{4, 1}
			ts[2].Data = ts[2].Data[:8]
			return ts
		}, "tokens")
		b, err := f.Push(fb.tensors())
		require.NoError(t, err)
		require.Equal(t, fb.want(), feedContents(t, e, b))
		require.NoError(t, b.Release(0))

		// Tensors of other row counts (a collate that concatenates), and an empty one, are staged as given.
		ts := fb.tensors()
		boxes := make([]byte, 7*4*4)
		for i := range boxes {
			boxes[i] = byte(r.Uint32())
		}
		ts = append(ts, FeedTensor{Name: "boxes", DType: Float32, Shape: []int{7, 4}, Data: boxes},
			FeedTensor{Name: "none", DType: Int64, Shape: []int{0, 2}, Data: []byte{}})
		b, err = f.Push(ts)
		require.NoError(t, err)
		require.Equal(t, 4, b.Size(), "the first tensor's rows")
		got := feedContents(t, e, b)
		require.Equal(t, append(fb.want(), boxes), got[:5])
		require.Empty(t, got[5])
		require.Equal(t, []int{0, 2}, b.Fields[5].Shape)
		require.NoError(t, b.Release(0))
	})

	t.Run("transforms a fed batch cannot run are refused at open", func(t *testing.T) {
		_, err := NewFeed(e, FeedOptions{Transforms: map[string]Transform{"image": Normalize{Flip: 0.5}}})
		require.ErrorIs(t, err, engine.ErrUnsupported)
		require.Contains(t, err.Error(), "flip in the pipeline")
		_, err = NewFeed(e, FeedOptions{Transforms: map[string]Transform{"t": PadSequences{}}})
		require.ErrorIs(t, err, engine.ErrUnsupported)
		for _, crop := range []Transform{RandomResizedCrop{Size: 8}, CenterCrop{Size: 8}} {
			_, err = NewFeed(e, FeedOptions{Transforms: map[string]Transform{"image": crop}})
			require.ErrorIs(t, err, engine.ErrUnsupported)
			require.Contains(t, err.Error(), "decodes and crops inside an iterator")
		}
		_, err = NewFeed(e, FeedOptions{Slots: -1})
		require.ErrorIs(t, err, engine.ErrInvalidArgument)
	})

	t.Run("a batch held at Close stays valid until its release", func(t *testing.T) {
		base := memoryBase(t, e)
		f := openFeed(t, e, FeedOptions{})
		fb := newFedBatch(r, 5, 4, 4, 4)
		b, err := f.Push(fb.tensors())
		require.NoError(t, err)
		require.NoError(t, b.Wait(0))
		require.NoError(t, f.Close())
		require.ErrorIs(t, f.Close(), engine.ErrClosed)
		_, err = f.Push(fb.tensors())
		require.ErrorIs(t, err, engine.ErrClosed)
		require.True(t, b.IteratorClosed())
		require.Equal(t, fb.want(), batchContents(t, e, b))
		require.NoError(t, b.Release(0))
		require.Eventually(t, func() bool { return e.Holds() == 0 }, testutil.FaultBound, time.Millisecond)
		requireMemoryBack(t, e, base)
	})
}

func TestFeedCPU(t *testing.T) {
	e := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	feedChecks(t, e)
}

func TestFeedGPU(t *testing.T) {
	testutil.RequireGPU(t)
	e, err := engine.Open(0, engine.WithSampleInterval(0))
	require.NoError(t, err)
	defer e.Close()
	feedChecks(t, e)
}

// A batch in caller memory that is a file mapping, truncated under the caller: Push returns an ErrIO
// error, never SIGBUS. In a child process, so that a crash fails this test and nothing else.
func TestFeedOverTruncatedMapping(t *testing.T) {
	out := testutil.RunIsolated(t, "TestFeedOverTruncatedMappingChild")
	require.Contains(t, out, "faulted")
}

func TestFeedOverTruncatedMappingChild(t *testing.T) {
	testutil.IsolatedChild(t)
	e := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	r := srcRand(t)
	data := srcRandBytes(r, 64*4096)
	path := srcWriteFile(t, "mapped.bin", data)
	fd, err := os.Open(path)
	require.NoError(t, err)
	mem, err := unix.Mmap(int(fd.Fd()), 0, len(data), unix.PROT_READ, unix.MAP_SHARED)
	require.NoError(t, fd.Close())
	require.NoError(t, err)
	defer func() { require.NoError(t, unix.Munmap(mem)) }()
	f, err := NewFeed(e, FeedOptions{Workers: 4})
	require.NoError(t, err)
	defer func() { require.NoError(t, f.Close()) }()
	x := []FeedTensor{{Name: "x", DType: Uint8, Shape: []int{64, 4096}, Data: mem}}
	b, err := f.Push(x)
	require.NoError(t, err)
	require.Equal(t, data, b.Fields[0].Host)
	require.NoError(t, b.Release(0))
	require.NoError(t, os.Truncate(path, 4096))
	_, err = f.Push(x)
	require.ErrorIs(t, err, engine.ErrIO)
	t.Log(err)
	b, err = f.Push([]FeedTensor{{Name: "x", DType: Uint8, Shape: []int{1, 4096}, Data: mem[:4096]}})
	require.NoError(t, err, "the feed stays usable")
	require.Equal(t, data[:4096], b.Fields[0].Host)
	require.NoError(t, b.Release(0))
}

// TestFeedFakeDriver runs the checks on the stand-in driver: the GPU path (copies, events, the consumer's
// release ordering), with the transforms on the host since the stand-in loads no kernels.
func TestFeedFakeDriver(t *testing.T) {
	out := testutil.RunOnFakeDriver(t, "TestFeedFakeDriverChild", false)
	require.Contains(t, out, "feed checks on the fake driver passed")
}

func TestFeedFakeDriverChild(t *testing.T) {
	testutil.IsolatedChild(t)
	e, err := engine.Open(0, engine.WithSampleInterval(0))
	require.NoError(t, err)
	defer func() { require.NoError(t, e.Close()) }()
	feedChecks(t, e)
	t.Log("feed checks on the fake driver passed")
}
