package engine

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// cpuTime is the process's user + system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkIteratorImages moves shuffled 224×224×3 uint8 images, batch 256, from RAM through the
// pipeline: to the GPU when there is one (copies included: the stream is drained at the end), else into
// host batches. Bytes/op is one batch, so MB/s is the staging throughput; cores is the process's CPU time
// over the wall time of the loop, and cores/(GB/s) the host cost of the throughput.
func BenchmarkIteratorImages(b *testing.B) {
	const n, batch = 2048, 256
	fields := []Field{{Name: "image", DType: Uint8, Shape: []int{224, 224, 3}}, {Name: "label", DType: Int64}}
	data := [][]byte{make([]byte, n*fields[0].Bytes()), make([]byte, n*8)}
	for _, d := range data {
		_, _ = rand.Read(d)
	}
	src, err := NewMemorySource(n, fields, data)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	e := benchEngine(b)
	for _, workers := range []int{4, 8, 16} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			it, err := e.NewIterator(src, IteratorOptions{BatchSize: batch, Shuffle: true, Seed: 1, Workers: workers})
			if err != nil {
				b.Fatal(err)
			}
			defer it.Close()
			// Warm up: one epoch touches every ring buffer once (first-touch page faults) and fills the
			// ring, so the timed loop measures the steady state.
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
			bytesPerBatch := batch * (fields[0].Bytes() + 8)
			b.SetBytes(int64(bytesPerBatch))
			cpu0, wall0, batches := cpuTime(b), time.Now(), 0
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
			if e.gpu {
				if err := it.waitStream(); err != nil {
					b.Fatal(err)
				}
			}
			wall, cpu := time.Since(wall0).Seconds(), (cpuTime(b) - cpu0).Seconds()
			gbps := float64(batches*bytesPerBatch) / wall / 1e9
			b.ReportMetric(cpu/wall, "cores")
			b.ReportMetric(cpu/wall/gbps, "cores/(GB/s)")
		})
	}
}
