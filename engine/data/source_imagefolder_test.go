package data

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/enginetest"
)

func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(root, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	}
}

// TestImageFolderOrderIsTorchvisions checks torchvision's rules: sorted class folders, each walked with
// its folders in sorted path order and their files sorted, only image extensions (any case), links
// followed.
func TestImageFolderOrderIsTorchvisions(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, map[string]string{
		"dog/b.jpg":          "dog b",
		"dog/a.JPEG":         "dog a",
		"dog/notes.txt":      "not an image",
		"dog/z/inner.png":    "dog z inner",
		"dog/y.webp":         "dog y",
		"cat/x.tif":          "cat x",
		"cat/sub/b.bmp":      "cat sub b",
		"cat/sub-2/a.pgm":    "cat sub-2 a",
		"cat/sub/a.ppm":      "cat sub a",
		"ant/only.jpg":       "ant only",
		"elsewhere/l.jpg":    "linked",
		"top-level-file.jpg": "not in a class",
	})
	require.NoError(t, os.Symlink(filepath.Join(root, "elsewhere"), filepath.Join(root, "dog", "link")))
	require.NoError(t, os.Symlink(filepath.Join(root, "dog"), filepath.Join(root, "dog", "z", "loop")))
	s, err := NewImageFolderSource(root, ImageFolderConfig{MaxBytes: 64})
	require.NoError(t, err)
	defer s.Close()
	require.Equal(t, []string{"ant", "cat", "dog", "elsewhere"}, s.Classes())
	var got []string
	var labels []int
	for i := 0; i < s.Len(); i++ {
		rel, err := filepath.Rel(root, s.Path(i))
		require.NoError(t, err)
		got, labels = append(got, rel), append(labels, s.Label(i))
	}
	require.Equal(t, []string{
		"ant/only.jpg",
		"cat/x.tif", "cat/sub/a.ppm", "cat/sub/b.bmp", "cat/sub-2/a.pgm",
		"dog/a.JPEG", "dog/b.jpg", "dog/y.webp", "dog/link/l.jpg", "dog/z/inner.png",
		"elsewhere/l.jpg",
	}, got)
	require.Equal(t, []int{0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3}, labels)

	// Through the CPU iterator: each sample's bytes and label.
	e := enginetest.OpenCPU(t, engine.WithSampleInterval(0))
	it, err := NewIterator(e, s, IteratorOptions{BatchSize: 4, Shuffle: true, Seed: 2})
	require.NoError(t, err)
	defer it.Close()
	n := 0
	for {
		b, err := it.Next(context.Background(), 0)
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		lab := int64s(b.Fields[1].Host)
		for row, i := range b.Indices {
			want, err := os.ReadFile(s.Path(i))
			require.NoError(t, err)
			img := b.Fields[0].Host[row*64 : (row+1)*64]
			require.Equal(t, want, img[:len(want)])
			require.Equal(t, make([]byte, 64-len(want)), img[len(want):])
			require.Equal(t, int64(s.Label(i)), lab[row])
			require.Equal(t, len(want), s.SampleLen(i))
			n++
		}
		require.NoError(t, b.Release(0))
	}
	require.Equal(t, s.Len(), n)
}

func TestImageFolderRefusals(t *testing.T) {
	root := t.TempDir()
	_, err := NewImageFolderSource(root, ImageFolderConfig{})
	require.ErrorIs(t, err, engine.ErrFormat)
	require.Contains(t, err.Error(), "no class folder")

	writeTree(t, root, map[string]string{"a/x.jpg": "x", "b/readme.txt": "no image", "c/big.png": "0123456789"})
	_, err = NewImageFolderSource(root, ImageFolderConfig{})
	require.ErrorIs(t, err, engine.ErrFormat)
	require.Contains(t, err.Error(), "class folders b")

	s, err := NewImageFolderSource(root, ImageFolderConfig{AllowEmpty: true, MaxBytes: 4})
	require.NoError(t, err)
	require.Equal(t, 2, s.Len())
	require.Equal(t, []string{"a", "b", "c"}, s.Classes())
	require.Equal(t, 2, s.Label(1), "labels count the empty class")
	err = s.ReadSample(1, [][]byte{make([]byte, 4), make([]byte, 8)})
	require.ErrorIs(t, err, engine.ErrLimit)
	require.Contains(t, err.Error(), "big.png")
	require.NoError(t, os.Remove(filepath.Join(root, "a", "x.jpg")))
	err = s.ReadSample(0, [][]byte{make([]byte, 4), make([]byte, 8)})
	require.ErrorIs(t, err, engine.ErrIO)
	require.Contains(t, err.Error(), "x.jpg")
	require.NoError(t, s.Close())
	require.ErrorIs(t, s.ReadSample(0, [][]byte{make([]byte, 4), make([]byte, 8)}), engine.ErrClosed)

	_, err = NewImageFolderSource(filepath.Join(root, "missing"), ImageFolderConfig{})
	require.ErrorIs(t, err, engine.ErrIO)
}
