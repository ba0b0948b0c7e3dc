package data

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/testutil"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// srcRand returns a generator with a fresh seed, logged so that a failure can be replayed.
func srcRand(t *testing.T) *rand.Rand {
	t.Helper()
	seed := rand.Uint64()
	t.Logf("random seed %d", seed)
	return rand.New(rand.NewPCG(seed, seed^0x5851f42d4c957f2d))
}

func srcRandBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// srcWriteFile writes data to a new file under the test's temporary directory.
func srcWriteFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(path, data, 0o644))
	return path
}

// srcDst allocates destination buffers for fields, poisoned so a field left unwritten shows.
func srcDst(fields []Field) [][]byte {
	dst := make([][]byte, len(fields))
	for k, f := range fields {
		dst[k] = make([]byte, f.Bytes())
		for j := range dst[k] {
			dst[k][j] = 0xA5
		}
	}
	return dst
}

// requireSourceSamples checks every sample of src against want(i).
func requireSourceSamples(t *testing.T, src Source, want func(i int) [][]byte) {
	t.Helper()
	dst := srcDst(src.Fields())
	for i := 0; i < src.Len(); i++ {
		for k := range dst {
			for j := range dst[k] {
				dst[k][j] = 0xA5
			}
		}
		require.NoError(t, src.ReadSample(i, dst))
		w := want(i)
		for k, f := range src.Fields() {
			require.Equal(t, w[k], dst[k], "sample %d field %q", i, f.Name)
		}
	}
}

// requireSourceContract checks ReadSample's argument errors, then Close, reads after Close and a second
// Close. It closes src.
func requireSourceContract(t *testing.T, src Source) {
	t.Helper()
	fields := src.Fields()
	good := srcDst(fields)
	require.ErrorIs(t, src.ReadSample(-1, good), engine.ErrInvalidArgument)
	require.ErrorIs(t, src.ReadSample(src.Len(), good), engine.ErrInvalidArgument)
	require.ErrorIs(t, src.ReadSample(0, good[:len(good)-1]), engine.ErrInvalidArgument)
	require.ErrorIs(t, src.ReadSample(0, append(good, []byte{0})), engine.ErrInvalidArgument)
	require.ErrorIs(t, src.ReadSample(0, nil), engine.ErrInvalidArgument)
	for k := range fields {
		for _, delta := range []int{-1, 1} {
			bad := srcDst(fields)
			bad[k] = make([]byte, fields[k].Bytes()+delta)
			err := src.ReadSample(0, bad)
			require.ErrorIs(t, err, engine.ErrInvalidArgument, "field %q with %d bytes", fields[k].Name, len(bad[k]))
			require.Contains(t, err.Error(), fields[k].Name)
		}
	}
	err := src.ReadSample(src.Len(), good)
	require.Contains(t, err.Error(), "out of range")
	require.NoError(t, src.ReadSample(src.Len()-1, good))

	require.NoError(t, src.Close())
	require.ErrorIs(t, src.ReadSample(0, good), engine.ErrClosed)
	require.ErrorIs(t, src.Close(), engine.ErrClosed)
	require.Equal(t, len(fields), len(src.Fields()), "Fields stays readable after Close")
}

// requireSourceConcurrent reads random samples from many goroutines, checking each against want, then closes
// src while readers are still going: each read either succeeds with the right bytes or returns ErrClosed.
func requireSourceConcurrent(t *testing.T, src Source, want func(i int) [][]byte) {
	t.Helper()
	const workers = 8
	var wg sync.WaitGroup
	var ok, closed atomic.Int64
	errs := make(chan error, workers)
	start := make(chan struct{})
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			dst := srcDst(src.Fields())
			<-start
			for {
				i := r.IntN(src.Len())
				err := src.ReadSample(i, dst)
				if errors.Is(err, engine.ErrClosed) {
					closed.Add(1)
					return
				}
				if err != nil {
					errs <- err
					return
				}
				wnt := want(i)
				for k := range dst {
					if string(dst[k]) != string(wnt[k]) {
						errs <- errors.New("sample bytes differ under concurrent reads")
						return
					}
				}
				if ok.Add(1) > 20000 {
					return
				}
			}
		}()
	}
	close(start)
	for ok.Load() < 200 && closed.Load() == 0 && len(errs) == 0 {
		runtime.Gosched() // let the readers get going before Close
	}
	require.NoError(t, src.Close())
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Positive(t, ok.Load())
}

func TestMapFileErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := mapFile(filepath.Join(dir, "missing.bin"))
	require.ErrorIs(t, err, engine.ErrIO)
	require.ErrorIs(t, err, fs.ErrNotExist)
	require.Contains(t, err.Error(), "missing.bin")

	empty := srcWriteFile(t, "empty.bin", nil)
	_, err = mapFile(empty)
	require.ErrorIs(t, err, engine.ErrFormat)
	require.Contains(t, err.Error(), "empty.bin is empty")

	_, err = mapFile(dir)
	require.ErrorIs(t, err, engine.ErrInvalidArgument)
	require.Contains(t, err.Error(), "not a regular file")

	r := srcRand(t)
	want := srcRandBytes(r, 10000)
	m, err := mapFile(srcWriteFile(t, "data.bin", want))
	require.NoError(t, err)
	require.Equal(t, want, m.data)
	require.NoError(t, m.unmap())
	require.Nil(t, m.data)
	require.NoError(t, m.unmap(), "a second unmap is a no-op")
}

// A file that shrinks under its mapping raises SIGBUS on the vanished pages; the read must return an
// ErrIO error and the process must go on.
func TestMappedFileTruncatedWhileOpen(t *testing.T) {
	r := srcRand(t)
	const recSize, n = 4096, 16
	data := srcRandBytes(r, recSize*n)
	path := srcWriteFile(t, "records.bin", data)
	src, err := NewRecordSource(path, RecordSpec{RecordSize: recSize, Fields: []RecordField{
		{Field: Field{Name: "rec", DType: Uint8, Shape: []int{recSize}}},
	}})
	require.NoError(t, err)
	defer src.Close()
	err = requireTruncationIsAnError(t, src, path, data, recSize, n)
	require.Contains(t, err.Error(), "truncated")
}

// requireTruncationIsAnError reads the last of src's n samples (one field of size bytes, data in the file
// at path), truncates the file to its first sample, and requires the read of the last to fail with an
// ErrIO error naming the sample, while the first stays readable. It returns that error.
func requireTruncationIsAnError(t *testing.T, src Source, path string, data []byte, size, n int) error {
	t.Helper()
	dst := srcDst(src.Fields())
	require.NoError(t, src.ReadSample(n-1, dst))
	require.Equal(t, data[(n-1)*size:], dst[0])

	require.NoError(t, os.Truncate(path, int64(size)))
	err := src.ReadSample(n-1, dst)
	require.ErrorIs(t, err, engine.ErrIO)
	require.Contains(t, err.Error(), fmt.Sprintf("sample %d", n-1))

	require.NoError(t, src.ReadSample(0, dst), "the pages still in the file stay readable")
	require.Equal(t, data[:size], dst[0])
	return err
}

// A named pipe given as a source's file must be refused at once: opening a FIFO for reading blocks until
// a writer comes, which for a path given by mistake is for ever. Every file a source opens is tried.
func TestFileSourcesRefuseANamedPipe(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	require.NoError(t, unix.Mkfifo(fifo, 0o600))
	tokens := srcWriteFile(t, "tokens.bin", make([]byte, 64))
	offs := []int64{0, 4, 8}
	require.NoError(t, WriteNpy(filepath.Join(dir, "offsets.npy"), Int64, []int{len(offs)},
		unsafe.Slice((*byte)(unsafe.Pointer(&offs[0])), 8*len(offs))))
	open := map[string]func() (Source, error){
		"npy": func() (Source, error) { return NewNpySource(map[string]string{"x": fifo}) },
		"records": func() (Source, error) {
			return NewRecordSource(fifo, RecordSpec{RecordSize: 4, Fields: []RecordField{{Field: Field{Name: "x", DType: Uint8, Shape: []int{4}}}}})
		},
		"tokens": func() (Source, error) { return NewTokenSource(fifo, TokenConfig{Format: TokensUint16, SeqLen: 4}) },
		"ragged tokens": func() (Source, error) {
			return NewRaggedTokenSource(fifo, filepath.Join(dir, "offsets.npy"), RaggedConfig{Format: TokensUint16, MaxLen: 4})
		},
		"ragged offsets": func() (Source, error) {
			return NewRaggedTokenSource(tokens, fifo, RaggedConfig{Format: TokensUint16, MaxLen: 4})
		},
	}
	for name, fn := range open {
		t.Run(name, func(t *testing.T) {
			err := testutil.Within(t, testutil.FaultBound, name, func() error {
				src, err := fn()
				if err == nil {
					_ = src.Close()
				}
				return err
			})
			require.ErrorIs(t, err, engine.ErrInvalidArgument)
			require.Contains(t, err.Error(), "fifo is not a regular file (p")
		})
	}
}
