package data

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/enginetest"
)

// tarMember is one member a test writes into a shard.
type tarMember struct {
	name string
	data []byte
	kind byte // tar.TypeReg when 0
}

func writeShard(t testing.TB, path string, members []tarMember) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, tarBytes(t, members), 0o644))
}

// tarBytes is a tar file of the members, as archive/tar writes it.
func tarBytes(t testing.TB, members []tarMember) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range members {
		kind := m.kind
		if kind == 0 {
			kind = tar.TypeReg
		}
		hdr := &tar.Header{Name: m.name, Mode: 0o644, Size: int64(len(m.data)), Typeflag: kind, ModTime: time.Unix(1700000000, 0)}
		if kind != tar.TypeReg {
			hdr.Size = 0
		}
		require.NoError(t, tw.WriteHeader(hdr))
		if kind == tar.TypeReg {
			_, err := tw.Write(m.data)
			require.NoError(t, err)
		}
	}
	require.NoError(t, tw.Close())
	return buf.Bytes()
}

// shardSamples writes n samples keyed prefix-00000… with a random "jpg" payload and a "cls" label, and
// returns the payloads and labels.
func shardSamples(t testing.TB, r *rand.Rand, path, prefix string, n int) ([][]byte, []int64) {
	var members []tarMember
	var payloads [][]byte
	var labels []int64
	for i := range n {
		key := fmt.Sprintf("%s%05d", prefix, i)
		p := make([]byte, 1+r.IntN(3000))
		for k := range p {
			p[k] = byte(r.Uint32())
		}
		label := int64(r.IntN(1000))
		members = append(members, tarMember{name: key + ".jpg", data: p}, tarMember{name: key + ".cls", data: []byte(fmt.Sprintf("%d\n", label))},
			tarMember{name: key + ".json", data: []byte(`{"x": 1}`)})
		payloads, labels = append(payloads, p), append(labels, label)
	}
	writeShard(t, path, members)
	return payloads, labels
}

func TestWebDatasetGroupsMembersAsWebdatasetDoes(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "s.tar")
	writeShard(t, p, []tarMember{
		{name: "__meta__", data: []byte("skipped")},
		{name: "__meta__/info.txt", data: []byte("skipped")},
		{name: "README", data: []byte("no extension: skipped")},
		{name: "d", kind: tar.TypeDir},
		{name: "d/a.PNG", data: []byte("png of a")},
		{name: "d/a.jpg", data: []byte("jpg of a")}, // jpg comes before png in the image keys
		{name: "d/a.cls", data: []byte(" 7 \n")},
		{name: "d/b.seg.png", data: []byte("not an image key")},
		{name: "d/b.png", data: []byte("png of b")},
		{name: "d/b.cls", data: []byte("-3")},
		{name: "link.jpg", kind: tar.TypeSymlink},
	})
	ms, err := indexShard(p, wdsKeys{image: []string{"jpg", "png"}, label: "cls"})
	require.NoError(t, err)
	require.Len(t, ms, 2)
	require.Equal(t, "d/a", ms[0].key)
	require.Equal(t, "jpg", ms[0].ext)
	require.Equal(t, int64(7), ms[0].label)
	require.Equal(t, "d/b", ms[1].key)
	require.Equal(t, "png", ms[1].ext)
	require.Equal(t, int64(-3), ms[1].label)
	data, err := os.ReadFile(p)
	require.NoError(t, err)
	require.Equal(t, "jpg of a", string(data[ms[0].offset:ms[0].offset+ms[0].size]))
	require.Equal(t, "png of b", string(data[ms[1].offset:ms[1].offset+ms[1].size]))

	for name, c := range map[string]struct {
		members []tarMember
		keys    wdsKeys
		want    string
	}{
		"duplicate extension": {[]tarMember{{name: "a.jpg", data: []byte("1")}, {name: "a.JPG", data: []byte("2")}},
			wdsKeys{image: []string{"jpg"}}, `sample "a" has two "jpg" members`},
		"no image": {[]tarMember{{name: "a.txt", data: []byte("1")}}, wdsKeys{image: []string{"jpg", "png"}},
			`sample "a" has no jpg or png member (it has txt)`},
		"no label": {[]tarMember{{name: "a.jpg", data: []byte("1")}}, wdsKeys{image: []string{"jpg"}, label: "cls"},
			`sample "a" has no cls member`},
		"bad label": {[]tarMember{{name: "a.jpg", data: []byte("1")}, {name: "a.cls", data: []byte("cat")}},
			wdsKeys{image: []string{"jpg"}, label: "cls"}, `holds "cat", not an integer`},
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "bad.tar")
			writeShard(t, p, c.members)
			_, err := indexShard(p, c.keys)
			require.ErrorIs(t, err, engine.ErrFormat)
			require.Contains(t, err.Error(), c.want)
			require.Contains(t, err.Error(), p)
		})
	}

	// A truncated shard, and bytes that are not a tar file.
	whole, err := os.ReadFile(p)
	require.NoError(t, err)
	for _, b := range [][]byte{whole[:len(whole)/2], whole[:700], bytes.Repeat([]byte("x"), 2000)} {
		q := filepath.Join(t.TempDir(), "t.tar")
		require.NoError(t, os.WriteFile(q, b, 0o644))
		_, err := indexShard(q, wdsKeys{image: []string{"jpg", "png"}, label: "cls"})
		require.ErrorIs(t, err, engine.ErrFormat, "%d bytes", len(b))
	}
}

