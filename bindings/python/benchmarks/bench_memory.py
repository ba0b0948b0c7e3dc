#!/usr/bin/env python3
"""Cost of a memory check from Python: ferry's calls side by side with PyTorch's.

Each row is the median over repeats of a timed loop (time.perf_counter_ns); each loop is sized to run
about --seconds. Prints a Markdown table; --json PATH also writes the results with the device and date.

    python3 bindings/python/benchmarks/bench_memory.py [--device N|-1] [--json out.json]

Runs without a GPU too (on the CPU engine, device -1); the GPU-only rows are then left out.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional

try:
    import ferry
except ImportError:  # run from a checkout: use the package next to this script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import ferry

from ferry import _lib


def _time_loop(fn: Callable[[], object], n: int) -> int:
    """Runs fn n times; returns the elapsed nanoseconds."""
    loop = range(n)
    t0 = time.perf_counter_ns()
    for _ in loop:
        fn()
    return time.perf_counter_ns() - t0


def measure(fn: Callable[[], object], seconds: float, repeats: int) -> Dict[str, float]:
    """Returns ns/call: the median of `repeats` loops, each sized to about `seconds`."""
    for _ in range(100):  # warm-up
        fn()
    n = 100
    while True:  # size the loop
        elapsed = _time_loop(fn, n)
        if elapsed >= seconds * 1e9 / 10 or n >= 1 << 26:
            break
        n *= 4
    n = max(10, int(n * seconds * 1e9 / max(elapsed, 1)))
    samples = [_time_loop(fn, n) / n for _ in range(repeats)]
    return {
        "ns_per_call": statistics.median(samples),
        "min_ns_per_call": min(samples),
        "max_ns_per_call": max(samples),
        "calls_per_loop": n,
        "repeats": repeats,
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(device: int, seconds: float, repeats: int) -> Dict[str, object]:
    rows: List[Dict[str, object]] = []

    def add(name: str, fn: Callable[[], object]) -> None:
        r = measure(fn, seconds, repeats)
        r["name"] = name
        rows.append(r)

    engine = ferry.Engine(device)
    mm = ferry.MemoryManager(device=device)
    try:
        lib = _lib.lib()
        snap = _lib.MemorySnapshotStruct()
        snap.size = ctypes.sizeof(snap)
        handle, ref = engine._handle, ctypes.byref(snap)
        declared = lib.ferry_memory_check  # argtypes declared: ctypes converts each argument
        undeclared = lib._FuncPtr(("ferry_memory_check", lib))  # what MemoryManager binds

        # Spin for a while first so that the first row does not pay for clock ramp-up.
        measure(partial(declared, handle, ref), seconds, 3)

        add("ctypes ferry_memory_check (declared argtypes, pre-bound args)", partial(declared, handle, ref))
        add("ctypes ferry_memory_check (undeclared copy, pre-bound args)", partial(undeclared, handle, ref))
        add("MemoryManager.check_memory()", mm.check_memory)
        add("Engine.memory_check() (dataclass)", engine.memory_check)
        add("Engine.memory_check_live() (dataclass)", engine.memory_check_live)

        torch_version = None
        if device >= 0:
            try:
                import torch
            except ImportError:
                torch = None
            if torch is not None and torch.cuda.is_available():
                torch_version = torch.__version__
                dev = torch.device("cuda", device)
                torch.cuda.set_device(dev)
                warm = torch.empty(64 << 20, dtype=torch.uint8, device=dev)  # context + allocator warm-up
                torch.cuda.synchronize(dev)
                add("torch.cuda.mem_get_info()", partial(torch.cuda.mem_get_info, dev))
                add("torch.cuda.memory_allocated()", partial(torch.cuda.memory_allocated, dev))
                add("torch.cuda.memory_reserved()", partial(torch.cuda.memory_reserved, dev))
                del warm
    finally:
        mm.close()
        engine.close()

    if device >= 0:
        device_name = ferry.device_info(device).name
    else:
        device_name = "CPU: " + _cpu_name()
    return {
        "benchmark": "memory_check",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "device_name": device_name,
        "host": platform.node(),
        "python": platform.python_version(),
        "ferry_version": ".".join(map(str, ferry.version())),
        "torch_version": torch_version,
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "seconds_per_loop": seconds,
        "rows": rows,
    }


def markdown(result: Dict[str, object]) -> str:
    lines = [
        f"memory check cost on {result['device_name']} (device {result['device']}), {result['date']}",
        "",
        "| call | ns/call | µs/call |",
        "|---|---:|---:|",
    ]
    for r in result["rows"]:  # type: ignore[union-attr]
        ns = r["ns_per_call"]
        lines.append(f"| {r['name']} | {ns:,.0f} | {ns / 1000:.3f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", type=int, default=None, help="CUDA ordinal, or -1 for the CPU engine "
                   "(default: 0 when a GPU is visible, else -1)")
    p.add_argument("--seconds", type=float, default=0.2, help="target duration of one timed loop")
    p.add_argument("--repeats", type=int, default=7, help="timed loops per row (the median is reported)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = p.parse_args(argv)
    if args.repeats < 5:
        p.error("--repeats must be at least 5")
    device = args.device
    if device is None:
        device = 0 if ferry.device_count() > 0 else ferry.CPU
    result = run(device, args.seconds, args.repeats)
    print(markdown(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
