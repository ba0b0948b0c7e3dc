#!/usr/bin/env python3
"""Input pipeline throughput: ferry's Loader side by side with PyTorch's DataLoader and a timm-style
prefetcher, on the same in-RAM data.

Rows (each moves every batch to the GPU and synchronizes once per epoch; the first epoch is a warm-up):

* images: N random 224x224x3 uint8 images, batch 256, shuffled. GB/s (of source bytes) and images/s for
  the ferry Loader through each staging strategy (gather, mapped, dma), raw and with the GPU layout step
  (u8 NHWC to f16 NCHW, ImageNet-normalized, random flips), torch DataLoader with 0 and 8 workers
  (pin_memory, ``.cuda(non_blocking=True)``), raw and followed by the same normalization in torch on the
  GPU, and a timm-style prefetcher (a side stream, ``non_blocking`` copies, ``wait_stream``);
* overlap: the same loaders with 20 ms of GPU work per batch (``torch.cuda._sleep`` calibrated to 20 ms);
  reported as % of the compute-bound ideal (batches x 20 ms) for ferry and the timm-style prefetcher;
* tokens: 32 x 1024 windows at random offsets of a 512 MB uint16 token file, ferry's TokenSource (window
  mode: only the uint16 window crosses; ShiftTokens makes int64 x and y on the device) against nanoGPT's
  ``get_batch`` (np.memmap, torch.from_numpy, pin_memory, non_blocking), in M tokens/s.

Prints a Markdown table; --json PATH also writes the results. Without torch the torch rows are left
out, and without a GPU everything runs on the CPU (ferry's CPU engine; torch without .cuda()). Small
sizes for a quick run: --n 256 --size 32 --token-mb 8 --token-batches 20 --epochs 2.

    python3 bindings/python/benchmarks/bench_loader.py [--n 2048] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

try:
    import ferry
except ImportError:  # run from a checkout: use the package next to this script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import ferry

try:
    import numpy as np
except ImportError:
    np = None  # type: ignore[assignment]

try:
    import torch
except ImportError:
    torch = None  # type: ignore[assignment]


# --- data -----------------------------------------------------------------------------------------------


def make_images(n: int, size: int) -> Any:
    """n random uint8 images [n, size, size, 3]: a numpy array, or a (bytearray, dtype, shape) tuple."""
    shape = (n, size, size, 3)
    if np is not None:
        return np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    return (bytearray(os.urandom(n * size * size * 3)), "uint8", shape)


def write_tokens(path: str, mb: int, vocab: int = 50257) -> int:
    """Writes mb MB of random uint16 tokens below vocab; returns the token count."""
    count = mb * (1 << 20) // 2
    chunk = 1 << 22
    rng = np.random.default_rng(1) if np is not None else None
    with open(path, "wb") as f:
        left = count
        while left:
            k = min(chunk, left)
            if rng is not None:
                f.write(rng.integers(0, vocab, size=k, dtype=np.uint16).tobytes())
            else:
                f.write(os.urandom(2 * k))
            left -= k
    return count


# --- timing ---------------------------------------------------------------------------------------------


def sync() -> None:
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


def run_epochs(make_iter: Callable[[], Iterable[Any]], epochs: int, consume: Callable[[Any], None]) -> Dict[str, float]:
    """Runs 1 warm-up epoch, then `epochs` epochs back to back, synchronizing at the end of each (a
    loader may prefetch the next epoch meanwhile, as it would in training); returns seconds per epoch,
    the mean over the timed run and the slowest single epoch."""
    batch = None
    for batch in make_iter():
        consume(batch)
    sync()
    del batch  # a zero-copy batch held across the timed run would hold a ring slot
    each = []
    t0 = time.perf_counter()
    for _ in range(epochs):
        t = time.perf_counter()
        for batch in make_iter():
            consume(batch)
        sync()
        each.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    return {"mean_s": total / epochs, "worst_s": max(each)}


def image_row(name: str, r: Dict[str, float], n: int, sample_bytes: int, note: str = "") -> Dict[str, Any]:
    return {
        "name": name,
        "GB_per_s": n * sample_bytes / r["mean_s"] / 1e9,
        "images_per_s": n / r["mean_s"],
        "epoch_s": r["mean_s"],
        "worst_epoch_s": r["worst_s"],
        "note": note,
    }


# --- the loaders ----------------------------------------------------------------------------------------


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def normalize() -> "ferry.Normalize":
    """ferry's GPU layout step: u8 NHWC to f16 NCHW, ImageNet-normalized, random horizontal flips."""
    return ferry.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, layout="CHW", dtype="float16", flip=0.5)