func TestExpandBraces(t *testing.T) {
	for pattern, want := range map[string][]string{
		"a.tar":                  {"a.tar"},
		"train-{0000..0003}.tar": {"train-0000.tar", "train-0001.tar", "train-0002.tar", "train-0003.tar"},
		"s-{8..11}.tar":          {"s-8.tar", "s-9.tar", "s-10.tar", "s-11.tar"},
		"{a,b}/x-{1..2}.tar":     {"a/x-1.tar", "a/x-2.tar", "b/x-1.tar", "b/x-2.tar"},
		"{a,{b,c}d}.tar":         {"a.tar", "bd.tar", "cd.tar"},
	} {
		got, err := expandBraces(pattern)
		require.NoError(t, err, pattern)
		require.Equal(t, want, got, pattern)
	}
	for _, bad := range []string{"x-{1..", "x-{3..1}.tar", "x-{a..b}.tar"} {
		_, err := expandBraces(bad)
		require.ErrorIs(t, err, engine.ErrInvalidArgument, bad)
	}
}

// TestWebDatasetSource reads shards through the CPU iterator (shuffled, two ranks) and finds every
// sample's bytes and label once; the second open reads the cached indexes, a changed shard is indexed
// again.
func TestWebDatasetSource(t *testing.T) {
	r := srcRand(t)
	dir := t.TempDir()
	var payloads [][]byte
	var labels []int64
	for k := range 3 {
		p, l := shardSamples(t, r, filepath.Join(dir, fmt.Sprintf("train-%04d.tar", k)), fmt.Sprintf("s%d/", k), 40+k*7)
		payloads, labels = append(payloads, p...), append(labels, l...)
	}
	pattern := filepath.Join(dir, "train-{0000..0002}.tar")
	cfg := WebDatasetConfig{MaxBytes: 4096}
	src, err := NewWebDatasetSource([]string{pattern}, cfg)
	require.NoError(t, err)
	require.Equal(t, len(payloads), src.Len())
	require.Equal(t, 3, src.Shards())
	require.Zero(t, src.CachedShards())
	require.Empty(t, src.CacheNotes())
	require.Equal(t, []Field{{Name: "image", DType: Uint8, Shape: []int{4096}}, {Name: "label", DType: Int64}}, src.Fields())
	require.Equal(t, filepath.Join(dir, "train-0001.tar")+":s1/00002.jpg", src.SampleName(40+2))

	e := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	seen := map[int]int{}
	for rank := range 2 {
		it, err := NewIterator(e, src, IteratorOptions{BatchSize: 16, Shuffle: true, Seed: 4, Rank: rank, WorldSize: 2, Workers: 3})
		require.NoError(t, err)
		for {
			b, err := it.Next(context.Background(), 0)
			if errors.Is(err, io.EOF) {
				break
			}
			require.NoError(t, err)
			img, lab := b.Fields[0].Host, int64s(b.Fields[1].Host)
			for row, i := range b.Indices {
				seen[i]++
				want := append(append([]byte{}, payloads[i]...), make([]byte, 4096-len(payloads[i]))...)
				require.Equal(t, want, img[row*4096:(row+1)*4096], "sample %d", i)
				require.Equal(t, labels[i], lab[row])
				require.Equal(t, len(payloads[i]), src.SampleLen(i))
			}
			require.NoError(t, b.Release(0))
		}
		require.NoError(t, it.Close())
	}
	for i := range payloads {
		require.GreaterOrEqual(t, seen[i], 1, "sample %d", i)
	}
	require.NoError(t, src.Close())

	again, err := NewWebDatasetSource([]string{pattern}, cfg)
	require.NoError(t, err)
	require.Equal(t, 3, again.CachedShards())
	require.NoError(t, again.Close())

	// A rewritten shard (other size) is indexed again; a damaged cache file is rebuilt and said so.
	shardSamples(t, r, filepath.Join(dir, "train-0001.tar"), "s1/", 5)
	caches, err := filepath.Glob(filepath.Join(dir, "cache", "train-0000-*.wdsidx"))
	require.NoError(t, err)
	require.Len(t, caches, 1)
	require.NoError(t, os.WriteFile(caches[0], []byte("FERRYWDS garbage"), 0o644))
	third, err := NewWebDatasetSource([]string{pattern}, cfg)
	require.NoError(t, err)
	require.Equal(t, 1, third.CachedShards(), "only train-0002's index still fits")
	require.Equal(t, 40+5+54, third.Len())
	require.Len(t, third.CacheNotes(), 1)
	require.Contains(t, third.CacheNotes()[0], caches[0])
	require.NoError(t, third.Close())

	// An image over MaxBytes is refused by name, the others read.
	small, err := NewWebDatasetSource([]string{pattern}, WebDatasetConfig{MaxBytes: 16, NoCache: true})
	require.NoError(t, err)
	defer small.Close()
	for i := 0; i < small.Len(); i++ {
		dst := [][]byte{make([]byte, 16), make([]byte, 8)}
		err := small.ReadSample(i, dst)
		if n, _ := small.Label(i); small.SampleLen(i) == 16 && err != nil {
			require.ErrorIs(t, err, engine.ErrLimit)
			require.Contains(t, err.Error(), small.SampleName(i))
			_ = n
		}
	}
}

