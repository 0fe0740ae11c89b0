"""sparsetrain.testing.assert_invariants: passes on a trained sparsifier, names the broken invariant."""

import pytest
import torch
from torch import nn

import sparsetrain as st
from sparsetrain.sparse import to_sparse
from sparsetrain.testing import assert_invariants


def _trained(compressed=False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    if compressed:
        to_sparse(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp = st.Sparsifier(model, opt, st.RigL(density=0.3, update_interval=2, end=None), total_steps=6)
    g = torch.Generator().manual_seed(1)
    for _ in range(6):
        x, y = torch.randn(8, 10, generator=g), torch.randint(0, 3, (8,), generator=g)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return model, opt, sp


@pytest.mark.parametrize("compressed", [False, True])
def test_holds_after_training_and_counts_the_state_it_checked(compressed):
    model, opt, sp, = _trained(compressed)
    counts = {n: l.n_active for n, l in sp.layers.items()}
    assert assert_invariants(sp, opt, counts) == 2 * len(sp.layers)  # Adam: exp_avg, exp_avg_sq
    assert sp.updates == 2


def test_names_a_revived_weight_and_a_revived_state_slot():
    model, opt, sp = _trained()
    layer = sp.layers["0.weight"]
    off = (~layer.mask).nonzero()[0]
    with torch.no_grad():
        layer.param[tuple(off)] = 1.0
    with pytest.raises(AssertionError, match="masked weights of 0.weight"):
        assert_invariants(sp, opt)
    sp.apply_masks()
    opt.state[layer.param]["exp_avg"][tuple(off)] = 1.0
    with pytest.raises(AssertionError, match="exp_avg.*0.weight"):
        assert_invariants(sp, opt)
    with pytest.raises(AssertionError, match="expected"):
        assert_invariants(sp, opt, counts={"0.weight": layer.n_active + 1})
