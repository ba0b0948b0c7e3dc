"""Images as they are stored: JPEG folders decoded, random-resized-cropped, flipped and normalized.

JPEGs of ImageNet-like sizes (400-640 x 300-500, quality 90) are written to a class-per-folder tree, then
read for --epochs epochs by
  * torchvision: ImageFolder + DataLoader (--workers processes, PIL decode, RandomResizedCrop(224),
    RandomHorizontalFlip, ToTensor, Normalize; the batch stays on the CPU),
  * ferry: ImageFolderSource + Loader (--workers threads) with RandomResizedCrop(224, flip=0.5, mean, std),
    on the CPU engine (decoding with TurboJPEG on the CPU), with antialias (as torchvision's PIL resize)
    and without,
and each reports images/s and the CPU seconds per 1000 images (the process and its children), so that a
result can be read per core. With --gpu, also into [B, 3, 224, 224] bfloat16 on the GPU:
  * torchvision: decode_jpeg(device="cuda") on each batch (nvJPEG, batched), then v2.RandomResizedCrop(224),
    a flip and Normalize per image on the GPU; and the batched decode alone, no crop,
  * ferry: ImageFolderSource and WebDatasetSource (the same JPEGs written as shards) + Iterator on the GPU
    engine: nvJPEG batched decode into the ring's device arenas and one crop kernel, without and with
    antialias.

    python bench_images.py --images 3000 --workers 16 --gpu --json out.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import sys
import tempfile
import time
from multiprocessing import Pool

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import ferry  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _jpegs import write_jpeg  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def cpu_seconds():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def timed(run, n_images):
    c0, t0 = cpu_seconds(), time.perf_counter()
    seen = run()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    assert seen == n_images, (seen, n_images)
    return {"img_s": n_images / wall, "cpu_s_per_1000": 1000 * cpu / n_images, "wall_s": wall}


def drain(it, epochs):
    """Takes every batch of the iterator's next epochs; returns the samples seen."""
    seen = 0
    for _ in range(epochs):
        while (b := it.next()) is not None:
            seen += len(b.indices())
            b.release()
    return seen


