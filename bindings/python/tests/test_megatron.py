"""Megatron corpora from Python: GPTSource in megatron-core's order (windows, loss mask and position ids
as megatron-core wrote them in the committed fixtures), the index cache, blends, and ferry's order."""

from __future__ import annotations

import gzip
import json
import struct

import pytest

import ferry

from conftest import PACKAGE_ROOT
from loader_helpers import TIMEOUT_MS, read_epoch


def _fixtures_dir():
    for root in (PACKAGE_ROOT.parents[1], PACKAGE_ROOT.parent):  # the repository, or the GPU bundle
        d = root / "engine" / "data" / "testdata" / "megatron"
        if d.is_dir():
            return d
    pytest.skip("the Megatron fixtures are not here")


def _fixture(name):
    d = _fixtures_dir()
    with gzip.open(d / (name + ".json.gz"), "rt") as f:
        return d, json.load(f)


@pytest.fixture
def engine():
    with ferry.Engine(ferry.CPU, sample_interval_ms=0) as e:
        yield e


def _unpack(data: bytes, code: str):
    return list(struct.unpack("<%d%s" % (len(data) // struct.calcsize(code), code), data))


def _shift(fx):
    return ferry.ShiftTokens(loss_mask="loss_mask", position_ids="position_ids", eod=fx["eod"],
                             mask_eod=fx["eod_mask_loss"], reset_positions=fx["reset_position_ids"])


def _check_first_samples(engine, src, fx):
    seq = fx["seq_len"]
    want = fx["samples"]
    firsts = want["positions"][:-1]
    seen = 0
    with ferry.Iterator(engine, src, 4, transforms={"tokens": _shift(fx)}, timeout_ms=TIMEOUT_MS) as it:
        assert it.field_names == ["x", "y", "loss_mask", "position_ids"]
        for indices, fields in read_epoch(it):
            x, y = _unpack(fields["x"], "q"), _unpack(fields["y"], "q")
            m, p = _unpack(fields["loss_mask"], "f"), _unpack(fields["position_ids"], "q")
            for r, i in enumerate(indices):
                if i >= len(firsts):
                    continue
                assert x[r * seq:(r + 1) * seq] == want["tokens"][i], f"tokens of sample {i}"
                assert y[r * seq:(r + 1) * seq] == want["labels"][i], f"labels of sample {i}"
                assert m[r * seq:(r + 1) * seq] == want["loss_mask"][i], f"loss_mask of sample {i}"
                assert p[r * seq:(r + 1) * seq] == want["position_ids"][i], f"position_ids of sample {i}"
                seen += 1
    assert seen == len(firsts)


@pytest.mark.parametrize("name", ["one_epoch", "epochs_separate_last", "valid_split", "long_seq_int32"])
def test_gpt_source_matches_megatron_core(engine, tmp_path, name):
    d, fx = _fixture(name)
    kwargs = dict(order="megatron", seed=fx["seed"], split=fx["split"], which=["train", "valid", "test"][fx["which"]],
                  num_samples=fx["size"], cache_dir=tmp_path)
    src = ferry.GPTSource(d / fx["prefixes"][0], fx["seq_len"], **kwargs)
    assert len(src) == fx["len"]
    info = src.index_info
    assert not info["cached"] and info["cache_error"] == "" and info["path"].startswith(str(tmp_path))
    _check_first_samples(engine, src, fx)
    src.close()
    again = ferry.GPTSource(d / fx["prefixes"][0], fx["seq_len"], **kwargs)
    assert again.index_info["cached"]
    _check_first_samples(engine, again, fx)
    again.close()


def test_megatron_blend_matches_megatron_core(engine):
    d, fx = _fixture("blend_three")
    per, size = ferry.megatron_blend_sizes(fx["weights"], fx["size"])
    assert per == [ds["num_samples"] for ds in fx["datasets"]]
    assert size == fx["len"]
    blend = ferry.megatron_blend([(w, d / p) for w, p in zip(fx["weights"], fx["prefixes"])], fx["size"], fx["seq_len"],
                                 seed=fx["seed"], split=fx["split"], cache=False)
    assert len(blend) == fx["len"]
    _check_first_samples(engine, blend, fx)
    blend.close()


def test_ferry_order_and_blend(engine, tmp_path):
    d, _ = _fixture("one_epoch")
    a = ferry.GPTSource(d / "corpus_u16", 32)
    b = ferry.GPTSource([d / "corpus_u16b", d / "corpus_u16"], 32)
    assert a.fields == {"tokens": ("uint16", (33,), 0)}
    assert a.index_info["epochs"] == 0 and not a.index_info["cached"]
    seen = []
    with ferry.Iterator(engine, a, 16, shuffle=True, seed=3, transforms={"tokens": ferry.ShiftTokens()},
                        timeout_ms=TIMEOUT_MS) as it:
        for indices, _ in read_epoch(it):
            seen += indices
    assert sorted(seen) == list(range(len(a)))

    blend = ferry.BlendSource([(0.25, a), (0.75, b)], size=1000, seed=5)
    assert blend.sources == [a, b]
    with pytest.raises(ferry.InvalidArgumentError, match="without Shuffle"):
        ferry.Iterator(engine, blend, 8, shuffle=True)
    with ferry.Iterator(engine, blend, 100, timeout_ms=TIMEOUT_MS) as it:
        assert sum(len(i) for i, _ in read_epoch(it)) == 1000
    blend.close()
    a.close()
    b.close()


def test_megatron_sources_refuse_bad_input(tmp_path):
    d, _ = _fixture("one_epoch")
    prefix = d / "corpus_u16"
    bad = tmp_path / "bad"
    (tmp_path / "bad.idx").write_bytes(b"MMIDIDX\x00\x00" + bytes(30))
    (tmp_path / "bad.bin").write_bytes(bytes(8))
    cases = [
        (lambda: ferry.MegatronSource(bad, 8), ferry.FormatError, "bad.idx"),
        (lambda: ferry.MegatronSource(prefix, 0), ferry.InvalidArgumentError, "maximum length"),
        (lambda: ferry.GPTSource(prefix, 8, order="nope"), ferry.InvalidArgumentError, "order"),
        (lambda: ferry.GPTSource(prefix, 8, order="megatron", seed=2**32), ferry.InvalidArgumentError, "seed"),
        (lambda: ferry.GPTSource(prefix, 8, which="dev"), ferry.InvalidArgumentError, "which"),
        (lambda: ferry.GPTSource([prefix, prefix], 8, order="megatron"), ferry.InvalidArgumentError, "BlendSource"),
        (lambda: ferry.GPTSource(prefix, 8, order="megatron", split="1,0,0", which="test", cache=False),
         ferry.InvalidArgumentError, "no sequences"),
        (lambda: ferry.GPTSource([], 8), TypeError, "prefixes"),
        (lambda: ferry.BlendSource([(1, "not a source")], 10), TypeError, "ferry sources"),
        (lambda: ferry.megatron_blend_sizes([1, 2], 0), ferry.InvalidArgumentError, "size 0"),
        (lambda: ferry.ShiftTokens(mask_eod=True), ferry.InvalidArgumentError, "eod"),
    ]
    for make, exc, words in cases:
        with pytest.raises(exc, match=words):
            make()
    m = ferry.MegatronSource([prefix, d / "corpus_u16b"], 64)
    assert m.fields == {"tokens": ("uint16", (64,), 0)}
    m.close()
