"""Images as they are stored, from Python: ImageFolderSource in torchvision's order, WebDataset shards
written with tarfile (as webdataset's TarWriter writes them), and the crops, checked against Pillow and a
numpy reference."""

from __future__ import annotations

import io
import os
import struct
import tarfile

import pytest

import ferry

from loader_helpers import TIMEOUT_MS, read_epoch

np = pytest.importorskip("numpy")


def _png(rgb) -> bytes:
    """A PNG of an [H, W, 3] uint8 array, written with zlib alone (no Pillow needed)."""
    import zlib

    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture
def engine():
    with ferry.Engine(ferry.CPU, sample_interval_ms=0) as e:
        yield e


@pytest.fixture
def folder(tmp_path):
    """A class folder tree of random PNGs; returns the root and {path: array}."""
    rng = np.random.default_rng(0)
    images = {}
    for k in range(14):
        cls = ["cat", "dog", "ant"][k % 3]
        sub = "" if k % 4 else "nested/"
        path = tmp_path / "train" / cls / f"{sub}img{k:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        long = int(rng.integers(16, 50))
        shape = (16, long, 3) if k % 2 else (long, 16, 3)  # the shorter side is 16: CenterCrop(16) copies
        arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
        path.write_bytes(_png(arr))
        images[str(path)] = arr
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    return tmp_path / "train", images


def test_image_folder_order_is_torchvisions(folder):
    root, images = folder
    src = ferry.ImageFolderSource(root)
    names = [src.sample_name(i) for i in range(len(src))]
    assert sorted(names) == sorted(images)
    assert src.fields["label"] == ("int64", (), 0)
    datasets = pytest.importorskip("torchvision.datasets")
    tv = datasets.ImageFolder(str(root))
    assert [p for p, _ in tv.samples] == names
    src.close()


def _reference_center(arr, size):
    """CenterCrop(size, resize=size) of an image whose shorter side is size: the central square, as the
    identity resample gives it (every tap on a pixel)."""
    h, w, _ = arr.shape
    top, left = round((h - size) / 2), round((w - size) / 2)
    return arr[top:top + size, left:left + size]


def test_crops_through_the_loader(folder, engine):
    root, images = folder
    src = ferry.ImageFolderSource(root)
    # Square inputs make CenterCrop an exact copy: the output is x/255, normalized.
    size = 16
    checked = 0
    with ferry.Iterator(engine, src, 5, transforms={"image": ferry.CenterCrop(size, resize=size, layout="HWC")},
                        timeout_ms=TIMEOUT_MS) as it:
        assert it.field_names == ["image", "label"]
        for indices, fields in read_epoch(it):
            out = np.frombuffer(fields["image"], dtype=np.float32).reshape(len(indices), size, size, 3)
            for row, i in enumerate(indices):
                want = _reference_center(images[src.sample_name(i)], size).astype(np.float32) / 255
                np.testing.assert_allclose(out[row], want, atol=1e-6)
                checked += 1
    assert checked == len(src)
    crop = ferry.RandomResizedCrop(24, flip=0.5, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                                   dtype="bfloat16")
    assert "RandomResizedCrop(24" in repr(crop)
    with ferry.Iterator(engine, src, 4, shuffle=True, seed=1, transforms={"image": crop}, timeout_ms=TIMEOUT_MS) as it:
        seen = sum(len(i) for i, _ in read_epoch(it))
    assert seen == len(src)
    src.close()


