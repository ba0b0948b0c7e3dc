package data

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/ferry-ml/ferry/engine/internal/testutil"

	"github.com/ferry-ml/ferry/engine/internal/enginetest"

	"github.com/ferry-ml/ferry/engine"

	"golang.org/x/sys/unix"

	"github.com/ferry-ml/ferry/engine/internal/cuda"
)

// syncStream waits for s to drain.
func syncStream(b *testing.B, e *engine.Engine, s Stream) {
	for {
		err := e.Context().StreamQuery(s)
		if err == nil {
			return
		}
		if !errors.Is(err, cuda.ErrNotReady) {
			b.Fatal(err)
		}
		time.Sleep(5 * time.Microsecond)
	}
}

// BenchmarkLayoutImage is the layout kernel alone on data already on the device: u8 NHWC → normalized
// f16 NCHW, 256×224×224×3. Bytes/op counts what the kernel reads and writes (the "effective" bandwidth
// that torch benchmarks report), so MB/s compares with a device-to-device copy's read+write figure.
func BenchmarkLayoutImage(b *testing.B) {
	e := enginetest.BenchEngine(b)
	if !e.GPU() {
		b.Skip("needs a GPU")
	}
	const batch = 256
	in := Field{Name: "image", DType: Uint8, Shape: []int{224, 224, 3}}
	for _, c := range []struct {
		name string
		t    Normalize
	}{
		{"f16_chw", Normalize{Mean: []float32{0.485, 0.456, 0.406}, Std: []float32{0.229, 0.224, 0.225}, DType: Float16}},
		{"f32_chw", Normalize{Mean: []float32{0.485, 0.456, 0.406}, Std: []float32{0.229, 0.224, 0.225}, DType: Float32}},
		{"bf16_hwc", Normalize{Mean: []float32{0.485, 0.456, 0.406}, Std: []float32{0.229, 0.224, 0.225}, DType: BFloat16, Layout: LayoutHWC}},
	} {
		b.Run(c.name, func(b *testing.B) {
			outs, err := c.t.Outputs(in)
			if err != nil {
				b.Fatal(err)
			}
			src, err := e.DevicePool().Alloc(batch * in.Bytes())
			if err != nil {
				b.Fatal(err)
			}
			defer e.DevicePool().Free(src)
			dst, err := e.DevicePool().Alloc(batch * outs[0].Bytes())
			if err != nil {
				b.Fatal(err)
			}
			defer e.DevicePool().Free(dst)
			if err := e.Context().MemsetD8(src.Ptr(), 77, src.Len()); err != nil {
				b.Fatal(err)
			}
			s, err := e.Context().StreamCreate()
			if err != nil {
				b.Fatal(err)
			}
			defer e.Context().StreamDestroy(s)
			launch := func() {
				if err := LaunchTransform(e, c.t, in, batch, src.Ptr(), []engine.DevicePtr{dst.Ptr()}, s); err != nil {
					b.Fatal(err)
				}
			}
			launch()
			syncStream(b, e, s)
			b.SetBytes(int64(batch * (in.Bytes() + outs[0].Bytes())))
			for b.Loop() {
				launch()
			}
			syncStream(b, e, s)
		})
	}
}

// mmapAnon maps n bytes of anonymous memory: a stand-in for a memory-mapped dataset, outside Go's heap.
func mmapAnon(b *testing.B, n int) []byte {
	m, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = unix.Munmap(m) })
	return m
}

// BenchmarkStaging moves shuffled 224×224×3 u8 images (plus an int64 label), batch 256, from RAM to the
// device through each staging strategy, raw or normalized to f16 CHW with flips on the way. Bytes/op is
// the source bytes of one batch, so MB/s is the staging throughput; cores is the process's CPU time over
// the wall time.
func BenchmarkStaging(b *testing.B) {
	e := enginetest.BenchEngine(b)
	if !e.GPU() {
		b.Skip("needs a GPU")
	}
	const n, batch = 4096, 256
	fields := []Field{{Name: "image", DType: Uint8, Shape: []int{224, 224, 3}}, {Name: "label", DType: Int64}}
	data := [][]byte{mmapAnon(b, n*fields[0].Bytes()), mmapAnon(b, n*8)}
	for _, d := range data {
		_, _ = rand.Read(d)
	}
	src, err := NewMemorySource(n, fields, data)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	norm := Normalize{Mean: []float32{0.485, 0.456, 0.406}, Std: []float32{0.229, 0.224, 0.225}, DType: Float16, Flip: 0.5}
	for _, staging := range []Staging{StagingGather, StagingDMA, StagingMapped} {
		for _, xf := range []string{"raw", "normalize"} {
			b.Run(fmt.Sprintf("%v/%s", staging, xf), func(b *testing.B) {
				opts := IteratorOptions{BatchSize: batch, Shuffle: true, Seed: 1, Staging: staging, Workers: 16}
				if xf == "normalize" {
					opts.Transforms = map[string]Transform{"image": norm}
				}
				it, err := NewIterator(e, src, opts)
				if err != nil {
					b.Fatal(err)
				}
				defer it.Close()
				if got, why := it.Staging(); got != staging {
					b.Skipf("staging %v unavailable: %s", staging, why)
				}
				stagingLoop(b, e, it, batch*(fields[0].Bytes()+8))
			})
		}
	}
}

