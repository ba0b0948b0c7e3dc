"""ferry behind PyTorch input pipelines: a decode-heavy ImageFolder with a ResNet-50 step, batches kept, and
tokens from Python (with a profile of the consumer's loop).

* imagefolder: JPEGs of ImageNet-like sizes written here (a class per folder), torchvision's ImageFolder with
  RandomResizedCrop(224) + flip in ``--workers`` DataLoader workers, and a ResNet-50 training step (bf16
  autocast, channels_last) per batch. Three ways to the GPU, side by side:
  (a) the seed's PrefetchLoader (a side stream, ``cuda(non_blocking=True)``, one batch ahead) over
      ``pin_memory=True``, the workers normalizing to float32 (ToTensor + Normalize);
  (b) ``pin_memory=True`` and ``.cuda(non_blocking=True)`` in the loop, the same workers;
  (c) ``ferry.PrefetchLoader`` over the DataLoader, the workers returning uint8 (PILToTensor) and
      ``ferry.Normalize`` on the device.
  Reported: images/s, the data stall (the share of the loop spent waiting for the next batch) and the CPU
  time per 1000 images of the main process and its workers.
* keep: ``list(loader)`` over a 32-batch epoch with ``prefetch=4``: ferry's ring grows instead of waiting.
* handoff: the consumer's hand-off of a batch's fields to torch alone, by DLPack's protocol and by the
  capsule path the Loader's loop takes, in alternate batches of one loop (``--handoff-device cpu`` runs it
  without a GPU: ``--skip keep,tokens,imagefolder --handoff-device cpu``).
* tokens: 32 x 1024 token windows to int64 x/y on the device from Python, ``ferry.Loader`` over a
  ``TokenSource`` and ``ferry.PrefetchLoader`` over ready-made uint16 windows, with nanoGPT's ``get_batch``
  alongside; the top lines of a cProfile of the Loader's loop.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import os
import platform
import pstats
import sys
import tempfile
import time
from multiprocessing import Pool
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

import ferry

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _jpegs import write_jpeg  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# --- imagefolder ------------------------------------------------------------------------------------------


def write_imagefolder(root: str, n: int, classes: int = 10) -> float:
    """Writes n JPEGs in `classes` folders; returns their mean size in KB."""
    jobs = []
    for i in range(n):
        d = os.path.join(root, f"class{i % classes:03d}")
        os.makedirs(d, exist_ok=True)
        jobs.append((os.path.join(d, f"img{i:06d}.jpg"), i))
    with Pool(os.cpu_count()) as pool:
        sizes = pool.map(write_jpeg, jobs, chunksize=64)
    return sum(sizes) / len(sizes) / 1024


def _cpu_seconds(pids: List[int]) -> float:
    """User + system CPU seconds of this process and of pids (worker processes)."""
    t = os.times()
    total = t.user + t.system
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


class SeedPrefetchLoader:
    """The seed's PrefetchLoader: the next batch copied on a side stream while the step runs."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __iter__(self) -> Any:
        stream = torch.cuda.Stream()
        first = True
        x = y = None
        for nx, ny in self.loader:
            with torch.cuda.stream(stream):
                nx = nx.cuda(non_blocking=True)
                ny = ny.cuda(non_blocking=True)
            if not first:
                yield x, y
            first = False
            torch.cuda.current_stream().wait_stream(stream)
            x, y = nx, ny
        if x is not None:
            yield x, y


