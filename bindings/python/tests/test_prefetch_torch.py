"""The seed's data code with ferry's names: PrefetchLoader over a torch DataLoader with worker processes, and
OptimizedDataLoader over a torch Dataset, batch for batch equal to the torch pipeline alone — on the CPU
wherever torch is installed, and on a GPU (FERRY_REQUIRE_GPU=1 makes a missing one a failure)."""

from __future__ import annotations

import os

import pytest

import ferry

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader, Dataset, TensorDataset  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _Images(Dataset):
    """uint8 CHW images of changing sizes per index group, labels, and a file name: what a decoding
    Dataset's workers return."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 3, 24, 20), dtype=torch.uint8, generator=g)
        self.labels = torch.randint(0, 1000, (n,), generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        if i == 77:
            raise RuntimeError("sample 77 is corrupt")
        return self.images[i], {"label": self.labels[i], "path": f"img/{i}.jpg"}


def _seed():
    return int.from_bytes(os.urandom(4), "little")


def _reference(img):
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (img.float() / 255 - mean) / std


def _device_param():
    return ["cpu", "cuda"]


@pytest.fixture(params=_device_param())
def device(request):
    if request.param == "cuda":
        if ferry.device_count() == 0 or not torch.cuda.is_available():
            if os.environ.get("FERRY_REQUIRE_GPU") == "1":
                pytest.fail("FERRY_REQUIRE_GPU=1 but no GPU for torch and ferry")
            pytest.skip("no GPU")
        return 0
    return "cpu"


def test_seed_prefetch_loader_over_a_dataloader_with_workers(device):
    n = 200
    ds = _Images(n, _seed())
    keep = [i for i in range(n) if i != 77]
    sub = torch.utils.data.Subset(ds, keep)
    dl = DataLoader(sub, batch_size=32, num_workers=2, pin_memory=True, prefetch_factor=2, persistent_workers=True)
    transforms = {0: ferry.Normalize(MEAN, STD, input_layout="CHW")}
    with ferry.PrefetchLoader(dl, device=device, transforms=transforms) as loader:
        assert len(loader) == len(dl)
        for _ in range(2):
            ref = list(DataLoader(sub, batch_size=32))
            got = 0
            for (img, meta), (rimg, rmeta) in zip(loader, ref):
                want_dev = "cpu" if device == "cpu" else "cuda"
                assert img.device.type == want_dev and meta["label"].device.type == want_dev
                torch.testing.assert_close(img.cpu(), _reference(rimg), rtol=1e-5, atol=1e-5)
                assert torch.equal(meta["label"].cpu(), rmeta["label"])
                assert meta["path"] == rmeta["path"]  # strings pass through, in place
                got += 1
            assert got == len(ref)
        st = loader.stats()
        assert st["samples"] == 2 * len(keep)


def test_a_worker_error_comes_at_its_step_with_the_workers_traceback(device):
    ds = _Images(128, _seed())
    dl = DataLoader(ds, batch_size=16, num_workers=2)
    with ferry.PrefetchLoader(dl, device=device) as loader:
        it = iter(loader)
        for _ in range(4):  # samples 0..63
            next(it)
        with pytest.raises(RuntimeError, match="sample 77 is corrupt") as info:
            next(it)
        assert "__getitem__" in str(info.value)  # the worker's traceback, as torch re-raises it
        rest = list(it)  # the DataLoader goes on after a worker's error, and so does the loop
        assert len(rest) == 3


def test_optimized_data_loader_over_a_torch_dataset(device):
    g = torch.Generator().manual_seed(_seed())
    x = torch.randn(1000, 8, generator=g)
    y = torch.randint(0, 10, (1000,), generator=g)
    odl = ferry.OptimizedDataLoader(TensorDataset(x, y), batch_size=256, num_workers=2, device=device)
    assert isinstance(odl, ferry.DatasetLoader)
    dl = odl.create_loader()
    assert isinstance(dl, DataLoader) and dl.num_workers == 2 and dl.prefetch_factor == 2 and dl.persistent_workers
    assert not dl.pin_memory
    pl = odl.get_prefetch_loader()
    assert pl is odl.get_prefetch_loader() and len(odl) == 4
    got = list(odl)
    assert [len(b[0]) for b in got] == [256, 256, 256, 232]
    assert torch.equal(torch.cat([b[0].cpu() for b in got]), x)
    assert torch.equal(torch.cat([b[1].cpu() for b in got]), y)
    odl.close()


def test_gpu_tensors_pass_through_without_a_copy(device):
    if device == "cpu":
        pytest.skip("a GPU case")
    t = torch.arange(12, device="cuda").view(3, 4)
    h = torch.arange(6).view(3, 2)
    with ferry.PrefetchLoader([(t, h)], device=device) as loader:
        (a, b), = list(loader)
    assert a is t, "a tensor already on the GPU is handed through as it is"
    assert b.is_cuda and torch.equal(b.cpu(), h)
