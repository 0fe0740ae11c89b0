"""DST-EE, GraNet and MEST stream their topology updates on large compressed layers; SNFS
stays dense there and says why.

Small layers stand in for large ones with the threshold lowered (``storage.LARGE_LAYER`` and
``scores.LARGE_LAYER``, tests only). Each algorithm's streaming run is compared with the same run
on masked-dense layers and on compressed layers that take the dense update path (the threshold
left high for the storage): the same masks after every update, the same counts, weights and
optimizer state close, zero off the mask. The memory claim is checked directly: during training
with streaming updates no tensor with half of a large layer's entries or more is ever
created (a dispatch mode sees every tensor torch makes), and the dense-path functions are never
called on a streaming layer.
"""

import warnings

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import sparsetrain as st
from sparsetrain import update as update_mod
from sparsetrain.bits import SparseCounts
from sparsetrain.sparse import LowRankGrad, to_sparse
from sparsetrain.storage import CompressedStorage, StreamingStorage
from sparsetrain.testing import assert_invariants

LIMIT = 100  # every layer of _mlp is above it


def _thresholds(monkeypatch, storage_limit, scores_limit=LIMIT, block=None):
    import sparsetrain.scores as scores_mod
    import sparsetrain.storage as storage_mod
    import sparsetrain.storage.streaming as streaming_mod

    monkeypatch.setattr(storage_mod, "LARGE_LAYER", storage_limit)
    monkeypatch.setattr(scores_mod, "LARGE_LAYER", scores_limit)
    if block is not None:
        monkeypatch.setattr(streaming_mod, "GRADIENT_BLOCK", block)


def _mlp(seed=0):
    # tanh, not ReLU: no dead unit gives a column of exactly-zero gradients (exact ties in growth)
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 48), nn.Tanh(), nn.Linear(48, 5))


def _data(n=8, seed=1, width=20, classes=5, batch=16):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, width, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n)]


def _train(monkeypatch, kind, make, steps=120, opt="sgd", track_usage=True, storage_limit=LIMIT, block=64,
           forced=None, total=None):
    """Train ``_mlp`` with ``kind`` layers: ``"masked"`` (dense parameters), ``"compressed"``
    (SparseLinear, dense update path) or ``"streaming"`` (SparseLinear above the lowered
    threshold). Random growth samples the same way in all three (``scores.LARGE_LAYER`` lowered).
    ``forced``: ``(step, kwargs)`` of a requested update; ``total``: ``total_steps`` if not
    ``steps``. The initial per-layer counts are kept as ``sp.initial_counts``. Returns losses, the masks and per-layer
    counts after every update, the dense weights, the sparsifier, the model and the optimizer."""
    _thresholds(monkeypatch, storage_limit if kind == "streaming" else 1 << 40, block=block)
    model = _mlp()
    if kind != "masked":
        to_sparse(model)
    if opt == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sp = st.Sparsifier(model, optimizer, make(), total_steps=total or steps, track_usage=track_usage)
    sp.initial_counts = {n: l.n_active for n, l in sp.layers.items()}
    assert all(l.index_backed == (kind == "streaming" and l.numel > storage_limit) for l in sp.layers.values())
    data = _data()
    losses, masks, counts = [], [], []
    for i in range(steps):
        if forced is not None and i == forced[0]:
            sp.request_update(**forced[1])
        x, y = data[i % len(data)]
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        losses.append(loss.item())
        # no graph alive at the update: a layer that outgrows its compressed capacity (MEST's soft
        # bound, SNFS's redistribution) reallocates its values, which autograd refuses otherwise
        del loss
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if len(masks) < len(sp.history):
            masks.append({n: m.clone() for n, m in sp.masks.items()})
            counts.append({n: l.n_active for n, l in sp.layers.items()})
    weights = {n: (l.sparse_module.dense_weight() if l.sparse_module is not None else l.param.detach().clone())
               for n, l in sp.layers.items()}
    return losses, masks, counts, weights, sp, model, optimizer


