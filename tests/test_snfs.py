import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hst
from torch import nn

import sparsetrain as st
from sparsetrain.testing import assert_invariants
from sparsetrain.algorithms import UpdateContext
from sparsetrain.algorithms.snfs import SNFS, apportion
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


def _sparsifier(alg, opt="sgd", total=30, model=None):
    model = model or _model()
    if opt == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    return st.Sparsifier(model, optimizer, alg, total_steps=total), model, optimizer


def _step(model, opt, x, y):
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad()


# -- apportionment -----------------------------------------------------------------------
def test_apportion_examples():
    assert apportion(10, [1, 1], [10, 10]) == [5, 5]
    assert apportion(10, [3, 1], [10, 10]) == [8, 2]  # 7.5 / 2.5: tie on remainders -> lowest index
    assert apportion(10, [9, 1], [4, 10]) == [4, 6]  # capped, the rest goes to the other
    assert apportion(7, [0, 0, 0], [1, 2, 4]) == [1, 2, 4]
    assert apportion(3, [0, 1, 0], [5, 1, 5]) == [1, 1, 1]  # only zero-weight parts have room left
    assert apportion(0, [1, 2], [3, 3]) == [0, 0]
    with pytest.raises(ValueError, match="capped"):
        apportion(5, [1, 1], [2, 2])


@settings(max_examples=200, deadline=None)
@given(hst.lists(hst.tuples(hst.floats(0, 10), hst.integers(0, 50)), min_size=1, max_size=8), hst.data())
def test_apportion_is_exact_capped_and_proportional(parts, data):
    weights = [w for w, _ in parts]
    caps = [c for _, c in parts]
    total = data.draw(hst.integers(0, sum(caps)))
    out = apportion(total, weights, caps)
    assert sum(out) == total
    assert all(0 <= o <= c for o, c in zip(out, caps))
    wsum = sum(weights)
    if wsum > 0 and all(total * w / wsum <= c - 1 for w, c in zip(weights, caps)):
        # no cap binds: every part is within one of its proportional share
        assert all(abs(o - total * w / wsum) < 1 + 1e-9 for o, w in zip(out, weights))


# -- redistribution -------------------------------------------------------------------------
def _layer(name, numel, n_active, gen):
    p = nn.Parameter(torch.randn(numel, generator=gen))
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[torch.randperm(numel, generator=gen)[:n_active]] = True
    with torch.no_grad():
        p.mul_(mask)
    return LayerState(name, p, n_active / numel, n_active, mask, mask.clone())


def test_redistribution_moves_budget_towards_larger_momentum_and_keeps_total():
    gen = torch.Generator().manual_seed(0)
    a, b = _layer("a", 100, 20, gen), _layer("b", 100, 20, gen)
    alg = SNFS(0.2)
    alg._ema = {"a": torch.full((100,), 3.0), "b": torch.full((100,), 1.0)}
    ctx = UpdateContext(step=10, total_steps=100, drop_fraction=0.5, generator=gen)
    plan = alg.plan([a, b], ctx)
    assert plan == {"a": (10, 15), "b": (10, 5)}  # 20 regrown, shared 3:1
    # the layer weight is the mean |momentum| over *active* weights only
    alg._ema["b"] = torch.where(b.mask, torch.tensor(1.0), torch.tensor(100.0))
    assert alg.layer_weight(b) == pytest.approx(1.0)
    assert alg.plan([a, b], ctx) == {"a": (10, 15), "b": (10, 5)}
    # never more than the free positions: a layer that is almost full is capped
    c = _layer("c", 22, 20, gen)
    alg._ema["c"] = torch.full((22,), 1000.0)
    plan = alg.plan([a, b, c], ctx)
    assert plan["c"] == (10, 12)  # 22 - (20 - 10) free positions
    assert sum(g for _, g in plan.values()) == sum(d for d, _ in plan.values()) == 30
    # redistribution="none": every layer keeps its count
    assert SNFS(0.2, redistribution="none").plan([a, b], ctx) == {"a": (10, 10), "b": (10, 10)}


def test_frozen_and_pinned_layers_are_left_out():
    gen = torch.Generator().manual_seed(0)
    a, d = _layer("a", 50, 10, gen), _layer("d", 50, 50, gen)
    d.target_density = 1.0
    ctx = UpdateContext(step=10, total_steps=100, drop_fraction=0.5, generator=gen)
    assert set(SNFS(0.2).plan([a, d], ctx)) == {"a"}
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    sp = st.Sparsifier(model, optimizer, SNFS(0.5, update_interval=2), total_steps=20, dense=["0.weight"])
    for x, y in _batches(10):
        _step(model, optimizer, x, y)
    assert sp.updates == 5 and sp.layers["0.weight"].is_dense
    assert "0.weight" not in sp.algorithm.state_dict()["momentum"]  # no momentum kept for it


