package data

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/enginetest"
	"github.com/ferry-ml/ferry/engine/internal/objstore"
	"github.com/ferry-ml/ferry/engine/internal/testutil"
)

// readAll reads every sample of src.
func readAll(t *testing.T, src Source) [][]byte {
	t.Helper()
	var out [][]byte
	for i := 0; i < src.Len(); i++ {
		dst := make([][]byte, len(src.Fields()))
		var all []byte
		for f, fl := range src.Fields() {
			dst[f] = make([]byte, fl.Bytes())
		}
		require.NoError(t, src.ReadSample(i, dst))
		for _, d := range dst {
			all = append(all, d...)
		}
		out = append(out, all)
	}
	return out
}

// TestSourcesFromS3: token files, .npy arrays, fixed-size records, a Megatron corpus and WebDataset shards uploaded to a real S3 server read the
// same through s3:// paths as from the local files; a missing object is an I/O error naming it.
func TestSourcesFromS3(t *testing.T) {
	testutil.StartS3(t)
	t.Setenv("FERRY_CACHE_DIR", t.TempDir())
	ctx := context.Background()
	cl := s3Bucket(t, "train")
	dir := t.TempDir()
	r := srcRand(t)
	upload := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dir, name))
		require.NoError(t, err)
		require.NoError(t, cl.Put(ctx, objstore.Object{Bucket: "train", Key: "set/" + name}, b))
		return "s3://train/set/" + name
	}
	tokens := srcRandBytes(r, 2*40001)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tokens.bin"), tokens, 0o644))
	records := srcRandBytes(r, 3073*50)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "records.bin"), records, 0o644))
	require.NoError(t, WriteNpy(filepath.Join(dir, "x.npy"), Float32, []int{64, 5}, srcRandBytes(r, 64*5*4)))

	cfg := TokenConfig{Format: TokensUint16, SeqLen: 128}
	local, err := NewTokenSource(filepath.Join(dir, "tokens.bin"), cfg)
	require.NoError(t, err)
	defer local.Close()
	remote, err := NewTokenSource(upload("tokens.bin"), cfg)
	require.NoError(t, err)
	defer remote.Close()
	require.Equal(t, readAll(t, local), readAll(t, remote))

	lr, err := NewRecordSource(filepath.Join(dir, "records.bin"), CIFAR10Spec())
	require.NoError(t, err)
	defer lr.Close()
	rr, err := NewRecordSource(upload("records.bin"), CIFAR10Spec())
	require.NoError(t, err)
	defer rr.Close()
	require.Equal(t, readAll(t, lr), readAll(t, rr))

	ln, err := NewNpySource(map[string]string{"x": filepath.Join(dir, "x.npy")})
	require.NoError(t, err)
	defer ln.Close()
	rn, err := NewNpySource(map[string]string{"x": upload("x.npy")})
	require.NoError(t, err)
	defer rn.Close()
	require.Equal(t, readAll(t, ln), readAll(t, rn))

	// A Megatron corpus: the .idx and .bin of one prefix; and GPT windows over it, whose index cache goes
	// to the object cache folder, not to a local path made of the URL.
	for _, ext := range []string{".idx", ".bin"} {
		b, err := os.ReadFile(filepath.Join("testdata", "megatron", "corpus_u16"+ext))
		require.NoError(t, err)
		require.NoError(t, cl.Put(ctx, objstore.Object{Bucket: "train", Key: "mega/corpus_u16" + ext}, b))
	}
	lm, err := NewMegatronSource(filepath.Join("testdata", "megatron", "corpus_u16"), MegatronConfig{MaxLen: 64})
	require.NoError(t, err)
	defer lm.Close()
	rm, err := NewMegatronSource("s3://train/mega/corpus_u16", MegatronConfig{MaxLen: 64})
	require.NoError(t, err)
	defer rm.Close()
	require.Equal(t, readAll(t, lm), readAll(t, rm))
	gcfg := GPTConfig{SeqLen: 32, Order: GPTOrderMegatron, Seed: 1234, Split: "100,0,0", NumSamples: 50}
	lg, err := NewGPTSource([]string{filepath.Join("testdata", "megatron", "corpus_u16")}, withCache(gcfg, t.TempDir()))
	require.NoError(t, err)
	defer lg.Close()
	rg, err := NewGPTSource([]string{"s3://train/mega/corpus_u16"}, gcfg)
	require.NoError(t, err)
	defer rg.Close()
	require.Equal(t, readAll(t, lg), readAll(t, rg))
	again, err := NewGPTSource([]string{"s3://train/mega/corpus_u16"}, gcfg)
	require.NoError(t, err)
	defer again.Close()
	require.True(t, again.IndexInfo().Cached, "the second start maps the index built by the first")
	require.Equal(t, readAll(t, lg), readAll(t, again))
	// WebDataset shards: fetched whole, indexed from the cached copy (the index cached in the object cache).
	for k := range 2 {
		var members []tarMember
		for j := range 5 {
			key := fmt.Sprintf("s%d-%03d", k, j)
			members = append(members, tarMember{name: key + ".jpg", data: srcRandBytes(r, 100+j)},
				tarMember{name: key + ".cls", data: []byte(fmt.Sprint(j))})
		}
		writeShard(t, filepath.Join(dir, fmt.Sprintf("shard-%d.tar", k)), members)
		upload(fmt.Sprintf("shard-%d.tar", k))
	}
	lw, err := NewWebDatasetSource([]string{filepath.Join(dir, "shard-{0..1}.tar")}, WebDatasetConfig{CacheDir: t.TempDir()})
	require.NoError(t, err)
	defer lw.Close()
	for round := range 2 { // the second open reads the shards' indexes from the cache
		rw, err := NewWebDatasetSource([]string{"s3://train/set/shard-{0..1}.tar"}, WebDatasetConfig{})
		require.NoError(t, err)
		require.Equal(t, 10, rw.Len())
		require.Equal(t, readAll(t, lw), readAll(t, rw))
		if round == 1 {
			require.Equal(t, 2, rw.cached, "the indexes came from the cache")
		}
		require.NoError(t, rw.Close())
	}
	// A prefix ending in "/" lists its .tar objects, in key order.
	byPrefix, err := NewWebDatasetSource([]string{"s3://train/set/"}, WebDatasetConfig{})
	require.NoError(t, err)
	require.Equal(t, readAll(t, lw), readAll(t, byPrefix))
	require.NoError(t, byPrefix.Close())
	_, err = NewWebDatasetSource([]string{"s3://train/none/"}, WebDatasetConfig{})
	require.ErrorIs(t, err, engine.ErrFormat)

	wd, err := os.Getwd()
	require.NoError(t, err)
	_, err = os.Stat(filepath.Join(wd, "s3:"))
	require.True(t, os.IsNotExist(err), "no local folder named after the URL")

	_, err = NewTokenSource("s3://train/set/missing.bin", cfg)
	require.ErrorIs(t, err, engine.ErrIO)
	require.Contains(t, err.Error(), "s3://train/set/missing.bin")
	require.Contains(t, err.Error(), "HTTP 404")
}