def bench_imagefolder(args: argparse.Namespace) -> List[Dict[str, Any]]:
    import torchvision
    from torchvision import transforms as T

    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as root:
        kb = write_imagefolder(root, args.images)
        crop = [T.RandomResizedCrop(224), T.RandomHorizontalFlip()]
        float_tf = T.Compose(crop + [T.ToTensor(), T.Normalize(MEAN, STD)])
        u8_tf = T.Compose(crop + [T.PILToTensor()])
        model = torchvision.models.resnet50().cuda().to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            x = x.to(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def dataloader(tf: Any, pin: bool) -> Any:
            ds = torchvision.datasets.ImageFolder(root, transform=tf)
            return torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                               pin_memory=pin, prefetch_factor=2, persistent_workers=True,
                                               drop_last=True)

        def plain(dl: Any) -> Any:
            for x, y in dl:
                yield x.cuda(non_blocking=True), y.cuda(non_blocking=True)

        def ferry_pipe(dl: Any) -> Any:
            norm = ferry.Normalize(MEAN, STD, input_layout="CHW", dtype="bfloat16")
            return ferry.PrefetchLoader(dl, device=0, prefetch=args.ferry_prefetch, transforms={0: norm})

        configs = [
            ("(a) seed PrefetchLoader, pin_memory, float workers", float_tf, True, SeedPrefetchLoader),
            ("(b) pin_memory + cuda(non_blocking), float workers", float_tf, True, plain),
            ("(c) ferry.PrefetchLoader, uint8 workers, Normalize on the device", u8_tf, False, ferry_pipe),
        ]
        for name, tf, pin, wrap in configs:
            dl = dataloader(tf, pin)
            pipe = wrap(dl)
            it = iter(pipe)
            for _ in range(args.warmup):
                x, y = next(it)
                step(x, y)
            torch.cuda.synchronize()
            workers = _worker_pids(getattr(dl, "_iterator", None))
            cpu0, t0, stall = _cpu_seconds(workers), time.perf_counter(), 0.0
            n = 0
            for _ in range(args.steps):
                s = time.perf_counter()
                x, y = next(it)
                stall += time.perf_counter() - s
                step(x, y)
                n += len(y)
            torch.cuda.synchronize()
            wall = time.perf_counter() - t0
            cpu = _cpu_seconds(workers) - cpu0
            rows.append({"name": name, "images_per_s": n / wall, "data_stall_percent": 100 * stall / wall,
                         "cpu_s_per_1000_images": 1000 * cpu / n if workers else None, "workers_seen": len(workers),
                         "note": f"{args.images} JPEGs of {kb:.0f} KB, {args.workers} workers, batch {args.batch}"})
            print(rows[-1], flush=True)
            close = getattr(pipe, "close", None)
            del it, x, y
            if close is not None:
                close()
            del pipe, dl
        # The model step alone, for the ceiling.
        x = torch.randn(args.batch, 3, 224, 224, device="cuda")
        y = torch.randint(0, 10, (args.batch,), device="cuda")
        for _ in range(3):
            step(x, y)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(x, y)
        torch.cuda.synchronize()
        rows.append({"name": "ResNet-50 step alone (the ceiling)", "images_per_s": args.batch * args.steps /
                     (time.perf_counter() - t0), "note": "bf16 autocast, channels_last, batch on the device"})
    return rows


def _worker_pids(it: Any) -> List[int]:
    return [w.pid for w in getattr(it, "_workers", [])]


# --- keep -------------------------------------------------------------------------------------------------


def bench_keep(args: argparse.Namespace) -> List[Dict[str, Any]]:
    x = np.random.default_rng(0).integers(0, 256, size=(32 * 256, 3 * 64 * 64), dtype=np.uint8)
    with ferry.Loader({"x": x}, 256, device=0, prefetch=4) as loader:
        t0 = time.perf_counter()
        kept = list(loader)
        torch.cuda.synchronize()
        t = time.perf_counter() - t0
        ok = len(kept) == 32 and torch.equal(torch.cat([b["x"] for b in kept]).cpu(), torch.from_numpy(x))
    return [{"name": "list(loader): 32 batches kept, prefetch=4", "seconds": t, "ok": ok,
             "note": "ferry.Loader over 256 x 12 KB samples; the ring grows by a slot per batch held"}]


# --- tokens -----------------------------------------------------------------------------------------------


def _time(fn: Callable[[], Any], n: int) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench_tokens(args: argparse.Namespace) -> List[Dict[str, Any]]:
    rows = []
    B, T, n = 32, 1024, args.token_batches
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        path = os.path.join(tmp, "train.bin")
        rng = np.random.default_rng(0)
        ntok = args.token_mb << 19
        rng.integers(0, 50257, size=ntok, dtype=np.uint16).tofile(path)
        src = ferry.TokenSource(path, seq_len=T, format="uint16", random=True, seed=1, window=True)
        with ferry.Loader(src, B, device=0, transforms={"tokens": ferry.ShiftTokens()}) as loader:
            it = iter(loader)

            def ferry_step() -> None:
                nonlocal it
                try:
                    b = next(it)
                except StopIteration:
                    it = iter(loader)
                    b = next(it)
                del b

            t = _time(ferry_step, n)
            rows.append({"name": "tokens: ferry.Loader, TokenSource + ShiftTokens",
                         "M_tokens_per_s": B * T * n / t / 1e6, "us_per_batch": 1e6 * t / n})
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(n):
                ferry_step()
            prof.disable()
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(12)
            rows.append({"name": "tokens: cProfile of the Loader loop (top by tottime)", "profile": s.getvalue()})
        src.close()
        data = np.memmap(path, dtype=np.uint16, mode="r")

        def get_batch() -> Any:
            ix = torch.randint(len(data) - T, (B,))
            x = torch.stack([torch.from_numpy(data[i:i + T].astype(np.int64)) for i in ix])
            y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + T].astype(np.int64)) for i in ix])
            return x.pin_memory().cuda(non_blocking=True), y.pin_memory().cuda(non_blocking=True)

        t = _time(get_batch, n)
        rows.append({"name": "tokens: nanoGPT get_batch", "M_tokens_per_s": B * T * n / t / 1e6,
                     "us_per_batch": 1e6 * t / n})
        windows = [rng.integers(0, 50257, size=(B, T + 1), dtype=np.uint16) for _ in range(64)]

        def cycle() -> Any:
            while True:
                yield from windows

        with ferry.PrefetchLoader(cycle(), device=0, transforms={0: ferry.ShiftTokens()}, prefetch=4) as pl:
            pit = iter(pl)
            t = _time(lambda: next(pit), n)
            rows.append({"name": "tokens: ferry.PrefetchLoader over ready uint16 windows (both sides in Python)",
                         "M_tokens_per_s": B * T * n / t / 1e6, "us_per_batch": 1e6 * t / n})
    return rows