def ferry_loader(images: Any, batch: int, device: Any, args: argparse.Namespace, staging: str = "auto",
                 transforms: Optional[Dict[str, Any]] = None) -> "ferry.Loader":
    return ferry.Loader({"image": images}, batch, shuffle=True, seed=0, device=device, workers=args.ferry_workers,
                        prefetch=args.ferry_prefetch, staging=staging, transforms=transforms)


def torch_normalize(dev: Any) -> Callable[[Any], Any]:
    """What a DataLoader user does on the GPU after the copy: NHWC u8 to NCHW f16, normalized, flipped."""
    mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1) * 255

    def f(x: Any) -> Any:
        x = x.to(dev, non_blocking=True).permute(0, 3, 1, 2).float()
        flip = torch.rand(x.shape[0], device=dev) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        return ((x - mean) / std).half()

    return f


def torch_dataloader(images_t: Any, batch: int, workers: int, pin: bool) -> Any:
    ds = torch.utils.data.TensorDataset(images_t)
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, pin_memory=pin,
                                       persistent_workers=workers > 0, drop_last=False)


class TimmPrefetcher:
    """timm's PrefetchLoader pattern: copy batch k+1 on a side stream while batch k is used."""

    def __init__(self, loader: Any, device: Any) -> None:
        self.loader = loader
        self.device = device

    def __iter__(self):
        stream = torch.cuda.Stream(self.device)
        first, cur = True, None
        for (x,) in self.loader:
            with torch.cuda.stream(stream):
                next_x = x.to(self.device, non_blocking=True)
            if not first:
                yield cur
            else:
                first = False
            torch.cuda.current_stream(self.device).wait_stream(stream)
            cur = next_x
            cur.record_stream(torch.cuda.current_stream(self.device))
        if not first:
            yield cur


