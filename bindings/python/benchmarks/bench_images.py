"""Images as they are stored: JPEG folders decoded, random-resized-cropped, flipped and normalized.

JPEGs of ImageNet-like sizes (400-640 x 300-500, quality 90) are written to a class-per-folder tree, then
read for --epochs epochs by
  * torchvision: ImageFolder + DataLoader (--workers processes, PIL decode, RandomResizedCrop(224),
    RandomHorizontalFlip, ToTensor, Normalize; the batch stays on the CPU),
  * ferry: ImageFolderSource + Loader (--workers threads) with RandomResizedCrop(224, flip=0.5, mean, std),
    on the CPU engine (decoding with TurboJPEG on the CPU), with antialias (as torchvision's PIL resize)
    and without,
and each reports images/s and the CPU seconds per 1000 images (the process and its children), so that a
result can be read per core.

    python bench_images.py --images 2000 --workers 8 --json out.json
"""

from __future__ import annotations

import argparse
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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--dir", default=None)
    p.add_argument("--json")
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
            dl = torch.utils.data.DataLoader(datasets.ImageFolder(d, tf), batch_size=args.batch, shuffle=True,
                                             num_workers=args.workers)  # workers exit each epoch: their CPU counts

            def run_torch():
                return sum(x.shape[0] for _ in range(args.epochs) for x, _ in dl)

            results["torchvision"] = timed(run_torch, n)
            print("torchvision", results["torchvision"], flush=True)

        src = ferry.ImageFolderSource(d)
        for antialias in (True, False):
            crop = ferry.RandomResizedCrop(224, flip=0.5, mean=MEAN, std=STD, antialias=antialias)
            with ferry.Engine(ferry.CPU, sample_interval_ms=0) as eng, \
                    ferry.Iterator(eng, src, args.batch, shuffle=True, seed=0, workers=args.workers,
                                   transforms={"image": crop}) as it:
                def run_ferry():
                    seen = 0
                    for _ in range(args.epochs):
                        while (b := it.next()) is not None:
                            seen += len(b.indices())
                            b.release()
                    return seen

                key = "ferry_cpu" if antialias else "ferry_cpu_no_antialias"
                results[key] = timed(run_ferry, n)
            print(f"ferry (CPU engine, antialias={antialias})", results[key], flush=True)
        src.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
