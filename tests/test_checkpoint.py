"""sparsetrain.checkpoint: a saved Sparsifier state loads into a new process's Sparsifier."""

import pytest
import torch
from torch import nn

import sparsetrain as st
from sparsetrain.checkpoint import checksum


def test_a_callable_distribution_resumes_in_a_new_process():
    """A function's repr holds its address, which differs in the process that resumes: the saved
    configuration names it by its qualified name instead (simulated here by a second function
    object of the same name)."""
    src = "def my_dist(names, shapes, density):\n    return {n: density for n in names}\n"
    first, second = {}, {}
    exec(src, first)
    exec(src, second)
    assert first["my_dist"] is not second["my_dist"]

    def build(fn):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        return m, opt, st.Sparsifier(m, opt, st.RigL(density=0.3, distribution=fn), total_steps=1000)

    _, _, a = build(first["my_dist"])
    assert "0x" not in a.algorithm.config()["distribution"]
    state = a.state_dict()
    _, _, b = build(second["my_dist"])
    b.load_state_dict(state)  # used to be refused: "saved with distribution='<function my_dist at 0x...>'"
    assert all(torch.equal(b.layers[n].mask, a.layers[n].mask) for n in a.layers)


def _pin_model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 5))
    return m, torch.optim.SGD(m.parameters(), lr=0.1)


def test_a_state_saved_with_other_dense_pins_is_refused():
    """Layers pinned with ``dense=`` are part of the configuration: a state saved with ``dense=['0.weight']``
    loaded into a sparsifier without it used to load silently, leaving that layer at density 1 while the
    sparsifier treated it as an ordinary sparse layer (and the other way round)."""
    m, opt = _pin_model()
    a = st.Sparsifier(m, opt, st.RigL(density=0.5), dense=["0.weight"], total_steps=1000)
    state = a.state_dict()
    assert state["layers"]["0.weight"]["pinned"] is True
    m2, opt2 = _pin_model()
    b = st.Sparsifier(m2, opt2, st.RigL(density=0.5), total_steps=1000)
    with pytest.raises(st.InputError, match=r"pinned dense \['0.weight'\] \(this sparsifier: \[\]"):
        b.load_state_dict(state)
    with pytest.raises(st.InputError, match=r"pinned dense \[\] \(this sparsifier: \['0.weight'\]"):
        a.load_state_dict(b.state_dict())
    with pytest.warns(st.InputWarning, match="pinned dense"):
        b.load_state_dict(state, strict=False)
    assert b.layers["0.weight"].density == 1.0 and not b.layers["0.weight"].pinned
    # the same pins load; a state from before the flag was saved loads without the check
    m3, opt3 = _pin_model()
    c = st.Sparsifier(m3, opt3, st.RigL(density=0.5), dense=["0.weight"], total_steps=1000)
    c.load_state_dict(state)
    old = {**state, "layers": {n: {k: v for k, v in s.items() if k != "pinned"} for n, s in state["layers"].items()}}
    old["checksum"] = checksum(old)
    b.load_state_dict(old)
