package objstore

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ferry-ml/ferry/engine/internal/testutil"
)

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestParse(t *testing.T) {
	o, err := Parse("s3://bucket/a/b.bin")
	require.NoError(t, err)
	require.Equal(t, Object{Bucket: "bucket", Key: "a/b.bin"}, o)
	require.Equal(t, "s3://bucket/a/b.bin", o.String())
	for _, bad := range []string{"s3://", "s3://bucket", "s3://bucket/", "s3:///key", "/local/path", "S3://b/k"} {
		_, err := Parse(bad)
		require.Error(t, err, bad)
	}
}

// TestFetchFromServer: objects fetched from a real S3 server through the cache equal what was uploaded (a
// multi-part object too), a second fetch reads nothing from the store, a changed object is fetched again,
// and a missing key or bucket, a stale ETag and a store that is down each give an error naming the object.
func TestFetchFromServer(t *testing.T) {
	endpoint := testutil.StartS3(t)
	ctx := context.Background()
	cl := newBucket(t, "data")
	big := randomBytes(2*partSize+12345, 1)
	small := randomBytes(1000, 2)
	require.NoError(t, cl.Put(ctx, Object{"data", "corpus/big.bin"}, big))
	require.NoError(t, cl.Put(ctx, Object{"data", "small.bin"}, small))

	cache := &Cache{Dir: t.TempDir()}
	before := Stats.BytesFetched.Load()
	path, err := cache.Fetch(ctx, cl, Object{"data", "corpus/big.bin"})
	require.NoError(t, err)
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.True(t, bytes.Equal(big, got), "the fetched copy equals the object")
	require.Equal(t, uint64(len(big)), Stats.BytesFetched.Load()-before)

	hits := Stats.Hits.Load()
	again, err := cache.Fetch(ctx, cl, Object{"data", "corpus/big.bin"})
	require.NoError(t, err)
	require.Equal(t, path, again)
	require.Equal(t, hits+1, Stats.Hits.Load())
	require.Equal(t, uint64(len(big)), Stats.BytesFetched.Load()-before, "a warm fetch reads nothing")

	// A changed object has another ETag: another entry, with the new bytes.
	changed := randomBytes(1000, 3)
	require.NoError(t, cl.Put(ctx, Object{"data", "small.bin"}, small))
	p1, err := cache.Fetch(ctx, cl, Object{"data", "small.bin"})
	require.NoError(t, err)
	info, err := cl.Head(ctx, Object{"data", "small.bin"})
	require.NoError(t, err)
	require.NoError(t, cl.Put(ctx, Object{"data", "small.bin"}, changed))
	p2, err := cache.Fetch(ctx, cl, Object{"data", "small.bin"})
	require.NoError(t, err)
	require.NotEqual(t, p1, p2)
	b2, err := os.ReadFile(p2)
	require.NoError(t, err)
	require.Equal(t, changed, b2)
	// A read under the old ETag is refused: the object changed.
	err = cl.ReadRange(ctx, Object{"data", "small.bin"}, info.ETag, 0, make([]byte, 10))
	var e *Error
	require.ErrorAs(t, err, &e)
	require.True(t, e.Changed(), "%v", err)
	require.Contains(t, err.Error(), "s3://data/small.bin (bytes=0-9)")

	for _, obj := range []Object{{"data", "missing.bin"}, {"nobucket", "x"}} {
		_, err := cache.Fetch(ctx, cl, obj)
		require.ErrorAs(t, err, &e)
		require.True(t, e.NotFound(), "%v", err)
		require.Contains(t, err.Error(), obj.String())
	}

	// A limit keeps the folder under it, the entry just fetched first.
	limited := &Cache{Dir: cache.Dir, Limit: int64(len(big)) + 100}
	_, err = limited.Fetch(ctx, cl, Object{"data", "small.bin"})
	require.NoError(t, err)
	var total int64
	ents, _ := os.ReadDir(cache.Dir)
	for _, en := range ents {
		if fi, err := en.Info(); err == nil && fi.Mode().IsRegular() && filepath.Ext(en.Name()) != ".lock" {
			total += fi.Size()
		}
	}
	require.LessOrEqual(t, total, limited.Limit)

	// A store that does not answer: an error within the deadline, naming the object, no hang.
	down, err := New(ctx, Options{Endpoint: "http://127.0.0.1:1", Deadline: 3 * time.Second, Attempts: 3})
	require.NoError(t, err)
	start := time.Now()
	_, err = (&Cache{Dir: t.TempDir()}).Fetch(ctx, down, Object{"data", "small.bin"})
	require.Error(t, err)
	require.Contains(t, err.Error(), "s3://data/small.bin")
	require.Less(t, time.Since(start), 20*time.Second)
	require.False(t, errors.Is(err, context.Canceled))
	_ = endpoint
}