def test_growth_by_largest_momentum_at_inactive_positions():
    gen = torch.Generator().manual_seed(0)
    a = _layer("a", 10, 4, gen)
    alg = SNFS(0.4)
    alg._ema = {"a": torch.arange(10, dtype=torch.float32) * torch.tensor([1, -1] * 5)}
    ctx = UpdateContext(step=10, total_steps=100, drop_fraction=0.5, generator=gen)
    available = ~a.mask
    grown = alg.select_grow(a, 2, available, ctx)
    expected = sorted(int(i) for i in torch.nonzero(available).flatten())[-2:]
    assert sorted(int(i) for i in torch.nonzero(grown).flatten()) == expected


# -- training -------------------------------------------------------------------------------
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_training_keeps_global_count_and_invariants(opt):
    sp, model, optimizer = _sparsifier(SNFS(0.2, update_interval=3), opt=opt)
    total0 = sum(l.n_active for l in sp.layers.values())
    per_layer = []
    for x, y in _batches(30):
        _step(model, optimizer, x, y)
        assert_invariants(sp, optimizer)
        assert sum(l.n_active for l in sp.layers.values()) == total0
        per_layer.append(tuple(l.n_active for l in sp.layers.values()))
    assert sp.updates == 9 and sp.dense_grad_steps == 30
    assert len(set(per_layer)) > 1  # the budget did move across layers
    assert all(h["density"] == pytest.approx(0.2, abs=1e-3) for h in sp.history)


def test_momentum_is_the_ema_of_dense_gradients():
    sp, model, optimizer = _sparsifier(SNFS(0.2, update_interval=1000), total=100)
    params = {n: l.param for n, l in sp.layers.items()}
    ema = {n: torch.zeros_like(p) for n, p in params.items()}
    for x, y in _batches(5):
        loss = nn.functional.cross_entropy(model(x), y)
        with sp.hooks_disabled():
            grads = torch.autograd.grad(loss, list(params.values()), retain_graph=True)
        for (n, _), g in zip(params.items(), grads):
            ema[n] = 0.9 * ema[n] + 0.1 * g
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for n, layer in sp.layers.items():
        m = sp.algorithm.momentum_of(layer)
        assert torch.allclose(m, ema[n], atol=1e-7)
        if not layer.is_dense:  # not masked: inactive positions carry momentum too
            assert float(m[~layer.mask].abs().sum()) > 0


def _run(sp, model, optimizer, batches):
    masks = []
    for x, y in batches:
        before = sp.updates
        _step(model, optimizer, x, y)
        if sp.updates != before:
            masks.append({n: m.clone() for n, m in sp.masks.items()})
    return masks


def test_state_dict_round_trip_gives_identical_next_updates(tmp_path):
    kw = dict(density=0.2, update_interval=3)
    batches = _batches(20)
    sp, model, opt = _sparsifier(SNFS(**kw), total=30)
    _run(sp, model, opt, batches[:10])
    path = tmp_path / "ckpt.pt"
    torch.save({"sp": sp.state_dict(), "model": model.state_dict(), "opt": opt.state_dict()}, path)
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt["sp"]["algorithm_state"]["momentum"]) == set(sp.layers)

    def resumed(load_algorithm_state=True):
        model2 = _model()
        opt2 = torch.optim.SGD(model2.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        sp2 = st.Sparsifier(model2, opt2, SNFS(**kw), total_steps=30)
        model2.load_state_dict(ckpt["model"])
        opt2.load_state_dict(ckpt["opt"])
        state = dict(ckpt["sp"])
        if not load_algorithm_state:
            state["algorithm_state"] = {}
            del state["checksum"]  # edited on purpose (an unchecked state, as before checksums)
        sp2.load_state_dict(state)
        return sp2, model2, opt2

    sp2, model2, opt2 = resumed()
    for n in sp.algorithm._ema:
        assert torch.equal(sp.algorithm._ema[n], sp2.algorithm._ema[n])
    a = _run(sp, model, opt, batches[10:])
    b = _run(sp2, model2, opt2, batches[10:])
    assert len(a) == len(b) == 3
    assert all(torch.equal(x[n], y[n]) for x, y in zip(a, b) for n in x)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters()))
    # without the momentum the next updates differ: the state is really needed
    sp3, model3, opt3 = resumed(load_algorithm_state=False)
    c = _run(sp3, model3, opt3, batches[10:])
    assert any(not torch.equal(x[n], y[n]) for x, y in zip(a, c) for n in x)