def write_shards(d, shards, per_shard):
    """The tree's JPEGs as WebDataset shards: members <key>.jpg and <key>.cls, in file order."""
    import tarfile

    classes = sorted(c for c in os.listdir(d) if os.path.isdir(os.path.join(d, c)))
    files = [(os.path.join(d, c, f), k) for k, c in enumerate(classes) for f in sorted(os.listdir(os.path.join(d, c)))]
    os.makedirs(shards, exist_ok=True)
    for s in range(0, len(files), per_shard):
        with tarfile.open(os.path.join(shards, f"shard-{s // per_shard:04d}.tar"), "w") as tar:
            for i, (path, label) in enumerate(files[s:s + per_shard]):
                key = f"{s + i:08d}"
                tar.add(path, arcname=key + ".jpg")
                info = tarfile.TarInfo(key + ".cls")
                body = str(label).encode()
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    return os.path.join(shards, "shard-{0000..%04d}.tar" % ((len(files) - 1) // per_shard))


def gpu_pipelines(d, args, results, n):
    """decode + RandomResizedCrop(224) + flip + normalize into [B, 3, 224, 224] bfloat16 on the GPU."""
    import torch
    import torchvision
    from torchvision.io import decode_jpeg, read_file
    from torchvision.transforms import v2

    dev = torch.device("cuda")
    files = sorted(os.path.join(d, c, f) for c in os.listdir(d) if os.path.isdir(os.path.join(d, c))
                   for f in os.listdir(os.path.join(d, c)))
    mean = torch.tensor(MEAN, device=dev).view(3, 1, 1)
    std = torch.tensor(STD, device=dev).view(3, 1, 1)
    rrc = v2.RandomResizedCrop(224, antialias=True)
    gb = args.gpu_batch

    def epochs(step):
        seen = 0
        for _ in range(args.epochs):
            perm = torch.randperm(len(files)).tolist()
            for s in range(0, len(perm), gb):
                datas = [read_file(files[i]) for i in perm[s:s + gb]]
                seen += step(datas)
        torch.cuda.synchronize()
        return seen

    def tv_full(datas):
        imgs = decode_jpeg(datas, device=dev)
        out = []
        for img in imgs:
            x = rrc(img)
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
            out.append(((x.float() / 255 - mean) / std).to(torch.bfloat16))
        return torch.stack(out).shape[0]

    def tv_decode(datas):
        return len(decode_jpeg(datas, device=dev))

    epochs(tv_decode)  # warm nvJPEG up
    results["torchvision_gpu_decode_crop"] = timed(lambda: epochs(tv_full), n)
    print("torchvision decode_jpeg(cuda) + v2.RandomResizedCrop per image", results["torchvision_gpu_decode_crop"],
          flush=True)
    results["torchvision_gpu_decode_only"] = timed(lambda: epochs(tv_decode), n)
    print("torchvision decode_jpeg(cuda), no crop", results["torchvision_gpu_decode_only"], flush=True)
    results["torchvision_version"] = torchvision.__version__

    shards = write_shards(d, tempfile.mkdtemp(dir=args.dir), 1000)  # beside the tree, not a class of it
    for name, make in (("ferry_gpu_imagefolder", lambda: ferry.ImageFolderSource(d)),
                       ("ferry_gpu_webdataset", lambda: ferry.WebDatasetSource(shards))):
        for antialias in (False, True):
            src = make()
            crop = ferry.RandomResizedCrop(224, flip=0.5, mean=MEAN, std=STD, dtype="bfloat16", antialias=antialias)
            with ferry.Engine(0, sample_interval_ms=0) as eng, \
                    ferry.Iterator(eng, src, gb, shuffle=True, seed=0, workers=args.workers,
                                   transforms={"image": crop}) as it:
                why = it.staging[1]

                def run_ferry():
                    seen = drain(it, args.epochs)
                    torch.cuda.synchronize()
                    return seen

                run_ferry()  # warm: arenas sized, nvJPEG states made
                key = name + ("_antialias" if antialias else "")
                results[key] = timed(run_ferry, n)
                results[key]["staging"] = why
            src.close()
            print(key, results[key], flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--dir", default=None)
    p.add_argument("--json")
    p.add_argument("--gpu", action="store_true", help="also the GPU pipelines (needs CUDA torch)")
    p.add_argument("--gpu-batch", type=int, default=256)
    args = p.parse_args()
    results = {"images": args.images, "workers": args.workers, "cpus": os.cpu_count(), "ferry": ferry.__version__}
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        jobs = [(os.path.join(d, f"c{k % 10}", f"{k:06d}.jpg"), k) for k in range(args.images)]
        for k in range(10):
            os.makedirs(os.path.join(d, f"c{k}"), exist_ok=True)
        with Pool(os.cpu_count()) as pool:
            sizes = pool.map(write_jpeg, jobs, chunksize=64)
        results["mean_jpeg_bytes"] = sum(sizes) / len(sizes)
        n = args.images * args.epochs

        try:
            import torch
            from torchvision import datasets, transforms
        except ImportError:
            print("torchvision is not installed: its pipeline is not measured")
        else:
            tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                     transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
            # Workers exit each epoch: their CPU counts. With --gpu the batches go to the GPU from pinned memory.
            dl = torch.utils.data.DataLoader(datasets.ImageFolder(d, tf), batch_size=args.batch, shuffle=True,
                                             num_workers=args.workers, pin_memory=args.gpu)

            def run_torch():
                seen = 0
                for _ in range(args.epochs):
                    for x, _ in dl:
                        if args.gpu:
                            x = x.to("cuda", non_blocking=True)
                        seen += x.shape[0]
                if args.gpu:
                    torch.cuda.synchronize()
                return seen

            results["torchvision"] = timed(run_torch, n)
            print("torchvision", results["torchvision"], flush=True)

        src = ferry.ImageFolderSource(d)
        for antialias in (True, False):
            crop = ferry.RandomResizedCrop(224, flip=0.5, mean=MEAN, std=STD, antialias=antialias)
            with ferry.Engine(ferry.CPU, sample_interval_ms=0) as eng, \
                    ferry.Iterator(eng, src, args.batch, shuffle=True, seed=0, workers=args.workers,
                                   transforms={"image": crop}) as it:
                def run_ferry():
                    return drain(it, args.epochs)

                key = "ferry_cpu" if antialias else "ferry_cpu_no_antialias"
                results[key] = timed(run_ferry, n)
            print(f"ferry (CPU engine, antialias={antialias})", results[key], flush=True)
        src.close()
        if args.gpu:
            gpu_pipelines(d, args, results, n)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