// TestWebDatasetShardFromTar reads a shard written by the tar program (with a member name over 100
// characters, which needs its long-name records), when there is one.
func TestWebDatasetShardFromTar(t *testing.T) {
	tarBin, err := exec.LookPath("tar")
	if err != nil {
		t.Skip("no tar program")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	long := strings.Repeat("d", 60) + "/" + strings.Repeat("k", 70)
	require.NoError(t, os.MkdirAll(filepath.Join(src, filepath.Dir(long)), 0o755))
	want := map[string][]byte{}
	for i, key := range []string{"a", "b", long} {
		payload := bytes.Repeat([]byte{byte(i + 1)}, 1000+i)
		want[key] = payload
		require.NoError(t, os.WriteFile(filepath.Join(src, key+".jpg"), payload, 0o644))
		require.NoError(t, os.WriteFile(filepath.Join(src, key+".cls"), []byte(fmt.Sprint(i)), 0o644))
	}
	shard := filepath.Join(dir, "shard.tar")
	out, err := exec.Command(tarBin, "-C", src, "--sort=name", "-cf", shard, ".").CombinedOutput()
	require.NoError(t, err, "%s", out)
	s, err := NewWebDatasetSource([]string{shard}, WebDatasetConfig{NoCache: true, MaxBytes: 2048})
	require.NoError(t, err)
	defer s.Close()
	require.Equal(t, 3, s.Len())
	for i := range 3 {
		name := s.SampleName(i)
		key := strings.TrimSuffix(strings.TrimPrefix(name[strings.Index(name, ":")+1:], "./"), ".jpg")
		dst := [][]byte{make([]byte, 2048), make([]byte, 8)}
		require.NoError(t, s.ReadSample(i, dst))
		require.Equal(t, want[key], dst[0][:len(want[key])], name)
	}
}

// FuzzWebDatasetIndex indexes arbitrary bytes as a shard: a refusal is an ErrFormat error, and an
// accepted index has every image inside the bytes, with keys in the order the members came.
func FuzzWebDatasetIndex(f *testing.F) {
	for _, members := range [][]tarMember{
		{{name: "a.jpg", data: []byte("jpeg")}, {name: "a.cls", data: []byte("3")}, {name: "b.png", data: []byte("png")}, {name: "b.cls", data: []byte("4")}},
		{{name: "__meta__", data: []byte("m")}, {name: "x/y.z.jpg", data: bytes.Repeat([]byte("q"), 700)}, {name: "x/y.z.cls", data: []byte("-1")}},
	} {
		f.Add(tarBytes(f, members))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ms, err := indexTar(bytes.NewReader(b), int64(len(b)), "fuzz.tar", wdsKeys{image: []string{"jpg", "png"}, label: "cls"})
		if err != nil {
			require.ErrorIs(t, err, engine.ErrFormat)
			return
		}
		for _, m := range ms {
			require.True(t, m.offset >= 0 && m.size >= 0 && m.offset+m.size <= int64(len(b)), "%+v", m)
		}
		for k := 1; k < len(ms); k++ {
			require.Greater(t, ms[k].offset, ms[k-1].offset)
		}
	})
}

