"""load_state_dict checks the dict in one place and names what is wrong: a missing key, an unknown one,
a value of the wrong type or out of range. A state saved under another world size without "consumed",
or with a negative world size, raised a bare KeyError: 'consumed'."""

import numpy as np
import pytest

import ferry


def _loader(world=2, rank=0):
    data = np.arange(100, dtype=np.int64)
    return ferry.Loader({"i": data}, 10, shuffle=True, seed=1, device="cpu", rank=rank, world_size=world,
                        output="numpy")


@pytest.mark.parametrize("state, words", [
    ({"epoch": 0, "batch": 1, "world_size": 4}, ["world_size 4", "'consumed'", "lacks"]),
    ({"epoch": 0, "batch": 1, "world_size": -4}, ["state['world_size']", "-4", ">= 0"]),
    ({"epoch": -1, "batch": 0}, ["state['epoch']", "-1"]),
    ({"epoch": 0, "batch": 0, "offset": -2}, ["state['offset']", "-2"]),
    ({"epoch": 0, "batch": 0, "consumed": -5, "world_size": 4}, ["state['consumed']", "-5"]),
    ({"epoch": 0, "batch": 0, "epochs": 3}, ["unknown keys", "'epochs'"]),
    ({"batch": 0}, ["lacks 'epoch'"]),
    ({}, ["lacks 'epoch' and 'batch'"]),
    ({"epoch": None, "batch": 0}, ["lacks 'epoch'"]),
    ([("epoch", 0)], ["not list"]),
])
def test_bad_state_is_refused_naming_the_problem(state, words):
    with _loader() as ld:
        with pytest.raises(ferry.InvalidArgumentError) as ei:
            ld.load_state_dict(state)
        for w in words:
            assert w in str(ei.value), (w, str(ei.value))
        # the loader is unharmed: it still runs its epoch from the start
        assert sum(1 for _ in ld) == len(ld)


@pytest.mark.parametrize("state, key", [
    ({"epoch": "0", "batch": 0}, "state['epoch']"),
    ({"epoch": 0, "batch": 1.5}, "state['batch']"),
    ({"epoch": 0, "batch": 0, "world_size": True}, "state['world_size']"),
])
def test_state_of_wrong_type_is_a_type_error(state, key):
    with _loader() as ld:
        with pytest.raises(TypeError, match=key.replace("[", r"\[").replace("]", r"\]")):
            ld.load_state_dict(state)


def test_good_states_still_resume():
    with _loader() as a:
        it = iter(a)
        next(it), next(it)
        state = a.state_dict()
        want = [b["i"].tolist() for b in it]
    with _loader() as b:
        b.load_state_dict(dict(state, world_size=np.int64(2)))  # numpy ints are ints
        assert [x["i"].tolist() for x in b] == want
    with _loader() as c:
        c.load_state_dict({"epoch": state["epoch"], "batch": state["batch"], "offset": None})  # an older state
        assert [x["i"].tolist() for x in c] == want
    with _loader(world=4) as d:
        d.load_state_dict(state)  # another world size, with "consumed": elastic
        assert sum(1 for _ in d) > 0
