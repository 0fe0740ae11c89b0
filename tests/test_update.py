"""sparsetrain.update: the forced-update rule and the per-layer record."""

import copy

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
    assert r == {"dropped": 4, "grown": 4, "turnover": 0.3, "_fresh": 1, "_changed": 3, "_newly": None,
                 "exploration": 0.25, "exploitation": 2.0}
    assert "exploration" not in layer_record(2, 0, 10, 0, 0)


def _sgd_steps(model, opt, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        opt.zero_grad()
        model(torch.randn(8, 12, generator=g)).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("algorithm", [st.SET, st.RigL])
@pytest.mark.parametrize("execution", ["masked", "sparse"])
def test_survival_counts_the_previous_updates_growth(algorithm, execution):
    """survival at update k+1 = |newly active at k, still active after k+1| / |newly active at k|,
    checked against masks recorded around each update, on both storages."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 6))
    if execution == "sparse":
        st.sparse.to_sparse(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sp = st.Sparsifier(model, opt, algorithm(density=0.25, update_interval=3, end=None, drop_fraction=0.5),
                       total_steps=30)
    snapshots = [{n: m.clone() for n, m in sp.masks.items()}]
    for _ in range(4):
        _sgd_steps(model, opt, 3, seed=len(snapshots))
        snapshots.append({n: m.clone() for n, m in sp.masks.items()})
    assert sp.updates == 4 and "survival" not in sp.history[0]
    for k in range(1, 4):
        newly = {n: snapshots[k][n] & ~snapshots[k - 1][n] for n in sp.masks}
        alive = sum(int((newly[n] & snapshots[k + 1][n]).sum()) for n in sp.masks)
        total = sum(int(newly[n].sum()) for n in sp.masks)
        assert total > 0
        assert sp.history[k]["survival"] == pytest.approx(alive / total, abs=0, rel=0)
        for n, info in sp.history[k]["layers"].items():
            if int(newly[n].sum()):
                assert info["survival"] == int((newly[n] & snapshots[k + 1][n]).sum()) / int(newly[n].sum())
    surv = [h["survival"] for h in sp.history[1:]]
    assert sp.metrics()["survival"] == pytest.approx(sum(surv) / len(surv))


def test_survival_continues_across_a_checkpoint():
    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 6))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        return model, opt, st.Sparsifier(model, opt, st.RigL(density=0.25, update_interval=3, end=None), total_steps=30)

    model, opt, sp = build()
    _sgd_steps(model, opt, 3)
    state = copy.deepcopy((model.state_dict(), opt.state_dict(), sp.state_dict()))
    _sgd_steps(model, opt, 3, seed=1)
    model2, opt2, sp2 = build()
    model2.load_state_dict(state[0]), opt2.load_state_dict(state[1]), sp2.load_state_dict(state[2])
    _sgd_steps(model2, opt2, 3, seed=1)
    assert "survival" in sp.history[-1] and sp2.history[-1]["survival"] == sp.history[-1]["survival"]
