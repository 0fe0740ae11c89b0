import pytest
import torch
from torch import nn

import sparsetrain as st
from sparsetrain.testing import assert_invariants
from sparsetrain.algorithms import UpdateContext
from sparsetrain.algorithms.mest import MEST
from sparsetrain.masks import LayerState


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is fastest and immune to a busy machine."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 40), nn.ReLU(), nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5))


def _batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 20, generator=g), torch.randint(0, 5, (16,), generator=g)) for _ in range(n)]


def _train(alg, steps=24, total=24, opt="sgd", check=None):
    model = _model()
    if opt == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp = st.Sparsifier(model, optimizer, alg, total_steps=total)
    counts = []
    for x, y in _batches(steps):
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        counts.append({n: l.n_active for n, l in sp.layers.items()})
        if check is not None:
            check(sp, optimizer)
    return sp, counts


# milestones as steps: phases [0, 8), [8, 16), [16, ...)
KW = dict(update_interval=4, milestones=(8, 16))


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_hard_bound_keeps_every_count_and_mutates_on_schedule(opt):
    alg = MEST(0.2, **KW)
    sp, counts = _train(alg, opt=opt, check=assert_invariants)
    targets = {n: l.n_active for n, l in sp.layers.items()}
    assert all(c == targets for c in counts)  # never above (nor below) the budget after a step
    assert [h["step"] for h in sp.history] == [4, 8, 12, 16, 20]  # none after the last step (24)
    assert [h["drop_fraction"] for h in sp.history] == pytest.approx([0.2, 0.1, 0.1, 0.0, 0.0])
    for h in sp.history:
        frac = {4: 0.2, 8: 0.1, 12: 0.1}.get(h["step"], 0.0)
        for name, n in targets.items():
            if sp.layers[name].target_density >= 1.0:
                continue
            expected = n - int(round((1 - frac) * n))
            got = h["layers"].get(name, {"grown": 0, "dropped": 0})
            assert got["grown"] == got["dropped"] == expected, (h["step"], name)


def test_soft_bound_grows_above_budget_then_prunes_back():
    alg = MEST(0.2, memory_bound="soft", **KW)
    sp, counts = _train(alg, check=assert_invariants)
    targets = dict(alg._targets)
    assert targets == {n: c for n, c in counts[0].items()}  # before the first update: the budget
    for step, c in enumerate(counts, start=1):
        phase_upper = 1.5 if step < 8 else 1.25 if step < 16 else 1.0
        if step < 4:
            assert c == targets
            continue
        for name, n in targets.items():
            if sp.layers[name].target_density >= 1.0:
                assert c[name] == n
            else:
                assert c[name] == min(sp.layers[name].numel, int(round(phase_upper * n))), (step, name)
    # the final model is exactly within budget, density back to the target
    assert counts[-1] == targets
    assert sp.density == pytest.approx(0.2, abs=1e-3)
    assert max(h["density"] for h in sp.history) > 0.28  # exceeded it during training
    # an update in the soft regime prunes exactly the surplus grown at the previous one
    second = sp.history[1]["layers"]
    for name, info in second.items():
        n = targets[name]
        assert info["dropped"] == int(round(1.5 * n)) - n
        assert info["grown"] == int(round(1.25 * n)) - n


def test_drop_score_is_magnitude_plus_lambda_gradient():
    p = nn.Parameter(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0, 0.0]))
    mask = torch.tensor([True, True, True, True, False, False])
    layer = LayerState("w", p, 0.5, 4, mask, mask.clone())
    p.grad = torch.tensor([5.0, -0.1, 0.0, 0.1, 9.0, 9.0])
    ctx = UpdateContext(step=4, total_steps=None, drop_fraction=0.2, generator=torch.Generator())
    s = MEST(0.5, lam=0.1).drop_score(layer, ctx)
    assert torch.allclose(s, torch.tensor([0.6, 0.21, 0.3, 0.41, 0.9, 0.9]))
    dropped = MEST(0.5, lam=0.1).select_drop(layer, 2, ctx)
    assert dropped.tolist() == [False, True, True, False, False, False]
    assert MEST(0.5, lam=0.0).select_drop(layer, 2, ctx).tolist() == [True, True, False, False, False, False]
    p.grad = None  # no gradient: plain magnitude
    assert torch.equal(MEST(0.5, lam=0.1).drop_score(layer, ctx), p.detach().abs())


