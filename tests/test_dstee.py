import math

import pytest
import torch
from torch import nn

import sparsetrain as st
from sparsetrain.algorithms import UpdateContext
from sparsetrain.masks import LayerState


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 40), nn.ReLU(), nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5))


def _train(alg, steps=30, total=30, save_at=None):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sp = st.Sparsifier(model, opt, alg, total_steps=total)
    g = torch.Generator().manual_seed(1)
    masks_per_update = []
    for _ in range(steps):
        x, y = torch.randn(16, 20, generator=g), torch.randint(0, 5, (16,), generator=g)
        nn.functional.cross_entropy(model(x), y).backward()
        before = sp.updates
        opt.step()
        opt.zero_grad()
        if sp.updates != before:
            masks_per_update.append({n: m.clone() for n, m in sp.masks.items()})
    return sp, model, masks_per_update


def test_c_zero_is_exactly_rigl():
    kw = dict(density=0.2, update_interval=3, end=None, drop_schedule="constant", drop_fraction=0.3)
    sp_r, m_r, hist_r = _train(st.RigL(**kw))
    sp_e, m_e, hist_e = _train(st.DSTEE(c=0.0, **kw))
    assert len(hist_r) == len(hist_e) == 9
    for a, b in zip(hist_r, hist_e):
        assert all(torch.equal(a[n], b[n]) for n in a)
    assert all(torch.equal(p, q) for p, q in zip(m_r.parameters(), m_e.parameters()))


def test_positive_c_changes_the_choice():
    kw = dict(density=0.2, update_interval=3, end=None, drop_schedule="constant", drop_fraction=0.3)
    _, _, hist_r = _train(st.RigL(**kw))
    _, _, hist_e = _train(st.DSTEE(c=1.0, **kw))
    assert any(not torch.equal(a[n], b[n]) for a, b in zip(hist_r, hist_e) for n in a)


@pytest.mark.parametrize("bonus", ["log_ratio", "ucb"])
def test_huge_c_grows_never_active_first_and_reaches_max_itop_fastest(bonus):
    kw = dict(density=0.1, update_interval=2, end=None, drop_schedule="constant", drop_fraction=0.5)
    sp, _, _ = _train(st.DSTEE(c=1e6, bonus=bonus, **kw), steps=30)
    rigl, _, _ = _train(st.RigL(**kw), steps=30)
    # the fastest possible: every grown weight is new until a layer has no never-active weight left
    ever_expected = {}
    for name, layer in sp.layers.items():
        k = int(round(0.5 * layer.n_active))
        if layer.is_dense:
            ever_expected[name] = layer.numel
        else:
            ever_expected[name] = min(layer.numel, layer.n_active + k * sp.updates)
    for name, layer in sp.layers.items():
        assert int(layer.ever_active.sum()) == ever_expected[name], name
    first = sp.history[0]
    assert first["exploration"] == 1.0
    assert sp.itop_rate >= rigl.itop_rate
    assert sp.itop_rate == pytest.approx(sum(ever_expected.values()) / sum(l.numel for l in sp.layers.values()))


def _layer(counter, grad):
    p = nn.Parameter(torch.zeros(counter.shape))
    mask = torch.zeros(counter.shape, dtype=torch.bool)
    layer = LayerState("w", p, 0.5, 0, mask, mask.clone(), counter=counter)
    layer.grad_buffer = grad
    return layer


def test_acquisition_function_values():
    counter = torch.tensor([0, 1, 9, 99], dtype=torch.int32)
    grad = torch.tensor([0.1, -0.2, 0.3, -0.4])
    ctx = UpdateContext(step=100, total_steps=None, drop_fraction=0.3, generator=torch.Generator())
    layer = _layer(counter, grad)
    a = st.DSTEE(0.1, c=0.5, eps=1.0).grow_score(layer, ctx)
    expected = grad.abs() + 0.5 * math.log(100) / (counter.float() + 1.0)
    assert torch.allclose(a, expected)
    u = st.DSTEE(0.1, c=0.5, eps=2.0, bonus="ucb", grad_norm="layer_max").grow_score(layer, ctx)
    expected = grad.abs() / 0.4 + 0.5 * torch.sqrt(math.log(100) / (counter.float() + 2.0))
    assert torch.allclose(u, expected)
    m = st.DSTEE(0.1, c=0.5, grad_norm="layer_mean").grow_score(layer, ctx)
    assert torch.allclose(m, grad.abs() / 0.25 + 0.5 * math.log(100) / (counter.float() + 1.0))


