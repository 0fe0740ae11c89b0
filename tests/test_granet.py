import pytest
import torch
from torch import nn

import sparsetrain as st
from sparsetrain.testing import assert_invariants
from sparsetrain.algorithms import UpdateContext
from sparsetrain.algorithms.granet import GraNet
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


def _train(alg, steps=40, total=40, opt="sgd", **kw):
    model = _model()
    if opt == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp = st.Sparsifier(model, optimizer, alg, total_steps=total, **kw)
    start = {n: l.n_active for n, l in sp.layers.items()}
    after = []
    for x, y in _batches(steps):
        before = sp.updates
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        assert_invariants(sp, optimizer)
        if sp.updates != before:
            after.append({n: l.n_active for n, l in sp.layers.items()})
    return sp, start, after


def _formula(i, i0, i_f, d_i, d_f):
    """The paper's schedule, written out independently of the implementation."""
    i = min(max(i, i0), i_f)
    return d_f + (d_i - d_f) * (1 - (i - i0) / (i_f - i0)) ** 3


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_density_trajectory_follows_the_cubic_formula_exactly(opt):
    # ΔT = 2, pruning over steps [0, 24]: rounds i0 = 0 .. i_f = 12; updates continue to step 38 (none
    # after the run's last step, 40: what it grew would never be trained)
    alg = GraNet(0.1, initial_density=0.5, update_interval=2, prune_start=0, prune_end=24)
    sp, start, after = _train(alg, opt=opt)
    n_total = sum(l.numel for l in sp.layers.values())
    assert sum(start.values()) == round(0.5 * n_total)
    assert len(sp.history) == 19 and sp.history[-1]["step"] == 38
    for h in sp.history:
        expected = round(_formula(h["step"] // 2, 0, 12, 0.5, 0.1) * n_total)
        assert h["density"] * n_total == pytest.approx(expected, abs=1e-6), h["step"]
    densities = [h["density"] for h in sp.history]
    assert densities == sorted(densities, reverse=True) and densities[0] < 0.5
    assert all(d == pytest.approx(round(0.1 * n_total) / n_total) for d in densities[11:])
    # after pruning ends the topology keeps changing at the final density
    late = [h for h in sp.history if h["step"] > 24]
    assert len(late) == 7 and late[0]["grown"] > 0 and late[0]["turnover"] > 0


def test_each_update_regrows_p_t_of_what_pruning_left():
    alg = GraNet(0.1, initial_density=0.5, update_interval=2, prune_end=24)
    sp, start, after = _train(alg)
    prev = start
    for h, now in zip(sp.history, after):
        for name, info in h["layers"].items():
            pruned = info["dropped"] - info["grown"]
            assert now[name] == prev[name] - pruned
            left = prev[name] - pruned
            assert info["grown"] == min(round(h["drop_fraction"] * left), left), (h["step"], name)
            assert info.get("exploitation", 2.0) > 1.0  # gradient growth
        prev = now


def test_dense_start():
    alg = GraNet(0.2, initial_density=1.0, update_interval=2, prune_end=20)
    sp, start, after = _train(alg, steps=24, total=24)
    assert all(start[n] == l.numel for n, l in sp.layers.items())
    assert sp.density == pytest.approx(0.2, abs=1e-3)
    n_total = sum(l.numel for l in sp.layers.values())
    for h in sp.history:
        assert round(h["density"] * n_total) == round(_formula(h["step"] // 2, 0, 10, 1.0, 0.2) * n_total)


def test_pinned_layers_stay_dense_and_the_trajectory_holds():
    alg = GraNet(0.4, initial_density=0.5, update_interval=2, prune_end=20)
    sp, start, after = _train(alg, steps=24, total=24, dense=["0.weight"])
    assert all(a["0.weight"] == 800 for a in after)
    n_total = sum(l.numel for l in sp.layers.values())
    for h in sp.history:
        assert round(h["density"] * n_total) == round(_formula(h["step"] // 2, 0, 10, 0.5, 0.4) * n_total)
    assert sp.layers["2.weight"].density < 0.5 * 0.9  # the others absorbed the pruning


def _layer(name, values, n_active):
    p = nn.Parameter(torch.tensor(values, dtype=torch.float32))
    mask = torch.zeros(len(values), dtype=torch.bool)
    mask[:n_active] = True
    with torch.no_grad():
        p.mul_(mask)
    layer = LayerState(name, p, n_active / len(values), n_active, mask, mask.clone())
    layer.grad_buffer = torch.linspace(1, 2, len(values))
    return layer


def test_pruning_is_global_by_magnitude_and_never_empties_a_layer():
    small = _layer("small", [0.01, -0.02, 0.03, 0.04, 0, 0], 4)
    large = _layer("large", [1.0, -2.0, 3.0, 4.0, 0, 0], 4)
    alg = GraNet(0.25, initial_density=8 / 12, update_interval=1, prune_start=0, prune_end=2, drop_fraction=0.0,
                 drop_schedule="constant")
    ctx = UpdateContext(step=2, total_steps=None, drop_fraction=0.0, generator=torch.Generator())
    # round 2 = i_f: density 0.25 of 12 -> keep 3 of the 8 active: prune 5, the smallest globally,
    # but the small layer keeps its largest weight, so the large layer gives up its smallest two
    plan = alg.plan([small, large], ctx)
    assert plan == {"small": (3, 0), "large": (2, 0)}
    assert alg.select_drop(small, 3, ctx).tolist() == [True, True, True, False, False, False]
    assert alg.select_drop(large, 2, ctx).tolist() == [True, True, False, False, False, False]


def test_regrowth_drops_by_magnitude_on_top_of_pruning():
    layer = _layer("w", [0.5, 0.1, 0.4, 0.3, 0.2, 0.6, 0, 0, 0, 0], 6)
    alg = GraNet(0.25, initial_density=0.6, update_interval=1, prune_start=0, prune_end=4)
    ctx = UpdateContext(step=2, total_steps=None, drop_fraction=0.5, generator=torch.Generator())
    # density(2) = 0.25 + 0.35 * (1/2)^3 = 0.29375 -> keep 3: prune 3 (0.1, 0.2, 0.3); then drop
    # round(0.5 * 3) = 2 of the rest by magnitude (0.4, 0.5) and regrow 2
    plan = alg.plan([layer], ctx)
    assert plan == {"w": (5, 2)}
    dropped = alg.select_drop(layer, 5, ctx)
    assert dropped.tolist() == [True, True, True, True, True, False, False, False, False, False]
    # growth by the dense gradient (the largest at the end), among all positions inactive after the drop
    grown = alg.select_grow(layer, 2, ~(layer.mask & ~dropped), ctx)
    assert grown.tolist() == [False] * 8 + [True, True]


def test_pruning_that_ends_with_the_run_reaches_the_final_density_at_the_last_update():
    # no update follows the run's last step, so the cubic schedule ends at the last update before it
    alg = GraNet(0.1, initial_density=0.5, update_interval=10, prune_end=1.0)
    assert alg.prune_rounds(40) == (0, 3)
    assert [t for t in range(1, 41) if alg.is_update_step(t, 40)] == [10, 20, 30]
    assert alg.target_density(30, 40) == 0.1


def test_no_update_before_pruning_starts():
    alg = GraNet(0.1, update_interval=2, prune_start=10, prune_end=30)
    assert [t for t in range(1, 41) if alg.is_update_step(t, 40)] == list(range(10, 40, 2))
    assert alg.target_density(9, 40) == 0.5 and alg.target_density(30, 40) == 0.1
    assert alg.target_density(40, 40) == 0.1


@pytest.mark.parametrize("kwargs,match", [
    (dict(initial_density=0.05), "initial_density must be >= density"),
    (dict(initial_density=1.5), r"\(0, 1\]"),
    (dict(initial_density=0.0), r"\(0, 1\]"),
    (dict(prune_start=0.5, prune_end=0.4), "must come after"),
    (dict(prune_end=-1), "prune_end must be"),
    (dict(drop_fraction=2.0), "drop_fraction"),
])
def test_bad_hyper_parameters_fail_before_training(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GraNet(0.1, **kwargs)


def test_schedule_problems_fail_when_the_sparsifier_is_built():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="total_steps"):
        st.Sparsifier(model, opt, GraNet(0.1))
    with pytest.raises(ValueError, match="less than one update interval"):
        st.Sparsifier(model, opt, GraNet(0.1, update_interval=100, prune_end=0.5), total_steps=150)


def test_defaults_and_config():
    a = GraNet(0.05)
    assert a.initial_density == 0.5 and a.density == 0.05 and a.needs_dense_grad
    cfg = a.config()
    assert cfg["name"] == "granet" and cfg["initial_density"] == 0.5 and cfg["end"] is None
    assert cfg["prune_start"] == 0.0 and cfg["prune_end"] == 0.6875
    assert a.prune_rounds(16000) == (0, 110)


def test_an_unreachable_final_density_is_said_at_the_start_and_pruning_stops_at_the_floor():
    import warnings

    torch.manual_seed(0)
    m = nn.Sequential(*[nn.Linear(4, 4) for _ in range(10)])  # 10 layers of 16: at least 10 of 160 weights
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        sp = st.Sparsifier(m, opt, "granet", density=0.05, total_steps=1000)
    msg = [str(x.message) for x in w if "cannot be reached" in str(x.message)]
    assert len(msg) == 1 and "final density 0.05" in msg[0] and "stops at 0.0625 (10 of 160 weights)" in msg[0]
    x = torch.randn(8, 4)
    for _ in range(1000):
        opt.zero_grad()
        m(x).pow(2).mean().backward()
        opt.step()
    assert [l.n_active for l in sp.layers.values()] == [1] * 10
    m = nn.Sequential(*[nn.Linear(4, 4) for _ in range(10)])
    with warnings.catch_warnings(record=True) as w:  # reachable: nothing said
        warnings.simplefilter("always")
        st.Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), "granet", density=0.1, total_steps=300)
    assert not [x for x in w if "cannot be reached" in str(x.message)]


def test_the_summary_says_the_per_layer_target_is_the_starts():
    import warnings

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sp = st.Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), st.GraNet(density=0.1, initial_density=0.5),
                           total_steps=1000)
    assert "(target: each layer's density at the start, initial_density=0.5; pruning moves the global density to " \
           "density=0.1" in sp.summary()
    m2 = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    rigl = st.Sparsifier(m2, torch.optim.SGD(m2.parameters(), lr=0.1), st.RigL(density=0.1), total_steps=1000)
    assert "(target:" not in rigl.summary()