def bench_handoff(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """The consumer's hand-off alone: a Loader's batch of two int64 fields (ShiftTokens' x and y) turned
    into torch tensors, by DLPack's protocol (torch.from_dlpack on an exporter object per field, which
    asks torch for its current stream) and by the capsule path the Loader's loop takes (a DLPack 1.0
    capsule per field straight to torch). Alternate batches take each path, in the same loop."""
    from ferry import _dataloader

    dev_arg = "cpu" if args.handoff_device == "cpu" else int(args.handoff_device)
    B, T = 32, 1024
    x = np.random.default_rng(0).integers(0, 50257, size=(4096, T + 1), dtype=np.uint16)
    fast = _dataloader._torch_capsule_path()
    if fast is None:
        return [{"name": "handoff: this torch takes no DLPack 1.0 capsule; the Loader uses the protocol"}]
    shift = {"tokens": ferry.ShiftTokens()}
    with ferry.Loader({"tokens": x}, B, device=dev_arg, transforms=shift, prefetch=8) as loader:
        it, names = loader.iterator, loader.iterator.field_names
        on_gpu = dev_arg != "cpu"
        dl = (ferry._lib.kDLCUDA, dev_arg) if on_gpu else (ferry._lib.kDLCPU, 0)
        stream_fn = loader._stream_fn
        spent = {"protocol": 0, "capsule": 0}
        count = {"protocol": 0, "capsule": 0}
        k = 0
        while count["capsule"] < args.handoff_batches:
            stream = stream_fn() if stream_fn is not None else None
            addrs = it._next_tensors(stream)
            if addrs is None:
                continue  # the end of an epoch: the next call starts the next
            way = "capsule" if k % 2 else "protocol"
            k += 1
            t0 = time.perf_counter_ns()
            if way == "capsule":
                batch = dict(zip(names, fast(addrs)))
            else:
                batch = loader._take_tensors(names, addrs, stream, dl)
            spent[way] += time.perf_counter_ns() - t0
            count[way] += 1
            del batch
    return [{"name": f"handoff: a batch's 2 fields to torch on {dev_arg}, {way}",
             "us_per_batch": spent[way] / count[way] / 1e3, "batches": count[way]} for way in ("protocol", "capsule")]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=24000)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--batch", type=int, default=256)
    # The warm-up outlasts what the DataLoader prefetched (workers x prefetch_factor batches, and all of them
    # pinned ahead by its pin-memory thread), so that the timed steps see the pipelines' steady state.
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--ferry-prefetch", type=int, default=4)
    p.add_argument("--token-mb", type=int, default=256)
    p.add_argument("--token-batches", type=int, default=2000)
    p.add_argument("--handoff-device", default="0", help="a CUDA ordinal, or cpu")
    p.add_argument("--handoff-batches", type=int, default=5000)
    p.add_argument("--tmpdir", default=None)
    p.add_argument("--skip", default="")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    rows: List[Dict[str, Any]] = []
    if "handoff" not in skip:
        rows += bench_handoff(args)
    if "keep" not in skip:
        rows += bench_keep(args)
    if "tokens" not in skip:
        rows += bench_tokens(args)
    if "imagefolder" not in skip:
        rows += bench_imagefolder(args)
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
           "device": ferry.device_info(0).name if ferry.device_count() > 0 else "none", "cpus": os.cpu_count(),
           "args": vars(args)}
    for r in rows:
        if "profile" in r:
            print(r["name"])
            print(r["profile"])
        else:
            print(json.dumps(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
