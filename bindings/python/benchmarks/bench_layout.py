#!/usr/bin/env python3
"""The image layout step on the GPU: ferry's kernel against torch eager, torch.compile and the
device-to-device copy ceiling, side by side on one card.

The op: a batch of uint8 images NHWC [256, 224, 224, 3] already on the device, to float16 NCHW,
normalized per channel with ImageNet's mean and std ((x/255 - mean)/std). "Effective" GB/s counts the
bytes the op must read and write (38.5 MB in, 77 MB out), as torch's benchmarks do; the copy ceiling is a
device-to-device copy of the same number of bytes, read + write. Each figure is the median of --reps
timed runs of --iters launches, timed with CUDA events. ferry's output is checked against torch eager
(float16 rounding) before it is timed, on fresh random data with the output poisoned first.

    python3 bindings/python/benchmarks/bench_layout.py [--batch 256] [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

try:
    import ferry
except ImportError:  # run from a checkout: use the package next to this script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import ferry

import torch

from ferry import _lib
from ferry._errors import _check

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def time_op(fn: Callable[[], Any], iters: int, reps: int) -> float:
    """Median seconds per call of fn over reps runs of iters calls, on the current stream."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / iters)
    return statistics.median(times)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--no-compile", action="store_true", help="leave out torch.compile")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)

    dev = torch.device("cuda", 0)
    B, S = args.batch, args.size
    x = torch.randint(0, 256, (B, S, S, 3), dtype=torch.uint8, device=dev)
    out = torch.empty((B, 3, S, S), dtype=torch.float16, device=dev)
    moved = x.numel() + out.numel() * 2
    mean = torch.tensor(MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=dev).view(1, 3, 1, 1)

    def eager(t: Any) -> Any:
        return ((t.permute(0, 3, 1, 2).float() / 255 - mean) / std).half()

    # ferry: the same op through ferry_transform_launch on torch's current stream.
    eng = ferry.Engine(0)
    keep: List[bytes] = []
    tr = ferry.Normalize(mean=MEAN, std=STD, layout="CHW", dtype="float16")._struct("image", keep)
    fld = _lib.FieldStruct(name=b"image", dtype=2, ndim=3)  # FERRY_DTYPE_UINT8
    for i, d in enumerate((S, S, 3)):
        fld.shape[i] = d
    dst = (ctypes.c_uint64 * 1)(out.data_ptr())
    lib = _lib.lib()

    def ferry_op() -> None:
        _check(lib.ferry_transform_launch(eng._h(), ctypes.byref(tr), ctypes.byref(fld), B, x.data_ptr(), dst, 1,
                                          ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)))

    # Correctness first: poisoned output, fresh random input, against torch eager.
    out.fill_(float("nan"))
    ferry_op()
    torch.cuda.synchronize()
    ref = eager(x)
    err = (out.float() - ref.float()).abs().max().item()
    ulp = (ref.float().abs() * 2.0 ** -10).clamp_min(2.0 ** -24)
    ok = bool(((out.float() - ref.float()).abs() <= ulp + 1e-6).all().item())
    print(f"ferry vs torch eager: max abs difference {err:.3g}, within one float16 ulp: {ok}")
    if not ok:
        print("ferry's output differs from torch's beyond float16 rounding", file=sys.stderr)
        return 1

    rows: List[Dict[str, Any]] = []

    def row(name: str, seconds: float, note: str) -> None:
        rows.append({"name": name, "us": seconds * 1e6, "GB_per_s": moved / seconds / 1e9, "note": note})

    row("ferry kernel (ferry_image_f16_chw)", time_op(ferry_op, args.iters, args.reps),
        "one launch, tiled, 16-byte loads/stores")
    row("torch eager", time_op(lambda: eager(x), args.iters, args.reps), "permute, float, /255, -mean, /std, half")
    if not args.no_compile:
        compiled = torch.compile(eager)
        compiled(x)
        row("torch.compile (default)", time_op(lambda: compiled(x), args.iters, args.reps), "one fused Triton kernel")
    src = torch.empty(moved // 2, dtype=torch.uint8, device=dev)
    cpy = torch.empty_like(src)
    row("device-to-device copy ceiling", time_op(lambda: cpy.copy_(src), args.iters, args.reps),
        f"{moved // 2 / 1e6:.1f} MB read + written")
    eng.close()

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "batch": B, "size": S, "bytes_moved": moved, "max_abs_diff_vs_eager": err,
    }
    print(f"# layout u8 NHWC -> f16 NCHW normalized, {B}x{S}x{S}x3, {env['device']}, {env['date']}\n")
    print("| what | µs | effective GB/s | note |\n|---|---:|---:|---|")
    for r in rows:
        print(f"| {r['name']} | {r['us']:.1f} | {r['GB_per_s']:.0f} | {r['note']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