// flakyProxy forwards to the server, answering the first fail requests with status instead.
type flakyProxy struct {
	target string
	status int
	fail   atomic.Int64
	seen   atomic.Int64
}

func (p *flakyProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.seen.Add(1)
	if p.fail.Add(-1) >= 0 {
		http.Error(w, "injected", p.status)
		return
	}
	u, _ := url.Parse(p.target)
	httputil.NewSingleHostReverseProxy(u).ServeHTTP(w, r)
}

// TestFetchThroughFaults: 503s and 500s from the store are retried with backoff and the fetch completes
// with the right bytes; a store that keeps failing fails the fetch with the status, within the deadline.
func TestFetchThroughFaults(t *testing.T) {
	endpoint := testutil.StartS3(t)
	ctx := context.Background()
	direct := newBucket(t, "faults")
	want := randomBytes(partSize+777, 4)
	require.NoError(t, direct.Put(ctx, Object{"faults", "x.bin"}, want))

	for _, status := range []int{http.StatusServiceUnavailable, http.StatusInternalServerError} {
		retries := Stats.Retries.Load()
		DrainLatencies(func(float64) {})
		p := &flakyProxy{target: endpoint, status: status}
		p.fail.Store(3)
		srv := httptest.NewServer(p)
		cl, err := New(ctx, Options{Endpoint: srv.URL})
		require.NoError(t, err)
		path, err := (&Cache{Dir: t.TempDir()}).Fetch(ctx, cl, Object{"faults", "x.bin"})
		require.NoError(t, err, "status %d", status)
		got, err := os.ReadFile(path)
		require.NoError(t, err)
		require.True(t, bytes.Equal(want, got))
		require.Greater(t, p.seen.Load(), int64(3), "the failed requests were retried")
		require.GreaterOrEqual(t, Stats.Retries.Load()-retries, uint64(3), "and counted")
		n := 0
		DrainLatencies(func(s float64) {
			require.Positive(t, s)
			n++
		})
		require.Equal(t, 2, n, "one duration per ranged GET (two parts)")
		srv.Close()
	}

	p := &flakyProxy{target: endpoint, status: http.StatusServiceUnavailable}
	p.fail.Store(1 << 40)
	srv := httptest.NewServer(p)
	defer srv.Close()
	cl, err := New(ctx, Options{Endpoint: srv.URL, Deadline: 5 * time.Second, Attempts: 4})
	require.NoError(t, err)
	start := time.Now()
	_, err = (&Cache{Dir: t.TempDir()}).Fetch(ctx, cl, Object{"faults", "x.bin"})
	var e *Error
	require.ErrorAs(t, err, &e)
	require.Equal(t, http.StatusServiceUnavailable, e.Status, "%v", err)
	require.Contains(t, err.Error(), "s3://faults/x.bin")
	require.Contains(t, err.Error(), "HTTP 503")
	require.Less(t, time.Since(start), 30*time.Second)
}

// TestConcurrentFetchesDownloadOnce: openers that fetch one object at once (ranks of a node: here through
// separate locks on the entry, as separate processes take them) download it once and all see it whole.
func TestConcurrentFetchesDownloadOnce(t *testing.T) {
	testutil.StartS3(t)
	ctx := context.Background()
	cl := newBucket(t, "shared")
	want := randomBytes(3*partSize+5, 5)
	require.NoError(t, cl.Put(ctx, Object{"shared", "x.bin"}, want))
	dir := t.TempDir()
	before := Stats.Requests.Load()
	paths := make([]string, 6)
	errs := make([]error, 6)
	var wg sync.WaitGroup
	for k := range paths {
		wg.Add(1)
		go func() {
			defer wg.Done()
			paths[k], errs[k] = (&Cache{Dir: dir}).Fetch(ctx, cl, Object{"shared", "x.bin"})
		}()
	}
	wg.Wait()
	for k := range paths {
		require.NoError(t, errs[k])
		require.Equal(t, paths[0], paths[k])
	}
	got, err := os.ReadFile(paths[0])
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got))
	require.Equal(t, uint64(4), Stats.Requests.Load()-before, "one download: 4 parts")
}