def test_count_updates_mode_counts_rounds_and_survives_resume():
    kw = dict(density=0.2, update_interval=3, end=None, drop_schedule="constant", drop_fraction=0.3, c=0.1,
              count="updates")
    sp, _, _ = _train(st.DSTEE(**kw), steps=12)
    rounds = sp.algorithm.state_dict()["rounds"]
    assert set(rounds) == set(sp.layers)
    assert all(int(r.max()) <= sp.updates for r in rounds.values())
    # a weight active the whole time has been active in every round
    assert all(int(r.max()) == sp.updates for n, r in rounds.items() if not sp.layers[n].is_dense)
    fresh = st.DSTEE(**kw)
    fresh.load_state_dict(sp.algorithm.state_dict())
    assert all(torch.equal(fresh._rounds[n], rounds[n]) for n in rounds)


def test_counters_survive_save_and_load_exactly(tmp_path):
    kw = dict(density=0.2, update_interval=3, end=None, drop_schedule="constant", drop_fraction=0.3, c=0.01)
    sp, model, _ = _train(st.DSTEE(**kw), steps=10)
    path = tmp_path / "sp.pt"
    torch.save(sp.state_dict(), path)
    model2 = _model()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.05, momentum=0.9)
    sp2 = st.Sparsifier(model2, opt2, st.DSTEE(**kw), total_steps=30)
    sp2.load_state_dict(torch.load(path, weights_only=True))
    c1, c2 = sp.usage_counters(), sp2.usage_counters()
    assert all(torch.equal(c1[n], c2[n]) for n in c1)
    # each step adds exactly n_active to a layer's counters
    assert all(int(c1[n].sum()) == sp.layers[n].n_active * sp.step for n in c1)


def test_history_has_exploitation_and_exploration_degrees():
    kw = dict(density=0.2, update_interval=3, end=None, drop_schedule="constant", drop_fraction=0.3)
    sp, _, _ = _train(st.DSTEE(c=0.001, **kw), steps=9)
    for rec in sp.history:
        assert 0.0 <= rec["exploration"] <= 1.0
        assert rec["exploitation"] > 1.0  # gradient growth picks above-average gradients


@pytest.mark.parametrize("kwargs,match", [
    (dict(c=-1.0), "c must be"), (dict(eps=0.0), "eps must be"), (dict(eps=-2), "eps must be"),
    (dict(bonus="exp"), "log_ratio, ucb"), (dict(count="epochs"), "steps, updates"),
    (dict(grad_norm="global"), "layer_max"), (dict(c=float("nan")), "c must be"),
])
def test_bad_hyper_parameters_fail_before_training(kwargs, match):
    with pytest.raises(ValueError, match=match):
        st.DSTEE(0.1, **kwargs)


def test_registry_and_config():
    a = st.make_algorithm("dstee", density=0.05, c=0.01, bonus="ucb")
    assert isinstance(a, st.DSTEE) and a.config()["bonus"] == "ucb" and a.config()["c"] == 0.01


def test_count_steps_without_usage_counters_is_refused_when_built():
    """It was accepted, then raised a RuntimeError at the first update."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(st.InputError, match="keep track_usage=True, or use count='updates'"):
        st.Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), st.DSTEE(density=0.3), total_steps=1000,
                      track_usage=False)
    sp = st.Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), st.DSTEE(density=0.3, count="updates"),
                       total_steps=1000, track_usage=False)
    assert sp.layers["0.weight"].counter is None
