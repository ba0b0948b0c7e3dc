"""The CIFAR-10 training example, examples/train_cifar.py: its data writer against ferry's CIFAR-10 reader
(numpy only), then short runs of the script on the CPU with both loaders (torch), and on a GPU."""

from __future__ import annotations

import json
import math
import multiprocessing
import subprocess
import sys

import pytest

import ferry

from conftest import PACKAGE_ROOT, gpu_required
from loader_helpers import TIMEOUT_MS, fresh_rng

np = pytest.importorskip("numpy")

EXAMPLES = PACKAGE_ROOT / "examples"
RECORD = 3073


@pytest.fixture(scope="module")
def tc():
    """The example as a module. Imported by name from its directory (not from a file spec) so that
    DataLoader workers started by spawn or forkserver can import it too. It does not import torch."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    import train_cifar

    return train_cifar


@pytest.fixture(scope="module")
def torch():
    try:
        import torch
    except ImportError:
        if gpu_required():
            pytest.fail("FERRY_REQUIRE_GPU=1 but torch is not installed")
        pytest.skip("torch is not installed")
    return torch


def read_back(path, batch_size):
    """Every record of a CIFAR-10 file through ferry.CIFAR10Source, in file order: (labels, images)."""
    with ferry.CIFAR10Source(path) as src:
        n = len(src)
        with ferry.Loader(src, batch_size, device="cpu", output="numpy", copy=True, timeout_ms=TIMEOUT_MS) as loader:
            batches = list(loader)
    labels = np.concatenate([b["label"] for b in batches])
    images = np.concatenate([b["image"] for b in batches])
    assert len(labels) == n
    return labels, images


# --- the data writer: no torch ------------------------------------------------------------------------


def test_write_cifar10_is_read_back_exactly_by_ferry(tc, tmp_path):
    rng, seed = fresh_rng()
    seed %= 2**32
    n_train, n_test = rng.randrange(40, 90), rng.randrange(3, 30)
    x, y, xt, yt = tc.write_cifar10(tmp_path, n_train, n_test, seed)
    assert x.shape == (n_train, 3, 32, 32) and xt.shape == (n_test, 3, 32, 32)
    assert x.dtype == xt.dtype == y.dtype == yt.dtype == np.uint8
    assert y.shape == (n_train,) and yt.shape == (n_test,)
    assert int(y.max()) <= 9 and int(yt.max()) <= 9

    counts, offset = [], 0
    for name in tc.TRAIN_FILES:
        size = (tmp_path / name).stat().st_size
        assert size % RECORD == 0, (seed, name, size)
        count = size // RECORD
        labels, images = read_back(tmp_path / name, rng.randrange(1, 8))
        assert len(labels) == count
        assert np.array_equal(labels, y[offset:offset + count]), (seed, name)
        assert images.shape == (count, 3, 32, 32)
        assert np.array_equal(images, x[offset:offset + count]), (seed, name)
        counts.append(count)
        offset += count
    assert offset == n_train
    assert max(counts) - min(counts) <= 1, counts  # split evenly over the five files
    assert (tmp_path / tc.TEST_FILE).stat().st_size == RECORD * n_test
    labels, images = read_back(tmp_path / tc.TEST_FILE, 4)
    assert np.array_equal(labels, yt) and np.array_equal(images, xt), seed

    # the script's own reader gives the same arrays, C-contiguous
    got = tc.read_cifar10(tmp_path)
    for a, b in zip(got, (x, y, xt, yt)):
        assert a.flags.c_contiguous and np.array_equal(a, b), seed

    # deterministic for a seed, different for another
    again = tc.write_cifar10(tmp_path / "again", n_train, n_test, seed)
    other = tc.write_cifar10(tmp_path / "other", n_train, n_test, seed + 1)
    for name in tc.TRAIN_FILES + [tc.TEST_FILE]:
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / name).read_bytes(), (seed, name)
    assert not np.array_equal(other[0], x)
    assert all(np.array_equal(a, b) for a, b in zip(again, (x, y, xt, yt)))


def test_synthetic_images_are_learnable_and_not_flip_symmetric(tc, tmp_path):
    _, seed = fresh_rng()
    seed %= 2**32
    x, y, xt, yt = tc.write_cifar10(tmp_path, 2000, 500, seed)
    # a flip changes the images: flips are a real augmentation on this data
    diff = np.abs(x.astype(np.int16) - x[..., ::-1].astype(np.int16)).mean()
    assert diff > 20, (seed, diff)
    # every class is there, and the classes are told apart by a nearest-class-mean classifier
    assert set(np.unique(y).tolist()) == set(range(10)), seed
    means = np.stack([x[y == c].reshape(-1, 3072).astype(np.float32).mean(0) for c in range(10)])
    d = ((xt.reshape(-1, 1, 3072).astype(np.float32) - means[None]) ** 2).sum(-1)
    acc = float((d.argmin(1) == yt).mean())
    assert acc > 0.35, (seed, acc)  # chance: 0.1


def test_importing_the_example_does_not_import_torch():
    code = f"import sys; sys.path.insert(0, {str(EXAMPLES)!r}); import train_cifar; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_arguments_are_checked(tc):
    with pytest.raises(SystemExit):
        tc.parse_args(["--synthetic", "100", "--data", "somewhere"])  # one source only
    with pytest.raises(SystemExit):
        tc.parse_args(["--synthetic", "100", "--batch-size", "many"])
    with pytest.raises(SystemExit):
        tc.parse_args(["--synthetic", "100", "--report", "run.json"])  # the report path ends in .html
    with pytest.raises(SystemExit):
        tc.parse_args(["--synthetic", "100", "--report", "run.html", "--json", "run.json"])  # the report's JSON
    args = tc.parse_args(["--synthetic", "100", "--batch-size", "auto"])
    assert args.batch_size == "auto" and args.epochs == 2 and args.loader == "ferry" and args.workers == 8


# --- the CPU with torch -------------------------------------------------------------------------------

# 4 epochs of 8 batches of 64: 32 steps of a ResNet-18 of width 8.
TINY = ["--synthetic", "512", "--synthetic-test", "256", "--batch-size", "64", "--epochs", "4", "--width", "8",
        "--lr", "0.1", "--device", "cpu", "--log-every", "0", "--no-flip"]
STEPS = 32


def ferry_arithmetic(tc, torch):
    """A CifarDataset.normalize that computes as ferry does: coefficients folded in float32, then
    float32(fma(x, scale[c], bias[c])), as a table of the 256 values per channel."""
    std = np.array(tc.CIFAR_STD, np.float32)
    scale = (np.float32(1 / 255) / std).astype(np.float64)
    bias = (-np.array(tc.CIFAR_MEAN, np.float32) / std).astype(np.float64)
    table = torch.from_numpy((np.arange(256.0)[None, :] * scale[:, None] + bias[:, None]).astype(np.float32))

    def normalize(self, image):
        return torch.stack([table[c][image[c].long()] for c in range(3)])

    return normalize


@pytest.fixture(scope="module")
def cpu_runs(tc, torch, tmp_path_factory):
    """Three runs of TINY on the same seed: ferry; torch with 2 workers; torch without workers, normalizing
    with ferry's arithmetic."""
    _, seed = fresh_rng()
    seed %= 2**32
    out = tmp_path_factory.mktemp("train_cifar")
    runs = {"seed": seed, "dir": out}
    base = TINY + ["--seed", str(seed)]
    runs["ferry"] = tc.main(base + ["--loader", "ferry", "--report", str(out / "ferry.html"),
                                    "--json", str(out / "ferry.results.json")])
    before = set(multiprocessing.active_children())
    runs["torch"] = tc.main(base + ["--loader", "torch", "--workers", "2", "--json", str(out / "torch.results.json")])
    runs["workers_left"] = set(multiprocessing.active_children()) - before
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tc.CifarDataset, "normalize", ferry_arithmetic(tc, torch))
        runs["torch_exact"] = tc.main(base + ["--loader", "torch", "--workers", "0"])
    return runs


