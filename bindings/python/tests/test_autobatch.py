"""AutoBatch on synthetic memory curves (linear, noisy, convex, a step that runs out of memory below the
model's prediction), measured through ``measure=`` so that no GPU is needed; and on a real GPU with torch."""

from __future__ import annotations

import sys

import pytest

import ferry
from ferry._autobatch import Trial, _is_oom

from loader_helpers import fresh_rng

MiB = 1 << 20
GiB = 1 << 30


class Device:
    """A device of ``budget`` bytes whose step at batch b peaks at ``curve(b)``: a step above the budget raises
    MemoryError, as the caching allocator raises torch.cuda.OutOfMemoryError."""

    def __init__(self, curve, budget, oom_at=None):
        self.curve = curve
        self.budget = budget
        self.oom_at = oom_at  # sizes from this one on run out of memory whatever the curve says
        self.steps = []
        self.ooms = []

    def step(self, b):
        self.steps.append(b)
        if self.curve(b) > self.budget or (self.oom_at is not None and b >= self.oom_at):
            self.ooms.append(b)
            raise MemoryError(f"out of memory at batch size {b}")

    def measure(self, b):
        return int(self.curve(b))

    def limit(self, cap=100000):
        """The true largest batch: every size up to it runs."""
        b = 0
        while b + 1 <= cap and self.curve(b + 1) <= self.budget and (self.oom_at is None or b + 1 < self.oom_at):
            b += 1
        return b


def _run(dev, **kw):
    kw.setdefault("budget_bytes", dev.budget)
    ab = ferry.AutoBatch(dev.step, measure=dev.measure, **kw)
    with ab:
        size = ab.find()
    return ab, size


def test_linear_curves_land_within_5_percent_and_never_above():
    rng, seed = fresh_rng()
    for _ in range(40):
        fixed = rng.randrange(200 * MiB, 8 * GiB)
        per = rng.randrange(5 * MiB, 200 * MiB)
        budget = rng.choice([16, 24, 40, 80]) * GiB
        dev = Device(lambda b, fixed=fixed, per=per: fixed + per * b, budget)
        limit = dev.limit()
        if limit < 160:  # below that, rounding down to a multiple of 8 alone may cost more than 5%
            continue
        ab, size = _run(dev, headroom=0.0)
        assert size <= limit, (seed, size, limit)
        assert size >= 0.95 * limit, (seed, size, limit)
        assert size % 8 == 0
        assert not ab.probe_oom and dev.ooms == [], seed  # no OOM on a linear curve
        assert len(ab.trials) <= 4 + (limit > 1024) + (limit > 16384), (seed, ab.trials)
        assert ab.batch_size == size and ab.elapsed_s >= 0
        # with a headroom of 5%: still no OOM, and about 5% of the budget kept free
        ab, size = _run(dev, headroom=0.05)
        assert size <= limit and not ab.probe_oom
        assert fixed + per * size <= 0.95 * budget
        assert size >= 0.95 * (0.95 * budget - fixed) / per - 8, (seed, size)


def test_trials_follow_the_plan():
    fixed, per, budget = 2 * GiB, 100 * MiB, 80 * GiB
    dev = Device(lambda b: fixed + per * b, budget)
    ab, size = _run(dev, headroom=0.0)
    assert size == 792  # (80 - 2) GiB / 100 MiB = 798.7
    phases = [t.phase for t in ab.trials]
    sizes = [t.batch_size for t in ab.trials]
    assert phases == ["probe", "probe", "refine", "verify"]
    assert sizes == [8, 16, 256, 792]  # the refinement towards half of the prediction, at most 16 x 16
    assert dev.steps == sizes
    assert all(isinstance(t, Trial) and not t.oom and t.peak_bytes == fixed + per * t.batch_size and t.seconds >= 0
               for t in ab.trials)
    assert ab.observations == [(b, fixed + per * b) for b in sizes]
    assert ab.fit.observations == 4 and ab.fit.per_sample_bytes == pytest.approx(per)
    rep = ab.report()
    assert rep["batch_size"] == 792 and rep["trials"] == 4 and rep["probe_oom"] is False
    assert rep["budget_bytes"] == budget and rep["fragmentation_bytes"] == 0
    assert len(rep["steps"]) == 4 and rep["fit"]["observations"] == 4