// TestSparseSharedBetweenReaders: two readers of one object in ranges (two ranks of a node: separate
// states, one cache folder) share the fetched blocks: what one fetched, the other reads without a request.
func TestSparseSharedBetweenReaders(t *testing.T) {
	testutil.StartS3(t)
	ctx := context.Background()
	cl := newBucket(t, "sparse")
	want := randomBytes(6*SparseBlock+100, 6)
	require.NoError(t, cl.Put(ctx, Object{"sparse", "x.bin"}, want))
	cache := &Cache{Dir: t.TempDir()}
	a, pathA, err := cache.OpenSparse(ctx, cl, Object{"sparse", "x.bin"})
	require.NoError(t, err)
	defer a.Close()
	b, pathB, err := cache.OpenSparse(ctx, cl, Object{"sparse", "x.bin"})
	require.NoError(t, err)
	defer b.Close()
	require.Equal(t, pathA, pathB)

	before := Stats.Requests.Load()
	require.NoError(t, a.Ensure(ctx, [2]int64{SparseBlock + 10, 2 * SparseBlock}, [2]int64{5 * SparseBlock, 10}))
	fetched := Stats.Requests.Load() - before
	require.Equal(t, uint64(2), fetched, "blocks 1-3 in one GET, block 5 in another")
	require.NoError(t, b.Ensure(ctx, [2]int64{2 * SparseBlock, 100}, [2]int64{5*SparseBlock + 7, 3}))
	require.Equal(t, fetched, Stats.Requests.Load()-before, "the second reader found the blocks fetched")

	// Every block, then the partial file is the object's entry: the next open is a whole copy.
	require.NoError(t, b.Ensure(ctx, [2]int64{0, int64(len(want))}))
	got, err := os.ReadFile(pathB)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got))
	c, whole, err := cache.OpenSparse(ctx, cl, Object{"sparse", "x.bin"})
	require.NoError(t, err)
	require.Nil(t, c, "complete: no partial file")
	got, err = os.ReadFile(whole)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got))
}

// TestFullCacheDisk: a cache folder on a filesystem too small for the object gives an error that names the
// folder and the object, whole or in ranges (a 2 MiB tmpfs, where this machine lets the test mount one).
func TestFullCacheDisk(t *testing.T) {
	testutil.StartS3(t)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=2m"); err != nil {
		t.Skipf("cannot mount a small filesystem for the cache here: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, 0) })
	ctx := context.Background()
	cl := newBucket(t, "full")
	require.NoError(t, cl.Put(ctx, Object{"full", "big.bin"}, randomBytes(4*SparseBlock, 7)))
	cache := &Cache{Dir: dir}
	_, err := cache.Fetch(ctx, cl, Object{"full", "big.bin"})
	require.Error(t, err)
	require.Contains(t, err.Error(), dir)
	require.Contains(t, err.Error(), "s3://full/big.bin")
	require.Contains(t, err.Error(), "no room")

	s, _, err := cache.OpenSparse(ctx, cl, Object{"full", "big.bin"})
	require.NoError(t, err, "a partial file takes no room until its blocks come")
	defer s.Close()
	err = s.Ensure(ctx, [2]int64{0, 4 * SparseBlock})
	require.Error(t, err)
	require.Contains(t, err.Error(), "is full")
	require.Contains(t, err.Error(), dir)
	require.Contains(t, err.Error(), "s3://full/big.bin")
}

// newBucket makes a client of the test's S3 server (testutil.StartS3) and a bucket in it.
func newBucket(t *testing.T, bucket string) *Client {
	t.Helper()
	cl, err := New(context.Background(), Options{})
	require.NoError(t, err)
	require.NoError(t, cl.CreateBucket(context.Background(), bucket))
	return cl
}
