"""BatchSizeAdvisor: the least-squares model, recommendations (rounding, headroom, noisy and convex curves),
the OOM ceiling, the reduction across ranks, errors and lifetime."""

from __future__ import annotations

import ctypes
import gc
import math
import re
import threading

import pytest

import ferry
from ferry import _lib

from conftest import find_header
from loader_helpers import fresh_rng

MiB = 1 << 20
GiB = 1 << 30


def test_fit_struct_matches_header():
    assert ctypes.sizeof(_lib.AdvisorFit) == 56
    path = find_header()
    if path is None:
        pytest.skip("ferry.h is not reachable from the package directory")
    body = re.search(r"typedef struct ferry_advisor_fit \{(.*?)\} ferry_advisor_fit;", path.read_text(), flags=re.S)
    code = re.sub(r"/\*.*?\*/", "", body.group(1), flags=re.S)
    names = [m.group(1) for m in re.finditer(r"(\w+)(?:\[\d+\])?\s*;", code)]
    assert [n for n, _ in _lib.AdvisorFit._fields_] == names
    # the dataclass carries every field but the struct size
    assert list(ferry.AdvisorFit.__dataclass_fields__) == names[1:]


def _expected(fixed: float, per: float, budget: int, headroom: float, multiple: int, margin: float = 0.0) -> int:
    """The documented rule: the largest b with fixed + margin + per * b <= budget * (1 - headroom), rounded
    down to the multiple (b itself when that is 0)."""
    b = math.floor((budget * (1.0 - headroom) - fixed - margin) / per)
    r = b // multiple * multiple
    return r if r > 0 else b


def test_linear_fit_is_exact_and_recommends_by_the_rule():
    rng, seed = fresh_rng()
    for _ in range(20):
        fixed = rng.randrange(100 * MiB, 8 * GiB)
        per = rng.randrange(1 * MiB, 300 * MiB)
        multiple = rng.choice([1, 8, 16, 32])
        sizes = rng.sample(range(1, 256), rng.randrange(2, 6))
        with ferry.BatchSizeAdvisor(multiple) as adv:
            for b in sizes:
                adv.observe(b, fixed + per * b)
            fit = adv.fit()
            assert fit.observations == len(sizes)
            assert fit.fixed_bytes == pytest.approx(fixed, rel=1e-9, abs=64), seed
            assert fit.per_sample_bytes == pytest.approx(per, rel=1e-9), seed
            assert fit.r_squared == pytest.approx(1.0, abs=1e-9)
            assert fit.max_residual_bytes == pytest.approx(0.0, abs=4096)
            assert fit.oom_ceiling == 0
            assert adv.model() == (fit.fixed_bytes, fit.per_sample_bytes)
            budget = fixed + per * rng.randrange(300, 4000)
            headroom = rng.choice([0.0, 0.05, 0.1])
            want = _expected(fixed, per, budget, headroom, multiple)
            got = adv.recommend(budget, headroom)
            assert abs(got - want) <= multiple, (seed, got, want)  # the float rounding of the fit
            assert got % multiple == 0
            assert fixed + per * got <= budget * (1 - headroom), seed


def test_two_observations_are_enough():
    with ferry.BatchSizeAdvisor() as adv:
        adv.observe(8, 2 * GiB + 8 * 100 * MiB)
        with pytest.raises(ferry.InvalidArgumentError, match="two"):
            adv.recommend(80 * GiB)
        adv.observe(8, 2 * GiB + 8 * 100 * MiB)  # the same size again is not a second size
        with pytest.raises(ferry.InvalidArgumentError):
            adv.fit()
        adv.observe(16, 2 * GiB + 16 * 100 * MiB)
        assert adv.fit().observations == 2 and adv.fit().r_squared == 1.0
        assert adv.recommend(80 * GiB) == 792  # (80 - 2) GiB / 100 MiB = 798.7
        assert adv.recommend(80 * GiB, 0.05) == 752  # (76 - 2) GiB / 100 MiB = 757.8


