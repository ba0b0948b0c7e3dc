package data

import (
	"crypto/rand"
	"fmt"
	"testing"

	"github.com/ferry-ml/ferry/engine/internal/enginetest"
)

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
	e := enginetest.BenchEngine(b)
	for _, workers := range []int{4, 8, 16} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			it, err := NewIterator(e, src, IteratorOptions{BatchSize: batch, Shuffle: true, Seed: 1, Workers: workers})
			if err != nil {
				b.Fatal(err)
			}
			defer it.Close()
			stagingLoop(b, e, it, batch*(fields[0].Bytes()+8))
		})
	}
}
