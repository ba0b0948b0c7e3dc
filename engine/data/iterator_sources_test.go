package data

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-ml/ferry/engine/internal/enginetest"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/testutil"

	"github.com/stretchr/testify/require"
)

// sourceCase builds one kind of source over fresh random data, in files under dir.
type sourceCase struct {
	name  string
	build func(t *testing.T, dir string) Source
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

func writeFile(t *testing.T, path string, parts ...[]byte) {
	t.Helper()
	var all []byte
	for _, p := range parts {
		all = append(all, p...)
	}
	require.NoError(t, os.WriteFile(path, all, 0o644))
}

// everySource lists a source of each kind: caller memory, CIFAR-10 records, records with a header, .npy
// files, nanoGPT and llm.c token files (sequential and random), and a callback.
func everySource() []sourceCase {
	return []sourceCase{
		{"memory", func(t *testing.T, dir string) Source {
			src, _ := randomSource(t, 300)
			return src
		}},
		{"cifar10", func(t *testing.T, dir string) Source {
			p := filepath.Join(dir, "data_batch_1.bin")
			writeFile(t, p, randomBytes(t, 257*3073))
			src, err := NewRecordSource(p, CIFAR10Spec())
			require.NoError(t, err)
			return src
		}},
		{"records with a header", func(t *testing.T, dir string) Source {
			p := filepath.Join(dir, "records.bin")
			writeFile(t, p, randomBytes(t, 64), randomBytes(t, 199*40))
			src, err := NewRecordSource(p, RecordSpec{RecordSize: 40, HeaderSize: 64, Fields: []RecordField{
				{Field: Field{Name: "a", DType: Float32, Shape: []int{2, 3}}, Offset: 0},
				{Field: Field{Name: "b", DType: Int64}, Offset: 24},
				{Field: Field{Name: "c", DType: Uint16, Shape: []int{4}}, Offset: 32},
			}})
			require.NoError(t, err)
			return src
		}},
		{"npy", func(t *testing.T, dir string) Source {
			x, y := filepath.Join(dir, "x.npy"), filepath.Join(dir, "y.npy")
			require.NoError(t, WriteNpy(x, Float32, []int{150, 5, 7}, randomBytes(t, 150*35*4)))
			require.NoError(t, WriteNpy(y, Int32, []int{150}, randomBytes(t, 150*4)))
			src, err := NewNpySource(map[string]string{"x": x, "y": y})
			require.NoError(t, err)
			return src
		}},
		{"nanoGPT tokens, random windows", func(t *testing.T, dir string) Source {
			p := filepath.Join(dir, "train.bin")
			writeFile(t, p, randomBytes(t, 2*20000))
			src, err := NewTokenSource(p, TokenConfig{Format: TokensUint16, SeqLen: 64, Random: true, Seed: 5})
			require.NoError(t, err)
			return src
		}},
		{"llm.c shard", func(t *testing.T, dir string) Source {
			p := filepath.Join(dir, "shard_000000.bin")
			const ntok = 9000
			hdr := make([]byte, 256*4)
			binary.LittleEndian.PutUint32(hdr[0:], 20240520)
			binary.LittleEndian.PutUint32(hdr[4:], 1)
			binary.LittleEndian.PutUint32(hdr[8:], ntok)
			writeFile(t, p, hdr, randomBytes(t, 2*ntok))
			src, err := NewTokenSource(p, TokenConfig{Format: TokensLLMC, SeqLen: 32})
			require.NoError(t, err)
			return src
		}},
		{"callback", func(t *testing.T, dir string) Source {
			mem, _ := randomSource(t, 120)
			src, err := NewFuncSource(mem.Len(), mem.Fields(), mem.ReadSample)
			require.NoError(t, err)
			return src
		}},
	}
}

// epochContents reads one epoch and returns every batch's fields as host bytes.
func epochContents(t *testing.T, e *engine.Engine, src Source, opts IteratorOptions) [][][]byte {
	t.Helper()
	it, err := NewIterator(e, src, opts)
	require.NoError(t, err)
	defer it.Close()
	var out [][][]byte
	for {
		b, err := it.Next(context.Background(), 0)
		if errors.Is(err, io.EOF) {
			return out
		}
		require.NoError(t, err)
		out = append(out, batchContents(t, e, b))
		require.NoError(t, b.Release(0))
	}
}

// everySourceChecks runs each kind of source through a GPU engine and through the CPU engine (the
// reference), and requires the batches to be equal bit for bit.
func everySourceChecks(t *testing.T, gpu *engine.Engine) {
	cpu, err := engine.Open(engine.CPU, engine.WithSampleInterval(0))
	require.NoError(t, err)
	defer cpu.Close()
	for _, sc := range everySource() {
		t.Run(sc.name, func(t *testing.T) {
			src := sc.build(t, t.TempDir())
			defer src.Close()
			opts := IteratorOptions{BatchSize: 32, Shuffle: true, Seed: 11, Workers: 3}
			want := epochContents(t, cpu, src, opts)
			got := epochContents(t, gpu, src, opts)
			require.NotEmpty(t, want)
			require.Equal(t, len(want), len(got))
			for i := range want {
				require.Equal(t, want[i], got[i], "batch %d differs between the GPU and the CPU reference", i)
			}
		})
	}
}

func TestIteratorGPUEverySource(t *testing.T) {
	testutil.RequireGPU(t)
	e, err := engine.Open(0, engine.WithSampleInterval(0))
	require.NoError(t, err)
	defer e.Close()
	everySourceChecks(t, e)
}

// TestIteratorCPUEverySource checks each kind of source on the CPU engine against the source itself.
func TestIteratorCPUEverySource(t *testing.T) {
	e := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	for _, sc := range everySource() {
		t.Run(sc.name, func(t *testing.T) {
			src := sc.build(t, t.TempDir())
			defer src.Close()
			it, err := NewIterator(e, src, IteratorOptions{BatchSize: 16, Shuffle: true, Seed: 2, Workers: 2})
			require.NoError(t, err)
			defer it.Close()
			fields := src.Fields()
			seen := 0
			for {
				b, err := it.Next(context.Background(), 0)
				if errors.Is(err, io.EOF) {
					break
				}
				require.NoError(t, err)
				for f, fl := range fields {
					fb := fl.Bytes()
					for r, i := range b.Indices {
						want := make([][]byte, len(fields))
						for k := range fields {
							want[k] = make([]byte, fields[k].Bytes())
						}
						require.NoError(t, src.ReadSample(i, want))
						require.Equal(t, want[f], b.Fields[f].Host[r*fb:(r+1)*fb], "field %s row %d", fl.Name, r)
					}
				}
				seen += b.Size()
				require.NoError(t, b.Release(0))
			}
			require.Equal(t, src.Len(), seen)
		})
	}
}