def test_never_probes_a_size_the_model_predicts_would_not_fit():
    rng, seed = fresh_rng()
    for _ in range(30):
        fixed = rng.randrange(GiB, 6 * GiB)
        per = rng.randrange(10 * MiB, 150 * MiB)
        budget = 80 * GiB
        dev = Device(lambda b, fixed=fixed, per=per: fixed + per * b, budget)
        ab, size = _run(dev, headroom=0.05)
        usable = 0.95 * budget
        for t in ab.trials:
            assert fixed + per * t.batch_size <= usable, (seed, t)


def test_noisy_curves_never_exceed_the_limit():
    rng, seed = fresh_rng()
    for _ in range(40):
        fixed = rng.randrange(GiB, 6 * GiB)
        per = rng.randrange(10 * MiB, 150 * MiB)
        noise = rng.uniform(0.0, 0.02)
        budget = 80 * GiB
        jitter = {}

        # noise that is fixed per size, as a repeated step would show
        def curve(b, fixed=fixed, per=per, noise=noise, jitter=jitter):
            if b not in jitter:
                jitter[b] = rng.uniform(-noise, noise)
            return (fixed + per * b) * (1 + jitter[b])

        dev = Device(curve, budget)
        limit = dev.limit()
        # Noise of up to 2% of the whole peak needs more headroom than the default 2%, which suits the
        # near-deterministic peaks measured on real models.
        ab, size = _run(dev, headroom=0.05)
        assert 0 < size <= limit, (seed, size, limit)
        assert not ab.probe_oom, (seed, ab.trials)
        assert size >= 0.85 * limit, (seed, size, limit)


def test_convex_curves_never_exceed_the_limit():
    rng, seed = fresh_rng()
    for _ in range(40):
        fixed = rng.randrange(GiB, 4 * GiB)
        per = rng.randrange(10 * MiB, 80 * MiB)
        budget = 80 * GiB
        # up to 30% more memory per sample at the linear limit than the slope at b = 0 says
        quad = rng.uniform(0.0, 0.3) * per / ((budget - fixed) / per)
        dev = Device(lambda b, fixed=fixed, per=per, quad=quad: fixed + per * b + quad * b * b, budget)
        limit = dev.limit()
        ab, size = _run(dev, headroom=0.0)
        assert 0 < size <= limit, (seed, size, limit)
        # the steps that ran out of memory were reported, and none was a probe the model said would fit...
        for t in ab.trials:
            if t.oom:
                assert t.phase == "verify", (seed, t)
        # ... and the answer is not far below the limit either
        assert size >= 0.6 * limit, (seed, size, limit)


def test_an_oom_below_the_prediction_sets_a_ceiling():
    fixed, per, budget = 2 * GiB, 100 * MiB, 80 * GiB
    dev = Device(lambda b: fixed + per * b, budget, oom_at=600)  # e.g. a workspace the line does not see
    ab, size = _run(dev, headroom=0.0)
    assert size < 600 and size % 8 == 0
    assert ab.probe_oom and dev.ooms == [792]
    assert ab.fit.oom_ceiling == 792
    assert [t.phase for t in ab.trials if t.oom] == ["verify"]
    # the second verification went halfway down to the largest size that ran (the refinement at 256)
    assert [t.batch_size for t in ab.trials] == [8, 16, 256, 792, 520] and size == 520
    # the answer is a size that ran
    assert size in dev.steps and size not in dev.ooms


