#!/usr/bin/env python3
"""Trains a ResNet-18 on CIFAR-10, fed by ferry or, for comparison, by torch's DataLoader.

    # the real data set: the directory of data_batch_1.bin .. data_batch_5.bin and test_batch.bin
    python bindings/python/examples/train_cifar.py --data cifar-10-batches-bin --epochs 2 --report run.html

    # the same format, written here: a learnable synthetic set of 50000 training images
    python train_cifar.py --synthetic 50000 --loader ferry --json ferry.json
    python train_cifar.py --synthetic 50000 --loader torch --workers 8 --json torch.json

    # the largest batch that fits, found by ferry.AutoBatch from a few probe steps (CUDA only)
    python train_cifar.py --synthetic 50000 --batch-size auto --max-batch 1024

With ``--loader ferry`` (the default) the uint8 records go to the GPU as they are and are normalized and
flipped there: ``ferry.Normalize(input_layout="CHW")`` reads CIFAR's channel planes. With ``--loader torch``
each sample is converted, normalized and flipped on the CPU in DataLoader workers, as torchvision's
transforms do, then copied to the GPU. Both loaders see the batches in the same order (the torch run takes
its batch order from ferry), and the model starts from the same weights for the same ``--seed``. With
``--no-flip`` both train on the same images up to float rounding (ferry computes ``x * scale + bias`` with
one rounding, torchvision divides twice, so about two thirds of the values differ in the last bit): the
loss curves start out equal and drift apart by a little, as any two runs do whose inputs differ by a
rounding.

Every step is timed the same way for both loaders: the wait for the next batch on the device, then the
forward, backward and optimizer step, then ``loss.item()`` (one sync per step, so host times are GPU times).
The script prints images/s, step times, the data stall (the share of the time spent waiting for batches),
the final loss and the test accuracy, per epoch and overall. ``--json`` writes them with the per-step
losses; ``--report`` writes ferry's PerformanceMonitor report (HTML, and JSON next to it).

The data writer (:func:`write_cifar10`) and reader (:func:`read_cifar10`) need numpy only: torch is
imported where the model and the training need it, so the writer can be used without torch.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

try:
    import ferry
except ImportError:  # run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import ferry

# The per-channel mean and standard deviation of CIFAR-10's training images, in [0, 1] units.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

RECORD_BYTES = 1 + 3 * 32 * 32  # a label byte, then 1024 R, 1024 G and 1024 B bytes
TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_FILE = "test_batch.bin"
CLASSES = 10


# --- data: the CIFAR-10 binary format ---------------------------------------------------------------


def _records(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """uint8 [N, 3073] records: the label byte, then the image's channel planes."""
    n = len(labels)
    return np.concatenate([labels.reshape(n, 1), images.reshape(n, RECORD_BYTES - 1)], axis=1)


def synthetic_cifar10(n: int, rng: np.random.Generator, templates: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """n learnable images, uint8 [n, 3, 32, 32], and their labels, uint8 [n]. Each image is its class's
    template blended with a distractor (another class's template, fainter), each shifted by up to 4
    pixels each way, with a random contrast and brightness and Gaussian noise. The templates are random
    colour blocks, not symmetric left-right, so a flip changes the image."""
    labels = rng.integers(0, CLASSES, n, dtype=np.uint8)
    images = np.empty((n, 3, 32, 32), np.uint8)
    channel = np.arange(3)[None, :, None, None]

    def shifted(classes: np.ndarray) -> np.ndarray:  # a random 32x32 window of each 40x40 template
        m = len(classes)
        rows = rng.integers(0, 9, m)[:, None] + np.arange(32)
        cols = rng.integers(0, 9, m)[:, None] + np.arange(32)
        return templates[classes[:, None, None, None], channel, rows[:, None, :, None], cols[:, None, None, :]]

    for start in range(0, n, 4096):  # in chunks, to bound the float32 temporaries
        lab = labels[start:start + 4096]
        m = len(lab)
        other = (lab + rng.integers(1, CLASSES, m)) % CLASSES
        x = 0.65 * shifted(lab) + 0.35 * shifted(other)
        contrast = rng.uniform(0.5, 1.0, (m, 1, 1, 1)).astype(np.float32)
        brightness = rng.uniform(-0.15, 0.15, (m, 1, 1, 1)).astype(np.float32)
        x = (x - 0.5) * contrast + 0.5 + brightness + 0.25 * rng.standard_normal(x.shape, dtype=np.float32)
        images[start:start + m] = np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)
    return images, labels