// stagingLoop warms the iterator up for one epoch (first-touch page faults, a full ring), then times
// Next/Release, draining the stream at the end on a GPU; bytesPerBatch is for MB/s and GB/s. cores is the
// process's CPU time over the wall time, cores/(GB/s) the host cost of the throughput.
func stagingLoop(b *testing.B, e *engine.Engine, it *Iterator, bytesPerBatch int) {
	for {
		bt, err := it.Next(context.Background(), 0)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
		_ = bt.Release(0)
	}
	b.SetBytes(int64(bytesPerBatch))
	cpu0, wall0, batches := testutil.CPUTime(b), time.Now(), 0
	for b.Loop() {
		batches++
		bt, err := it.Next(context.Background(), 0)
		if errors.Is(err, io.EOF) {
			bt, err = it.Next(context.Background(), 0)
		}
		if err != nil {
			b.Fatal(err)
		}
		if err := bt.Release(0); err != nil {
			b.Fatal(err)
		}
	}
	if e.GPU() {
		if err := it.waitStream(); err != nil {
			b.Fatal(err)
		}
	}
	wall, cpu := time.Since(wall0).Seconds(), (testutil.CPUTime(b) - cpu0).Seconds()
	gbps := float64(batches*bytesPerBatch) / wall / 1e9
	b.ReportMetric(cpu/wall, "cores")
	b.ReportMetric(gbps, "GB/s")
	b.ReportMetric(cpu/wall/gbps, "cores/(GB/s)")
}

// tokenRegion is a source of token windows over one array of uint16 tokens (a stand-in for a
// memory-mapped token file): sample i is the seq+1 tokens at a pseudo-random offset.
type tokenRegion struct {
	tokens []byte
	seq    int
	starts []int64
	fields []Field
}

func (r *tokenRegion) Len() int              { return len(r.starts) }
func (r *tokenRegion) Fields() []Field       { return r.fields }
func (r *tokenRegion) Close() error          { return nil }
func (r *tokenRegion) Region(int) []byte     { return r.tokens }
func (r *tokenRegion) Offset(_, i int) int64 { return r.starts[i] }
func (r *tokenRegion) ReadSample(i int, dst [][]byte) error {
	copy(dst[0], r.tokens[r.starts[i]:])
	return nil
}

// BenchmarkTokens moves batches of 32 random windows of 1024+1 uint16 tokens to int64 x and y on the
// device, as nanoGPT's get_batch does. tokens/s is the rate of x tokens delivered.
func BenchmarkTokens(b *testing.B) {
	e := enginetest.BenchEngine(b)
	if !e.GPU() {
		b.Skip("needs a GPU")
	}
	const ntok, seq, batch, n = 1 << 27, 1024, 32, 1 << 16
	r := &tokenRegion{tokens: mmapAnon(b, 2*ntok), seq: seq, fields: []Field{{Name: "window", DType: Uint16, Shape: []int{seq + 1}}}}
	_, _ = rand.Read(r.tokens)
	st := uint64(1)
	for i := 0; i < n; i++ {
		r.starts = append(r.starts, 2*int64(splitmix64(&st)%uint64(ntok-seq-1)))
	}
	for _, staging := range []Staging{StagingGather, StagingMapped} {
		b.Run(staging.String(), func(b *testing.B) {
			it, err := NewIterator(e, r, IteratorOptions{BatchSize: batch, Shuffle: true, Seed: 1, Staging: staging,
				Transforms: map[string]Transform{"window": ShiftTokens{}}})
			if err != nil {
				b.Fatal(err)
			}
			defer it.Close()
			if got, why := it.Staging(); got != staging {
				b.Skipf("staging %v unavailable: %s", staging, why)
			}
			stagingLoop(b, e, it, batch*(seq+1)*2)
			b.ReportMetric(float64(b.N*batch*seq)/b.Elapsed().Seconds()/1e6, "Mtokens/s")
		})
	}
}