def _shard(path, samples):
    """A WebDataset shard as webdataset's TarWriter writes one: members key.ext, in sample order."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mtime = 1700000000
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards(tmp_path, folder, engine):
    root, images = folder
    items = sorted(images.items())
    shards = []
    for s in range(2):
        path = tmp_path / f"train-{s:04d}.tar"
        part = items[s::2]
        _shard(path, [(f"sample{s}{k:03d}", {"png": _png(arr), "cls": str(k).encode(), "json": b"{}"})
                      for k, (_, arr) in enumerate(part)])
        shards.append(part)
    src = ferry.WebDatasetSource(str(tmp_path / "train-{0000..0001}.tar"))
    assert len(src) == len(items)
    assert src.sample_name(0).endswith("train-0000.tar:sample0000.png")
    with ferry.Iterator(engine, src, 4, transforms={"image": ferry.CenterCrop(12, resize=12)},
                        timeout_ms=TIMEOUT_MS) as it:
        labels = []
        for _, fields in read_epoch(it):
            labels += list(struct.unpack("<%dq" % (len(fields["label"]) // 8), fields["label"]))
    assert labels == [k for part in shards for k in range(len(part))]
    again = ferry.WebDatasetSource([str(tmp_path / "train-0000.tar"), str(tmp_path / "train-0001.tar")])
    assert len(again) == len(src)
    src.close()
    again.close()

    bad = tmp_path / "bad.tar"
    _shard(bad, [("x", {"txt": b"no image"})])
    with pytest.raises(ferry.FormatError, match="bad.tar"):
        ferry.WebDatasetSource(str(bad))


def test_a_bad_file_names_itself(folder, engine):
    root, _ = folder
    bad = root / "cat" / "zz_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(40))
    src = ferry.ImageFolderSource(root)
    with ferry.Iterator(engine, src, 32, transforms={"image": ferry.RandomResizedCrop(8)}, timeout_ms=TIMEOUT_MS) as it:
        with pytest.raises(ferry.FormatError, match="zz_broken.png"):
            read_epoch(it)
    src.close()
    empty = root.parent / "empty"
    empty.mkdir()
    (empty / "loose.jpg").write_bytes(b"")
    with pytest.raises(ferry.FormatError, match="no class folder"):
        ferry.ImageFolderSource(empty)


def test_center_crop_matches_torchvision_antialias(tmp_path, engine):
    """CenterCrop(size, resize) with antialias equals torchvision's Resize(resize, antialias=True) then
    CenterCrop(size) on the same pixels (float tensors), and without it Resize(antialias=False)."""
    torch = pytest.importorskip("torch")
    F = pytest.importorskip("torchvision.transforms.v2.functional")
    rng = np.random.default_rng(3)
    arrs = []
    for k, (h, w) in enumerate([(97, 130), (140, 88), (64, 64)]):
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        path = tmp_path / "root" / "c" / f"{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(arr))
        arrs.append(arr)
    src = ferry.ImageFolderSource(tmp_path / "root")
    for antialias in (True, False):
        crop = ferry.CenterCrop(24, resize=32, layout="HWC", antialias=antialias)
        with ferry.Iterator(engine, src, 3, transforms={"image": crop}, timeout_ms=TIMEOUT_MS) as it:
            (indices, fields), = read_epoch(it)
        out = np.frombuffer(fields["image"], dtype=np.float32).reshape(3, 24, 24, 3)
        for row, i in enumerate(indices):
            x = torch.from_numpy(arrs[i].astype(np.float32)).permute(2, 0, 1)
            want = F.center_crop(F.resize(x, 32, antialias=antialias), [24, 24]) / 255
            np.testing.assert_allclose(out[row], want.permute(1, 2, 0).numpy(), atol=2e-5,
                                       err_msg=f"image {i}, antialias={antialias}")
    src.close()


def test_decode_image_gives_the_pixels(tmp_path, engine):
    """DecodeImage: each PNG's pixels, uint8 [H, W, 3]; another size fails naming the file."""
    rng = np.random.default_rng(3)
    arrays = {}
    for k in range(6):
        path = tmp_path / "d" / ["a", "b"][k % 2] / f"{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
        path.write_bytes(_png(arr))
        arrays[str(path)] = arr
    src = ferry.ImageFolderSource(tmp_path / "d")
    with ferry.Iterator(engine, src, 6, transforms={"image": ferry.DecodeImage(7, 9)}) as it:
        b = it.next()
        images = np.from_dlpack(b.field("image"))
        assert images.shape == (6, 7, 9, 3) and images.dtype == np.uint8
        for row, i in enumerate(b.indices()):
            np.testing.assert_array_equal(images[row], arrays[src.sample_name(i)])
        b.release()
    (tmp_path / "d" / "a" / "zz.png").write_bytes(_png(np.zeros((8, 9, 3), dtype=np.uint8)))
    odd = ferry.ImageFolderSource(tmp_path / "d")
    with ferry.Iterator(engine, odd, 7, transforms={"image": ferry.DecodeImage(7, 9)}) as it:
        with pytest.raises(ferry.FormatError, match="zz.png"):
            it.next()
    with pytest.raises(ferry.InvalidArgumentError):
        ferry.Iterator(engine, src, 2, transforms={"image": ferry.DecodeImage(0, 9)})
    assert repr(ferry.DecodeImage(7, 9)) == "ferry.DecodeImage(7, 9)"
    odd.close()
    src.close()