def write_cifar10(directory: Any, n_train: int, n_test: int, seed: int = 0
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Writes a synthetic data set in the CIFAR-10 binary format into ``directory``: ``n_train`` records
    split over data_batch_1.bin .. data_batch_5.bin (as evenly as possible, in order) and ``n_test`` in
    test_batch.bin. Deterministic for a seed. Returns (train images, train labels, test images, test
    labels) as written: images uint8 [N, 3, 32, 32], labels uint8 [N]."""
    if n_train < 5 or n_test < 1:
        raise ValueError(f"write_cifar10 needs 5 training records or more and a test record ({n_train}, {n_test})")
    rng = np.random.default_rng(seed)
    # One template per class: 8x8 random colours blown up to 32x32, wrapped to 40x40 for the shifts.
    coarse = rng.random((CLASSES, 3, 8, 8), dtype=np.float32)
    templates = np.pad(coarse.repeat(4, axis=2).repeat(4, axis=3), ((0, 0), (0, 0), (4, 4), (4, 4)), mode="wrap")
    x_train, y_train = synthetic_cifar10(n_train, rng, templates)
    x_test, y_test = synthetic_cifar10(n_test, rng, templates)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    records = _records(x_train, y_train)
    for name, part in zip(TRAIN_FILES, np.array_split(records, len(TRAIN_FILES))):
        part.tofile(out / name)
    _records(x_test, y_test).tofile(out / TEST_FILE)
    return x_train, y_train, x_test, y_test


def _read_records(paths: Sequence[Path]) -> Tuple[np.ndarray, np.ndarray]:
    parts = []
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file (a CIFAR-10 binary directory holds {', '.join(TRAIN_FILES)} "
                                    f"and {TEST_FILE})")
        raw = np.fromfile(p, dtype=np.uint8)
        if raw.size % RECORD_BYTES:
            raise ValueError(f"{p}: {raw.size} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 records")
        parts.append(raw.reshape(-1, RECORD_BYTES))
    records = np.concatenate(parts)
    images = np.ascontiguousarray(records[:, 1:]).reshape(-1, 3, 32, 32)
    labels = np.ascontiguousarray(records[:, 0])
    return images, labels


def read_cifar10(directory: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reads a CIFAR-10 binary directory into memory once: (train images, train labels, test images, test
    labels), images uint8 [N, 3, 32, 32] (C-contiguous), labels uint8 [N]."""
    d = Path(directory)
    x_train, y_train = _read_records([d / f for f in TRAIN_FILES])
    x_test, y_test = _read_records([d / TEST_FILE])
    return x_train, y_train, x_test, y_test


# --- the model ---------------------------------------------------------------------------------------


def resnet18(num_classes: int = CLASSES, width: int = 64) -> Any:
    """ResNet-18 for 32x32 images, the CIFAR variant: a 3x3 stem convolution with no max-pool, then
    BasicBlocks [2, 2, 2, 2] of ``width``, 2, 4 and 8 times ``width`` channels. (The classes are defined
    here so that importing this file does not import torch.)"""
    import torch.nn as nn
    import torch.nn.functional as F

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = nn.Sequential()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return F.relu(out + self.shortcut(x))

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(inplace=True))
            layers, cin = [], width
            for i, stride in enumerate((1, 2, 2, 2)):
                cout = width << i
                layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
                cin = cout
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, x):
            x = self.layers(self.stem(x))
            return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    return ResNet()


# --- the two loaders ---------------------------------------------------------------------------------


class FerryFeed:
    """Batches from ferry: the uint8 records cross to the device as they are, and ferry's Normalize turns
    them into normalized float32 (flipped with probability ``flip``) on the GPU, on the host on the CPU.

    With ``channels_last`` the batch is laid out [B, H, W, C] and handed to the model as the [B, C, H, W]
    view ``permute(0, 3, 1, 2)``: channels_last memory, which the convolutions want, at no extra cost."""

    name = "ferry"

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, flip: float,
                 device: Any, channels_last: bool) -> None:
        self.channels_last = channels_last
        norm = ferry.Normalize(CIFAR_MEAN, CIFAR_STD, input_layout="CHW", layout="HWC" if channels_last else "CHW",
                               flip=flip)
        self.loader = ferry.Loader({"image": images, "label": labels}, batch_size, shuffle=True, seed=seed,
                                   drop_last=True, device=str(device), transforms={"image": norm})
        self.staging = list(self.loader.staging)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> Iterator[Tuple[Any, Any]]:
        self.loader.set_epoch(epoch)
        for batch in self.loader:
            x = batch["image"]
            if self.channels_last:
                x = x.permute(0, 3, 1, 2)
            yield x, batch["label"].long()  # labels arrive as uint8 on the device

    def close(self) -> None:
        self.loader.close()