@pytest.mark.parametrize("kwargs,match", [
    (dict(momentum=1.0), "momentum must be"), (dict(momentum=-0.1), "momentum must be"),
    (dict(momentum="0.9"), "momentum must be"), (dict(redistribution="gradient"), "momentum, none"),
    (dict(drop_fraction=1.5), "drop_fraction"), (dict(drop_schedule="step"), "unknown drop schedule"),
])
def test_bad_hyper_parameters_fail_before_training(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SNFS(0.1, **kwargs)


def test_needs_total_steps_and_defaults():
    model = _model()
    with pytest.raises(ValueError, match="total_steps"):
        st.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), SNFS(0.1))
    a = SNFS(0.1)
    cfg = a.config()
    assert cfg["name"] == "snfs" and cfg["momentum"] == 0.9 and cfg["distribution"] == "erk"
    assert cfg["end"] is None and "CosineAnnealing(p0=0.5" in cfg["drop_schedule"]
    assert a.dense_grad_every_step and a.needs_dense_grad


# -- ranking="global" (cross-layer drop/grow, sparsetrain.algorithms.global_ranking) -----------
from sparsetrain.algorithms.global_ranking import GlobalDSTEE, GlobalRigL, GlobalSET  # noqa: E402

GKW = dict(density=0.2, update_interval=3, end=None, drop_schedule="constant", drop_fraction=0.3)


def test_layer_ranking_is_exactly_the_base_algorithm():
    batches = _batches(12)
    runs = []
    for alg in (st.RigL(**GKW), GlobalRigL(ranking="layer", **GKW)):
        sp, model, opt = _sparsifier(alg, total=12)
        runs.append((_run(sp, model, opt, batches), model))
    (a, ma), (b, mb) = runs
    assert len(a) == len(b) == 3
    assert all(torch.equal(x[n], y[n]) for x, y in zip(a, b) for n in x)
    assert all(torch.equal(p, q) for p, q in zip(ma.parameters(), mb.parameters()))


@pytest.mark.parametrize("cls", [GlobalRigL, GlobalSET, GlobalDSTEE])
def test_global_ranking_keeps_the_global_count_exactly(cls):
    sp, model, opt = _sparsifier(cls(**GKW), total=18)
    eligible = [n for n, l in sp.layers.items() if l.target_density < 1.0]
    total0 = sum(l.n_active for l in sp.layers.values())
    k = round(0.3 * sum(sp.layers[n].n_active for n in eligible))
    counts = []
    for x, y in _batches(18):
        _step(model, opt, x, y)
        assert_invariants(sp, opt)
        assert sum(l.n_active for l in sp.layers.values()) == total0
        counts.append(tuple(sp.layers[n].n_active for n in eligible))
    assert sp.updates == 5 and all(h["grown"] == k for h in sp.history)
    assert len(set(counts)) > 1  # per-layer counts move
    assert sp.algorithm.config()["ranking"] == "global"


def test_global_ranking_uses_one_threshold_over_all_layers():
    gen = torch.Generator().manual_seed(0)

    def layer(name, values, grads, n_active):
        p = nn.Parameter(torch.tensor(values))
        mask = torch.zeros(len(values), dtype=torch.bool)
        mask[:n_active] = True
        out = LayerState(name, p, 0.5, n_active, mask, mask.clone())
        out.grad_buffer = torch.tensor(grads)
        return out

    small = layer("small", [0.1, 0.2, 0.3, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 2.0, 3.0], 3)
    large = layer("large", [5.0, 6.0, 7.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 7.0, 8.0, 9.0], 3)
    alg = GlobalRigL(0.5)
    alg.ranking = "global"
    ctx = UpdateContext(step=3, total_steps=None, drop_fraction=0.5, generator=gen)
    # K = round(0.5 * 6) = 3: the smallest |w| overall are in "small", which keeps its largest;
    # then the 3 largest |g| among all free positions are in "large"
    assert alg.plan([small, large], ctx) == {"small": (2, 0), "large": (1, 3)}
    assert alg.select_drop(small, 2, ctx).tolist() == [True, True, False, False, False, False]
    assert alg.select_drop(large, 1, ctx).tolist() == [True, False, False, False, False, False]
    avail = ~(large.mask & ~alg.select_drop(large, 1, ctx))
    assert alg.select_grow(large, 3, avail, ctx).tolist() == [False, False, False, True, True, True]


def test_global_dstee_counts_each_round_once():
    sp, model, opt = _sparsifier(GlobalDSTEE(c=0.1, count="updates", **GKW), total=12)
    for x, y in _batches(12):
        _step(model, opt, x, y)
    rounds = sp.algorithm.state_dict()["rounds"]
    assert set(rounds) == set(sp.layers)
    assert all(int(r.max()) == sp.updates == 3 for r in rounds.values())


def test_global_ranking_bad_options():
    with pytest.raises(ValueError, match="layer, global"):
        GlobalRigL(0.1, ranking="network")
    with pytest.raises(ValueError, match="signed"):
        GlobalSET(0.1, drop="signed")
    assert GlobalSET(0.1, drop="signed", ranking="layer").ranking == "layer"