def _momentum(sp, optimizer, name, key):
    """An optimizer-state tensor of a layer with the weight's dense shape (zeros off the mask)."""
    layer = sp.layers[name]
    state = optimizer.state[layer.param][key]
    if layer.sparse_module is None:
        return state.clone()
    out = torch.zeros(layer.numel, dtype=state.dtype)
    out[layer.sparse_module.flat_index()] = state[: layer.sparse_module.nnz]
    return out.view(layer.shape)


def _assert_same(a, b, keys=("turnover", "exploration"), opt="sgd"):
    """Two ``_train`` results: identical masks and counts after every update, losses, weights and
    optimizer state within float tolerance (zero off the mask), the same per-update metrics."""
    la, ma, ca, wa, spa, _, oa = a
    lb, mb, cb, wb, spb, _, ob = b
    assert len(ma) == len(mb) == spa.updates == spb.updates >= 3
    for x, y in zip(ma, mb):
        assert all(torch.equal(x[n], y[n]) for n in x)
    assert ca == cb
    torch.testing.assert_close(torch.tensor(la), torch.tensor(lb), rtol=1e-4, atol=1e-5)
    for n in wa:
        torch.testing.assert_close(wa[n], wb[n], rtol=1e-4, atol=1e-5)
        mask = spb.layers[n].mask
        assert bool((wb[n][~mask] == 0).all()) and bool((wa[n][~mask] == 0).all())
        for key in (("momentum_buffer",) if opt == "sgd" else ("exp_avg", "exp_avg_sq")):
            sa, sb = _momentum(spa, oa, n, key), _momentum(spb, ob, n, key)
            torch.testing.assert_close(sa, sb, rtol=1e-4, atol=1e-5)
            assert bool((sa[~mask] == 0).all()) and bool((sb[~mask] == 0).all())
    assert spa.itop_rate == spb.itop_rate
    for key in keys:
        xa, xb = [h.get(key) for h in spa.history], [h.get(key) for h in spb.history]
        assert [x is None for x in xa] == [x is None for x in xb], key
        assert [x for x in xa if x is not None] == pytest.approx([x for x in xb if x is not None], rel=1e-4), key
    assert_invariants(spa)
    assert_invariants(spb)


def _spy_paths(monkeypatch):
    """Record the layers each path updates: ``{"stream": [...], "dense": [...]}``."""
    seen = {"stream": [], "dense": []}
    stream, dense = StreamingStorage.stream_update, update_mod._dense_layer

    def spy_stream(self, layer, *args):
        seen["stream"].append(layer.name)
        return stream(self, layer, *args)

    def spy_dense(sp, rule, layer, *args):
        seen["dense"].append(layer.name)
        return dense(sp, rule, layer, *args)

    monkeypatch.setattr(StreamingStorage, "stream_update", spy_stream)
    monkeypatch.setattr(update_mod, "_dense_layer", spy_dense)
    return seen


ALL = ["0.weight", "2.weight", "4.weight"]

DSTEE = {
    "c0-is-rigl": lambda: st.DSTEE(density=0.2, distribution="uniform", update_interval=10, c=0.0, seed=3),
    "steps-max": lambda: st.DSTEE(density=0.2, distribution="uniform", update_interval=10, c=0.05,
                                  grad_norm="layer_max", seed=3),
    "updates-mean-ucb": lambda: st.DSTEE(density=0.2, distribution="uniform", update_interval=10, c=0.02,
                                         grad_norm="layer_mean", bonus="ucb", count="updates", seed=3),
    "steps-raw": lambda: st.DSTEE(density=0.15, distribution="uniform", update_interval=10, c=2e-3, seed=3),
}


