"""Megatron corpora: start-up and throughput of ferry's GPTSource beside megatron-core's GPTDataset.

Start-up (CPU only): a synthetic corpus of --tokens tokens per size (documents of lognormal length, mean
about 560 tokens; the .bin is a sparse file, since index builds read only the .idx) is opened by

  * megatron-core: BlendedMegatronDatasetBuilder building GPTDataset's indices (cold, into an empty cache
    directory) and loading them again (cached), for the split "100,0,0" (one split: the same work as ferry's),
  * ferry order="megatron": built (no cache) and mapped from its cache,
  * ferry order="ferry": nothing to build,

each the median of --repeats runs, in this process (megatron-core's C++ helpers compiled beforehand).

Throughput (--throughput, needs a GPU, torch and a real corpus written here with random tokens):
int64 x/y (+ loss mask and position ids) on the device, tokens/s, for ferry's Loader in both orders and for
megatron-core's GPTDataset in a torch DataLoader (8 workers, pin_memory) copied to the GPU.

    python bench_megatron.py --tokens 1e9 --tokens 1e10 --json out.json
    python bench_megatron.py --throughput --seq-len 2048 --seq-len 8192 --batch 8 --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import ferry  # noqa: E402

EOD = 50256


def write_corpus(d: str, ntok: int, real: bool, seed: int = 1) -> str:
    """A Megatron corpus of about ntok uint16 tokens in documents of lognormal length (one sequence each);
    with real, random tokens each ending in EOD, else a sparse .bin."""
    rng = np.random.default_rng(seed)
    lengths = []
    total = 0
    while total < ntok:
        part = np.maximum(1, np.exp(6.0 + 0.8 * rng.standard_normal(1 << 20))).astype(np.int32)
        lengths.append(part)
        total += int(part.sum(dtype=np.int64))
    lengths = np.concatenate(lengths)
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths, dtype=np.int64), ntok)) + 1]
    prefix = os.path.join(d, "corpus_text_document")
    n = len(lengths)
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00" + np.array([1], "<u8").tobytes() + bytes([8]))
        f.write(np.array([n, n + 1], "<u8").tobytes() + lengths.astype("<i4").tobytes())
        ptr = np.zeros(n, dtype=np.int64)
        np.cumsum(lengths[:-1], dtype=np.int64, out=ptr[1:])
        f.write((ptr * 2).astype("<i8").tobytes())
        f.write(np.arange(n + 1, dtype="<i8").tobytes())
    total = int(lengths.sum(dtype=np.int64))
    with open(prefix + ".bin", "wb") as f:
        if not real:
            f.truncate(2 * total)
        else:
            for lo in range(0, n, 1 << 16):
                ls = lengths[lo:lo + (1 << 16)]
                toks = rng.integers(0, EOD, size=int(ls.sum()), dtype=np.uint16)
                toks[np.cumsum(ls) - 1] = EOD
                f.write(toks.tobytes())
    return prefix


class _Tokenizer:
    def __init__(self):
        self.vocab_size = EOD + 1
        self.eod = EOD
        self.unique_identifiers = {"class": "bench", "vocab_size": self.vocab_size}


def megatron_config(prefix, seq_len, cache, seed=1234, split="100,0,0", masks=True):
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    return GPTDatasetConfig(random_seed=seed, sequence_length=seq_len, blend=([prefix], None), split=split,
                            path_to_cache=cache, tokenizer=_Tokenizer(), reset_position_ids=masks,
                            reset_attention_mask=False, eod_mask_loss=masks, create_attention_mask=False)


def megatron_build(prefix, seq_len, cache):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    return BlendedMegatronDatasetBuilder(GPTDataset, [None, None, None], lambda: True,
                                         megatron_config(prefix, seq_len, cache)).build()[0]


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def startup_row(prefix: str, d: str, seq: int, repeats: int, have_mc: bool) -> dict:
    """The start-up times of one corpus."""
    row = {}
    gpt = dict(order="megatron", seed=1234, split="100,0,0")
    if have_mc:
        def cold():
            with tempfile.TemporaryDirectory(dir=d) as c:
                megatron_build(prefix, seq, c)
        row["megatron_core_cold_s"] = median_time(cold, repeats)
        warm = os.path.join(d, "mc-cache")
        megatron_build(prefix, seq, warm)
        row["megatron_core_cached_s"] = median_time(lambda: megatron_build(prefix, seq, warm), repeats)
    row["ferry_megatron_cold_s"] = median_time(
        lambda: ferry.GPTSource(prefix, seq, cache=False, **gpt).close(), repeats)
    cache = os.path.join(d, "ferry-cache")
    ferry.GPTSource(prefix, seq, cache_dir=cache, **gpt).close()
    row["ferry_megatron_cached_s"] = median_time(
        lambda: ferry.GPTSource(prefix, seq, cache_dir=cache, **gpt).close(), repeats)
    row["ferry_order_s"] = median_time(lambda: ferry.GPTSource(prefix, seq).close(), repeats)
    return row


def startup(args, results):
    try:
        import megatron.core  # noqa: F401
        have_mc = True
    except ImportError:
        have_mc = False
        print("megatron-core is not installed: its start-up is not measured")
    for ntok in args.tokens:
        ntok = int(float(ntok))
        with tempfile.TemporaryDirectory(dir=args.dir) as d:
            t0 = time.perf_counter()
            prefix = write_corpus(d, ntok, real=False)
            print(f"corpus of {ntok / 1e9:g} G tokens written in {time.perf_counter() - t0:.1f} s")
            row = {"tokens": ntok, "seq_len": args.startup_seq_len}
            row.update(startup_row(prefix, d, args.startup_seq_len, args.repeats, have_mc))
            print(json.dumps(row))
            results.setdefault("startup", []).append(row)


def throughput(args, results):
    import torch

    dev = torch.device("cuda", 0)
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        prefix = write_corpus(d, int(float(args.throughput_tokens)), real=True)
        for seq in args.seq_len:
            for batch in args.batch:
                steps = max(20, args.tokens_per_case // (seq * batch))
                row = {"seq_len": seq, "batch": batch}
                shift = ferry.ShiftTokens(loss_mask="loss_mask", position_ids="position_ids", eod=EOD, mask_eod=True,
                                          reset_positions=True)
                for order in ("ferry", "megatron"):
                    src = ferry.GPTSource(prefix, seq, order=order, seed=1234, cache=False)
                    with ferry.Loader(src, batch, shuffle=order == "ferry", seed=1, device=0,
                                      transforms={"tokens": shift}) as loader:
                        it = iter(loader)
                        for _ in range(5):
                            next(it)
                        torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        n = 0
                        for _ in range(steps):
                            try:
                                b = next(it)
                            except StopIteration:
                                it = iter(loader)
                                b = next(it)
                            n += b["x"].shape[0] * seq
                        torch.cuda.synchronize()
                        row[f"ferry_{order}_Mtok_s"] = n / (time.perf_counter() - t0) / 1e6
                    src.close()
                try:
                    from megatron.core.datasets.gpt_dataset import GPTDataset  # noqa: F401
                except ImportError:
                    print("megatron-core is not installed: its throughput is not measured")
                else:
                    ds = megatron_build(prefix, seq, os.path.join(d, "mc-cache"))
                    dl = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=8, pin_memory=True,
                                                     persistent_workers=True, prefetch_factor=4)
                    it = iter(dl)
                    for _ in range(5):
                        next(it)
                    t0 = time.perf_counter()
                    n = 0
                    for _ in range(min(steps, len(dl) - 6)):
                        b = next(it)
                        keys = ("tokens", "labels", "loss_mask", "position_ids")
                        out = {k: b[k].to(dev, non_blocking=True) for k in keys}
                        n += out["tokens"].shape[0] * seq
                    torch.cuda.synchronize()
                    row["megatron_core_dataloader_Mtok_s"] = n / (time.perf_counter() - t0) / 1e6
                print(json.dumps(row))
                results.setdefault("throughput", []).append(row)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", action="append", help="corpus sizes for the start-up (default 1e9)")
    p.add_argument("--startup-seq-len", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--throughput", action="store_true")
    p.add_argument("--throughput-tokens", default="5e8")
    p.add_argument("--tokens-per-case", type=int, default=200_000_000)
    p.add_argument("--seq-len", type=int, action="append")
    p.add_argument("--batch", type=int, action="append")
    p.add_argument("--skip-startup", action="store_true")
    p.add_argument("--dir", default=None, help="where the corpora are written (default: the temp directory)")
    p.add_argument("--json")
    args = p.parse_args()
    args.tokens = args.tokens or ["1e9"]
    args.seq_len = args.seq_len or [2048, 8192]
    args.batch = args.batch or [8, 32]
    results = {"ferry": ferry.__version__}
    if not args.skip_startup:
        startup(args, results)
    if args.throughput:
        throughput(args, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
