#!/usr/bin/env python3
"""The batch size to train with, found three ways on one model, side by side:

(a) the true largest batch, by exhaustive search: doubling from 8, then a binary search at multiples of 8
    between the last size that fit and the first that ran out of memory (each trial one full training
    step; ``torch.cuda.empty_cache()`` between trials);
(b) ``ferry.AutoBatch``: its trials, seconds, chosen size, % of the true largest, and whether a probe ran
    out of memory;
(c) Lightning's ``BatchSizeFinder`` in ``binsearch`` mode (``Tuner(trainer).scale_batch_size``) on the same
    network, when ``lightning`` or ``pytorch_lightning`` is importable. Without it, a replica of its
    algorithm (start at 2, double until an OOM, then bisect until high - low <= 1), one full step per
    trial, is run instead and labelled as such;
(d) --steps training steps (200) at ferry's size, which must all run without running out of memory.

Models: ``resnet50`` (torchvision's ResNet-50 without weights, or the same architecture defined here when
torchvision is missing) on random 224x224 inputs with SGD (momentum 0.9), or ``transformer`` (an
nn.TransformerEncoder, 6 layers, d_model 512, 8 heads, at sequence length 512, with a token embedding and
an 8192-word output head) with SGD. Each trial step draws its inputs on the GPU.

Prints a Markdown table; --json PATH also writes every figure with the card, the date and the command.
Skips (exit 0) without torch or a GPU.

    python3 bindings/python/benchmarks/bench_autobatch.py [--model resnet50|transformer] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

try:
    import ferry
except ImportError:  # run from a checkout: use the package next to this script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import ferry

MiB = 1 << 20


def _skip(why: str) -> None:
    print(f"bench_autobatch: skipped: {why}")
    sys.exit(0)


# --- models ----------------------------------------------------------------------------------------------------


def _resnet50(torch: Any) -> Tuple[Any, str]:
    """torchvision's ResNet-50 (no weights), or the same architecture when torchvision is missing."""
    try:
        import torchvision

        return torchvision.models.resnet50(weights=None), f"torchvision {torchvision.__version__} resnet50"
    except ImportError:
        pass
    nn = torch.nn

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            cout = width * 4
            self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x: Any) -> Any:
            idt = x if self.down is None else self.down(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + idt)

    layers: List[Any] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                         nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
            cin = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000)]
    return nn.Sequential(*layers), "resnet50 (torchvision's architecture, defined in the benchmark)"


class _Transformer:  # built lazily: torch is imported in main()
    @staticmethod
    def build(torch: Any, seq: int, vocab: int) -> Any:
        nn = torch.nn

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = nn.Embedding(vocab, 512)
                self.pos = nn.Parameter(torch.zeros(1, seq, 512))
                layer = nn.TransformerEncoderLayer(512, 8, 2048, dropout=0.1, batch_first=True)
                self.encoder = nn.TransformerEncoder(layer, 6)
                self.head = nn.Linear(512, vocab)

            def forward(self, tokens: Any) -> Any:
                return self.head(self.encoder(self.embed(tokens) + self.pos))

        return Net()