def test_growth_is_random_and_seeded():
    kw = dict(KW, seed=3)
    a, _ = _train(MEST(0.2, **kw), steps=8)
    b, _ = _train(MEST(0.2, **kw), steps=8)
    c, _ = _train(MEST(0.2, **dict(KW, seed=4)), steps=8)
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert any(not torch.equal(a.masks[n], c.masks[n]) for n in a.masks)


def test_milestones_as_fractions_need_total_steps():
    model = _model()
    with pytest.raises(ValueError, match="total_steps"):
        st.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), MEST(0.1))
    alg = MEST(0.1)  # 90/160 and 120/160 of training
    assert alg.milestone_steps(160) == [90, 120]
    assert [alg.phase(t, 160) for t in (1, 89, 90, 119, 120, 160)] == [0, 0, 1, 1, 2, 2]
    assert alg.drop_fraction(10, 160) == pytest.approx(0.2)
    assert MEST(0.1, memory_bound="soft").drop_fraction(100, 160) == pytest.approx(0.25)
    cfg = alg.config()
    assert cfg["lower"] == "0.8,0.9,1.0" and cfg["memory_bound"] == "hard" and cfg["lam"] == 1e-4
    assert all(isinstance(v, (int, float, str, dict, type(None))) for v in cfg.values())


@pytest.mark.parametrize("kwargs,match", [
    (dict(lower=(0.9, 0.95, 1.0), upper=(0.8, 1.0, 1.0)), "bounds inverted"),
    (dict(memory_bound="soft", lower=(1.2, 1.0, 1.0), upper=(1.1, 1.0, 1.0)), "bounds inverted"),
    (dict(upper=(1.2, 1.0, 1.0)), "memory_bound='soft'"),
    (dict(memory_bound="soft", upper=(1.5, 1.25, 1.1)), "last phase"),
    (dict(lower=(0.0, 0.5, 1.0)), r"\(0, 1\]"),
    (dict(memory_bound="soft", upper=(0.9, 1.0, 1.0), lower=(0.8, 0.9, 1.0)), ">= 1"),
    (dict(lower=(0.8, 1.0)), "need 3 values"),
    (dict(milestones=(0.75, 0.5)), "increasing"),
    (dict(milestones=(0.5,)), "pass lower= with 2 values"),
    (dict(memory_bound="soft", milestones=(0.5,)), "pass upper= with 2 values"),
    (dict(lower="0.8;0.9;1"), "separated by commas"),
    (dict(milestones=(-1, 10)), "positive"),
    (dict(lam=-1.0), "lam must be"), (dict(lam=float("inf")), "lam must be"),
    (dict(memory_bound="elastic"), "hard, soft"),
])
def test_bad_hyper_parameters_fail_before_training(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MEST(0.1, **kwargs)


def test_drop_fraction_is_not_an_option():
    with pytest.raises(TypeError, match="lower="):
        MEST(0.1, drop_fraction=0.3)


def test_custom_phases():
    alg = MEST(0.2, milestones=(0.5,), lower=(0.7, 1.0), update_interval=4)
    assert alg.lower == (0.7, 1.0) and alg.upper == (1.0, 1.0)
    # the config's strings (and method specs such as "mest:lower=0.7,1:milestones=0.5") read back
    cfg = alg.config()
    again = MEST(0.2, milestones=cfg["milestones"], lower=cfg["lower"], upper=cfg["upper"])
    assert (again.lower, again.upper, again.milestones) == (alg.lower, alg.upper, alg.milestones)
    name, kw = st.algorithms.parse_method("mest:lower=0.7,1:milestones=0.5:memory_bound=hard")
    assert MEST(0.2, **kw).lower == (0.7, 1.0)
    assert MEST(0.2, milestones="90,120").milestones == (90, 120)
    sp, counts = _train(alg, steps=12, total=12)
    assert [h["drop_fraction"] for h in sp.history] == pytest.approx([0.3, 0.0])