def test_repeated_ooms_back_off_to_a_size_that_ran():
    fixed, per, budget = 2 * GiB, 100 * MiB, 80 * GiB
    dev = Device(lambda b: fixed + per * b, budget, oom_at=200)
    ab, size = _run(dev, headroom=0.0)
    assert size < 200 and size in dev.steps and size not in dev.ooms
    assert len(ab.trials) <= 2 + 3 + 3  # probes, refinements, at most three verifications


def test_oom_at_the_first_probes_backs_off():
    fixed, per = 256 * MiB, 64 * MiB
    budget = fixed + per * 12  # batch 12 is the limit: the probe at 16 runs out of memory
    dev = Device(lambda b: fixed + per * b, budget)
    ab, size = _run(dev, headroom=0.0, multiple=1)
    assert dev.ooms[0] == 16
    assert 0 < size <= 12
    assert size >= 11
    # not even 8 fits: it halves until two sizes ran
    budget = fixed + per * 5
    dev = Device(lambda b: fixed + per * b, budget)
    ab, size = _run(dev, headroom=0.0, multiple=1)
    assert dev.steps[:3] == [8, 4, 2]
    assert 0 < size <= 5
    # only one sample fits: that is the answer
    dev = Device(lambda b: fixed + per * b, fixed + per)
    ab, size = _run(dev, headroom=0.0, multiple=1)
    assert size == 1 and ab.notes
    # nothing fits: a clear error, not a crash
    dev = Device(lambda b: fixed + per * b, fixed)
    with pytest.raises(ferry.OutOfMemoryError):
        _run(dev, headroom=0.0)


def test_flat_memory_at_the_probes_grows_the_probe():
    # the step's memory hides under a fixed allocation until b = 32 (e.g. a preallocated arena)
    def curve(b):
        return 4 * GiB + max(0, b - 32) * 50 * MiB

    dev = Device(curve, 40 * GiB)
    ab, size = _run(dev, headroom=0.0)
    assert 0 < size <= dev.limit()
    assert 64 in dev.steps or 32 in dev.steps  # a larger probe made the slope visible


def test_max_batch_caps_every_step():
    dev = Device(lambda b: 2 * GiB + 100 * MiB * b, 80 * GiB)
    ab, size = _run(dev, max_batch=100)
    assert size == 100
    assert max(dev.steps) <= 100
    dev = Device(lambda b: 2 * GiB + 100 * MiB * b, 80 * GiB)
    ab, size = _run(dev, max_batch=12, probes=(8, 16, 4))
    assert size <= 12 and max(dev.steps) <= 12
    # a bound below every probe: smaller sizes are probed instead
    dev = Device(lambda b: 2 * GiB + 100 * MiB * b, 80 * GiB)
    ab, size = _run(dev, max_batch=3, multiple=1)
    assert size == 3 and max(dev.steps) <= 3 and len(set(dev.steps)) >= 2


def test_reduce_is_applied_once():
    dev = Device(lambda b: 2 * GiB + 100 * MiB * b, 80 * GiB)
    calls = []

    def reduce(v):
        calls.append(v)
        return v - 16

    ab, size = _run(dev, headroom=0.0, reduce=reduce)
    assert calls == [792] and size == 776


def test_a_shared_advisor_keeps_its_observations():
    dev = Device(lambda b: 2 * GiB + 100 * MiB * b, 80 * GiB)
    with ferry.BatchSizeAdvisor() as adv:
        ab = ferry.AutoBatch(dev.step, measure=dev.measure, budget_bytes=dev.budget, headroom=0.0, advisor=adv)
        assert ab.find() == 792
        ab.close()  # not its advisor: stays open
        assert not adv.closed and adv.fit().observations == 4