# -- (a) the streaming update selects what the dense path selects ------------------------------
@pytest.mark.parametrize("name", sorted(DSTEE))
def test_dstee_streams_and_selects_what_the_dense_path_selects(monkeypatch, name):
    make = DSTEE[name]
    seen = _spy_paths(monkeypatch)
    masked = _train(monkeypatch, "masked", make)
    dense = _train(monkeypatch, "compressed", make)
    assert not seen["stream"]
    streaming = _train(monkeypatch, "streaming", make)
    changed = sum(len(h["layers"]) for h in streaming[4].history)  # layer updates with something to move
    assert sorted(set(seen["stream"])) == ALL and len(seen["stream"]) == changed
    assert len(seen["dense"]) == 2 * changed  # only the two reference runs took the dense path
    _assert_same(masked, streaming, ("turnover", "exploration", "exploitation", "survival"))
    _assert_same(dense, streaming, ("turnover", "exploration", "exploitation", "survival"))
    # every layer keeps its count exactly
    sp = streaming[4]
    assert all(c == sp.initial_counts for c in streaming[2])
    if sp.algorithm.count == "updates":  # round counts kept for the ever-active positions only
        for n, layer in sp.layers.items():
            rounds = sp.algorithm._rounds[n]
            assert isinstance(rounds, SparseCounts) and rounds.stored == layer.ever_count()
            assert torch.equal(rounds.to_dense(layer.shape), masked[4].algorithm._rounds[n])
    else:
        for n in sp.layers:
            assert torch.equal(sp.usage_counters()[n], masked[4].usage_counters()[n])


def test_dstee_with_c_zero_streams_exactly_as_rigl(monkeypatch):
    dstee = _train(monkeypatch, "streaming", DSTEE["c0-is-rigl"])
    rigl = _train(monkeypatch, "streaming", lambda: st.RigL(density=0.2, distribution="uniform", update_interval=10,
                                                            seed=3))
    assert all(torch.equal(x[n], y[n]) for x, y in zip(dstee[1], rigl[1]) for n in x)
    assert dstee[0] == rigl[0]
    # with c > 0 the exploration bonus changes the growth: the comparison above is not vacuous
    explore = _train(monkeypatch, "streaming", DSTEE["steps-max"])
    assert any(not torch.equal(x[n], y[n]) for x, y in zip(explore[1], rigl[1]) for n in x)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_dstee_streams_with_blocks_of_one_row_and_with_adam(monkeypatch, opt):
    make = DSTEE["steps-max"]
    masked = _train(monkeypatch, "masked", make, opt=opt)
    streaming = _train(monkeypatch, "streaming", make, opt=opt, block=1)
    _assert_same(masked, streaming, ("turnover", "exploration", "exploitation"), opt=opt)


GRANET = {
    "sparse-start": lambda: st.GraNet(density=0.05, initial_density=0.2, distribution="uniform", update_interval=10,
                                      prune_end=0.6, seed=3),
    # starts at 50%: the layers take the dense path until the pruning brings them under 25%
    "dense-start": lambda: st.GraNet(density=0.05, distribution="uniform", update_interval=10, prune_end=0.6,
                                     seed=3),
    "erk": lambda: st.GraNet(density=0.08, initial_density=0.2, update_interval=10, prune_end=0.6, seed=3),
}


@pytest.mark.parametrize("name", sorted(GRANET))
def test_granet_streams_its_global_pruning_and_regrowth(monkeypatch, name):
    make = GRANET[name]
    seen = _spy_paths(monkeypatch)
    masked = _train(monkeypatch, "masked", make)
    dense = _train(monkeypatch, "compressed", make)
    seen["stream"].clear(), seen["dense"].clear()
    streaming = _train(monkeypatch, "streaming", make)
    sp = streaming[4]
    assert seen["stream"]
    if name == "dense-start":  # dense path while denser than 25%, streaming afterwards
        assert seen["dense"] and seen["dense"][0] == "0.weight"
    elif name == "sparse-start":
        assert not seen["dense"]
    _assert_same(masked, streaming, ("turnover", "exploration", "exploitation", "density"))
    _assert_same(dense, streaming, ("turnover", "exploration", "exploitation", "density"))
    # exact global counts: after every update the density the cubic schedule asks for
    total = sum(l.numel for l in sp.layers.values())
    alg = sp.algorithm
    for rec, counts in zip(sp.history, streaming[2]):
        assert sum(counts.values()) == round(alg.target_density(rec["step"], sp.total_steps) * total)
    assert sp.history[-1]["density"] == pytest.approx(0.05 if name != "erk" else 0.08, abs=1e-3)


