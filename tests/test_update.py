"""sparsetrain.update: the forced-update rule and the per-layer record."""

import pytest
import torch
from torch import nn

import sparsetrain as st
from sparsetrain.algorithms.base import UpdateContext
from sparsetrain.update import ForcedUpdate, layer_record


def test_forced_update_validates_and_plans_exact_counts():
    alg = st.SET(density=0.2)
    for bad in (dict(drop_fraction=1.5), dict(drop_fraction=float("nan")), dict(drop_fraction=0.5, grow="best"),
                dict(drop_fraction=0.5, drop="random")):
        with pytest.raises(ValueError):
            ForcedUpdate(alg, **bad)
    rule = ForcedUpdate(alg, 0.5, "random")
    assert rule.as_dict() == {"drop_fraction": 0.5, "grow": "random", "drop": "magnitude"}
    assert not rule.needs_dense_grad and rule.stream_growth == "random" and rule.drop_fraction(7, 100) == 0.5
    assert ForcedUpdate(alg, 0.5, "gradient").needs_dense_grad
    assert not ForcedUpdate(alg, 0.5, "algorithm").needs_dense_grad  # SET's own growth is random
    assert ForcedUpdate(st.RigL(density=0.2), 0.5, "algorithm").needs_dense_grad
    assert ForcedUpdate(st.RigL(density=0.2, grow_init="init"), 0.5, "random").stream_growth is None
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 4))
    sp = st.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), alg, total_steps=10)
    ctx = UpdateContext(step=1, total_steps=10, drop_fraction=0.5, generator=sp.generator)
    plan = rule.plan(list(sp.layers.values()), ctx)
    assert plan == {n: (round(0.5 * l.n_active),) * 2 for n, l in sp.layers.items() if not l.is_dense}


def test_a_requested_update_is_saved_and_runs_after_the_next_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = st.Sparsifier(model, opt, st.Static(density=0.3), total_steps=10)
    sp.request_update(0.5, grow="gradient")
    state = sp.state_dict()
    assert state["forced_update"] == {"drop_fraction": 0.5, "grow": "gradient", "drop": "magnitude"}
    model(torch.randn(4, 10)).sum().backward()
    opt.step()
    assert sp.updates == 1 and sp.history[-1]["forced"] == "magnitude/gradient" and sp.pending_update is None
    assert sp.history[-1]["grown"] > 0 and "exploitation" in sp.history[-1]


def test_layer_record():
    r = layer_record(4, 4, 10, fresh=1, changed=3, exploitation=2.0)
    assert r == {"dropped": 4, "grown": 4, "turnover": 0.3, "_fresh": 1, "_changed": 3, "exploration": 0.25,
                 "exploitation": 2.0}
    assert "exploration" not in layer_record(2, 0, 10, 0, 0)