class FerryBatchOrder:
    """A DataLoader ``batch_sampler`` with ferry's batch order: a CPU ferry.Loader over the sample indices,
    with the same batch size, seed, shuffle and drop_last as the ferry run, so that both runs see the same
    batches. (ferry's shuffle is used, not re-implemented.)"""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.loader = ferry.Loader({"i": np.arange(n, dtype=np.int64)}, batch_size, shuffle=True, seed=seed,
                                   drop_last=True, device="cpu", output="numpy")

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self) -> Iterator[List[int]]:
        for batch in self.loader:
            yield batch["i"].tolist()

    def close(self) -> None:
        self.loader.close()


class CifarDataset:
    """The torch side: one sample at a time, transformed on the CPU as torchvision's ToTensor, Normalize
    and RandomHorizontalFlip do it: to float, /255, normalized per channel, flipped with probability
    ``flip``. Each worker draws its flips from its own generator, seeded from (seed, worker id)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, flip: float, seed: int) -> None:
        import torch

        self.images, self.labels, self.flip, self.seed = images, labels, flip, seed
        self.mean = torch.tensor(CIFAR_MEAN, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(CIFAR_STD, dtype=torch.float32).view(3, 1, 1)
        self.rng: Optional[np.random.Generator] = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        import torch

        if self.rng is None:  # made in the worker, on its first sample
            info = torch.utils.data.get_worker_info()
            self.rng = np.random.default_rng([self.seed, info.id if info is not None else 0])
        x = self.normalize(torch.from_numpy(self.images[index]))
        if self.flip > 0 and self.rng.random() < self.flip:
            x = x.flip(-1)
        return x, int(self.labels[index])

    def normalize(self, image: Any) -> Any:
        """uint8 [3, 32, 32] to float32, (x / 255 - mean) / std."""
        import torch

        return image.to(torch.float32).div_(255).sub_(self.mean).div_(self.std)


class TorchFeed:
    """Batches from torch.utils.data.DataLoader over :class:`CifarDataset`, in ferry's batch order,
    with pinned memory on CUDA and persistent workers, copied with ``.to(device, non_blocking=True)``."""

    name = "torch"

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, flip: float,
                 device: Any, channels_last: bool, workers: int) -> None:
        import torch

        self.device, self.channels_last = device, channels_last
        self.order = FerryBatchOrder(len(labels), batch_size, seed)
        self.loader = torch.utils.data.DataLoader(
            CifarDataset(images, labels, flip, seed), batch_sampler=self.order, num_workers=workers,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        self.staging = ["torch DataLoader", f"{workers} workers, per-sample transforms on the CPU"]

    def __len__(self) -> int:
        return len(self.order)

    def epoch(self, epoch: int) -> Iterator[Tuple[Any, Any]]:
        import torch

        self.order.set_epoch(epoch)
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)

    def close(self) -> None:
        # Dropping the DataLoader (and with it its iterator) stops the persistent workers.
        self.loader = None
        self.order.close()


# --- training ----------------------------------------------------------------------------------------


def lr_at(step: int, total: int, peak: float, warmup: float) -> float:
    """One cycle: linear warm-up over the first ``warmup`` fraction of the steps, then a cosine to zero."""
    w = max(1, int(round(warmup * total)))
    if step < w:
        return peak * (step + 1) / w
    return peak * 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def _stats(steps: List[Tuple[float, float]], samples: int, seconds: float) -> Dict[str, float]:
    """steps: (step seconds, data-wait seconds) per step."""
    step_ms = [s * 1e3 for s, _ in steps]
    wait = sum(w for _, w in steps)
    return {"steps": len(steps), "samples": samples, "seconds": seconds,
            "images_per_s": samples / seconds if seconds > 0 else float("nan"),
            "step_ms_p50": _percentile(step_ms, 50),
            "step_ms_mean": float(np.mean(step_ms)) if step_ms else float("nan"),
            "data_wait_ms_mean": wait * 1e3 / len(steps) if steps else float("nan"),
            "data_stall_pct": 100.0 * wait / seconds if seconds > 0 else float("nan")}


def evaluate(model: Any, images: np.ndarray, labels: np.ndarray, device: Any, autocast: Any,
             channels_last: bool, batch_size: int = 1000) -> float:
    """Top-1 accuracy on a test set, normalized with torch (no flip): the same for both loaders."""
    import torch

    mean = torch.tensor(CIFAR_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, device=device).view(1, 3, 1, 1)
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(labels), batch_size):
            x = torch.from_numpy(images[i:i + batch_size]).to(device).float().div_(255).sub_(mean).div_(std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(labels[i:i + batch_size]).to(device).long()
            with autocast():
                correct += int((model(x).argmax(1) == y).sum())
    model.train()
    return correct / len(labels)


def _device_name(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _table(rows: List[List[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="a CIFAR-10 binary directory (data_batch_1.bin .. 5, test_batch.bin)")
    src.add_argument("--synthetic", type=int, metavar="N", help="write N synthetic training records in the "
                     "CIFAR-10 binary format (and a test set), then train on them")
    p.add_argument("--synthetic-dir", help="where --synthetic writes its files (default: a temporary directory)")
    p.add_argument("--synthetic-test", type=int, metavar="N", help="test records of --synthetic (default: "
                   "max(1000, N/5))")
    p.add_argument("--loader", choices=("ferry", "torch"), default="ferry")
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available, else cpu)")
    p.add_argument("--batch-size", default="512", help="a number, or 'auto' (ferry.AutoBatch; CUDA only)")
    p.add_argument("--max-batch", type=int, default=1024, help="the largest batch --batch-size auto may pick")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: no limit)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: 0.1 * batch / 256)")
    p.add_argument("--warmup", type=float, default=0.15, help="the fraction of the steps spent warming up")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--width", type=int, default=64, help="channels of the first stage (64: ResNet-18)")
    p.add_argument("--amp", choices=("bf16", "off"), default="bf16", help="bf16 autocast on CUDA")
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers of --loader torch (0: none)")
    p.add_argument("--seed", type=int, default=0, help="model init, batch order, flips and synthetic data")
    p.add_argument("--log-every", type=int, default=50, help="print the loss every this many steps (0: never)")
    p.add_argument("--report", help="write ferry's monitor report here (.html), and as JSON next to it")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.batch_size != "auto":
        try:
            args.batch_size = int(args.batch_size)
        except ValueError:
            p.error(f"--batch-size {args.batch_size!r}: a positive number or 'auto'")
        if args.batch_size <= 0:
            p.error("--batch-size must be positive")
    if args.synthetic is not None and args.synthetic < 5:
        p.error("--synthetic needs 5 records or more (one data_batch file each at least)")
    if args.synthetic_test is not None and args.synthetic_test < 1:
        p.error("--synthetic-test must be positive")
    if args.report and not args.report.lower().endswith((".html", ".htm")):
        p.error(f"--report {args.report!r} must end in .html")
    if args.report and args.json and Path(args.json).resolve() == Path(args.report).with_suffix(".json").resolve():
        p.error(f"--json {args.json!r} is where --report writes its JSON report: pick another name")
    if args.workers < 0:
        p.error("--workers must be >= 0")
    args._parser = p
    return args


def train(feed: Any, train_step: Any, mon: Any, epochs: int, total: int, peak_lr: float, warmup: float,
          log_every: int) -> Tuple[List[float], List[Dict[str, Any]], Dict[str, float]]:
    """The training loop, timed the same way for every loader. Each step is the wait for the next batch on
    the device, then the training step, then ``loss.item()``. Returns the per-step losses, the per-epoch
    figures and the overall figures."""
    losses: List[float] = []
    every: List[Tuple[float, float]] = []  # (step seconds, data-wait seconds) of every step
    per_epoch: List[Dict[str, Any]] = []
    seconds = 0.0
    step = 0
    for epoch in range(epochs):
        if step >= total:
            break
        batches = feed.epoch(epoch)
        times: List[Tuple[float, float]] = []
        samples = 0
        t_epoch = time.perf_counter()
        while step < total:
            t0 = time.perf_counter()
            try:
                x, y = next(batches)  # the wait for the next batch, on the device
            except StopIteration:
                break
            t1 = time.perf_counter()
            loss = train_step(x, y, lr_at(step, total, peak_lr, warmup))
            value = loss.item()  # a sync every step: the host's times are the GPU's
            t2 = time.perf_counter()
            n = len(y)
            del x, y, loss  # let the batch go: ferry refills its slot
            times.append((t2 - t0, t1 - t0))
            losses.append(value)
            samples += n
            step += 1
            mon.log_metric("loss", value)
            mon.log_metric("step_ms", (t2 - t0) * 1e3)
            mon.log_metric("data_wait_ms", (t1 - t0) * 1e3)
            mon.log_metric("images_per_s", n / (t2 - t0))
            if log_every and step % log_every == 0:
                print(f"epoch {epoch} step {step}/{total}: loss {value:.4f}, {(t2 - t0) * 1e3:.1f} ms/step, "
                      f"data wait {(t1 - t0) * 1e3:.2f} ms")
        batches.close()  # an epoch cut short by --max-steps lets its batch go
        elapsed = time.perf_counter() - t_epoch
        seconds += elapsed
        every += times
        if times:
            per_epoch.append({"epoch": epoch, **_stats(times, samples, elapsed),
                              "loss_mean": float(np.mean(losses[-len(times):]))})
    overall = _stats(every, sum(e["samples"] for e in per_epoch), seconds)
    return losses, per_epoch, overall


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Runs the training that ``argv`` (default: sys.argv[1:]) describes and returns the results dict
    that ``--json`` writes."""
    import torch
    import torch.nn.functional as F

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    cuda = device.type == "cuda"
    if args.batch_size == "auto" and not cuda:
        args._parser.error("--batch-size auto needs a CUDA device: ferry.AutoBatch measures the memory of "
                           "probe steps with torch.cuda (give --batch-size N on the CPU)")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    channels_last = cuda  # NHWC convolutions are the fast ones on NVIDIA GPUs
    use_amp = cuda and args.amp == "bf16"
    flip = 0.0 if args.no_flip else 0.5

    # --- data, read into memory once
    if args.synthetic is not None:
        tmp = None if args.synthetic_dir else tempfile.TemporaryDirectory(prefix="cifar10-synthetic-")
        data_dir = Path(args.synthetic_dir or tmp.name)
        t = time.perf_counter()
        n_test = args.synthetic_test or max(1000, args.synthetic // 5)
        write_cifar10(data_dir, args.synthetic, n_test, args.seed)
        print(f"wrote {args.synthetic} synthetic training records in the CIFAR-10 format to {data_dir} "
              f"({time.perf_counter() - t:.1f} s)")
        x_train, y_train, x_test, y_test = read_cifar10(data_dir)
        if tmp is not None:
            tmp.cleanup()  # the arrays are in memory now
    else:
        data_dir = Path(args.data)
        x_train, y_train, x_test, y_test = read_cifar10(data_dir)
    print(f"train {x_train.shape} {x_train.dtype}, test {x_test.shape}, from {data_dir}")

    # --- model and optimizer: the same weights for the same seed, whichever loader
    torch.manual_seed(args.seed)
    model = resnet18(CLASSES, args.width).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=args.momentum, nesterov=True,
                          weight_decay=args.weight_decay)

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()

    def train_step(x, y, lr: float):
        for g in opt.param_groups:
            g["lr"] = lr
        with autocast():
            loss = F.cross_entropy(model(x), y)  # label smoothing 0, so that losses compare
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    # --- batch size
    autobatch_report = None
    if args.batch_size == "auto":
        batch_size, autobatch_report = find_batch_size(model, opt, train_step, device, channels_last,
                                                       args.max_batch, args.seed)
    else:
        batch_size = args.batch_size
    if batch_size > len(y_train):
        args._parser.error(f"batch size {batch_size} is larger than the {len(y_train)} training images")
    peak_lr = args.lr if args.lr is not None else 0.1 * batch_size / 256

    # --- the loader, the monitor and the training
    mon = ferry.PerformanceMonitor(start=True)  # GPU and host samplers in the background
    feed: Any = None
    try:
        if args.loader == "ferry":
            feed = FerryFeed(x_train, y_train, batch_size, args.seed, flip, device, channels_last)
            mon.attach("train", feed.loader)  # the pipeline's samples/s and data stall
        else:
            feed = TorchFeed(x_train, y_train, batch_size, args.seed, flip, device, channels_last, args.workers)
        print(f"loader {feed.name}: {len(feed)} batches of {batch_size} per epoch; staging: {feed.staging[0]} "
              f"({feed.staging[1]})")
        total = args.epochs * len(feed)
        if args.max_steps > 0:
            total = min(total, args.max_steps)
        losses, per_epoch, overall = train(feed, train_step, mon, args.epochs, total, peak_lr, args.warmup,
                                           args.log_every)
        test_acc = evaluate(model, x_test, y_test, device, autocast, channels_last)
        if args.report:
            mon.report_html(args.report)
            mon.write_report(str(Path(args.report).with_suffix(".json")))
    finally:
        if feed is not None:
            feed.close()
        mon.close()

    results: Dict[str, Any] = {
        "loader": feed.name, "device": _device_name(device), "batch_size": batch_size, "epochs": len(per_epoch),
        "steps": overall["steps"], "samples": overall["samples"], "seconds": overall["seconds"],
        "images_per_s": overall["images_per_s"], "step_ms_p50": overall["step_ms_p50"],
        "step_ms_mean": overall["step_ms_mean"], "data_wait_ms_mean": overall["data_wait_ms_mean"],
        "data_stall_pct": overall["data_stall_pct"],
        "final_loss": float(np.mean(losses[-20:])) if losses else float("nan"), "test_acc": test_acc,
        "per_epoch": per_epoch, "losses": losses, "staging": feed.staging, "lr": peak_lr,
        "amp": "bf16" if use_amp else "off", "flip": flip, "channels_last": channels_last, "width": args.width,
        "seed": args.seed, "workers": args.workers if args.loader == "torch" else None,
        "data": str(args.data) if args.data else f"synthetic {args.synthetic}",
        "train_images": int(len(y_train)), "test_images": int(len(y_test)), "autobatch": autobatch_report,
        "torch_version": torch.__version__, "ferry_version": ferry.version(),
        "command": shlex.join([sys.executable, str(Path(__file__).resolve())] + argv),
    }
    print_summary(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.report:
        print(f"report: {args.report} and {Path(args.report).with_suffix('.json')}")
    return results


def find_batch_size(model: Any, opt: Any, train_step: Any, device: Any, channels_last: bool, max_batch: int,
                    seed: int) -> Tuple[int, Dict[str, Any]]:
    """ferry.AutoBatch with probe steps on random data. The probes change the weights and the optimizer's
    state, so both are saved first and restored afterwards: the training starts where it would have."""
    import torch

    saved = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    gen = torch.Generator(device=device).manual_seed(seed)

    def probe(b: int) -> None:
        x = torch.randn(b, 3, 32, 32, device=device, generator=gen)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        train_step(x, torch.randint(0, CLASSES, (b,), device=device, generator=gen), 1e-3)

    with ferry.AutoBatch(probe, device=device.index, max_batch=max_batch, multiple=32) as ab:
        batch_size = ab.find()
        report = ab.report()
    model.load_state_dict(saved[0])
    opt.load_state_dict(saved[1])
    opt.zero_grad(set_to_none=True)
    gib = 1 << 30
    print(f"AutoBatch: batch size {batch_size} from {len(ab.trials)} steps in {ab.elapsed_s:.2f} s; budget "
          f"{(report['budget_bytes'] or 0) / gib:.2f} GiB")
    for t in ab.trials:
        peak = "out of memory" if t.oom else f"peak {t.peak_bytes / gib:.3f} GiB"
        print(f"  {t.phase:7s} batch {t.batch_size:5d}: {peak}, {t.seconds * 1e3:.0f} ms")
    print("AutoBatch report: " + json.dumps(report))
    return batch_size, report


def print_summary(r: Dict[str, Any]) -> None:
    rows = [["", "steps", "images/s", "step p50 ms", "step mean ms", "data stall %", "loss"]]
    for e in r["per_epoch"]:
        rows.append([f"epoch {e['epoch']}", str(e["steps"]), f"{e['images_per_s']:.0f}", f"{e['step_ms_p50']:.2f}",
                     f"{e['step_ms_mean']:.2f}", f"{e['data_stall_pct']:.1f}", f"{e['loss_mean']:.4f}"])
    rows.append(["overall", str(r["steps"]), f"{r['images_per_s']:.0f}", f"{r['step_ms_p50']:.2f}",
                 f"{r['step_ms_mean']:.2f}", f"{r['data_stall_pct']:.1f}", f"{r['final_loss']:.4f}"])
    print(f"\n{r['loader']} loader on {r['device']}, batch {r['batch_size']}, lr {r['lr']:g}, amp {r['amp']}, "
          f"flip {r['flip']}")
    print(_table(rows))
    print(f"final loss (mean of the last 20 steps) {r['final_loss']:.4f}, test accuracy {r['test_acc']:.2%}")


if __name__ == "__main__":
    main()
