#!/usr/bin/env python3
"""What logging a metric and summarizing it cost from Python: ferry's PerformanceMonitor against the
seed-style monitor (a dict appended per call, statistics by walking every value) and, when it is
installed, prometheus_client's Histogram.observe.

Rows:

* log per call: ``log_metric(name, value)`` in a loop of --calls calls, ns per call (median of --reps);
* log batched: ``log_metrics(name, ndarray)`` of --batch float64 values, ns per value;
* summary: the time to get count/mean/min/max/std (and ferry's p50..p999) after --n values, for
  1M values by default (and --big, e.g. 100M, for ferry alone: the seed would need tens of GB).

    python3 bindings/python/benchmarks/bench_monitor.py [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

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
    import prometheus_client
except ImportError:
    prometheus_client = None  # type: ignore[assignment]


class SeedMonitor:
    """The seed's PerformanceMonitor: a dict per log, statistics by walking every value."""

    def __init__(self) -> None:
        self.metrics: Dict[str, List[Dict[str, float]]] = defaultdict(list)

    def log_metric(self, name: str, value: float) -> None:
        self.metrics[name].append({"value": value, "timestamp": time.time()})

    def summary(self, name: str) -> Dict[str, float]:
        values = [m["value"] for m in self.metrics[name]]
        n = len(values)
        mean = sum(values) / n
        return {"count": n, "mean": mean, "max": max(values), "min": min(values),
                "std": math.sqrt(sum((v - mean) ** 2 for v in values) / n)}


def per_call(fn: Callable[[float], None], calls: int, reps: int) -> float:
    """Median ns per call of fn over reps runs of `calls` calls."""
    out = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn(0.5)
        out.append((time.perf_counter_ns() - t0) / calls)
    return statistics.median(out)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=1_000_000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=1 << 16)
    p.add_argument("--n", type=int, default=1_000_000, help="values before the summary rows")
    p.add_argument("--big", type=int, default=0, help="also a ferry summary after this many values (e.g. 100000000)")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    rows: List[Dict[str, Any]] = []

    def row(name: str, value: float, unit: str, note: str = "") -> None:
        rows.append({"name": name, "value": value, "unit": unit, "note": note})

    seed = SeedMonitor()
    row("seed-style log_metric (dict append)", per_call(lambda v: seed.log_metric("loss", v), args.calls, args.reps),
        "ns/call")
    mon = ferry.PerformanceMonitor(gpu_interval=None, system_interval=None)
    row("ferry log_metric", per_call(lambda v: mon.log_metric("loss", v), args.calls, args.reps), "ns/call",
        "buffered with its timestamp; folded in batches")
    if prometheus_client is not None:
        h = prometheus_client.Histogram("bench_loss", "loss", registry=prometheus_client.CollectorRegistry())
        row("prometheus_client Histogram.observe", per_call(lambda v: h.observe(v), args.calls, args.reps), "ns/call")
    if np is not None:
        arr = np.random.default_rng(0).random(args.batch)
        out = []
        for _ in range(args.reps * 10):
            t0 = time.perf_counter_ns()
            mon.log_metrics("batched", arr)
            out.append((time.perf_counter_ns() - t0) / args.batch)
        row(f"ferry log_metrics (numpy float64 x {args.batch})", statistics.median(out), "ns/value",
            "one call; folded at once")

    # Summaries after n values.
    seed2, mon2 = SeedMonitor(), ferry.PerformanceMonitor(gpu_interval=None, system_interval=None)
    for i in range(args.n):
        seed2.log_metric("x", i * 1e-3)
    if np is not None:
        vals = np.arange(args.n, dtype=np.float64) * 1e-3
        mon2.log_metrics("x", vals)
    else:
        for i in range(args.n):
            mon2.log_metric("x", i * 1e-3)
    t0 = time.perf_counter_ns()
    s_seed = seed2.summary("x")
    row(f"seed-style summary of {args.n:,} values", (time.perf_counter_ns() - t0) / 1e6, "ms")
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter_ns()
        s = mon2.summary("x")
        times.append((time.perf_counter_ns() - t0) / 1e6)
    row(f"ferry summary of {args.n:,} values", statistics.median(times), "ms", "count, mean, min, max, std, p50..p999")
    assert s["count"] == args.n and abs(s["mean"] - s_seed["mean"]) < 1e-6 * abs(s_seed["mean"]) + 1e-9, (s, s_seed)
    del seed2
    if args.big and np is not None:
        mon3 = ferry.PerformanceMonitor(gpu_interval=None, system_interval=None)
        chunk = np.random.default_rng(1).random(1 << 20)
        for done in range(0, args.big, len(chunk)):
            mon3.log_metrics("x", chunk[: min(len(chunk), args.big - done)])
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter_ns()
            s = mon3.summary("x")
            times.append((time.perf_counter_ns() - t0) / 1e6)
        assert s["count"] == args.big
        row(f"ferry summary of {args.big:,} values", statistics.median(times), "ms")
        mon3.close()
    mon.close()
    mon2.close()

    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "host": platform.node(), "python": platform.python_version(),
           "ferry": ".".join(map(str, ferry.version())), "numpy": getattr(np, "__version__", None),
           "prometheus_client": getattr(prometheus_client, "__version__", None) if prometheus_client else None}
    print(f"# metric logging from Python, {env['date']}\n")
    print("| what | cost | note |\n|---|---:|---|")
    for r in rows:
        print(f"| {r['name']} | {r['value']:.1f} {r['unit']} | {r['note']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
