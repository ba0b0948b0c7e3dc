"""Elastic resume through the Python loader: a job saved under one world size continues under another,
with every remaining sample seen once across the new ranks (ranks simulated in one process)."""

import numpy as np

import ferry


def _loaders(n, world, batch):
    data = np.arange(n, dtype=np.int64)
    return [ferry.Loader({"i": data}, batch, shuffle=True, seed=5, device="cpu", rank=r, world_size=world,
                         output="numpy") for r in range(world)]


def _take(loaders, steps=None):
    seen, its = [], [iter(ld) for ld in loaders]
    k = 0
    while steps is None or k < steps:
        batches = [next(it, None) for it in its]
        if all(b is None for b in batches):
            break
        assert all(b is not None for b in batches), "ranks have the same number of batches"
        for b in batches:
            seen.extend(np.asarray(b["i"]).tolist())
        k += 1
    return seen


def test_state_is_global_and_resumes_under_another_world_size():
    n, batch = 960, 10
    before = _loaders(n, 4, batch)
    seen = _take(before, steps=6)  # 240 consumed: the 720 left divide among 3 ranks, no padding
    states = [ld.state_dict() for ld in before]
    assert all(s == states[0] for s in states), "every rank's state is the same"
    assert states[0]["consumed"] == 6 * batch * 4 and states[0]["world_size"] == 4
    after = _loaders(n, 3, batch)
    for ld in after:
        ld.load_state_dict(states[0])  # any rank's state restores every rank
    rest = _take(after)
    assert sorted(seen + rest) == list(range(n)), "every sample exactly once in the epoch"
    for ld in before + after:
        ld.close()


def test_same_world_size_resumes_exactly():
    a = _loaders(500, 2, 8)
    _take(a, steps=5)
    state = a[0].state_dict()
    want = _take(a)
    b = _loaders(500, 2, 8)
    for ld in b:
        ld.load_state_dict(state)
    assert _take(b) == want
    for ld in a + b:
        ld.close()
