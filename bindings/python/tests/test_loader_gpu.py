"""The loader's GPU path: on the stand-in CUDA driver (always, where a C compiler exists), and with torch
on a real GPU (skipped without one; FERRY_REQUIRE_GPU=1 makes that a failure)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import ferry

from conftest import PACKAGE_ROOT
from loader_helpers import TIMEOUT_MS, fresh_rng

# Runs in a subprocess: a process can use one driver path, read at its first GPU call.
_FAKE_GPU_SCRIPT = r"""
import array, ctypes, json, sys
import ferry
from ferry import _lib

seed, n, bs, payload = (int(a) for a in sys.argv[1:5])
data = bytearray(open(sys.argv[5], "rb").read())
res = {"device_count": ferry.device_count()}

def read(f):
    return ctypes.string_at(f.data_ptr, f.nbytes)  # the stand-in's device memory is host memory

arrays = {"data": (data, "uint8", (n, payload)), "idx": array.array("q", range(n))}
with ferry.Loader(arrays, bs, shuffle=True, seed=seed, prefetch=2, output="dlpack", timeout_ms=10000) as loader:
    res["device"] = loader.device
    it = loader.iterator
    batches, devices, mismatches = 0, set(), 0
    for epoch in range(3):
        while True:
            b = it.next(None)
            if b is None:
                break
            idx = b.indices()
            f, g = b.field("data"), b.field("idx")
            devices.add(f.__dlpack_device__())
            devices.add(g.device)
            want = b"".join(bytes(data[i * payload:(i + 1) * payload]) for i in idx)
            if read(f) != want or read(g) != array.array("q", idx).tobytes():
                mismatches += 1
            # A consumer on another stream: ferry_tensor_wait orders it before the capsule is handed out.
            cap = f.__dlpack__(stream=0x1234, max_version=(1, 0))
            legacy = g.__dlpack__(stream=1)  # the legacy default stream, also the stream given to next
            b.release()
            del cap, legacy  # never consumed: their destructors give the slot back
            batches += 1
    res["batches"], res["mismatches"] = batches, mismatches
    res["devices"] = sorted(list(d) for d in devices)
    # After the release, a field exported on another stream is still ordered: it keeps its batch.
    b = it.next()
    f = b.field(0)
    b.release()
    cap = f.__dlpack__(stream=0x5678, max_version=(1, 0))
    res["late_wait"] = "ordered"
    del cap
    # The Loader's own iteration: dicts of kDLCUDA fields.
    loader.set_epoch(0)
    got = []
    for batch in loader:
        got.append((array.array("q", read(batch["idx"])).tolist(), read(batch["data"]), batch["data"].device))
    res["loop_ok"] = all(d == (_lib.kDLCUDA, 0)
                         and raw == b"".join(bytes(data[i * payload:(i + 1) * payload]) for i in idx)
                         for idx, raw, d in got)
    res["loop_count"] = sum(len(i) for i, _, _ in got)
try:
    ferry.Loader(arrays, bs, output="numpy")
except ferry.InvalidArgumentError:
    res["numpy_on_gpu"] = "refused"