func withCache(c GPTConfig, dir string) GPTConfig {
	c.CacheDir = dir
	return c
}

// BenchmarkSourcesS3 opens a 64 MiB file and reads one shuffled epoch of it (batch 256, CPU engine): from
// local disk, from an S3 server on loopback with an empty cache (cold: the whole fetch), with the cache
// warm, and read in ranges as the batches come (ranged, from an empty cache). The files: uint16 tokens
// (windows of 1024+1), CIFAR-10 records (3,073 bytes) and a float32 .npy array of 3x32x32 samples.
// Reported: MB/s of the file, samples/s, and requests to the store per epoch.
func BenchmarkSourcesS3(b *testing.B) {
	testutil.StartS3(b)
	ctx := context.Background()
	cl := s3Bucket(b, "bench")
	dir := b.TempDir()
	const size = 64 << 20
	raw := make([]byte, size)
	for i := range raw {
		raw[i] = byte(i * 7)
	}
	const npyN = size / (3 * 32 * 32 * 4)
	require.NoError(b, WriteNpy(filepath.Join(dir, "x.npy"), Float32, []int{npyN, 3, 32, 32}, raw[:npyN*3*32*32*4]))
	require.NoError(b, os.WriteFile(filepath.Join(dir, "tokens.bin"), raw, 0o644))
	require.NoError(b, os.WriteFile(filepath.Join(dir, "records.bin"), raw[:size/3073*3073], 0o644))
	for _, name := range []string{"tokens.bin", "records.bin", "x.npy"} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		require.NoError(b, err)
		require.NoError(b, cl.Put(ctx, objstore.Object{Bucket: "bench", Key: name}, data))
	}
	open := map[string]func(path string) (Source, error){
		"tokens.bin": func(p string) (Source, error) {
			return NewTokenSource(p, TokenConfig{Format: TokensUint16, SeqLen: 1024})
		},
		"records.bin": func(p string) (Source, error) { return NewRecordSource(p, CIFAR10Spec()) },
		"x.npy":       func(p string) (Source, error) { return NewNpySource(map[string]string{"x": p}) },
	}
	e := enginetest.OpenCPU(b, engine.WithSampleInterval(0))
	epoch := func(name, path string) int {
		src, err := open[name](path)
		require.NoError(b, err)
		defer src.Close()
		it, err := NewIterator(e, src, IteratorOptions{BatchSize: 256, Shuffle: true})
		require.NoError(b, err)
		defer it.Close()
		n := 0
		for {
			bt, err := it.Next(ctx, 0)
			if err != nil {
				return n
			}
			n += bt.Size()
			require.NoError(b, bt.Release(0))
		}
	}
	for _, name := range []string{"tokens.bin", "records.bin", "x.npy"} {
		for _, mode := range []string{"local", "cold", "warm", "ranged"} {
			b.Run(name+"/"+mode, func(b *testing.B) {
				b.SetBytes(size)
				cache := b.TempDir()
				b.Setenv("FERRY_CACHE_DIR", cache)
				if mode == "ranged" {
					b.Setenv("FERRY_S3_RANGED_BYTES", "1") // fetched in ranges as the shuffled batches come
				}
				path := filepath.Join(dir, name)
				if mode != "local" {
					path = "s3://bench/" + name
				}
				if mode == "warm" {
					epoch(name, path)
				}
				req := objstore.Stats.Requests.Load()
				samples := 0
				b.ResetTimer()
				for range b.N {
					if mode == "cold" || mode == "ranged" {
						b.StopTimer()
						require.NoError(b, os.RemoveAll(cache))
						b.StartTimer()
					}
					samples += epoch(name, path)
				}
				b.ReportMetric(float64(samples)/b.Elapsed().Seconds(), "samples/s")
				b.ReportMetric(float64(objstore.Stats.Requests.Load()-req)/float64(b.N), "requests/op")
			})
		}
	}
}

