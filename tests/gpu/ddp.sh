#!/usr/bin/env bash
# The multi-GPU run (on a host with 2 GPUs), from the bundle: one-GPU baseline, two ranks under torchrun
# with both Prometheus endpoints scraped and the reports merged, then a job killed after a checkpoint and
# resumed on one rank. Checks every rank's consumed indices: disjoint and covering. Results under $OUT
# (ddp.tar.gz holds every file; ddp_summary.txt is printed).
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/out}
work=$(mktemp -d)
export FERRY_LIBRARY="$here/lib/libferry.so" PYTHONPATH="$here/python" PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 # NVLink multicast stays off on these hosts
script="$here/python/examples/ddp_train.py"
run() { python3 -m torch.distributed.run --standalone "$@"; }
{
    nvidia-smi --query-gpu=index,name,pci.bus_id --format=csv,noheader
    echo "== one GPU"; run --nproc_per_node=1 "$script" --out "$work/one" --epochs 3 2>&1 | tail -3
    echo "== two GPUs"; run --nproc_per_node=2 "$script" --out "$work/two" --epochs 3 2>&1 | tail -3
    "$here/bin/ferry" report merge --out "$work/two/merged.json" "$work"/two/report_rank*.json
    echo "== two GPUs, killed after 30 steps"; run --nproc_per_node=2 "$script" --out "$work/kill" --stop-after 30 2>&1 | tail -3
    echo "== resumed on one GPU"; run --nproc_per_node=1 "$script" --out "$work/resume" --resume "$work/kill/state.json" 2>&1 | tail -3
    python3 - "$work" <<'PY'
import json, sys, glob
import numpy as np
w = sys.argv[1]
n = 16384
def idx(run):
    return [np.load(p) for p in sorted(glob.glob(f"{w}/{run}/indices_rank*.npy"))]
def res(run):
    return [json.load(open(p)) for p in sorted(glob.glob(f"{w}/{run}/result_rank*.json"))]
two = idx("two")
epochs = 3
first = [x[: len(x) // epochs] for x in two]  # each rank's first epoch
both = np.concatenate(first)
print("two ranks, epoch 0: per-rank samples", [len(x) for x in first], "overlap", len(np.intersect1d(first[0], first[1])),
      "covering every sample once:", sorted(both.tolist()) == list(range(n)))
print("two ranks, all epochs: each epoch covers every sample once:",
      all(sorted(np.concatenate([x[e * len(x) // epochs:(e + 1) * len(x) // epochs] for x in two]).tolist()) == list(range(n))
          for e in range(epochs)))
one, r2 = res("one"), res("two")
s1 = one[0]["samples_per_second"]
s2 = sum(r["samples_per_second"] for r in r2)
per = " + ".join("%.0f" % r["samples_per_second"] for r in r2)
print("throughput: one GPU %.0f samples/s; two GPUs %.0f (%s); speed-up %.2fx" % (s1, s2, per, s2 / s1))
print("batch per rank: alone", [r["local_batch"] for r in r2], "agreed", [r["batch"] for r in r2], "staging:", r2[0]["staging"])
for r in r2:
    print(f"rank {r['rank']} scraped:", json.dumps(r["scraped"]))
kill = idx("kill")
resume = idx("resume")
state = json.load(open(f"{w}/kill/state.json"))
allk = np.concatenate(kill + resume)
print("killed job state:", state)
print("kill+resume: before", sum(len(x) for x in kill), "after", sum(len(x) for x in resume),
      "every sample exactly once:", sorted(allk.tolist()) == list(range(n)))
PY
} 2>&1 | tee "$work/ddp_summary.txt"
tar -C "$work" -czf "$out/ddp.tar.gz" . && cp "$work/ddp_summary.txt" "$out/"