def test_cpu_loaders_feed_the_same_batches(tc, torch):
    """The torch run takes its batch order from ferry and normalizes as torchvision does; ferry normalizes
    with folded coefficients (x * scale + bias), so the values agree within a float32 rounding."""
    rng, seed = fresh_rng()
    seed %= 2**32
    cpu = torch.device("cpu")
    images = np.random.default_rng(seed).integers(0, 256, (96, 3, 32, 32), dtype=np.uint8)
    labels = np.random.default_rng(seed + 1).integers(0, 10, 96, dtype=np.uint8)
    bs = rng.choice([8, 16, 32])
    ferry_feed = tc.FerryFeed(images, labels, bs, seed, 0.0, cpu, channels_last=False)
    nhwc_feed = tc.FerryFeed(images, labels, bs, seed, 0.0, cpu, channels_last=True)
    torch_feed = tc.TorchFeed(images, labels, bs, seed, 0.0, cpu, channels_last=False, workers=0)
    try:
        assert len(ferry_feed) == len(torch_feed) == 96 // bs
        for epoch in (0, 1):
            n = 0
            feeds = zip(ferry_feed.epoch(epoch), nhwc_feed.epoch(epoch), torch_feed.epoch(epoch))
            for (a, ya), (c, yc), (b, yb) in feeds:
                assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape == (bs, 3, 32, 32)
                assert ya.dtype == torch.int64 and torch.equal(ya, yb), (seed, epoch, n)  # the same samples, in order
                assert torch.equal(yc, ya) and torch.equal(c, a), (seed, epoch, n)  # the HWC layout, permuted
                assert c.is_contiguous(memory_format=torch.channels_last)
                err = float((a - b).abs().max())
                assert err <= 1e-6, (seed, epoch, n, err)
                n += 1
            assert n == 96 // bs
    finally:
        ferry_feed.close()
        nhwc_feed.close()
        torch_feed.close()


