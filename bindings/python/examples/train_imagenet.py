#!/usr/bin/env python3
"""Trains a ResNet on a JPEG folder (a folder per class, as torchvision's ImageFolder reads it), fed by
ferry or, for comparison, by torch's DataLoader.

    # your data: train/<class>/*.jpg
    python bindings/python/examples/train_imagenet.py --data imagenet/train --loader ferry --epochs 1

    # a learnable stand-in written here (each class its own tint and stripes), ResNet-18 at 64 px
    python train_imagenet.py --write 2000 --classes 10 --model resnet18 --size 64 --epochs 3 --loader ferry
    python train_imagenet.py --write 2000 --classes 10 --model resnet18 --size 64 --epochs 3 --loader torch

With ``--loader ferry``, ``ferry.ImageFolderSource`` reads the files and ``ferry.RandomResizedCrop`` decodes
them (JPEG through libjpeg-turbo, as Pillow decodes), crops, resizes, flips and normalizes them in the
loader's worker threads; the batch then goes to the GPU. With ``--loader torch``, torchvision's
``ImageFolder`` and ``RandomResizedCrop`` + ``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize`` run in
``--workers`` DataLoader processes. The script prints images/s, the data stall (the share of the loop spent
waiting for batches) and the loss per epoch; ``--json`` writes them with the per-step losses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

try:
    import ferry
except ImportError:  # run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import ferry

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_folder(root: str, n: int, classes: int, seed: int = 0) -> None:
    """n JPEGs of 96-160 x 96-160 pixels in `classes` class folders, each class a tint and a stripe period,
    with noise: learnable, so that the loss falls."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    tints = rng.uniform(40, 215, size=(classes, 3))
    for k in range(n):
        c = k % classes
        h, w = int(rng.integers(96, 161)), int(rng.integers(96, 161))
        y = np.arange(h)[:, None, None]
        stripes = 30 * np.sin(2 * np.pi * y / (6 + 3 * c))
        img = tints[c] + stripes + rng.normal(0, 20, size=(h, w, 3))
        d = os.path.join(root, f"class{c:03d}")
        os.makedirs(d, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(d, f"{k:06d}.jpg"), quality=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="a folder per class of image files")
    p.add_argument("--write", type=int, default=0, help="write this many learnable stand-in JPEGs first")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--loader", choices=["ferry", "torch"], default="ferry")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    args = p.parse_args()

    import torch
    import torchvision

    tmp = None
    if args.write:
        tmp = tempfile.TemporaryDirectory()
        args.data = tmp.name
        write_folder(args.data, args.write, args.classes, args.seed)
    if not args.data:
        p.error("give --data DIR or --write N")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    if args.loader == "ferry":
        src = ferry.ImageFolderSource(args.data)
        classes = len({src.sample_name(i).split(os.sep)[-2] for i in range(len(src))})
        crop = ferry.RandomResizedCrop(args.size, flip=0.5, mean=MEAN, std=STD)
        loader = ferry.Loader(src, args.batch_size, shuffle=True, seed=args.seed, workers=args.workers,
                              transforms={"image": crop}, device=0 if dev.type == "cuda" else None)
        n_images = len(src)
    else:
        from torchvision import transforms as T

        tf = T.Compose([T.RandomResizedCrop(args.size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
        ds = torchvision.datasets.ImageFolder(args.data, tf)
        classes = len(ds.classes)
        loader = torch.utils.data.DataLoader(ds, args.batch_size, shuffle=True, num_workers=args.workers,
                                             pin_memory=dev.type == "cuda", persistent_workers=args.workers > 0)
        n_images = len(ds)

    model = getattr(torchvision.models, args.model)(num_classes=classes).to(dev)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    results: Dict[str, Any] = {"loader": args.loader, "model": args.model, "images": n_images, "epochs": []}
    losses: List[float] = []
    for epoch in range(args.epochs):
        model.train()
        stall = 0.0
        seen = 0
        t_epoch = time.perf_counter()
        it = iter(loader) if args.loader == "torch" else ((b["image"], b["label"]) for b in loader)
        while True:
            t0 = time.perf_counter()
            try:
                x, y = next(it)
            except StopIteration:
                break
            x = x.to(dev, non_blocking=True).float().contiguous(memory_format=torch.channels_last)
            y = y.to(dev, non_blocking=True).long()
            stall += time.perf_counter() - t0
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            seen += x.shape[0]
        wall = time.perf_counter() - t_epoch
        last = float(np.mean(losses[len(losses) - (seen + args.batch_size - 1) // args.batch_size:]))
        row = {"epoch": epoch, "images_per_s": seen / wall, "stall_percent": 100 * stall / wall, "loss": last}
        results["epochs"].append(row)
        print(f"epoch {epoch}: {seen / wall:.0f} images/s, data stall {100 * stall / wall:.1f}%, mean loss {last:.4f}",
              flush=True)
    results["losses"] = losses
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if args.loader == "ferry":
        loader.close()
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