def test_errors_propagate_and_arguments_are_checked():
    def step(b):
        raise ValueError("a bug in the step, not memory")

    ab = ferry.AutoBatch(step, measure=lambda b: GiB, budget_bytes=GiB)
    with pytest.raises(ValueError, match="a bug"):
        ab.find()
    ab.close()
    dev = Device(lambda b: 2 * GiB + 100 * MiB * b, 80 * GiB)
    with pytest.raises(ferry.InvalidArgumentError, match="budget"):
        ferry.AutoBatch(dev.step, measure=dev.measure)
    with pytest.raises(ferry.InvalidArgumentError):
        ferry.AutoBatch(dev.step, measure=dev.measure, budget_bytes=GiB, probes=(8,))
    with pytest.raises(ferry.InvalidArgumentError):
        ferry.AutoBatch(dev.step, measure=dev.measure, budget_bytes=GiB, probes=(0, 8))
    with pytest.raises(ferry.InvalidArgumentError):
        ferry.AutoBatch(dev.step, measure=dev.measure, budget_bytes=GiB, headroom=1.0)
    with pytest.raises(ferry.InvalidArgumentError):
        ferry.AutoBatch(dev.step, measure=dev.measure, budget_bytes=GiB, multiple=0)
    with pytest.raises(ferry.InvalidArgumentError):
        ferry.AutoBatch(dev.step, measure=dev.measure, budget_bytes=GiB, max_batch=0)
    with pytest.raises(TypeError):
        ferry.AutoBatch("step", measure=dev.measure, budget_bytes=GiB)
    ab = ferry.AutoBatch(dev.step, measure=lambda b: 0, budget_bytes=GiB)
    with pytest.raises(ferry.InvalidArgumentError, match="peak"):
        ab.find()
    ab.close()