def test_granet_prunes_globally_across_streaming_and_dense_path_layers(monkeypatch):
    # only the 64 x 48 layer is large: the global ranking mixes its stored values with the dense
    # view of the two others, and the result equals the all-masked run
    make = GRANET["sparse-start"]
    seen = _spy_paths(monkeypatch)
    masked = _train(monkeypatch, "masked", make)
    seen["stream"].clear(), seen["dense"].clear()
    mixed = _train(monkeypatch, "streaming", make, storage_limit=2000)
    assert set(seen["stream"]) == {"2.weight"} and set(seen["dense"]) == {"0.weight", "4.weight"}
    _assert_same(masked, mixed, ("turnover", "exploration", "density"))


MEST = {
    "hard": lambda: st.MEST(density=0.2, distribution="uniform", update_interval=10, lam=0.05, seed=3),
    "hard-magnitude": lambda: st.MEST(density=0.2, distribution="uniform", update_interval=10, lam=0.0, seed=3),
    # grows to 1.2x its budget (still under 25%) and prunes back: k_drop != k_grow
    "soft": lambda: st.MEST(density=0.15, distribution="uniform", update_interval=10, lam=0.05, memory_bound="soft",
                            upper=(1.2, 1.1, 1.0), seed=3),
}


@pytest.mark.parametrize("name", sorted(MEST))
def test_mest_streams_its_drop_score_and_random_growth(monkeypatch, name):
    make = MEST[name]
    seen = _spy_paths(monkeypatch)
    masked = _train(monkeypatch, "masked", make)
    dense = _train(monkeypatch, "compressed", make)
    seen["stream"].clear(), seen["dense"].clear()
    streaming = _train(monkeypatch, "streaming", make)
    assert sorted(set(seen["stream"])) == ALL and not seen["dense"]
    _assert_same(masked, streaming)
    _assert_same(dense, streaming)
    # no dense gradient is needed: the compressed runs are the same computation, bit for bit
    assert dense[0] == streaming[0]
    for n in dense[3]:
        assert torch.equal(dense[3][n], streaming[3][n])
    # exact per-layer counts: lower bound after the prune, upper bound after the growth
    sp, alg = streaming[4], streaming[4].algorithm
    before = sp.initial_counts
    for rec, counts in zip(sp.history, streaming[2]):
        i = alg.phase(rec["step"], sp.total_steps)
        for n, c in counts.items():
            budget = alg.target_count(sp.layers[n])
            assert budget == sp.initial_counts[n]
            assert c == round(alg.upper[i] * budget)
            assert rec["layers"].get(n, {}).get("dropped", 0) == before[n] - round(alg.lower[i] * budget)
        before = counts


def test_mest_drop_score_uses_the_value_gradient(monkeypatch):
    # a large λ makes |g| decide the drop: the runs with and without it must differ, and each
    # still equals its masked-dense twin
    heavy = lambda: st.MEST(density=0.2, distribution="uniform", update_interval=10, lam=20.0, seed=3)  # noqa: E731
    a = _train(monkeypatch, "streaming", heavy, steps=40)
    b = _train(monkeypatch, "streaming", MEST["hard-magnitude"], steps=40)
    assert any(not torch.equal(x[n], y[n]) for x, y in zip(a[1], b[1]) for n in x)
    _assert_same(_train(monkeypatch, "masked", heavy, steps=40), a)


def test_mest_random_growth_on_small_layers_is_unchanged():
    # select_random on a layer below LARGE_LAYER is the k highest of random_scores: the same draws
    # and the same choice as the former grow_score path, bit for bit
    from sparsetrain import scores
    from sparsetrain.algorithms.base import Algorithm, UpdateContext

    w = torch.randn(30, 40)
    mask = torch.rand(30, 40, generator=torch.Generator().manual_seed(0)) < 0.2
    p = nn.Parameter(w * mask)
    layer = st.masks.LayerState("w", p, 0.2, int(mask.sum()), mask, mask.clone())
    alg = st.MEST(density=0.2)
    ctx = lambda: UpdateContext(step=10, total_steps=100, drop_fraction=0.2,  # noqa: E731
                                generator=torch.Generator().manual_seed(5))
    new = alg.select_grow(layer, 37, ~mask, ctx())
    old = Algorithm.select_grow(alg, layer, 37, ~mask, ctx())  # the highest grow_score (random_scores)
    assert torch.equal(new, old) and int(new.sum()) == 37
    assert torch.equal(new, scores.select_highest(scores.random_scores(p, ctx().generator), ~mask, 37))


