"""Regenerates the Megatron reference fixtures of this directory with megatron-core itself.

The corpora (corpus_u16.bin/.idx, corpus_i32.bin/.idx) are written by megatron-core's
IndexedDatasetBuilder from seeded random documents; each fixture (*.json.gz) is what megatron-core's
BlendedMegatronDatasetBuilder builds for one configuration: the document, sample and shuffle index of every
GPTDataset, the dataset and dataset-sample index of a BlendedDataset, and the first samples in full
(tokens, labels, loss_mask, position_ids). The Go tests (engine/data/megatron_fixtures_test.go) rebuild
the same indices and samples with ferry and compare them element by element.

Needs torch (the CPU build is enough), numpy and megatron-core (whose wheel carries its C++ helpers).
Run it from this directory:

    pip install torch numpy megatron-core
    python generate.py            # rewrites the files here
    python generate.py --out DIR  # writes them to DIR, e.g. to compare another megatron-core version
"""

import argparse
import gzip
import json
import os
import tempfile

import numpy
import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = 12  # samples kept in full per fixture (the first SAMPLES, and the last)


class Tokenizer:
    """The little of a tokenizer GPTDatasetConfig reads: the vocabulary size and the EOD id."""

    def __init__(self, vocab_size, eod):
        self.vocab_size = vocab_size
        self.eod = eod
        self.unique_identifiers = {"class": "Tokenizer", "vocab_size": vocab_size, "eod": eod}


def write_corpus(prefix, dtype, vocab, ndocs, mean_len, seed):
    """Seeded random documents, each ending in EOD (vocab-1), some split into two sequences."""
    rs = numpy.random.RandomState(seed)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for _ in range(ndocs):
        n = max(1, int(rs.lognormal(numpy.log(mean_len), 0.8)))
        doc = rs.randint(0, vocab - 1, size=n + 1).astype(numpy.int64)
        doc[-1] = vocab - 1
        if n > 8 and rs.rand() < 0.3:
            cut = int(rs.randint(1, n))
            lengths = [cut, n + 1 - cut]
        else:
            lengths = [n + 1]
        builder.add_document(torch.from_numpy(doc), lengths)
    builder.finalize(prefix + ".idx")


CORPORA = {
    "corpus_u16": dict(dtype=numpy.uint16, vocab=50257, ndocs=500, mean_len=28, seed=1),
    "corpus_i32": dict(dtype=numpy.int32, vocab=100000, ndocs=240, mean_len=45, seed=2),
    "corpus_u16b": dict(dtype=numpy.uint16, vocab=50257, ndocs=300, mean_len=60, seed=3),
}

# name: (prefixes, weights, seq_len, seed, split, split index, size, eod_mask_loss, reset_position_ids)
CONFIGS = {
    "one_epoch": (["corpus_u16"], None, 32, 1234, "969,30,1", 0, None, False, False),
    "epochs_separate_last": (["corpus_u16"], None, 64, 42, "90,8,2", 0, 700, True, True),
    "epochs_joint_last": (["corpus_u16"], None, 8, 7, "100,0,0", 0, 6800, True, False),
    "valid_split": (["corpus_u16"], None, 16, 1234, "969,30,1", 1, 40, False, True),
    "long_seq_int32": (["corpus_i32"], None, 512, 99, "98,2,0", 0, 50, True, True),
    "blend_two": (["corpus_u16", "corpus_u16b"], [0.3, 0.7], 64, 1234, "98,2,0", 0, 400, True, True),
    "blend_three": (["corpus_u16b", "corpus_u16", "corpus_u16"], [2, 1, 1], 24, 5, "90,10,0", 0, 900, False, False),
}


def listed(a):
    return numpy.asarray(a).astype(numpy.int64).reshape(-1).tolist()


def main():
    parser = argparse.ArgumentParser(description="Regenerates the Megatron reference fixtures.")
    parser.add_argument("--out", default=HERE, help="where to write them (default: this directory)")
    out = parser.parse_args().out
    os.makedirs(out, exist_ok=True)
    # Some megatron-core versions ask for the rank when they build a blend: one process, rank 0.
    if not torch.distributed.is_initialized():
        rendezvous = tempfile.NamedTemporaryFile(delete=False)
        torch.distributed.init_process_group(
            "gloo", init_method="file://" + rendezvous.name, rank=0, world_size=1
        )
    for name, c in CORPORA.items():
        write_corpus(os.path.join(out, name), c["dtype"], c["vocab"], c["ndocs"], c["mean_len"], c["seed"])
    for name, (prefixes, weights, seq_len, seed, split, which, size, mask, reset) in CONFIGS.items():
        vocab = max(CORPORA[p]["vocab"] for p in prefixes)
        eod = CORPORA[prefixes[0]]["vocab"] - 1
        with tempfile.TemporaryDirectory() as cache:
            blend = ([os.path.join(out, p) for p in prefixes], weights)
            config = GPTDatasetConfig(
                random_seed=seed,
                sequence_length=seq_len,
                blend=blend,
                split=split,
                path_to_cache=cache,
                tokenizer=Tokenizer(vocab, eod),
                reset_position_ids=reset,
                reset_attention_mask=False,
                eod_mask_loss=mask,
                create_attention_mask=False,
            )
            sizes = [None, None, None]
            sizes[which] = size
            if weights is not None:  # a weighted blend needs a size for every split
                sizes = [size if i == which else 10 for i in range(3)]
            built = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()
            top = built[which]
            parts = top.datasets if hasattr(top, "datasets") else [top]
            fixture = {
                "generator": "megatron-core " + __import__("megatron.core").core.__version__,
                "prefixes": prefixes,
                "weights": weights,
                "seq_len": seq_len,
                "seed": seed,
                "split": split,
                "which": which,
                "size": size,
                "eod": eod,
                "eod_mask_loss": mask,
                "reset_position_ids": reset,
                "datasets": [
                    {
                        "num_samples": d.num_samples,
                        "len": len(d),
                        "document_index": listed(d.document_index),
                        "sample_index": listed(d.sample_index),
                        "shuffle_index": listed(d.shuffle_index),
                    }
                    for d in parts
                ],
                "blend": None,
                "len": len(top),
            }
            if hasattr(top, "dataset_index"):
                fixture["blend"] = {
                    "dataset_index": listed(top.dataset_index),
                    "dataset_sample_index": listed(top.dataset_sample_index),
                }
            positions = list(range(min(SAMPLES, len(top)))) + [len(top) - 1]
            items = [top[p] for p in positions]
            fixture["samples"] = {
                "positions": positions,
                "tokens": [listed(it["tokens"]) for it in items],
                "labels": [listed(it["labels"]) for it in items],
                "loss_mask": [numpy.asarray(it["loss_mask"]).astype(float).tolist() for it in items],
                "position_ids": [listed(it["position_ids"]) for it in items],
            }
        text = json.dumps(fixture, separators=(",", ":")).encode()
        with open(os.path.join(out, name + ".json.gz"), "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:  # byte-stable output
                f.write(text)
        print(name, "windows", [d["len"] for d in fixture["datasets"]], "blend", fixture["len"])


if __name__ == "__main__":
    main()
