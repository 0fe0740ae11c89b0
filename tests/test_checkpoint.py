"""sparsetrain.checkpoint: a saved Sparsifier state loads into a new process's Sparsifier."""

import torch
from torch import nn

import sparsetrain as st


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