def test_oom_classification():
    assert _is_oom(MemoryError())
    assert _is_oom(ferry.OutOfMemoryError(ferry.Status.OUT_OF_MEMORY, "x", "FERRY_ERR_OUT_OF_MEMORY"))
    assert _is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert _is_oom(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert not _is_oom(RuntimeError("shape mismatch"))
    assert not _is_oom(ValueError("out of memory"))


# --- the torch path, on a stand-in for torch.cuda -------------------------------------------------------------


class _FakeTorchCuda:
    """The few torch.cuda calls AutoBatch makes, over a simulated caching allocator: a step at b allocates
    fixed + per*b at its peak and reserves ``frag`` more; the first step loads kernels (``lazy`` bytes held
    outside the allocator); a step whose reservation does not fit the device raises OutOfMemoryError."""

    class OutOfMemoryError(RuntimeError):
        pass

    def __init__(self, total, other, lazy, fixed, per, frag):
        self.total, self.other, self.lazy = total, other, lazy
        self.fixed, self.per, self.frag = fixed, per, frag
        self.loaded = False
        self.reserved = 0
        self.alloc_peak = 0
        self.res_peak = 0
        self.calls = []

    def is_available(self):
        return True

    def synchronize(self, device=None):
        self.calls.append("synchronize")

    def reset_peak_memory_stats(self, device=None):
        self.calls.append("reset")
        self.alloc_peak, self.res_peak = 0, self.reserved

    def max_memory_allocated(self, device=None):
        return self.alloc_peak

    def max_memory_reserved(self, device=None):
        return self.res_peak

    def memory_reserved(self, device=None):
        return self.reserved

    def mem_get_info(self, device=None):
        used = self.other + (self.lazy if self.loaded else 0) + self.reserved
        return self.total - used, self.total

    def empty_cache(self):
        self.calls.append("empty_cache")
        self.reserved = self.fixed

    def need(self, b):
        return int((self.fixed + self.per * b) * (1 + self.frag))

    def step(self, b):
        self.calls.append(("step", b))
        self.loaded = True
        if self.other + self.lazy + self.need(b) > self.total:
            raise self.OutOfMemoryError(f"CUDA out of memory at batch size {b}")
        self.alloc_peak = max(self.alloc_peak, self.fixed + self.per * b)
        self.reserved = max(self.reserved, self.need(b))
        self.res_peak = max(self.res_peak, self.reserved)

    def limit(self):
        return max(b for b in range(1, 100000) if self.other + self.lazy + self.need(b) <= self.total)


@pytest.fixture
def fake_torch(monkeypatch):
    import types

    torch = types.ModuleType("torch")
    monkeypatch.setitem(sys.modules, "torch", torch)
    return torch


def test_torch_path_budget_policy(fake_torch):
    cuda = _FakeTorchCuda(total=80 * GiB, other=GiB, lazy=600 * MiB, fixed=2 * GiB, per=100 * MiB, frag=0.01)
    fake_torch.cuda = cuda
    with ferry.AutoBatch(cuda.step, device=0) as ab:
        size = ab.find()
    limit = cuda.limit()
    assert 0 < size <= limit and size % 8 == 0
    assert not ab.probe_oom
    # the measurement protocol around every step
    first = cuda.calls.index(("step", 8))
    assert cuda.calls[first - 2:first] == ["synchronize", "reset"] and cuda.calls[first + 1] == "synchronize"
    assert cuda.calls[-1] == "empty_cache"  # the probes' cache is given back at the end
    # the budget: total - what is not torch's (the lazily loaded kernels included) - the fragmentation allowance
    assert ab.total_bytes == 80 * GiB
    assert ab.non_torch_bytes == GiB + 600 * MiB
    biggest = max(t.batch_size for t in ab.trials if not t.oom)
    gap = cuda.need(biggest) - (cuda.fixed + cuda.per * biggest)
    assert ab.fragmentation_bytes == max(128 * MiB, gap)
    assert ab.budget_bytes == 80 * GiB - ab.non_torch_bytes - ab.fragmentation_bytes
    # the default headroom (5%) keeps the size near, and below, the limit
    assert size >= 0.90 * limit, (size, limit)
    rep = ab.report()
    assert rep["non_torch_bytes"] == ab.non_torch_bytes and rep["total_bytes"] == 80 * GiB


def test_torch_path_catches_out_of_memory(fake_torch):
    # a curve whose real reservation is 40% above what the allocated peak says: the verification runs out
    # of memory and AutoBatch backs off instead of crashing
    cuda = _FakeTorchCuda(total=80 * GiB, other=GiB, lazy=0, fixed=2 * GiB, per=100 * MiB, frag=0.4)
    fake_torch.cuda = cuda
    with ferry.AutoBatch(cuda.step, device=0, fragmentation_bytes=0, headroom=0.0) as ab:
        size = ab.find()
    assert ab.probe_oom and ab.fit.oom_ceiling > 0
    assert 0 < size <= cuda.limit()
    assert "empty_cache" in cuda.calls[:-1]  # after the OOM, before the next step
    # a non-OOM RuntimeError is not swallowed
    def broken(b):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with ferry.AutoBatch(broken, device=0) as ab:
        with pytest.raises(RuntimeError, match="illegal"):
            ab.find()


# --- a real GPU with torch ------------------------------------------------------------------------------------


def test_torch_gpu_autobatch_fits_and_runs(require_gpu):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.fail("ferry sees a GPU but torch.cuda does not")
    dev = torch.device("cuda", 0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 1024)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(b):
        opt.zero_grad(set_to_none=True)
        x = torch.randn(b, 1024, device=dev)
        loss = model(x).square().mean()
        loss.backward()
        opt.step()

    budget = 1 * GiB  # a budget far below the card: quick, and the answer is checkable
    with ferry.AutoBatch(step, device=0, budget_bytes=budget, headroom=0.05) as ab:
        size = ab.find()
    assert size > 0 and size % 8 == 0
    assert not ab.probe_oom and 3 <= len(ab.trials) <= 2 + 3 + 1  # probes, refinements, verification
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step(size)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() <= budget
    # the default budget: the device minus what is not torch's and the fragmentation allowance
    with ferry.AutoBatch(step, device=0, max_batch=4096) as ab:
        size = ab.find()
    assert 0 < size <= 4096 and not ab.probe_oom
    free, total = torch.cuda.mem_get_info(0)
    assert ab.total_bytes == total and ab.fragmentation_bytes >= 128 * MiB
    assert ab.budget_bytes == total - ab.non_torch_bytes - ab.fragmentation_bytes