def _flipped(batch, plain, atol=0.0):
    """Which samples of ``batch`` are ``plain`` mirrored left-right; asserts each is one or the other."""
    same = (batch - plain).abs().flatten(1).amax(1) <= atol
    mirrored = (batch - plain.flip(-1)).abs().flatten(1).amax(1) <= atol
    assert bool((same | mirrored).all())
    return mirrored & ~same


def test_cpu_flips(tc, torch):
    rng, seed = fresh_rng()
    seed %= 2**32
    cpu = torch.device("cpu")
    images = np.random.default_rng(seed).integers(0, 256, (256, 3, 32, 32), dtype=np.uint8)
    labels = np.random.default_rng(seed + 1).integers(0, 10, 256, dtype=np.uint8)
    plain = tc.FerryFeed(images, labels, 64, seed, 0.0, cpu, channels_last=False)
    flip = tc.FerryFeed(images, labels, 64, seed, 0.5, cpu, channels_last=False)
    torch_flip = tc.TorchFeed(images, labels, 64, seed, 0.5, cpu, channels_last=False, workers=0)
    try:
        pattern = {}
        for epoch in (0, 1):
            flips = {"ferry": [], "torch": []}
            for (p, _), (f, _), (t, _) in zip(plain.epoch(epoch), flip.epoch(epoch), torch_flip.epoch(epoch)):
                flips["ferry"].append(_flipped(f, p))
                flips["torch"].append(_flipped(t, p, atol=1e-6))  # torch's values: within a rounding of ferry's
            for name, fl in flips.items():
                share = float(torch.cat(fl).float().mean())
                assert 0.35 < share < 0.65, (seed, name, epoch, share)
            pattern[epoch] = torch.cat(flips["ferry"])
        assert not torch.equal(pattern[0], pattern[1]), seed  # the flips depend on the epoch
    finally:
        plain.close()
        flip.close()
        torch_flip.close()


def test_cpu_loss_curves_match(cpu_runs):
    f, t, e = cpu_runs["ferry"], cpu_runs["torch"], cpu_runs["torch_exact"]
    seed = cpu_runs["seed"]
    for r in (f, t, e):
        assert r["steps"] == STEPS and len(r["losses"]) == STEPS and r["samples"] == STEPS * 64, seed
    # Normalizing as ferry does, the torch run sees the same bytes in the same order as the ferry run, from
    # the same initial weights: the curves and the test accuracy are the same.
    np.testing.assert_allclose(e["losses"], f["losses"], rtol=1e-6, err_msg=f"seed {seed}")
    assert e["test_acc"] == f["test_acc"], seed
    # Normalizing as torchvision does ((x / 255 - mean) / std), two thirds of the inputs differ from ferry's
    # in the last bit. The first step agrees to that rounding; after it the runs drift apart, because a few
    # ReLUs whose input is within a rounding of 0 pass a gradient in one run and not in the other, and
    # training amplifies that about tenfold a step (a torch run against itself with its inputs moved by one
    # ulp drifts the same way): a few percent after 20 steps.
    assert math.isclose(t["losses"][0], f["losses"][0], rel_tol=1e-5), (seed, t["losses"][:2], f["losses"][:2])
    assert math.isclose(t["losses"][1], f["losses"][1], rel_tol=1e-3), (seed, t["losses"][:2], f["losses"][:2])


def test_cpu_loss_falls(cpu_runs):
    for name in ("ferry", "torch"):
        losses = cpu_runs[name]["losses"]
        first, last = np.mean(losses[:5]), np.mean(losses[-5:])
        assert last < 0.75 * first, (cpu_runs["seed"], name, first, last)
    assert cpu_runs["ferry"]["test_acc"] > 0.25, cpu_runs["seed"]  # 10 classes: chance is 0.1