@pytest.mark.parametrize("alg", ["dstee", "mest", "granet"])
def test_a_forced_update_with_the_algorithms_growth_streams(monkeypatch, alg):
    make = {"dstee": DSTEE["steps-max"], "mest": MEST["hard"], "granet": GRANET["sparse-start"]}[alg]
    seen = _spy_paths(monkeypatch)
    forced = (25, {"drop_fraction": 0.3, "grow": "algorithm"})
    masked = _train(monkeypatch, "masked", make, steps=60, forced=forced)
    seen["stream"].clear(), seen["dense"].clear()
    streaming = _train(monkeypatch, "streaming", make, steps=60, forced=forced)
    assert not seen["dense"] and [h.get("forced") for h in streaming[4].history].count("magnitude/algorithm") == 1
    _assert_same(masked, streaming)


# -- SNFS: dense by definition ---------------------------------------------------------------------
def test_snfs_keeps_the_dense_path_and_says_what_is_dense(monkeypatch):
    make = lambda: st.SNFS(density=0.2, distribution="uniform", update_interval=10, seed=3)  # noqa: E731
    seen = _spy_paths(monkeypatch)
    _thresholds(monkeypatch, LIMIT)
    model = to_sparse(_mlp())
    with pytest.warns(UserWarning) as record:
        sp = st.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), make(), total_steps=100)
    text = " ".join(str(w.message) for w in record)
    assert "SNFS's topology updates cannot stream" in text and "momentum" in text
    assert "every position" in text and "dense gradient at every step" in text
    assert update_mod.dense_path_layers(sp.layers.values(), sp.algorithm) == ALL
    sp.remove()
    masked = _train(monkeypatch, "masked", make, steps=40)
    seen["dense"].clear()
    streaming = _train(monkeypatch, "streaming", make, steps=40)
    assert not seen["stream"] and sorted(set(seen["dense"])) == ALL
    _assert_same(masked, streaming)


def test_granet_starting_dense_warns_that_it_streams_once_sparser(monkeypatch):
    _thresholds(monkeypatch, LIMIT)
    model = to_sparse(_mlp())
    with pytest.warns(UserWarning, match="denser than 25%: while they are, GraNet's updates take the dense path"):
        st.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), GRANET["dense-start"](), total_steps=100)


# -- (c) no dense-sized tensor where the update streams --------------------------------------------
class _Largest(TorchDispatchMode):
    """Records every tensor an operation returns with at least ``limit`` entries."""

    def __init__(self, limit):
        super().__init__()
        self.limit, self.big, self.ops = limit, [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() >= self.limit:
                self.big.append((str(func), tuple(t.shape), t.dtype))
        return out


def _wide(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 256),
                         nn.Tanh(), nn.Linear(256, 4))


WIDE = {
    "rigl": lambda: st.RigL(density=0.05, distribution="uniform", update_interval=5, seed=1),
    "dstee-steps-max": lambda: st.DSTEE(density=0.05, distribution="uniform", update_interval=5, c=0.05,
                                        grad_norm="layer_max", seed=1),
    "dstee-updates-mean": lambda: st.DSTEE(density=0.05, distribution="uniform", update_interval=5, c=0.05,
                                           count="updates", grad_norm="layer_mean", seed=1),
    "granet": lambda: st.GraNet(density=0.03, initial_density=0.1, distribution="uniform", update_interval=5,
                                prune_end=0.8, seed=1),
    "mest": lambda: st.MEST(density=0.05, distribution="uniform", update_interval=5, lam=0.01, seed=1),
    "mest-soft": lambda: st.MEST(density=0.05, distribution="uniform", update_interval=5, memory_bound="soft",
                                 seed=1),
    "snfs": lambda: st.SNFS(density=0.05, distribution="uniform", update_interval=5, seed=1),
}


