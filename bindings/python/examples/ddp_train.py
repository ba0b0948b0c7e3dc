#!/usr/bin/env python3
"""A DistributedDataParallel training loop fed by ferry, for torchrun.

    torchrun --nproc_per_node=2 bindings/python/examples/ddp_train.py --out run/ [--epochs 1]
    torchrun --nproc_per_node=2 ddp_train.py --out run/ --stop-after 20      # checkpoint, then die
    torchrun --nproc_per_node=1 ddp_train.py --out run2/ --resume run/state.json

Each rank opens a ferry Loader on its own GPU (LOCAL_RANK, read by ferry) over the same synthetic image
set, sharded by RANK/WORLD_SIZE (also read by ferry), with normalization and flips on the GPU; trains a
small CNN under DDP; logs loss and step time to a PerformanceMonitor that samples its GPU and the
pipeline and serves Prometheus on a base port plus the local rank; and writes, per rank:
``indices_rank<R>.npy`` (every sample index it consumed, in order), ``report_rank<R>.json`` and
``result_rank<R>.json`` (throughput, steps, the batch size the ranks agreed on, the scrape of every
rank's endpoint). ``--stop-after K`` writes the loader's state (the same on every rank) to
``state.json`` after K steps and exits at once, as a killed job would; ``--resume`` continues from such
a state under the current world size (fewer or more ranks): ferry shards the rest of the epoch so that
every remaining sample comes exactly once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

try:
    import ferry
except ImportError:  # run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import ferry


class Net(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 128, 3, padding=1)
        self.c2 = nn.Conv2d(128, 256, 3, padding=1, stride=2)
        self.c3 = nn.Conv2d(256, 512, 3, padding=1, stride=2)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.relu(self.c2(x))
        x = F.relu(self.c3(x))
        return self.fc(x.mean((2, 3)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=16384, help="images in the synthetic set")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=128, help="per-rank batch, before the ranks agree")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--stop-after", type=int, default=0, help="checkpoint after this many steps, then exit")
    p.add_argument("--resume", default=None, help="a state.json written by --stop-after")
    p.add_argument("--prometheus-base", type=int, default=9400)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    dev = torch.device("cuda", local)

    # Batch-size agreement: each rank sees a different budget; the reduce hook makes them agree on the
    # smallest recommendation (the memory issue's advisor, reduced with an all-reduce MIN).
    adv = ferry.BatchSizeAdvisor(multiple=8)
    for b in (32, 64, 128):
        adv.observe(b, (200 << 20) + b * (4 << 20))  # a model whose peak grows 4 MiB a sample
    budget = (200 << 20) + (args.batch + 16 * rank) * (4 << 20)
    local_batch = adv.recommend(budget)  # this rank alone: ranks with more memory would pick more
    adv.set_reduce(ferry.torch_min_reduce())
    batch = min(adv.recommend(budget), args.batch)  # all ranks: the smallest, the same everywhere

    rng = np.random.default_rng(0)  # the same data on every rank
    images = rng.integers(0, 256, size=(args.n, args.size, args.size, 3), dtype=np.uint8)
    labels = (images[:, 0, 0, 0].astype(np.int64) % 10)
    index = np.arange(args.n, dtype=np.int64)
    norm = ferry.Normalize(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), layout="CHW", dtype="float32", flip=0.5)
    loader = ferry.Loader({"image": images, "label": labels, "index": index}, batch, shuffle=True, seed=7,
                          transforms={"image": norm}, drop_last=False)
    if args.resume:
        state = json.loads(Path(args.resume).read_text())
        loader.load_state_dict(state)
    mon = ferry.PerformanceMonitor(gpu_interval=0.1, system_interval=0.5)
    mon.start_monitoring()
    mon.attach("train", loader)
    bound = mon.serve_prometheus(f":+{args.prometheus_base}")

    model = nn.parallel.DistributedDataParallel(Net().to(dev), device_ids=[local])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    consumed = []
    steps, samples = 0, 0
    dist.barrier()
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        if epoch > 0:
            loader.set_epoch(loader.state_dict()["epoch"])
        for b in loader:
            x, y = b["image"], b["label"]
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            consumed.append(b["index"].cpu().numpy())
            mon.log_metric("loss", loss.item())
            steps += 1
            samples += x.shape[0]
            if args.stop_after and steps == args.stop_after:
                torch.cuda.synchronize()
                state = loader.state_dict()
                states = [None] * world
                dist.all_gather_object(states, state)
                assert all(s == states[0] for s in states), states
                if rank == 0:
                    (out / "state.json").write_text(json.dumps(state))
                np.save(out / f"indices_rank{rank}.npy", np.concatenate(consumed))
                dist.barrier()
                os._exit(0)  # as a killed job: no clean shutdown
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    dist.barrier()
    # Scrape every rank's endpoint on this node (base port + local rank).
    scraped = {}
    for lr in range(int(os.environ.get("LOCAL_WORLD_SIZE", world))):
        url = f"http://127.0.0.1:{args.prometheus_base + lr}/metrics"
        try:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            scraped[url] = [ln for ln in text.splitlines() if ln.startswith(("ferry_loss_summary_count",
                                                                           "ferry_pipeline_samples_per_second{"))]
        except OSError as e:
            scraped[url] = f"error: {e}"
    dist.barrier()
    np.save(out / f"indices_rank{rank}.npy", np.concatenate(consumed) if consumed else np.zeros(0, np.int64))
    mon.write_report(out / f"report_rank{rank}.json")
    result = {"rank": rank, "world_size": world, "local_rank": local, "local_batch": local_batch, "batch": batch,
              "steps": steps,
              "samples": samples, "seconds": elapsed, "samples_per_second": samples / elapsed,
              "prometheus": bound, "scraped": scraped, "staging": loader.staging,
              "final_loss": mon.summary("loss")["last"] if steps else None}
    (out / f"result_rank{rank}.json").write_text(json.dumps(result, indent=2))
    mon.close()
    loader.close()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