// TestRangedReadsFromS3: an object larger than the whole-fetch size is read in ranges: the iterator fetches
// each batch's bytes as it assigns the batch (far less than the object for a few batches), a direct read
// fetches its own, every sample equals the local file's, and once every block was read the object is a
// complete cache entry that the next open maps without a request.
func TestRangedReadsFromS3(t *testing.T) {
	testutil.StartS3(t)
	t.Setenv("FERRY_CACHE_DIR", t.TempDir())
	t.Setenv("FERRY_S3_RANGED_BYTES", "1") // every object is read in ranges
	ctx := context.Background()
	cl := s3Bucket(t, "ranged")
	r := srcRand(t)
	tokens := srcRandBytes(r, 24<<20)
	dir := t.TempDir()
	local := filepath.Join(dir, "tokens.bin")
	require.NoError(t, os.WriteFile(local, tokens, 0o644))
	require.NoError(t, cl.Put(ctx, objstore.Object{Bucket: "ranged", Key: "tokens.bin"}, tokens))

	cfg := TokenConfig{Format: TokensUint16, SeqLen: 1024}
	ls, err := NewTokenSource(local, cfg)
	require.NoError(t, err)
	defer ls.Close()
	want := readAll(t, ls)
	before := objstore.Stats.BytesFetched.Load()
	rs, err := NewTokenSource("s3://ranged/tokens.bin", cfg)
	require.NoError(t, err)
	defer rs.Close()
	require.True(t, remoteSource(rs))
	e := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	it, err := NewIterator(e, rs, IteratorOptions{BatchSize: 4, Shuffle: true, Seed: 7, Prefetch: 2})
	require.NoError(t, err)
	for range 2 {
		b, err := it.Next(ctx, 0)
		require.NoError(t, err)
		for row, i := range b.Indices {
			x := b.Fields[0].Host[row*2048 : (row+1)*2048]
			require.Equal(t, want[i][:2048], x, "sample %d", i)
		}
		require.NoError(t, b.Release(0))
	}
	require.NoError(t, it.Close())
	fetched := objstore.Stats.BytesFetched.Load() - before
	require.Positive(t, fetched)
	require.Less(t, fetched, uint64(len(tokens))/2, "a few batches fetch a fraction of the object")

	// Direct reads fetch what they need; after every sample the object is complete.
	got := readAll(t, rs)
	require.Equal(t, want, got)
	require.LessOrEqual(t, objstore.Stats.BytesFetched.Load()-before, uint64(len(tokens))+uint64(objstore.SparseBlock)*2,
		"each block once (two runs may straddle)")
	req := objstore.Stats.Requests.Load()
	again, err := NewTokenSource("s3://ranged/tokens.bin", cfg)
	require.NoError(t, err)
	defer again.Close()
	require.False(t, remoteSource(again), "the complete object is mapped from the cache")
	require.Equal(t, want, readAll(t, again))
	require.Equal(t, req, objstore.Stats.Requests.Load())
}

