package data

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/internal/objstore"
)

// The Megatron-order index cache. A build's three arrays are written to one file named by a key over
// every input of the build (the files, with their sizes and modification times, and every parameter), so
// that a later start with the same inputs maps the file instead of building: milliseconds at any corpus
// size. The file is the header (magic, version, key, counts) and the arrays in native little-endian
// order, each 8-byte aligned; a file whose key or sizes do not fit is rebuilt, and its values are checked
// where windows read them, never trusted.

var megatronCacheMagic = [8]byte{'F', 'E', 'R', 'R', 'Y', 'I', 'D', 'X'}

const megatronCacheVersion = 1

// megatronCacheKey is the JSON of every input of a build, and its file name.
func megatronCacheKey(s *MegatronSource, beg, end int, p megatronGPTParams) (key []byte, name string, err error) {
	type file struct {
		Path      string `json:"path"`
		IdxBytes  int64  `json:"idx_bytes"`
		IdxMTime  int64  `json:"idx_mtime_ns"`
		BinBytes  int64  `json:"bin_bytes"`
		Sequences int    `json:"sequences"`
	}
	var files []file
	for _, f := range s.files {
		abs := f.idx.path // an object: its URL, and the size and time of its cached copy (named by its ETag)
		if !objstore.IsURL(abs) {
			var err error
			if abs, err = filepath.Abs(abs); err != nil {
				return nil, "", err
			}
		}
		st, err := os.Stat(f.idx.local)
		if err != nil {
			return nil, "", err
		}
		files = append(files, file{abs, st.Size(), st.ModTime().UnixNano(), int64(len(f.bin.data)), f.nseq})
	}
	key, err = json.Marshal(map[string]any{
		"format": megatronCacheVersion, "builder": "megatron-core GPTDataset", "files": files,
		"seq_len": p.seqLen, "seed": p.seed, "split": p.split, "which": p.which.String(),
		"num_samples": p.numSamples, "begin": beg, "end": end,
		"add_extra_token_to_sequence": true, "drop_last_partial_sequence": true,
	})
	if err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(key)
	return key, hex.EncodeToString(sum[:16]) + "-GPTDataset-" + p.which.String() + ".ferryidx", nil
}

// megatronCacheHeader is the fixed part after the magic: version, key length, then the counts.
type megatronCacheHeader struct {
	Version, KeyLen        uint32
	Docs, Samples, Shuffle uint64
	Epochs, Separate       uint64
}

func align8(n int) int { return (n + 7) &^ 7 }

// writeMegatronCache writes an index to path atomically (a temporary file renamed into place).
func writeMegatronCache(path string, key []byte, x *megatronGPTIndex) error {
	h := megatronCacheHeader{Version: megatronCacheVersion, KeyLen: uint32(len(key)), Docs: uint64(len(x.docs)),
		Samples: uint64(len(x.samples)), Shuffle: uint64(len(x.shuffle)), Epochs: uint64(x.epochs)}
	if x.separate {
		h.Separate = 1
	}
	buf, err := binary.Append(append([]byte{}, megatronCacheMagic[:]...), binary.LittleEndian, h)
	if err != nil {
		return err
	}
	buf = append(buf, key...)
	buf = append(buf, make([]byte, align8(len(buf))-len(buf))...)
	docs := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(x.docs))), 4*len(x.docs))
	pad := make([]byte, align8(len(docs))-len(docs))
	return writeFileAtomic(path, buf, docs, pad, int64Bytes(x.samples), int64Bytes(x.shuffle))
}

func int64Bytes(s []int64) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), 8*len(s))
}

// readMegatronCache maps a cache file and returns its index, whose arrays live in the returned mapping,
// after checking that it holds this key and that its sizes agree with its header, so that a stale,
// truncated or foreign file is rebuilt. Nothing else is read here: opening costs the same at any size, and
// every value is checked where a window reads it (GPTSource.readMegatron), so that a damaged file gives an
// error, never a read out of bounds.
func readMegatronCache(path string, key []byte, s *MegatronSource) (*megatronGPTIndex, *mappedFile, error) {
	mf, err := mapFile(path)
	if err != nil {
		return nil, nil, err
	}
	x, err := parseMegatronCache(mf.data, key, s)
	if err != nil {
		_ = mf.unmap()
		return nil, nil, fmt.Errorf("%w: index cache %s: %w", engine.ErrFormat, path, err)
	}
	return x, mf, nil
}

func parseMegatronCache(data, key []byte, s *MegatronSource) (x *megatronGPTIndex, err error) {
	defer recoverFault(&err, guardFaults(), s, 0)
	var h megatronCacheHeader
	hsize := binary.Size(h)
	if len(data) < 8+hsize || [8]byte(data[:8]) != megatronCacheMagic {
		return nil, fmt.Errorf("not a ferry index file")
	}
	if _, err := binary.Decode(data[8:], binary.LittleEndian, &h); err != nil {
		return nil, err
	}
	off := 8 + hsize
	if h.Version != megatronCacheVersion || uint64(h.KeyLen) > uint64(len(data)-off) || string(data[off:off+int(h.KeyLen)]) != string(key) {
		return nil, fmt.Errorf("written for other inputs")
	}
	off = align8(off + int(h.KeyLen))
	need := uint64(align8(int(min(h.Docs, 1<<40)*4))) + 8*(h.Samples+h.Shuffle)
	if h.Docs > 1<<40 || h.Samples > 1<<40 || h.Shuffle > 1<<40 || h.Samples != 2*(h.Shuffle+1) || uint64(len(data)-off) != need ||
		h.Epochs < 1 || h.Epochs > 1<<40 || h.Separate > 1 {
		return nil, fmt.Errorf("its sizes do not match its header")
	}
	x = &megatronGPTIndex{epochs: int(h.Epochs), separate: h.Separate == 1}
	x.docs = unsafe.Slice((*int32)(unsafe.Pointer(&data[off])), h.Docs)
	off += align8(int(4 * h.Docs))
	x.samples = unsafe.Slice((*int64)(unsafe.Pointer(&data[off])), h.Samples)
	off += int(8 * h.Samples)
	x.shuffle = unsafe.Slice((*int64)(unsafe.Pointer(&data[off])), h.Shuffle)
	return x, nil
}