def calibrate_sleep(ms: float) -> Dict[str, float]:
    """Cycles of torch.cuda._sleep that take `ms` milliseconds, and the check of it."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    cycles = 10_000_000
    torch.cuda._sleep(cycles)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    per_ms = cycles / start.elapsed_time(end)
    want = int(per_ms * ms)
    start.record()
    for _ in range(10):
        torch.cuda._sleep(want)
    end.record()
    end.synchronize()
    return {"cycles": want, "measured_ms": start.elapsed_time(end) / 10}


# --- the rows -------------------------------------------------------------------------------------------


def bench_images(args: argparse.Namespace, gpu: bool) -> List[Dict[str, Any]]:
    images = make_images(args.n, args.size)
    sample_bytes = args.size * args.size * 3
    rows = []
    device = 0 if gpu else "cpu"
    stagings = ["gather", "mapped", "dma"] if gpu else ["gather"]
    for staging in stagings:
        for xf in ([None, "normalize"] if gpu else [None]):
            transforms = {"image": normalize()} if xf else None
            with ferry_loader(images, args.batch, device, args, staging, transforms) as loader:
                out = "torch tensors" if loader.output == "torch" else loader.output
                used, why = loader.staging
                r = run_epochs(lambda: loader, args.epochs, lambda b: None)
                what = "u8 NHWC as is" if xf is None else "f16 NCHW normalized + flip on the GPU"
                rows.append(image_row(f"ferry Loader, {used} staging ({'GPU' if gpu else 'CPU engine'}), {what}", r,
                                      args.n, sample_bytes, f"asked {staging}: {why}; {out}"))
    if torch is None or np is None:
        return rows
    images_t = torch.from_numpy(images)
    dev = torch.device("cuda", 0) if gpu else torch.device("cpu")
    for workers in args.torch_workers:
        dl = torch_dataloader(images_t, args.batch, workers, pin=gpu)
        consume = (lambda b: b[0].to(dev, non_blocking=True)) if gpu else (lambda b: None)
        r = run_epochs(lambda dl=dl: dl, args.epochs, consume)
        rows.append(image_row(f"torch DataLoader, {workers} workers", r, args.n, sample_bytes,
                              "pin_memory, .cuda(non_blocking=True)" if gpu else "CPU"))
        if gpu:
            norm = torch_normalize(dev)
            r = run_epochs(lambda dl=dl: dl, args.epochs, lambda b, norm=norm: norm(b[0]))
            rows.append(image_row(f"torch DataLoader, {workers} workers, + GPU normalize and flip", r, args.n,
                                  sample_bytes, "pin_memory, non_blocking, then permute/float/flip/normalize/half"))
        del dl
    if gpu:
        dl = torch_dataloader(images_t, args.batch, args.timm_workers, pin=True)
        r = run_epochs(lambda: TimmPrefetcher(dl, dev), args.epochs, lambda b: None)
        rows.append(image_row(f"timm-style prefetcher, {args.timm_workers} workers", r, args.n, sample_bytes,
                              "side stream, non_blocking"))
        del dl
    return rows


def bench_overlap(args: argparse.Namespace) -> List[Dict[str, Any]]:
    images = make_images(args.n, args.size)
    sample_bytes = args.size * args.size * 3
    cal = calibrate_sleep(args.work_ms)
    cycles = cal["cycles"]
    dev = torch.device("cuda", 0)

    def work(_: Any) -> None:
        torch.cuda._sleep(cycles)

    rows = []
    batches = -(-args.n // args.batch)
    ideal = batches * args.work_ms / 1e3
    for staging in ("gather", "mapped"):
        with ferry_loader(images, args.batch, 0, args, staging, {"image": normalize()}) as loader:
            used, _ = loader.staging
            r = run_epochs(lambda: loader, args.epochs, work)
        rows.append(dict(image_row(f"overlap: ferry Loader, {used} staging, normalize + flip", r, args.n, sample_bytes),
                         ideal_s=ideal, percent_of_ideal=100 * ideal / r["mean_s"], sleep_ms=cal["measured_ms"]))
    images_t = torch.from_numpy(images)
    dl = torch_dataloader(images_t, args.batch, args.timm_workers, pin=True)
    r = run_epochs(lambda: TimmPrefetcher(dl, dev), args.epochs, work)
    rows.append(dict(image_row(f"overlap: timm-style, {args.timm_workers} workers", r, args.n, sample_bytes),
                     ideal_s=ideal, percent_of_ideal=100 * ideal / r["mean_s"], sleep_ms=cal["measured_ms"]))
    return rows


def bench_tokens(args: argparse.Namespace, gpu: bool) -> List[Dict[str, Any]]:
    rows = []
    B, T = args.token_batch, args.seq_len
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        path = os.path.join(tmp, "train.bin")
        count = write_tokens(path, args.token_mb)
        src = ferry.TokenSource(path, seq_len=T, format="uint16", random=True, seed=1, window=True)
        with ferry.Loader(src, B, device=0 if gpu else "cpu", workers=args.ferry_workers,
                          prefetch=args.ferry_prefetch, transforms={"tokens": ferry.ShiftTokens()}) as loader:
            used, _ = loader.staging
            it = iter(loader)

            def ferry_step() -> None:
                nonlocal it
                try:
                    next(it)
                except StopIteration:
                    it = iter(loader)
                    next(it)

            t = time_steps(ferry_step, args.token_batches)
        src.close()
        rows.append({"name": f"tokens: ferry TokenSource, {used} staging",
                     "M_tokens_per_s": B * T * args.token_batches / t / 1e6, "seconds": t,
                     "note": f"windows of {T}+1 uint16 cross; int64 x and y [{B}, {T}] made on the device; "
                             f"random offsets, {count >> 20} M tokens"})
        if torch is not None and np is not None:
            data = np.memmap(path, dtype=np.uint16, mode="r")
            dev = torch.device("cuda", 0) if gpu else torch.device("cpu")

            def get_batch() -> None:  # nanoGPT's train.py
                ix = torch.randint(len(data) - T, (B,))
                x = torch.stack([torch.from_numpy((data[i:i + T]).astype(np.int64)) for i in ix])
                y = torch.stack([torch.from_numpy((data[i + 1:i + 1 + T]).astype(np.int64)) for i in ix])
                if gpu:
                    x, y = x.pin_memory().to(dev, non_blocking=True), y.pin_memory().to(dev, non_blocking=True)

            t = time_steps(get_batch, args.token_batches)
            rows.append({"name": "tokens: nanoGPT get_batch", "M_tokens_per_s": B * T * args.token_batches / t / 1e6,
                         "seconds": t, "note": "np.memmap, int64, pin_memory, non_blocking"})
            del data
    return rows


def time_steps(step: Callable[[], None], n: int) -> float:
    for _ in range(max(2, n // 10)):  # warm-up
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    return time.perf_counter() - t0


# --- output ---------------------------------------------------------------------------------------------


def table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| what | GB/s | images/s | M tokens/s | % of ideal | note |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        def f(key: str, fmt: str, r: Dict[str, Any] = r) -> str:
            return format(r[key], fmt) if key in r else ""
        lines.append(f"| {r['name']} | {f('GB_per_s', '.2f')} | {f('images_per_s', ',.0f')} | "
                     f"{f('M_tokens_per_s', '.1f')} | {f('percent_of_ideal', '.1f')} | {r.get('note', '')} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2048, help="images (default 2048)")
    p.add_argument("--size", type=int, default=224, help="image side (default 224)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--epochs", type=int, default=5, help="timed epochs after one warm-up (their mean is reported)")
    p.add_argument("--torch-workers", type=lambda s: [int(x) for x in s.split(",") if x], default=[0, 8],
                   help="DataLoader worker counts, comma-separated (default 0,8)")
    p.add_argument("--timm-workers", type=int, default=8, help="workers of the timm-style prefetcher's DataLoader")
    p.add_argument("--ferry-workers", type=int, default=0, help="ferry gather threads (0: min(cores, 16))")
    p.add_argument("--ferry-prefetch", type=int, default=0, help="ferry ring depth (0: 4)")
    p.add_argument("--work-ms", type=float, default=20.0, help="GPU work per batch in the overlap rows")
    p.add_argument("--token-mb", type=int, default=512, help="size of the token file in MB")
    p.add_argument("--token-batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--token-batches", type=int, default=300, help="timed token batches per row")
    p.add_argument("--tmpdir", default=None, help="where to write the token file")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is visible")
    p.add_argument("--skip", default="", help="comma-separated groups to skip: images,overlap,tokens")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = p.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    gpu = not args.cpu and ferry.device_count() > 0
    torch_gpu = gpu and torch is not None and torch.cuda.is_available()
    if gpu and torch is not None and not torch_gpu:
        print("ferry sees a GPU but torch.cuda does not: running on the CPU", file=sys.stderr)
        gpu = False
    rows: List[Dict[str, Any]] = []
    if "images" not in skip:
        rows += bench_images(args, gpu)
    if "overlap" not in skip and torch_gpu and np is not None:
        rows += bench_overlap(args)
    if "tokens" not in skip:
        rows += bench_tokens(args, gpu)

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "ferry": ".".join(map(str, ferry.version())),
        "torch": getattr(torch, "__version__", None),
        "numpy": getattr(np, "__version__", None),
        "device": ferry.device_info(0).name if gpu else "CPU",
        "cpus": os.cpu_count(),
        "args": {k: v for k, v in vars(args).items() if k != "json"},
    }
    print(f"# ferry loader benchmark: {env['device']}, {args.n} images {args.size}x{args.size}x3, "
          f"batch {args.batch}, {env['date']}\n")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
