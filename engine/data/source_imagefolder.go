package data

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/objstore"
)

// ImageFolderExtensions are torchvision's IMG_EXTENSIONS: the files an ImageFolder takes.
var ImageFolderExtensions = []string{".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}

// ImageFolderConfig configures an ImageFolderSource.
type ImageFolderConfig struct {
	// MaxBytes is the image field's length: the largest file served; DefaultMaxImageBytes when 0. A larger
	// file is an error naming it.
	MaxBytes int
	// AllowEmpty accepts class folders without an image (torchvision's allow_empty).
	AllowEmpty bool
}

// ImageFolderSource serves a folder per class as torchvision's ImageFolder does: the class folders of root,
// sorted, are the labels 0, 1, ...; each class's files are found by walking its folder (following links),
// the folders in sorted order and each folder's files sorted, keeping the names that end, in any case, in
// one of ImageFolderExtensions. Sample i is torchvision's sample i for the same root. Fields: "image", the
// file's bytes (uint8 [MaxBytes], variable length: Ragged), and "label" (int64). Files are read when their
// samples are; their sizes are found then too.
type ImageFolderSource struct {
	root    string
	cfg     ImageFolderConfig
	classes []string
	paths   []string
	labels  []int32
	sizes   []atomic.Int64  // -1 until known
	remote  []objstore.Info // per sample, for a root in an object store (source_imagefolder_s3.go); else nil
	fields  []Field
	guard   closeGuard
}

var (
	_ Source = (*ImageFolderSource)(nil)
	_ Ragged = (*ImageFolderSource)(nil)
	_ Named  = (*ImageFolderSource)(nil)
)

// NewImageFolderSource lists root. A root without class folders, and (unless AllowEmpty) a class without
// an image, are errors naming them, as in torchvision.
func NewImageFolderSource(root string, cfg ImageFolderConfig) (*ImageFolderSource, error) {
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = DefaultMaxImageBytes
	}
	if cfg.MaxBytes < 0 {
		return nil, fmt.Errorf("%w: image folder %s: max bytes %d is negative", engine.ErrInvalidArgument, root, cfg.MaxBytes)
	}
	s := &ImageFolderSource{root: root, cfg: cfg}
	var empty []string
	if objstore.IsURL(root) {
		if err := s.listObjects(); err != nil {
			return nil, err
		}
		if len(s.classes) == 0 {
			return nil, fmt.Errorf("%w: image folder %s has no class folder", engine.ErrFormat, root)
		}
		for c, class := range s.classes {
			if !slices.Contains(s.labels, int32(c)) {
				empty = append(empty, class)
			}
		}
	} else {
		entries, err := os.ReadDir(root)
		if err != nil {
			return nil, fmt.Errorf("%w: image folder: %w", engine.ErrIO, err)
		}
		for _, e := range entries {
			if isDirFollow(filepath.Join(root, e.Name()), e) {
				s.classes = append(s.classes, e.Name())
			}
		}
		sort.Strings(s.classes)
		if len(s.classes) == 0 {
			return nil, fmt.Errorf("%w: image folder %s has no class folder", engine.ErrFormat, root)
		}
		for c, class := range s.classes {
			before := len(s.paths)
			if err := s.walkClass(filepath.Join(root, class), int32(c)); err != nil {
				return nil, err
			}
			if len(s.paths) == before {
				empty = append(empty, class)
			}
		}
	}
	if len(empty) > 0 && !cfg.AllowEmpty {
		return nil, fmt.Errorf("%w: image folder %s: no image (%s) in the class folders %s",
			engine.ErrFormat, root, strings.Join(ImageFolderExtensions, " "), strings.Join(empty, ", "))
	}
	if len(s.paths) == 0 {
		return nil, fmt.Errorf("%w: image folder %s holds no image", engine.ErrFormat, root)
	}
	s.sizes = make([]atomic.Int64, len(s.paths))
	for i := range s.sizes {
		s.sizes[i].Store(-1)
		if s.remote != nil {
			s.sizes[i].Store(s.remote[i].Size)
		}
	}
	s.fields = []Field{{Name: "image", DType: Uint8, Shape: []int{cfg.MaxBytes}}, {Name: "label", DType: Int64}}
	if err := s.fields[0].Validate(); err != nil {
		return nil, fmt.Errorf("image folder %s: %w", root, err)
	}
	return s, nil
}

// isDirFollow is os.DirEntry.is_dir() as Python's scandir has it: a link counts by what it points to.
func isDirFollow(path string, e os.DirEntry) bool {
	if e.IsDir() {
		return true
	}
	if e.Type()&os.ModeSymlink == 0 {
		return false
	}
	st, err := os.Stat(path)
	return err == nil && st.IsDir()
}