print(json.dumps(res))
"""


def test_fake_gpu_fields_are_cuda_and_hold_the_data(fake_driver, tmp_path):
    rng, seed = fresh_rng()
    n, bs, payload = rng.randrange(40, 120), rng.randrange(3, 12), rng.randrange(4, 64)
    data = rng.randbytes(n * payload)
    (tmp_path / "data.bin").write_bytes(data)
    env = dict(os.environ)
    env["FERRY_CUDA_LIBRARY"] = fake_driver
    env["PYTHONPATH"] = str(PACKAGE_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    r = subprocess.run(
        [sys.executable, "-c", _FAKE_GPU_SCRIPT, str(seed), str(n), str(bs), str(payload), str(tmp_path / "data.bin")],
        env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["device_count"] == 1 and res["device"] == 0  # device=None picked the GPU
    batches_per_epoch = -(-n // bs)
    assert res["batches"] == 3 * batches_per_epoch
    assert res["mismatches"] == 0
    assert res["devices"] == [[2, 0]]  # kDLCUDA, device 0
    assert res["late_wait"] == "ordered"
    assert res["loop_ok"] is True and res["loop_count"] == n
    assert res["numpy_on_gpu"] == "refused"


# --- a real GPU, with torch -----------------------------------------------------------------------------


@pytest.fixture
def torch_cuda(require_gpu):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.fail("ferry sees a GPU but torch.cuda does not")
    return torch


def test_torch_tensors_are_ferry_memory_without_a_copy(torch_cuda):
    torch = torch_cuda
    g = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    n, bs = 1000, 64
    x = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    y = torch.randn(n, 7, generator=g).to(torch.bfloat16)
    src = ferry.ArraySource({"x": x, "y": y, "i": torch.arange(n, dtype=torch.int64)})
    with ferry.Loader(src, bs, shuffle=True, seed=7, device=0, prefetch=3, timeout_ms=TIMEOUT_MS) as loader:
        assert loader.output == "torch"
        it = loader.iterator
        for _ in range(2 * len(loader) + 2):
            stream = torch.cuda.current_stream(0).cuda_stream
            b = it.next(stream)
            if b is None:
                continue
            idx = torch.tensor(b.indices())
            fields = {name: b.field(name) for name in ("x", "y", "i")}
            ptrs = {name: f.data_ptr for name, f in fields.items()}
            tensors = {name: torch.from_dlpack(f) for name, f in fields.items()}
            b.release()
            for name, t in tensors.items():
                assert t.is_cuda and t.device.index == 0
                assert t.data_ptr() == ptrs[name]  # no copy
            assert torch.equal(tensors["i"].cpu(), idx)
            assert torch.equal(tensors["x"].cpu(), x[idx])
            assert tensors["y"].dtype == torch.bfloat16 and torch.equal(tensors["y"].cpu(), y[idx])
            del tensors, fields
    src.close()


def test_torch_loader_on_a_side_stream(torch_cuda):
    torch = torch_cuda
    g = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    n = 777
    x = torch.randn(n, 33, generator=g)
    i = torch.arange(n, dtype=torch.int32)
    side = torch.cuda.Stream(0)
    with ferry.Loader({"x": x, "i": i}, 50, shuffle=True, seed=3, device="cuda:0", timeout_ms=TIMEOUT_MS) as loader:
        for _epoch in range(2):
            seen = 0
            with torch.cuda.stream(side):
                for batch in loader:
                    # Work on the side stream right away: ferry made it wait for the batch's copy.
                    out = batch["x"] * 2 + 1
                    idx = batch["i"].long().cpu()
                    assert torch.equal(out.cpu(), x[idx] * 2 + 1)
                    seen += len(idx)
            assert seen == n
        # copy=True: clones that outlive the ring
    with ferry.Loader({"x": x, "i": i}, 100, device=0, prefetch=2, copy=True, timeout_ms=TIMEOUT_MS) as loader:
        kept = list(loader)
        torch.cuda.synchronize()
        assert torch.equal(torch.cat([b["x"] for b in kept]).cpu(), x)


def test_loader_reads_torchs_current_stream(torch_cuda):
    # The loop asks torch for its current stream once a batch, through torch's raw-stream getter where it
    # has one: it must give what the public API gives, on the default stream and inside a stream context.
    torch = torch_cuda
    from ferry._dataloader import _torch_stream_fn

    fn = _torch_stream_fn(torch, 0)
    assert fn() == torch.cuda.current_stream(0).cuda_stream
    side = torch.cuda.Stream(0)
    with torch.cuda.stream(side):
        assert fn() == side.cuda_stream == torch.cuda.current_stream(0).cuda_stream
    assert fn() == torch.cuda.current_stream(0).cuda_stream


def test_torch_consumer_on_another_stream_waits(torch_cuda):
    torch = torch_cuda
    n = 256
    x = torch.randint(-2**31, 2**31 - 1, (n, 1024), dtype=torch.int32)
    with ferry.Loader({"x": x}, 64, device=0, output="dlpack", timeout_ms=TIMEOUT_MS) as loader:
        it = loader.iterator
        other = torch.cuda.Stream(0)
        for _ in range(4):
            b = it.next(torch.cuda.current_stream(0).cuda_stream)
            idx = b.indices()
            f = b.field(0)
            with torch.cuda.stream(other):
                t = torch.from_dlpack(f)  # passes `other`: ferry_tensor_wait orders it
                s = t.sum(dim=1, dtype=torch.int64)
            b.release()
            other.synchronize()
            assert torch.equal(s.cpu(), x[idx].sum(dim=1, dtype=torch.int64))
            del t, s


# Runs in a subprocess per consumer: JAX takes most of the GPU's memory at its first use unless told not to.
_CONSUMER_SCRIPT = r"""
import os, sys
os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
import numpy as np
import ferry

consumer, seed = sys.argv[1], int(sys.argv[2])
if consumer == "torch":
    import torch
    take, back = torch.from_dlpack, lambda t: t.cpu().numpy()
elif consumer == "cupy":
    import cupy
    take, back = cupy.from_dlpack, cupy.asnumpy
else:
    import jax.numpy as jnp
    take, back = jnp.from_dlpack, np.asarray
rng = np.random.default_rng(seed)
n = 1000
x = rng.integers(-2**31, 2**31 - 1, size=(n, 257), dtype=np.int32)  # an odd row: no alignment to lean on
y = rng.standard_normal((n, 3)).astype(np.float32)
i = np.arange(n, dtype=np.int64)
seen, kept = 0, []
with ferry.Loader({"x": x, "y": y, "i": i}, 64, shuffle=True, seed=seed, device=0, prefetch=2,
                  output="dlpack") as loader:
    for epoch in range(2):
        for batch in loader:  # the loader has released the batch: each field holds it
            got = {k: take(f) for k, f in batch.items()}  # the consumer passes its own stream
            idx = back(got["i"])
            assert np.array_equal(back(got["x"]), x[idx]), "x"
            assert np.array_equal(back(got["y"]), y[idx]), "y"
            seen += len(idx)
            if len(kept) < 20:
                kept.append((idx, got["x"]))  # held across the loader's next batches
    for idx, t in kept:
        assert np.array_equal(back(t), x[idx]), "a kept tensor changed"
print("ok", seen)
"""


@pytest.mark.parametrize("consumer", ["torch", "cupy", "jax"])
def test_dlpack_consumers_read_loader_fields(require_gpu, consumer):
    # Loader(output="dlpack") releases each batch before the caller hands its fields on; every DLPack
    # consumer must still get the values, ordered on its own stream.
    import importlib.util

    if importlib.util.find_spec(consumer) is None:
        if os.environ.get("FERRY_REQUIRE_GPU") == "1":
            pytest.fail(f"FERRY_REQUIRE_GPU=1 but {consumer} is not installed")
        pytest.skip(f"{consumer} is not installed")
    _, seed = fresh_rng()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PACKAGE_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", _CONSUMER_SCRIPT, consumer, str(seed)], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.split()[-2:] == ["ok", "2000"], r.stdout