// TestWebDatasetAndImageFolderAgree: the same JPEGs as an image folder and as a shard (members in the
// folder's sample order) give the same batches, crops and labels included.
func TestWebDatasetAndImageFolderAgree(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join("testdata", "images", "*.jpg"))
	require.NoError(t, err)
	root := t.TempDir()
	for k, p := range paths {
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		dir := filepath.Join(root, fmt.Sprintf("c%d", k%3))
		require.NoError(t, os.MkdirAll(dir, 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, filepath.Base(p)), b, 0o644))
	}
	folder, err := NewImageFolderSource(root, ImageFolderConfig{MaxBytes: 1 << 16})
	require.NoError(t, err)
	defer folder.Close()
	var members []tarMember
	for i := 0; i < folder.Len(); i++ {
		b, err := os.ReadFile(folder.Path(i))
		require.NoError(t, err)
		key := fmt.Sprintf("s%04d", i)
		members = append(members, tarMember{name: key + ".jpg", data: b}, tarMember{name: key + ".cls", data: []byte(fmt.Sprint(folder.Label(i)))})
	}
	shard := filepath.Join(t.TempDir(), "shard.tar")
	writeShard(t, shard, members)
	wds, err := NewWebDatasetSource([]string{shard}, WebDatasetConfig{MaxBytes: 1 << 16, NoCache: true})
	require.NoError(t, err)
	defer wds.Close()
	e := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	opts := IteratorOptions{BatchSize: 7, Shuffle: true, Seed: 3, Transforms: map[string]Transform{
		"image": RandomResizedCrop{Size: 32, Flip: 0.5, Mean: []float32{0.5}, Std: []float32{0.25}, DType: BFloat16}}}
	want := epochContents(t, e, folder, opts)
	got := epochContents(t, e, wds, opts)
	require.NotEmpty(t, want)
	require.Equal(t, want, got)
}
