package data

import (
	"context"
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/objstore"
)

// An image folder in an object store (s3://bucket/prefix): the listing of the prefix stands for the
// folder tree. The class folders are the first path components under the prefix; each class's images are
// ordered as torchvision's walk orders a folder tree (the folders' paths sorted, each folder's names
// sorted), so sample i is the same as for a local copy of the tree. Each image is fetched into the object
// cache when its sample is first read, under the size and ETag the listing gave: a warm epoch makes no
// request.

// listObjects fills the source from the listing of its root.
func (s *ImageFolderSource) listObjects() error {
	bucket, prefix, err := objstore.ParsePrefix(s.root)
	if err != nil {
		return fmt.Errorf("%w: image folder: %w", engine.ErrInvalidArgument, err)
	}
	cl, err := objstore.Default()
	if err != nil {
		return fmt.Errorf("%w: image folder %s: %w", engine.ErrIO, s.root, err)
	}
	from := prefix
	if from != "" {
		from += "/"
	}
	listed, err := cl.List(context.Background(), bucket, from)
	if err != nil {
		return fmt.Errorf("%w: image folder: %w", engine.ErrIO, err)
	}
	type file struct {
		dir, name string
		info      objstore.Info
	}
	byClass := map[string][]file{}
	for _, o := range listed {
		rel := strings.TrimPrefix(o.Key, from)
		class, _, ok := strings.Cut(rel, "/")
		if !ok || class == "" { // a file beside the class folders, as torchvision ignores it
			continue
		}
		byClass[class] = append(byClass[class], file{dir: path.Dir(rel), name: path.Base(rel), info: o.Info})
	}
	for class := range byClass {
		s.classes = append(s.classes, class)
	}
	sort.Strings(s.classes)
	for c, class := range s.classes {
		files := byClass[class]
		sort.Slice(files, func(a, b int) bool {
			if files[a].dir != files[b].dir {
				return files[a].dir < files[b].dir
			}
			return files[a].name < files[b].name
		})
		for _, f := range files {
			if strings.HasSuffix(f.name, "/") || !hasImageExtension(f.name) {
				continue
			}
			key := path.Join(f.dir, f.name)
			if from != "" {
				key = from + key
			}
			s.paths = append(s.paths, objstore.Object{Bucket: bucket, Key: key}.String())
			s.labels = append(s.labels, int32(c))
			s.remote = append(s.remote, f.info)
		}
	}
	return nil
}

// fetchImage is the local copy of remote sample i, from the object cache.
func (s *ImageFolderSource) fetchImage(i int) (string, error) {
	obj, err := objstore.Parse(s.paths[i])
	if err != nil {
		return "", err
	}
	return objstore.FetchListed(context.Background(), obj, s.remote[i])
}