class Workload:
    """One network, its optimizer, and one full training step at a given batch size."""

    def __init__(self, torch: Any, kind: str, device: Any, seq: int, vocab: int) -> None:
        self.torch, self.kind, self.device, self.seq, self.vocab = torch, kind, device, seq, vocab
        if kind == "resnet50":
            net, self.desc = _resnet50(torch)
        else:
            net = _Transformer.build(torch, seq, vocab)
            self.desc = f"nn.TransformerEncoder 6x512, 8 heads, seq {seq}, vocab {vocab}"
        self.net = net.to(device).train()
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9)

    def inputs(self, b: int) -> Tuple[Any, Any]:
        torch = self.torch
        if self.kind == "resnet50":
            x = torch.randn(b, 3, 224, 224, device=self.device)
            y = torch.randint(0, 1000, (b,), device=self.device)
        else:
            x = torch.randint(0, self.vocab, (b, self.seq), device=self.device)
            y = torch.randint(0, self.vocab, (b, self.seq), device=self.device)
        return x, y

    def loss(self, net: Any, x: Any, y: Any) -> Any:
        out = net(x)
        if self.kind == "resnet50":
            return self.torch.nn.functional.cross_entropy(out, y)
        return self.torch.nn.functional.cross_entropy(out.reshape(-1, self.vocab), y.reshape(-1))

    def step(self, b: int) -> None:
        self.opt.zero_grad(set_to_none=True)
        x, y = self.inputs(b)
        loss = self.loss(self.net, x, y)
        loss.backward()
        self.opt.step()

    def close(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        del self.net, self.opt


def _is_oom(torch: Any, exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and ("out of memory" in str(exc).lower() or "ALLOC_FAILED" in str(exc))


def _clean(torch: Any, w: Optional[Workload] = None) -> None:
    if w is not None and hasattr(w, "opt"):
        w.opt.zero_grad(set_to_none=True)
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def _try_step(torch: Any, w: Workload, b: int) -> bool:
    """One full step at b; False when it ran out of memory (cleaned up after)."""
    oom = False
    try:
        w.step(b)
        torch.cuda.synchronize()
    except BaseException as exc:  # noqa: BLE001
        if not _is_oom(torch, exc):
            raise
        oom = True
    if oom:
        _clean(torch, w)
    return not oom


# --- (a) exhaustive search ---------------------------------------------------------------------------------------


def exhaustive(torch: Any, w: Workload, upper: int) -> Dict[str, Any]:
    t0 = time.perf_counter()
    trials: List[Tuple[int, bool]] = []

    def run(b: int) -> bool:
        ok = _try_step(torch, w, b)
        trials.append((b, ok))
        _clean(torch, w)
        return ok

    lo, hi, b = 0, None, 8
    while b <= upper:
        if run(b):
            lo = b
            b *= 2
        else:
            hi = b
            break
    if hi is None:
        hi_bound = None  # never ran out of memory up to the bound
    else:
        while hi - lo > 8:
            mid = (lo + hi) // 2 // 8 * 8
            if mid <= lo:
                break
            if run(mid):
                lo = mid
            else:
                hi = mid
        hi_bound = hi
    return {"batch_size": lo, "first_oom": hi_bound, "capped": hi is None, "trials": len(trials),
            "seconds": time.perf_counter() - t0, "steps": trials}


# --- (b) ferry.AutoBatch --------------------------------------------------------------------------------------------


def autobatch(torch: Any, w: Workload, device: int, headroom: float, upper: int,
              fragmentation_bytes: Optional[int] = None) -> Dict[str, Any]:
    with ferry.AutoBatch(w.step, device=device, headroom=headroom, max_batch=upper,
                         fragmentation_bytes=fragmentation_bytes) as ab:
        size = ab.find()
        rep = ab.report()
    rep["seconds"] = rep.pop("elapsed_s")
    rep["batch_size"] = size
    return rep


# --- (c) Lightning ---------------------------------------------------------------------------------------------------


def _lightning() -> Optional[Any]:
    try:
        import lightning.pytorch as pl  # type: ignore

        return pl
    except ImportError:
        pass
    try:
        import pytorch_lightning as pl  # type: ignore

        return pl
    except ImportError:
        return None


def lightning_binsearch(torch: Any, pl: Any, w: Workload, device: int, steps_per_trial: int,
                        init_val: int, max_trials: int) -> Dict[str, Any]:
    """Tuner(trainer).scale_batch_size(model, mode="binsearch") on a LightningModule around the same network;
    a trial is one fit run at one batch size (counted at on_train_start)."""
    from torch.utils.data import DataLoader, Dataset

    class Indices(Dataset):
        def __len__(self) -> int:
            return 1 << 22  # far above any batch size: the finder never caps at the dataset's length

        def __getitem__(self, i: int) -> int:
            return i

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = w.net
            self.batch_size = init_val
            self.trial_sizes: List[List[Any]] = []  # [size, ran its first step]

        def train_dataloader(self) -> Any:
            return DataLoader(Indices(), batch_size=self.batch_size, num_workers=0)

        def on_train_start(self) -> None:
            self.trial_sizes.append([int(self.batch_size), False])

        def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
            if self.trial_sizes:
                self.trial_sizes[-1][1] = True

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = w.inputs(int(batch.shape[0]))
            return w.loss(self.net, x, y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9)

    w.opt.state.clear()  # the finder makes its own optimizer: drop ours (its momentum) while it runs
    module = Module()
    root = tempfile.mkdtemp(prefix="ferry-bench-lightning-")
    trainer = pl.Trainer(accelerator="gpu", devices=[device], max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=root)
    try:
        from lightning.pytorch.tuner import Tuner  # type: ignore
    except ImportError:
        from pytorch_lightning.tuner import Tuner  # type: ignore
    t0 = time.perf_counter()
    from_tuner = Tuner(trainer).scale_batch_size(module, mode="binsearch", steps_per_trial=steps_per_trial,
                                                 init_val=init_val, max_trials=max_trials)
    seconds = time.perf_counter() - t0
    sizes = module.trial_sizes
    del module, trainer
    _clean(torch, w)
    return {"batch_size": int(from_tuner), "trials": len(sizes), "seconds": seconds, "steps": sizes,
            "steps_per_trial": steps_per_trial, "kind": f"{pl.__name__} {pl.__version__} BatchSizeFinder binsearch"}


def lightning_replica(torch: Any, w: Workload, steps_per_trial: int, init_val: int, max_trials: int) -> Dict[str, Any]:
    """Lightning's binsearch scaling, re-run here step for step (its _run_binary_scaling): start at init_val,
    double after each success until an OOM, then bisect between the last success and the last failure until
    high - low <= 1; max_trials counts successes. Each trial runs steps_per_trial full steps."""
    t0 = time.perf_counter()
    steps: List[Tuple[int, bool]] = []
    low, high, new, count = 1, None, init_val, 0
    while True:
        _clean(torch, w)
        ok = True
        for _ in range(steps_per_trial):
            if not _try_step(torch, w, new):
                ok = False
                break
        steps.append((new, ok))
        if ok:
            count += 1
            if count > max_trials:
                break
            low = new
            if high:
                if high - low <= 1:
                    break
                new = (high + low) // 2
            else:
                new = new * 2
        else:
            high = new
            new = (high + low) // 2
            if high - low <= 1:
                break
    seconds = time.perf_counter() - t0
    _clean(torch, w)
    return {"batch_size": new, "trials": len(steps), "seconds": seconds, "steps": steps,
            "steps_per_trial": steps_per_trial,
            "kind": "replica of Lightning's binsearch (lightning not importable)"}


# --- (d) training at ferry's size -------------------------------------------------------------------------------------


def train(torch: Any, w: Workload, b: int, steps: int) -> Dict[str, Any]:
    w.net.to(w.device)  # Lightning's tuner hands the module back on the CPU
    _clean(torch, w)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    done, oom_at = 0, None
    for i in range(steps):
        try:
            w.step(b)
        except BaseException as exc:  # noqa: BLE001
            if not _is_oom(torch, exc):
                raise
            oom_at = i
            break
        done += 1
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    free, total = torch.cuda.mem_get_info()
    res = {"batch_size": b, "steps": done, "requested_steps": steps, "oom_at_step": oom_at, "seconds": seconds,
           "samples_per_s": done * b / seconds if seconds > 0 else 0.0,
           "max_allocated_bytes": int(torch.cuda.max_memory_allocated()),
           "max_reserved_bytes": int(torch.cuda.max_memory_reserved()), "free_bytes_after": int(free),
           "total_bytes": int(total)}
    if oom_at is not None:
        _clean(torch, w)
    return res


# --- main -------------------------------------------------------------------------------------------------------------


def _table(res: Dict[str, Any]) -> str:
    true = res["exhaustive"]["batch_size"]

    def pct(b: int) -> str:
        return f"{100.0 * b / true:.1f}%" if true else "n/a"

    rows = ["| method | trials | seconds | chosen size | % of true max | OOM during search |",
            "|---|---:|---:|---:|---:|---|"]
    ex = res["exhaustive"]
    ex_ooms = sum(1 for _, ok in ex["steps"] if not ok)
    rows.append(f"| exhaustive search (doubling, then binary at multiples of 8) | {ex['trials']} | {ex['seconds']:.1f} "
                f"| {true}{' (capped)' if ex['capped'] else ''} | 100% | {ex_ooms} trials |")
    for fb in res["ferry"]:
        rows.append(f"| ferry.AutoBatch (headroom {fb['headroom']:g}) | {fb['trials']} | {fb['seconds']:.1f} "
                    f"| {fb['batch_size']} | {pct(fb['batch_size'])} | {'yes' if fb['probe_oom'] else 'no'} |")
    lt = res.get("lightning")
    if lt is not None:
        ooms = sum(1 for _, ok in lt["steps"] if not ok)
        rows.append(f"| {lt['kind']}, steps_per_trial={lt['steps_per_trial']} | {lt['trials']} | {lt['seconds']:.1f} "
                    f"| {lt['batch_size']} | {pct(lt['batch_size'])} | {ooms} trials |")
    tr = res.get("training")
    if tr is not None:
        rows.append("")
        rows.append(f"Training at ferry's size {tr['batch_size']}: {tr['steps']}/{tr['requested_steps']} steps, "
                    f"{'no OOM' if tr['oom_at_step'] is None else 'OOM at step %d' % tr['oom_at_step']}, "
                    f"{tr['samples_per_s']:.0f} samples/s, peak allocated {tr['max_allocated_bytes'] / MiB:.0f} MiB, "
                    f"peak reserved {tr['max_reserved_bytes'] / MiB:.0f} MiB of {tr['total_bytes'] / MiB:.0f} MiB")
    return "\n".join(rows)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("resnet50", "transformer"), default="resnet50")
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--upper", type=int, default=4096, help="the exhaustive search's upper bound (default 4096)")
    ap.add_argument("--headroom", type=float, action="append",
                    help="ferry.AutoBatch headroom; repeat for several runs (default 0.05)")
    ap.add_argument("--steps", type=int, default=200, help="training steps at ferry's size (default 200)")
    ap.add_argument("--seq", type=int, default=512, help="the transformer's sequence length")
    ap.add_argument("--vocab", type=int, default=8192, help="the transformer's vocabulary")
    ap.add_argument("--lightning", choices=("auto", "real", "replica", "off"), default="auto",
                    help="auto: Lightning's finder when importable, else the replica of its algorithm")
    ap.add_argument("--lightning-steps-per-trial", type=int, default=1,
                    help="steps per Lightning trial (Lightning's default is 3; 1 matches ferry's one step a trial)")
    ap.add_argument("--lightning-init-val", type=int, default=2, help="Lightning's init_val (its default: 2)")
    ap.add_argument("--fragmentation-mb", type=int, default=None,
                    help="override AutoBatch's fragmentation allowance (default: measured)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    headrooms = args.headroom or [0.05]

    try:
        import torch
    except ImportError:
        _skip("torch is not installed")
    if not torch.cuda.is_available():
        _skip("no CUDA device visible to torch")
    device = torch.device("cuda", args.device)
    torch.cuda.set_device(device)
    torch.manual_seed(0)

    t_start = time.perf_counter()
    res: Dict[str, Any] = {
        "benchmark": "bench_autobatch",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "card": torch.cuda.get_device_name(device),
        "total_bytes": int(torch.cuda.mem_get_info(device)[1]),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "ferry": ferry.__version__,
        "model": args.model,
    }
    w = Workload(torch, args.model, device, args.seq, args.vocab)
    res["model_desc"] = w.desc

    # ferry first, on a fresh process: what a user who calls AutoBatch before training sees
    res["ferry"] = []
    for h in headrooms:
        frag = None if args.fragmentation_mb is None else args.fragmentation_mb << 20
        res["ferry"].append(autobatch(torch, w, args.device, h, args.upper, frag))
        _clean(torch, w)
    res["exhaustive"] = exhaustive(torch, w, args.upper)
    _clean(torch, w)

    pl = None if args.lightning in ("off", "replica") else _lightning()
    if args.lightning == "real" and pl is None:
        print("bench_autobatch: --lightning real, but neither lightning nor pytorch_lightning is importable",
              file=sys.stderr)
        return 2
    if pl is not None:
        res["lightning"] = lightning_binsearch(torch, pl, w, args.device, args.lightning_steps_per_trial,
                                               args.lightning_init_val, 25)
    elif args.lightning != "off":
        res["lightning"] = lightning_replica(torch, w, args.lightning_steps_per_trial, args.lightning_init_val, 25)

    if args.steps > 0:
        res["training"] = train(torch, w, res["ferry"][0]["batch_size"], args.steps)
    w.close()
    res["total_seconds"] = time.perf_counter() - t_start

    true = res["exhaustive"]["batch_size"]
    for fb in res["ferry"]:
        fb["percent_of_true_max"] = 100.0 * fb["batch_size"] / true if true else None
        fb["within_5_percent"] = bool(true) and abs(fb["batch_size"] - true) <= 0.05 * true
    if res.get("lightning") is not None and true:
        res["lightning"]["percent_of_true_max"] = 100.0 * res["lightning"]["batch_size"] / true

    print(f"## {res['model_desc']} on {res['card']}, torch {res['torch']}, {res['date']}")
    print()
    print(_table(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    ok = res.get("training") is None or res["training"]["oom_at_step"] is None
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