@pytest.mark.parametrize("name", sorted(WIDE))
def test_streaming_updates_never_form_a_dense_sized_tensor(monkeypatch, name):
    # the two 256 x 256 layers are "large" (65,536 positions); the others stay below the threshold.
    # Training with updates runs under a dispatch mode that sees every tensor torch creates: none
    # may have half of a large layer's entries (a dense mask, weight, gradient, score or counter
    # would have all of them; GraNet's global ranking concatenates the stored values of every
    # layer, ∝ the total nnz). SNFS, dense by definition, is the positive control.
    monkeypatch.setenv("SPARSETRAIN_AUTOTUNE", "0")
    _thresholds(monkeypatch, 10_000, 10_000, block=2048)  # gradient blocks of 8 rows
    model = to_sparse(_wide())
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sp = st.Sparsifier(model, opt, WIDE[name](), total_steps=40)
    large = [n for n, l in sp.layers.items() if l.index_backed]
    assert large == ["2.weight", "4.weight"]
    called = []
    for cls, fn in ((StreamingStorage, "dense_mask"), (CompressedStorage, "dense_weight"),
                    (CompressedStorage, "dense_grad"), (LowRankGrad, "dense")):
        original = getattr(cls, fn)

        def spy(self, *a, _orig=original, _fn=fn, **k):
            if not isinstance(self, CompressedStorage) or self.index_backed:
                called.append(_fn)
            return _orig(self, *a, **k)

        monkeypatch.setattr(cls, fn, spy)
    seen = _spy_paths(monkeypatch)
    data = _data(4, width=16, classes=4, batch=8)
    watch = _Largest(65_536 // 2)
    with watch:
        for i in range(40):
            x, y = data[i % len(data)]
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        sp.metrics(), sp.state_dict()
    assert sp.updates >= 4 and watch.ops > 1000
    if name == "snfs":  # the control: the detector sees the dense path
        assert watch.big and called and set(seen["dense"]) >= set(large)
        return
    assert not watch.big, watch.big[:5]
    assert not called and not set(seen["dense"]) & set(large) and set(seen["stream"]) == set(large)
    assert_invariants(sp)
    if name.startswith("dstee") or name == "rigl":
        for n in large:
            c = sp.layers[n].counter
            assert isinstance(c, SparseCounts) and c.stored <= sp.layers[n].ever_count()


# -- the pieces ----------------------------------------------------------------------------------
def test_sparse_counts_follow_a_dense_counter():
    g = torch.Generator().manual_seed(0)
    numel = 1000
    ref = torch.zeros(numel, dtype=torch.int32)
    c = SparseCounts(numel)
    for step in range(6):
        pos = torch.sort(torch.randperm(numel, generator=g)[:50]).values
        c.add(pos, step + 1)
        ref[pos] += step + 1
        assert torch.equal(c.to_dense(), ref) and c.stored == int((ref > 0).sum())
        assert bool((c.index[1:] > c.index[:-1]).all()) and c.sum() == int(ref.sum())
    probe = torch.randint(0, numel, (200,), generator=g)
    assert torch.equal(c.at(probe), ref[probe])
    assert torch.equal(c.dense_span(300, 520), ref[300:520])
    offsets, counts = c.span(300, 520)
    assert torch.equal(ref[300:520][offsets], counts) and int((ref[300:520] > 0).sum()) == offsets.numel()
    twin = SparseCounts.from_dense(ref.view(20, 50))
    assert torch.equal(twin.index, c.index) and torch.equal(twin.counts, c.counts)
    assert torch.equal(twin.to_dense((20, 50)), ref.view(20, 50))
    dup = SparseCounts(10)
    dup.add(torch.tensor([3, 3, 7]), 2)  # a position given twice counts twice
    assert dup.to_dense().tolist() == [0, 0, 0, 4, 0, 0, 0, 2, 0, 0]
    copy = c.clone()
    copy.add(torch.arange(numel))
    assert c.sum() == int(ref.sum())  # a clone is independent


def test_sparse_usage_counters_save_and_load_into_either_kind_of_layer(monkeypatch):
    make = DSTEE["steps-raw"]
    streaming = _train(monkeypatch, "streaming", make, steps=35)[4]
    state = streaming.state_dict()
    s = state["layers"]["0.weight"]
    assert s["counter"] is None and s["counter_index"].dtype == torch.int64 and s["counter_values"].dtype == torch.int32
    expect = streaming.usage_counters()
    for kind in ("masked", "streaming"):
        sp = _train(monkeypatch, kind, make, steps=0, total=35)[4]
        sp.load_state_dict(state)
        assert all(torch.equal(sp.usage_counters()[n], expect[n]) for n in expect)
        assert all(isinstance(l.counter, SparseCounts) == (kind == "streaming") for l in sp.layers.values())
    dense_state = _train(monkeypatch, "masked", make, steps=35)[4].state_dict()
    sp = _train(monkeypatch, "streaming", make, steps=0, total=35)[4]
    sp.load_state_dict(dense_state)
    assert all(isinstance(l.counter, SparseCounts) for l in sp.layers.values())
    assert all(torch.equal(sp.usage_counters()[n], expect[n]) for n in expect)
    bad = dict(state, layers={**state["layers"], "0.weight": {**s, "counter_index": s["counter_index"].flip(0)}})
    bad.pop("checksum")
    with pytest.raises(st.errors.InputError, match="counter_index"):
        sp.load_state_dict(bad)


def test_dstee_round_counts_resume_in_either_form(monkeypatch):
    make = DSTEE["updates-mean-ucb"]
    full = _train(monkeypatch, "streaming", make, steps=60)[4]
    state = full.algorithm.state_dict()
    assert isinstance(state["rounds"]["0.weight"], dict)
    for kind in ("masked", "streaming"):
        sp = _train(monkeypatch, kind, make, steps=0, total=60)[4]
        sp.algorithm.load_state_dict(state)
        sp.algorithm.on_update_start(sp.layers, None)
        for n, layer in sp.layers.items():
            r = sp.algorithm._rounds[n]
            r = r.to_dense(layer.shape) if isinstance(r, SparseCounts) else r
            assert isinstance(sp.algorithm._rounds[n], SparseCounts) == (kind == "streaming")
            assert torch.equal(r, full.algorithm._rounds[n].to_dense(layer.shape) + layer.mask.to(torch.int32))


@pytest.mark.parametrize("kwargs", [dict(c=0.05, grad_norm="layer_max"), dict(c=0.3, bonus="ucb"),
                                    dict(c=0.02, count="updates", grad_norm="layer_mean"), dict(c=1e-3)])
def test_dstee_block_scores_equal_the_dense_acquisition(monkeypatch, kwargs):
    # the streaming acquisition of every block, concatenated, is the dense grow score bit for bit
    # (layer_mean: the block-summed mean may differ in its last bit, so within one ulp or two)
    from sparsetrain.algorithms.base import UpdateContext
    from sparsetrain.storage.streaming import gradient_blocks, gradient_scale

    _thresholds(monkeypatch, LIMIT, block=48)
    sp = _train(monkeypatch, "streaming", lambda: st.DSTEE(density=0.2, distribution="uniform", update_interval=10,
                                                           seed=3, **kwargs), steps=35, total=200)[4]
    layer = sp.layers["2.weight"]
    g = torch.Generator().manual_seed(0)
    # one gradient for both (a product formed by blocks of rows may round differently from the whole)
    layer.grad_buffer = torch.randn(48, 64, generator=g) * 1e-2
    ctx = UpdateContext(step=35, total_steps=200, drop_fraction=0.1, generator=g, update_index=sp.updates + 1)
    alg = sp.algorithm
    score = alg.stream_grow_score(layer, ctx, lambda how: gradient_scale(layer, how))
    blocks = torch.cat([score(b, lo, hi) for lo, hi, b in gradient_blocks(layer)])
    dense = alg.grow_score(layer, ctx).reshape(-1)
    assert isinstance(alg.usage(layer), SparseCounts) and alg.usage(layer).stored > 0
    if kwargs.get("grad_norm") == "layer_mean":
        torch.testing.assert_close(blocks, dense, rtol=3e-7, atol=0)
    else:
        assert torch.equal(blocks, dense)


@pytest.mark.parametrize("make_opt, key, value", [
    (lambda p: torch.optim.Rprop(p, lr=0.01, step_sizes=(0.0, 50.0)), "step_size", 0.01),
    (lambda p: torch.optim.Adagrad(p, lr=0.05, initial_accumulator_value=0.1), "sum", 0.1),
])
def test_regrown_weights_get_a_new_parameters_state_on_every_storage(monkeypatch, make_opt, key, value):
    # Rprop's step sizes and Adagrad's accumulator start away from zero; a regrown weight's state
    # is a new parameter's on compressed and streaming layers as on masked ones, and the three agree.
    # Adagrad creates its state in its constructor, before the Sparsifier shrinks a compressed
    # layer's values: that state must follow the positions (it crashed the first step otherwise)
    states = {}
    for kind in ("masked", "compressed", "streaming"):
        _thresholds(monkeypatch, LIMIT if kind == "streaming" else 1 << 40, block=64)
        model = _mlp()
        if kind != "masked":
            to_sparse(model)
        optimizer = make_opt(model.parameters())
        sp = st.Sparsifier(model, optimizer, st.SET(density=0.3, update_interval=3, end=None, drop_schedule="constant"),
                           total_steps=10)
        data = _data()
        before = None
        for i in range(3):  # the update follows the third step
            if i == 2:
                before = {n: m.clone() for n, m in sp.masks.items()}
            x, y = data[i % len(data)]
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            assert_invariants(sp, optimizer)
        assert sp.updates == 1
        states[kind] = {n: _momentum(sp, optimizer, n, key) for n in sp.layers}
        sparse = [(n, l) for n, l in sp.layers.items() if not l.is_dense]  # ERK leaves the last layer dense
        assert len(sparse) == 2
        for name, layer in sparse:
            assert layer.index_backed == (kind == "streaming")
            grown = sp.masks[name] & ~before[name]
            assert grown.any()
            assert torch.all(states[kind][name][grown] == value), f"{kind}: {key} of regrown {name} is not fresh"
    for name in states["masked"]:  # equal up to the kernels' rounding of the gradients
        torch.testing.assert_close(states["compressed"][name], states["masked"][name])
        torch.testing.assert_close(states["streaming"][name], states["masked"][name])


def test_state_an_optimizer_made_before_attaching_follows_a_converted_layers_mask():
    # to_sparse with a mask, Adagrad (state made in its constructor), then a Sparsifier: the converted
    # pattern is kept as the first mask (with its accumulators); at the first update, kept positions keep
    # their accumulator and regrown ones start at initial_accumulator_value
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 5))
    first = torch.rand(64, 20) < 0.2
    to_sparse(model, masks={"0.weight": first})
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05, initial_accumulator_value=0.1)
    layer0 = model[0]
    opt.state[layer0.values]["sum"].add_(torch.arange(layer0.nnz, dtype=torch.float32))  # as if it had trained
    before = torch.zeros(64 * 20)
    before[layer0.flat_index()] = opt.state[layer0.values]["sum"]
    sp = st.Sparsifier(model, opt, st.SET(density=0.2, update_interval=1, end=None), total_steps=10)
    assert torch.equal(sp.masks["0.weight"], first)
    assert torch.equal(_momentum(sp, opt, "0.weight", "sum").reshape(-1), before)
    x, y = _data(1)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    before = _momentum(sp, opt, "0.weight", "sum").reshape(-1).clone()  # (the update follows this step)
    opt.step()  # crashed with a size mismatch before the state followed the positions
    now = _momentum(sp, opt, "0.weight", "sum").reshape(-1)
    mask = sp.masks["0.weight"].reshape(-1)
    kept, new = mask & first.reshape(-1), mask & ~first.reshape(-1)
    assert sp.updates == 1 and kept.any() and new.any()
    assert bool((now[new] == 0.1).all()) and bool((now[~mask] == 0).all())
    assert bool((now[kept] >= before[kept]).all())  # kept: their accumulator, plus this step's g²
    assert_invariants(sp, opt)