// walkClass is torchvision's `for root, _, fnames in sorted(os.walk(dir, followlinks=True))`: every
// folder under dir (links followed), visited in sorted path order, each one's non-folder entries sorted.
// A link back to a folder it lies in is not followed (os.walk would recurse until the path is too long).
func (s *ImageFolderSource) walkClass(dir string, label int32) error {
	type folder struct {
		path  string
		files []string
	}
	var folders []folder
	open := map[string]bool{} // the real paths of the folders being walked
	var walk func(path string) error
	walk = func(path string) error {
		resolved, err := filepath.EvalSymlinks(path)
		if err != nil {
			return nil // os.walk skips what it cannot list
		}
		if open[resolved] {
			return nil
		}
		open[resolved] = true
		defer delete(open, resolved)
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil
		}
		f := folder{path: path}
		var subdirs []string
		for _, e := range entries {
			p := filepath.Join(path, e.Name())
			if isDirFollow(p, e) {
				subdirs = append(subdirs, p)
			} else {
				f.files = append(f.files, e.Name())
			}
		}
		folders = append(folders, f)
		for _, d := range subdirs {
			if err := walk(d); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(dir); err != nil {
		return err
	}
	sort.Slice(folders, func(a, b int) bool { return folders[a].path < folders[b].path })
	for _, f := range folders {
		sort.Strings(f.files)
		for _, name := range f.files {
			if hasImageExtension(name) {
				s.paths = append(s.paths, filepath.Join(f.path, name))
				s.labels = append(s.labels, label)
			}
		}
	}
	return nil
}

func hasImageExtension(name string) bool {
	lower := strings.ToLower(name)
	for _, ext := range ImageFolderExtensions {
		if strings.HasSuffix(lower, ext) {
			return true
		}
	}
	return false
}

// Len is the number of images.
func (s *ImageFolderSource) Len() int { return len(s.paths) }

// Fields is the image and the label; do not modify it.
func (s *ImageFolderSource) Fields() []Field { return s.fields }

// Classes is the class folder names, in label order.
func (s *ImageFolderSource) Classes() []string { return append([]string(nil), s.classes...) }

// Path is sample i's file; empty out of range.
func (s *ImageFolderSource) Path(i int) string {
	if i < 0 || i >= len(s.paths) {
		return ""
	}
	return s.paths[i]
}

// SampleName is sample i's file, for messages.
func (s *ImageFolderSource) SampleName(i int) string { return s.Path(i) }

// Label is sample i's class; -1 out of range.
func (s *ImageFolderSource) Label(i int) int {
	if i < 0 || i >= len(s.paths) {
		return -1
	}
	return int(s.labels[i])
}

// RaggedField is 0, the image.
func (s *ImageFolderSource) RaggedField() int { return 0 }

// SampleLen is sample i's file size, at most MaxBytes (found with a stat the first time); 0 when the file
// cannot be read (ReadSample then says why), -1 out of range.
func (s *ImageFolderSource) SampleLen(i int) int {
	if i < 0 || i >= len(s.paths) {
		return -1
	}
	n := s.sizes[i].Load()
	if n < 0 {
		st, err := os.Stat(s.paths[i])
		if err != nil {
			return 0
		}
		n = st.Size()
		s.sizes[i].Store(n)
	}
	return int(min(n, int64(s.cfg.MaxBytes)))
}

// ReadSample reads sample i's file into the image field (zeros after it) and its label. It is safe for
// concurrent use. A file that cannot be read, or is larger than MaxBytes, is an error naming it.
func (s *ImageFolderSource) ReadSample(i int, dst [][]byte) error {
	if err := checkRead(s, len(s.paths), s.fields, i, dst); err != nil {
		return err
	}
	if !s.guard.enter() {
		return errClosedSource(s, i)
	}
	defer s.guard.exit()
	path, local := s.paths[i], s.paths[i]
	if s.remote != nil {
		var err error
		if local, err = s.fetchImage(i); err != nil {
			return fmt.Errorf("%w: image folder sample %d: %w", engine.ErrIO, i, err)
		}
	}
	f, err := os.Open(local)
	if err != nil {
		return fmt.Errorf("%w: image folder sample %d: %w", engine.ErrIO, i, err)
	}
	defer func() { _ = f.Close() }()
	n, err := io.ReadFull(f, dst[0])
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
	case err != nil:
		return fmt.Errorf("%w: image folder sample %d (%s): %w", engine.ErrIO, i, path, err)
	default:
		var one [1]byte
		if m, _ := f.Read(one[:]); m > 0 {
			st, _ := f.Stat()
			size := int64(-1)
			if st != nil {
				size = st.Size()
			}
			return fmt.Errorf("%w: %s: the file is %d bytes, more than the largest served (%d; raise max bytes)",
				engine.ErrLimit, path, size, s.cfg.MaxBytes)
		}
	}
	s.sizes[i].Store(int64(n))
	clear(dst[0][n:])
	binary.LittleEndian.PutUint64(dst[1], uint64(int64(s.labels[i])))
	return nil
}

// Close marks the source closed; reads in flight finish first.
func (s *ImageFolderSource) Close() error { return s.guard.close(s, nil) }

func (s *ImageFolderSource) String() string {
	return fmt.Sprintf("image folder(%s, %d classes, %d images)", s.root, len(s.classes), len(s.paths))
}