// TestStoreDownMidEpoch: with the store stopped in the middle of an epoch read in ranges, the next batch
// fails within the configured deadline with an I/O error naming the object (no hang); once the store is
// back, the iterator goes on and its batches are right.
func TestStoreDownMidEpoch(t *testing.T) {
	srv := testutil.StartS3Server(t)
	t.Setenv("FERRY_CACHE_DIR", t.TempDir())
	t.Setenv("FERRY_S3_RANGED_BYTES", "1")
	t.Setenv("FERRY_S3_TIMEOUT", "3")
	t.Setenv("FERRY_S3_ATTEMPTS", "2")
	ctx := context.Background()
	r := srcRand(t)
	tokens := srcRandBytes(r, 16<<20)
	put := func() {
		cl := s3Bucket(t, "flaky")
		require.NoError(t, cl.Put(ctx, objstore.Object{Bucket: "flaky", Key: "tokens.bin"}, tokens))
	}
	put()
	cfg := TokenConfig{Format: TokensUint16, SeqLen: 256}
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "t.bin"), tokens, 0o644))
	ls, err := NewTokenSource(filepath.Join(dir, "t.bin"), cfg)
	require.NoError(t, err)
	defer ls.Close()
	want := readAll(t, ls)
	src, err := NewTokenSource("s3://flaky/tokens.bin", cfg)
	require.NoError(t, err)
	defer src.Close()
	e := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	// Prefetch 2: the producer runs at most a batch or two ahead, so later batches fetch after the stop.
	it, err := NewIterator(e, src, IteratorOptions{BatchSize: 2, Shuffle: true, Seed: 3, Prefetch: 2})
	require.NoError(t, err)
	defer it.Close()
	check := func(b *Batch) {
		for row, i := range b.Indices {
			require.Equal(t, want[i][:512], b.Fields[0].Host[row*512:(row+1)*512], "sample %d", i)
		}
		require.NoError(t, b.Release(0))
	}
	b, err := it.Next(ctx, 0)
	require.NoError(t, err)
	check(b)

	srv.Stop()
	start := time.Now()
	var failed error
	for k := 0; k < 40 && failed == nil; k++ {
		b, err := it.Next(ctx, 0)
		if err != nil {
			failed = err
			break
		}
		check(b) // batches fetched before the stop are still right
	}
	require.Error(t, failed, "a batch whose bytes could not be fetched fails")
	require.ErrorIs(t, failed, engine.ErrIO)
	require.Contains(t, failed.Error(), "s3://flaky/tokens.bin")
	require.Less(t, time.Since(start), 60*time.Second)

	srv.Start()
	put() // a restarted server has lost its buckets: the same bytes again, so the same ETag
	// The batches assigned while the store was down (at most the ring's depth) fail too; then it goes on.
	good, bad := 0, 0
	for good < 5 {
		b, err := it.Next(ctx, 0)
		if err != nil {
			require.ErrorIs(t, err, engine.ErrIO)
			bad++
			require.LessOrEqual(t, bad, 2, "only batches assigned during the outage fail: %v", err)
			continue
		}
		check(b)
		good++
	}
}

