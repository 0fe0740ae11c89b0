"""Ownership: a parameter belongs to at most one live Sparsifier; weak references only."""

import gc
import warnings

import pytest

import torch
from torch import nn

import sparsetrain as st
from sparsetrain import ownership


class _Holder:
    pass


def test_claim_release_and_held_by():
    p, q = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3))
    a, b = _Holder(), _Holder()
    keys = ownership.claim([p, q], a)
    assert ownership.held_by(p) is a and ownership.held_by(q) is a
    ownership.claim([q], b)  # taken over
    ownership.release(keys, a)
    assert ownership.held_by(p) is None
    assert ownership.held_by(q) is b  # b's claim survives a's release
    assert ownership.held_by(torch.zeros(3)) is None


def test_a_collected_holder_holds_nothing():
    p = nn.Parameter(torch.zeros(3))
    h = _Holder()
    ownership.claim([p], h)
    del h
    gc.collect()
    assert ownership.held_by(p) is None


def test_the_sparsifier_claims_its_weights_and_remove_releases_them():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = st.Sparsifier(model, opt, "rigl", density=0.5, total_steps=1000)
    assert ownership.held_by(model[0].weight) is sp and ownership.held_by(model[2].weight) is sp
    assert ownership.held_by(model[0].bias) is None
    sp.remove()
    assert ownership.held_by(model[0].weight) is None


def _steps(model, opt, n, x):
    for _ in range(n):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 4))


def test_another_optimizer_stepping_the_sparse_weights_warns_once():
    """A new optimizer built mid-run used to leave the Sparsifier (hooked on the first one) idle without a word:
    no step counted, no state masked, no update."""
    m = _model()
    sgd = torch.optim.SGD(m.parameters(), lr=0.1)
    sp = st.Sparsifier(m, sgd, st.SET(density=0.3, update_interval=2), total_steps=100)
    x = torch.randn(4, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _steps(m, sgd, 2, x)  # its own optimizer: no warning
    adam = torch.optim.Adam(m.parameters())
    with pytest.warns(st.InputWarning, match=r"an optimizer \(Adam\) other than the Sparsifier's \(SGD\) steps 2 of "
                                             r"its sparse weights \(0.weight, 2.weight\)"):
        _steps(m, adam, 1, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _steps(m, adam, 2, x)  # once per optimizer
    assert sp.step == 2
    # the recipe the warning gives continues the run on the new optimizer
    state = sp.state_dict()
    sp.remove()
    sp = st.Sparsifier(m, adam, st.SET(density=0.3, update_interval=2), total_steps=100, state=state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _steps(m, adam, 2, x)
    assert sp.step == 4 and sp.updates == 2
    sp.remove()


def test_an_optimizer_of_other_weights_or_one_stepped_inside_the_sparsifiers_is_not_foreign():
    m = _model()
    head = nn.Linear(4, 2)

    class Wrapper(torch.optim.Optimizer):  # a Lookahead / ZeroRedundancyOptimizer-like wrapper
        def __init__(self, params):
            params = list(params)
            super().__init__(params, {})
            self.inner = torch.optim.SGD(params, lr=0.1)

        def step(self, closure=None):
            self.inner.step()

    wrapped = Wrapper(m.parameters())
    other = torch.optim.SGD(head.parameters(), lr=0.1)
    sp = st.Sparsifier(m, wrapped, st.SET(density=0.3, update_interval=2), total_steps=100)
    x = torch.randn(4, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            wrapped.zero_grad()
            other.zero_grad()
            head(m(x)).sum().backward()
            wrapped.step()
            other.step()
    assert sp.step == 3
    sp.remove()


def test_a_wrapper_around_the_sparsifiers_optimizer_or_one_holding_frozen_weights_is_not_foreign():
    m = _model()
    sgd = torch.optim.SGD(m.parameters(), lr=0.1)

    class SAMLike(torch.optim.Optimizer):  # steps the Sparsifier's optimizer from inside its own step
        def __init__(self, base):
            super().__init__(base.param_groups, {})
            self.base = base

        def step(self, closure=None):
            self.base.step()

    sam = SAMLike(sgd)
    sp = st.Sparsifier(m, sgd, st.SET(density=0.3, update_interval=2), total_steps=100)
    x = torch.randn(4, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _steps(m, sam, 3, x)
        # an optimizer over the same weights that never gets their gradients steps none of them
        idle = torch.optim.Adam(m.parameters())
        sgd.zero_grad()
        idle.step()
    assert sp.step == 3
    with pytest.warns(st.InputWarning, match=r"an optimizer \(Adam\) other than"):
        _steps(m, idle, 1, x)  # checked again once it does
    sp.remove()