def test_cpu_results_and_report(cpu_runs):
    out = cpu_runs["dir"]
    for name in ("ferry", "torch"):
        r = cpu_runs[name]
        saved = json.loads((out / f"{name}.results.json").read_text())
        assert saved["losses"] == r["losses"] and saved["loader"] == name
        for key in ("device", "batch_size", "epochs", "samples", "images_per_s", "step_ms_p50", "step_ms_mean",
                    "data_stall_pct", "final_loss", "test_acc", "losses", "staging", "torch_version", "command"):
            assert key in saved, (name, key)
        assert saved["epochs"] == 4 and len(saved["per_epoch"]) == 4
        assert 0 <= saved["data_stall_pct"] <= 100 and saved["images_per_s"] > 0
        assert saved["step_ms_p50"] > 0 and saved["step_ms_mean"] > 0
        assert "--loader " + name in saved["command"]
    assert cpu_runs["ferry"]["staging"][0] == "gather"  # the CPU engine

    html = (out / "ferry.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "loss" in html
    report = json.loads((out / "ferry.json").read_text())
    metrics = report["training_metrics"]
    for key in ("loss", "step_ms", "data_wait_ms", "images_per_s"):
        assert metrics[key]["count"] == STEPS, (key, metrics[key]["count"])
    assert metrics["loss"]["last"] == pytest.approx(cpu_runs["ferry"]["losses"][-1])
    assert_pipeline(report, cpu_runs["ferry"])


def assert_pipeline(report, results):
    """The attached loader's metrics: the monitor samples pipelines once a second (system_interval) and
    again when it writes a report, so even a short run has them."""
    assert results["seconds"] > 0.05, results["seconds"]
    train = report["pipeline_metrics"]["train"]
    assert train["samples_per_second"]["count"] >= 1, report["pipeline_metrics"]
    assert train["samples_per_second"]["max"] > 0, train["samples_per_second"]


def test_cpu_torch_workers_are_gone(cpu_runs):
    assert cpu_runs["workers_left"] == set()


def test_batch_size_auto_needs_cuda(tc, torch):
    with pytest.raises(SystemExit):
        tc.main(["--synthetic", "100", "--device", "cpu", "--batch-size", "auto"])


# --- a GPU ----------------------------------------------------------------------------------------------


@pytest.fixture
def torch_cuda(require_gpu, torch):
    if not torch.cuda.is_available():
        pytest.fail("ferry sees a GPU but torch.cuda does not")
    return torch


def test_gpu_short_runs_with_flips(tc, torch_cuda, tmp_path):
    _, seed = fresh_rng()
    seed %= 2**32
    base = ["--synthetic", "4096", "--batch-size", "256", "--epochs", "4", "--width", "32", "--device", "cuda",
            "--workers", "4", "--seed", str(seed), "--log-every", "0"]
    before = set(multiprocessing.active_children())
    for loader in ("ferry", "torch"):
        report = tmp_path / f"{loader}.html"
        results = tmp_path / f"{loader}.res.json"
        r = tc.main(base + ["--loader", loader, "--report", str(report), "--json", str(results)])
        losses = r["losses"]
        assert r["steps"] == 64 and len(losses) == 64 and r["amp"] == "bf16" and r["channels_last"]
        assert np.mean(losses[-8:]) < 0.85 * np.mean(losses[:8]), (seed, loader, losses)
        assert report.stat().st_size > 0 and report.with_suffix(".json").stat().st_size > 0
        saved = json.loads(results.read_text())
        assert 0 <= saved["data_stall_pct"] <= 100, (loader, saved["data_stall_pct"])
        gpu = json.loads(report.with_suffix(".json").read_text())["gpu_metrics"]
        assert gpu, loader  # NVML sampled the GPU during the run
        if loader == "ferry":
            assert_pipeline(json.loads(report.with_suffix(".json").read_text()), r)
    assert set(multiprocessing.active_children()) - before == set()  # the DataLoader workers are gone


def test_gpu_batch_size_auto(tc, torch_cuda):
    r = tc.main(["--synthetic", "2048", "--batch-size", "auto", "--max-batch", "256", "--max-steps", "4", "--width",
                 "16", "--device", "cuda", "--log-every", "0"])
    ab = r["autobatch"]
    assert ab is not None and ab["batch_size"] == r["batch_size"]
    assert 0 < r["batch_size"] <= 256 and r["batch_size"] % 32 == 0, ab
    assert r["steps"] == 4 and all(math.isfinite(v) for v in r["losses"])