// TestImageFolderFromS3: an image folder tree uploaded under a prefix reads as the local tree does (the same
// classes, labels, order and bytes, nested folders and non-images included), and a second epoch makes no
// request.
func TestImageFolderFromS3(t *testing.T) {
	testutil.StartS3(t)
	t.Setenv("FERRY_CACHE_DIR", t.TempDir())
	ctx := context.Background()
	cl := s3Bucket(t, "images")
	r := srcRand(t)
	root := t.TempDir()
	files := []string{"cat/b.jpg", "cat/a/z.png", "cat/a/y.JPEG", "cat/notes.txt", "dog/x.webp", "dog/sub/deeper/w.jpg",
		"ant/only.bmp", "top-level.jpg"}
	for _, f := range files {
		p := filepath.Join(root, f)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		b := srcRandBytes(r, 50+r.IntN(200))
		require.NoError(t, os.WriteFile(p, b, 0o644))
		require.NoError(t, cl.Put(ctx, objstore.Object{Bucket: "images", Key: "train/" + f}, b))
	}
	local, err := NewImageFolderSource(root, ImageFolderConfig{MaxBytes: 1024})
	require.NoError(t, err)
	defer local.Close()
	remote, err := NewImageFolderSource("s3://images/train", ImageFolderConfig{MaxBytes: 1024})
	require.NoError(t, err)
	defer remote.Close()
	require.Equal(t, local.Classes(), remote.Classes())
	require.Equal(t, local.Len(), remote.Len())
	for i := 0; i < local.Len(); i++ {
		rel, err := filepath.Rel(root, local.Path(i))
		require.NoError(t, err)
		require.Equal(t, "s3://images/train/"+rel, remote.SampleName(i), "sample %d in the same order", i)
		require.Equal(t, local.Label(i), remote.Label(i))
		require.Equal(t, local.SampleLen(i), remote.SampleLen(i))
	}
	require.Equal(t, readAll(t, local), readAll(t, remote))
	req := objstore.Stats.Requests.Load()
	require.Equal(t, readAll(t, local), readAll(t, remote))
	require.Equal(t, req, objstore.Stats.Requests.Load(), "a warm epoch makes no request")

	_, err = NewImageFolderSource("s3://images/nothing-here", ImageFolderConfig{})
	require.ErrorIs(t, err, engine.ErrFormat)
	require.Contains(t, err.Error(), "no class folder")
}

// s3Bucket makes a client of the test's S3 server (testutil.StartS3) and a bucket in it.
func s3Bucket(t testing.TB, bucket string) *objstore.Client {
	t.Helper()
	cl, err := objstore.New(context.Background(), objstore.Options{})
	require.NoError(t, err)
	require.NoError(t, cl.CreateBucket(context.Background(), bucket))
	return cl
}
