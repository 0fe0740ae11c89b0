"""Ownership: a parameter belongs to at most one live Sparsifier; weak references only."""

import gc

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