@pytest.mark.parametrize("multiple, budget_samples, want", [
    (8, 799, 792), (1, 799, 799), (32, 799, 768), (64, 40, 40), (8, 7, 7), (100, 150, 100),
])
def test_rounding(multiple, budget_samples, want):
    fixed, per = GiB, 10 * MiB
    with ferry.BatchSizeAdvisor(multiple) as adv:
        assert adv.multiple == multiple
        adv.observe(1, fixed + per)
        adv.observe(4, fixed + 4 * per)
        # a budget that fits budget_samples and a half: rounding down, and b itself below one multiple
        assert adv.recommend(fixed + per * budget_samples + per // 2) == want


def test_noisy_curves_stay_on_the_safe_side():
    rng, seed = fresh_rng()
    for _ in range(30):
        fixed = rng.randrange(GiB, 6 * GiB)
        per = rng.randrange(20 * MiB, 200 * MiB)
        noise = rng.uniform(0.0, 0.03)

        def peak(b, fixed=fixed, per=per, noise=noise):  # the measured peak: the true curve plus noise of either sign
            return int((fixed + per * b) * (1 + rng.uniform(-noise, noise)))

        budget = 80 * GiB
        with ferry.BatchSizeAdvisor() as adv:
            obs = [(b, peak(b)) for b in (8, 16, 8, rng.randrange(100, 300))]
            for b, p in obs:
                adv.observe(b, p)
            fit = adv.fit()
            assert 0.0 <= fit.r_squared <= 1.0 + 1e-12
            # the line raised by the largest positive residual lies above every observation
            for b, p in obs:
                assert fit.predict(b) >= p - 1, seed
            got = adv.recommend(budget)
            assert got % 8 == 0 and got > 0
            assert fit.predict(got) <= budget * (1 + 1e-9), seed
            # the largest residual is exactly the largest excess of an observation over the line
            line = [(fit.fixed_bytes + fit.per_sample_bytes * b) for b, _ in obs]
            assert fit.max_residual_bytes == pytest.approx(max(0.0, max(p - y for (_, p), y in zip(obs, line))),
                                                           rel=1e-6, abs=4096)


def test_convex_curve_never_recommends_past_what_was_measured_to_fit():
    fixed, per, quad = 2 * GiB, 40 * MiB, 40 * 1024  # peak = fixed + per*b + quad*b^2
    budget = 60 * GiB

    def peak(b):
        return fixed + per * b + quad * b * b

    limit = max(b for b in range(1, 5000) if peak(b) <= budget)
    with ferry.BatchSizeAdvisor() as adv:
        for b in (8, 16, limit // 2, limit):
            adv.observe(b, peak(b))
        got = adv.recommend(budget)
        assert 0 < got <= limit
        assert peak(got) <= budget
        assert adv.fit().r_squared < 1.0


def test_oom_ceiling_and_back_off():
    with ferry.BatchSizeAdvisor() as adv:
        adv.observe(8, 2 * GiB + 8 * 100 * MiB)
        adv.observe(16, 2 * GiB + 16 * 100 * MiB)
        assert adv.recommend(80 * GiB) == 792
        adv.report_oom(500)
        assert adv.fit().oom_ceiling == 500
        first = adv.recommend(80 * GiB)
        assert first == 496  # the largest multiple below the ceiling
        adv.report_oom(496)  # the ceiling's size also ran out of memory
        second = adv.recommend(80 * GiB)
        assert second < first and second % 8 == 0
        assert adv.fit().oom_ceiling <= 496
        adv.report_oom(second)  # a repeated OOM lowers it further
        third = adv.recommend(80 * GiB)
        assert third < second
        # a ceiling above the model's answer changes nothing
        with ferry.BatchSizeAdvisor() as other:
            other.observe(8, 2 * GiB + 8 * 100 * MiB)
            other.observe(16, 2 * GiB + 16 * 100 * MiB)
            other.report_oom(4096)
            assert other.recommend(80 * GiB) == 792
        # a small ceiling: never 0 while one sample fits
        adv.report_oom(3)
        got = adv.recommend(80 * GiB)
        assert 1 <= got < 3


def test_errors_are_clear():
    with ferry.BatchSizeAdvisor() as adv:
        for b, p in [(0, GiB), (-8, GiB), (8, 0)]:
            with pytest.raises(ferry.InvalidArgumentError) as exc:
                adv.observe(b, p)
            assert exc.value.message
        with pytest.raises(ferry.InvalidArgumentError):
            adv.observe(8, -1)
        with pytest.raises(ferry.InvalidArgumentError):
            adv.report_oom(0)
        with pytest.raises(TypeError):
            adv.observe(8.0, GiB)
        with pytest.raises(ferry.InvalidArgumentError, match="two|2"):
            adv.recommend(GiB)
        adv.observe(8, 3 * GiB)
        adv.observe(16, 3 * GiB)  # memory that does not grow with the batch
        with pytest.raises(ferry.InvalidArgumentError) as exc:
            adv.recommend(80 * GiB)
        assert exc.value.message
    with ferry.BatchSizeAdvisor() as adv:
        adv.observe(8, 2 * GiB + 8 * 100 * MiB)
        adv.observe(16, 2 * GiB + 16 * 100 * MiB)
        with pytest.raises(ferry.InvalidArgumentError, match="fixed|budget"):
            adv.recommend(GiB)  # a budget below the fixed cost
        for h in (-0.1, 1.0, 1.5, float("nan")):
            with pytest.raises(ferry.InvalidArgumentError, match="headroom"):
                adv.recommend(80 * GiB, h)
        with pytest.raises(ferry.InvalidArgumentError):
            adv.recommend(-1)
        with pytest.raises(TypeError):
            adv.recommend(80 * GiB, "a little")
    for multiple in (0, -8):
        with pytest.raises(ferry.InvalidArgumentError):
            ferry.BatchSizeAdvisor(multiple)


def test_reduce_hook_gives_every_rank_the_minimum():
    """Four ranks with different memory curves (threads standing in for processes): with a min-reduce each
    gets the same size, the smallest of their own answers."""
    world = 4
    rng, seed = fresh_rng()
    curves = [(rng.randrange(GiB, 4 * GiB), rng.randrange(50 * MiB, 150 * MiB)) for _ in range(world)]
    budget = 80 * GiB
    slots = [0] * world
    barrier = threading.Barrier(world)
    local, reduced, errors = [None] * world, [None] * world, []

    def all_reduce_min(rank):
        def reduce(value):
            slots[rank] = value
            barrier.wait()
            out = min(slots)
            barrier.wait()
            return out
        return reduce

    def rank_main(rank):
        try:
            fixed, per = curves[rank]
            with ferry.BatchSizeAdvisor() as adv:
                adv.observe(8, fixed + 8 * per)
                adv.observe(32, fixed + 32 * per)
                local[rank] = adv.recommend(budget)
                adv.set_reduce(all_reduce_min(rank))
                assert adv.reduce is not None
                reduced[rank] = adv.recommend(budget)
                adv.set_reduce(None)
                assert adv.reduce is None
                assert adv.recommend(budget) == local[rank]
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [], seed
    assert len(set(reduced)) == 1 and reduced[0] == min(local), (seed, local, reduced)


def test_reduce_hook_errors_surface_in_python():
    with ferry.BatchSizeAdvisor() as adv:
        adv.observe(8, 2 * GiB + 8 * 100 * MiB)
        adv.observe(16, 2 * GiB + 16 * 100 * MiB)

        def fails(value):
            raise ConnectionError("rank 3 is gone")

        adv.set_reduce(fails)
        with pytest.raises(ConnectionError, match="rank 3") as exc:
            adv.recommend(80 * GiB)
        assert isinstance(exc.value.__cause__, ferry.FerryError)  # the library's status, chained
        adv.set_reduce(lambda v: "eight")
        with pytest.raises(TypeError):
            adv.recommend(80 * GiB)
        adv.set_reduce(lambda v: 2**70)
        with pytest.raises(ValueError):
            adv.recommend(80 * GiB)
        seen = []
        adv.set_reduce(lambda v: seen.append(v) or v - 8)
        assert adv.recommend(80 * GiB) == 784 and seen == [792]
        with pytest.raises(TypeError):
            adv.set_reduce(42)
        # the hook outlives the caller's references
        adv.set_reduce((lambda k: (lambda v: v // k))(2))
        gc.collect()
        assert adv.recommend(80 * GiB) == 396


def test_lifetime():
    adv = ferry.BatchSizeAdvisor()
    assert "multiple=8" in repr(adv)
    adv.set_reduce(lambda v: v)
    adv.close()
    adv.close()
    assert adv.closed and "closed" in repr(adv)
    for call in (lambda: adv.observe(8, GiB), lambda: adv.recommend(GiB), lambda: adv.report_oom(8),
                 lambda: adv.fit(), lambda: adv.model(), lambda: adv.set_reduce(None)):
        with pytest.raises(ferry.ClosedError):
            call()
    with ferry.BatchSizeAdvisor(16) as adv2:
        assert adv2.multiple == 16
    assert adv2.closed
    # garbage collection destroys an advisor that was never closed, hook and all
    adv3 = ferry.BatchSizeAdvisor()
    adv3.set_reduce(lambda v: v)
    del adv3
    gc.collect()


def test_observe_and_recommend_from_many_threads():
    with ferry.BatchSizeAdvisor() as adv:
        errors = []

        def work(k):
            try:
                for i in range(200):
                    b = 8 * (1 + (i + k) % 16)
                    adv.observe(b, 2 * GiB + b * 100 * MiB)
                    if i > 2:
                        assert adv.recommend(80 * GiB) == 792
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert adv.fit().observations == 16


def test_torch_min_reduce_single_process(tmp_path):
    torch = pytest.importorskip("torch")
    import torch.distributed as dist

    reduce = ferry.torch_min_reduce()
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    assert reduce(136) == 136  # no process group: the value itself
    if dist.is_initialized():
        pytest.skip("a process group is already initialized")
    # The file store's file; the store may delete it itself when the group ends (newer torch does).
    store = tmp_path / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        with ferry.BatchSizeAdvisor() as adv:
            adv.observe(8, 2 * GiB + 8 * 100 * MiB)
            adv.observe(16, 2 * GiB + 16 * 100 * MiB)
            adv.set_reduce(ferry.torch_min_reduce())
            assert adv.recommend(80 * GiB) == 792
    finally:
        dist.destroy_process_group()
    assert torch is not None
