package data

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/ferry-ml/ferry/engine/internal/enginetest"
)

// writeBenchCorpus writes a Megatron corpus of about ntok uint16 tokens whose documents have lognormal
// lengths (mean about 600 tokens, as web text tokenized for GPT-2 has), one sequence each. With sparse the
// .bin is a hole of the right size (the index builds read only the .idx); else it holds random tokens,
// every document ending in 50256.
func writeBenchCorpus(b *testing.B, dir string, ntok int64, sparse bool) string {
	b.Helper()
	r := rand.New(rand.NewPCG(1, 2))
	var lengths []int32
	var total int64
	for total < ntok {
		n := int32(math.Max(1, math.Exp(6.0+0.8*r.NormFloat64()))) // median 403, mean about 555
		lengths = append(lengths, n)
		total += int64(n)
	}
	prefix := filepath.Join(dir, "corpus_text_document")
	idx := megatronIndex(8, 2, lengths, nil, nil)
	docs := make([]byte, 0, 8*(len(lengths)+1))
	for d := 0; d <= len(lengths); d++ {
		docs = binary.LittleEndian.AppendUint64(docs, uint64(d))
	}
	binary.LittleEndian.PutUint64(idx[26:], uint64(len(lengths)+1))
	idx = append(idx, docs...)
	if err := os.WriteFile(prefix+".idx", idx, 0o644); err != nil {
		b.Fatal(err)
	}
	f, err := os.Create(prefix + ".bin")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if sparse {
		if err := f.Truncate(2 * total); err != nil {
			b.Fatal(err)
		}
		return prefix
	}
	buf := make([]byte, 0, 1<<20)
	for _, n := range lengths {
		for j := int32(0); j < n; j++ {
			tok := uint16(r.IntN(50256))
			if j == n-1 {
				tok = 50256
			}
			buf = binary.LittleEndian.AppendUint16(buf, tok)
			if len(buf) == cap(buf) {
				if _, err := f.Write(buf); err != nil {
					b.Fatal(err)
				}
				buf = buf[:0]
			}
		}
	}
	if _, err := f.Write(buf); err != nil {
		b.Fatal(err)
	}
	return prefix
}

// BenchmarkGPTOpen is the start-up of a GPT source over a synthetic corpus of 1 G tokens (or
// FERRY_BENCH_GPT_TOKENS): ferry's order (the index checked, nothing built), and Megatron's order built (no
// cache) and mapped from the cache.
func BenchmarkGPTOpen(b *testing.B) {
	dir := b.TempDir()
	ntok := int64(1 << 30)
	if v, err := strconv.ParseFloat(os.Getenv("FERRY_BENCH_GPT_TOKENS"), 64); err == nil && v > 0 {
		ntok = int64(v)
	}
	prefix := writeBenchCorpus(b, dir, ntok, true)
	for _, c := range []struct {
		name string
		cfg  GPTConfig
	}{
		{"ferry", GPTConfig{SeqLen: 2048}},
		{"megatron build", GPTConfig{SeqLen: 2048, Order: GPTOrderMegatron, Seed: 1234, Split: "969,30,1", NoCache: true}},
		{"megatron cached", GPTConfig{SeqLen: 2048, Order: GPTOrderMegatron, Seed: 1234, Split: "969,30,1", CacheDir: filepath.Join(dir, "cache")}},
	} {
		b.Run(c.name, func(b *testing.B) {
			if c.cfg.CacheDir != "" { // the cache is written before the timed opens
				s, err := NewGPTSource([]string{prefix}, c.cfg)
				if err != nil {
					b.Fatal(err)
				}
				_ = s.Close()
			}
			for b.Loop() {
				s, err := NewGPTSource([]string{prefix}, c.cfg)
				if err != nil {
					b.Fatal(err)
				}
				_ = s.Close()
			}
		})
	}
}

// BenchmarkGPTWindows moves GPT windows of a 128 M-token corpus to int64 x and y on the device, with and
// without the loss mask and position ids: ferry's order (shuffled, mapped staging where it applies) and
// Megatron's (host gather). tokens/s is the rate of x tokens delivered.
func BenchmarkGPTWindows(b *testing.B) {
	e := enginetest.BenchEngine(b)
	if !e.GPU() {
		b.Skip("needs a GPU")
	}
	prefix := writeBenchCorpus(b, b.TempDir(), 1<<27, false)
	for _, order := range []GPTOrder{GPTOrderFerry, GPTOrderMegatron} {
		for _, seq := range []int{2048, 8192} {
			src, err := NewGPTSource([]string{prefix}, GPTConfig{SeqLen: seq, Order: order, Seed: 1234, NoCache: true})
			if err != nil {
				b.Fatal(err)
			}
			for _, batch := range []int{8, 32} {
				for _, gpt := range []bool{false, true} {
					shift := ShiftTokens{}
					if gpt {
						shift = gptTransform(50256, true, true)
					}
					b.Run(fmt.Sprintf("%v/seq=%d/batch=%d/masks=%v", order, seq, batch, gpt), func(b *testing.B) {
						it, err := NewIterator(e, src, IteratorOptions{BatchSize: batch, Shuffle: order == GPTOrderFerry, Seed: 1,
							Transforms: map[string]Transform{"tokens": shift}})
						if err != nil {
							b.Fatal(err)
						}
						defer it.Close()
						staging, _ := it.Staging()
						b.Logf("staging %v", staging)
						stagingLoop(b, e, it, batch*(seq+1)*2)
						b.ReportMetric(float64(b.N*batch*seq)/b.Elapsed().Seconds()/1e6, "Mtokens/s")
					})
				}
			}
			_ = src.Close()
		}
	}
}
