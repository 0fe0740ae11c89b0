"""Truly sparse execution: SparseLinear's autograd, the Sparsifier driving it, compressed checkpoints."""

import copy
import shutil

import pytest
import torch
from torch import nn

import sparsetrain as st
from sparsetrain.sparse import SparseLinear, compressed_size, load_compressed, save_compressed, to_dense, to_sparse
from sparsetrain.sparse import kernels
from sparsetrain.sparse.export import pack_bits, unpack_bits
from sparsetrain.storage import StreamingStorage


@pytest.fixture(autouse=True, params=["native", "torch"])
def kernel_backend(request):
    """Every test runs on the compiled kernels and on torch's CSR kernels."""
    if request.param == "native" and shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine")
    saved = kernels._state["backend"]
    kernels.set_backend(request.param)  # "native" raises if the build fails: a failure, not a skip
    yield request.param
    kernels._state["backend"] = saved


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 5))


def _data(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 20, generator=g), torch.randint(0, 5, (16,), generator=g)) for _ in range(n)]


def test_forward_and_gradients_match_a_masked_dense_linear():
    torch.manual_seed(0)
    lin = nn.Linear(30, 17)
    mask = torch.rand(17, 30) < 0.2
    with torch.no_grad():
        lin.weight.mul_(mask)
    sp = SparseLinear.from_linear(lin, mask=mask)
    assert sp.nnz == int(mask.sum())
    x = torch.randn(9, 30, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y_dense, y_sparse = lin(x), sp(x2)
    assert torch.allclose(y_dense, y_sparse, atol=1e-6)
    gy = torch.randn_like(y_dense)
    y_dense.backward(gy)
    y_sparse.backward(gy)
    assert torch.allclose(x.grad, x2.grad, atol=1e-6)
    assert torch.allclose(lin.weight.grad[mask], sp.values.grad, atol=1e-5)
    assert torch.allclose(lin.bias.grad, sp.bias.grad, atol=1e-6)
    assert torch.equal(sp.mask(), mask) and torch.equal(sp.dense_weight(), lin.weight.detach())
    # leading dimensions are kept, like nn.Linear
    assert sp(torch.randn(2, 3, 30)).shape == (2, 3, 17)


def test_dense_gradient_only_when_requested():
    sp = SparseLinear(8, 6)
    sp.set_structure(torch.eye(6, 8, dtype=torch.bool), torch.ones(6))
    got = []

    def sink(gyt, x):  # receives the factors of ∂L/∂W = gyᵀx, returns the dense product it formed
        got.append(torch.mm(gyt, x))
        return got[-1]

    sp.dense_grad_sink = sink
    x = torch.randn(4, 8)
    sp.dense_grad_request = lambda: False
    sp(x).sum().backward()
    assert got == []
    sp.values.grad = None
    sp.dense_grad_request = lambda: True
    sp(x).sum().backward()
    assert len(got) == 1 and got[0].shape == (6, 8)
    assert torch.allclose(got[0], torch.ones(4, 6).t() @ x)
    assert sp.capacity == 48 and sp.nnz == 6  # shrunk in place: zero padding, same parameter size
    assert torch.allclose(sp.values.grad[:6], got[0][torch.eye(6, 8, dtype=torch.bool)])
    assert torch.all(sp.values.grad[6:] == 0)


def test_to_sparse_and_back_keeps_the_function():
    model = _mlp()
    x = torch.randn(5, 20)
    ref = model(x)
    to_sparse(model)
    assert sum(isinstance(m, SparseLinear) for m in model.modules()) == 3
    assert torch.allclose(model(x), ref, atol=1e-5)
    to_dense(model)
    assert not any(isinstance(m, SparseLinear) for m in model.modules())
    assert torch.allclose(model(x), ref, atol=1e-5)


def test_converting_draws_no_random_numbers():
    # a seeded run's later draws (mask draws, batches, dropout) are the same with or without conversion
    model = _mlp()
    state = torch.get_rng_state()
    to_sparse(model)
    assert torch.equal(torch.get_rng_state(), state)
    to_dense(model)
    assert torch.equal(torch.get_rng_state(), state)
    frozen = nn.Linear(4, 3)
    frozen.bias.requires_grad_(False)
    back = to_dense(to_sparse(nn.Sequential(frozen)))[0]
    assert back.bias.requires_grad is False and back.weight.requires_grad is True
    frozen.weight.requires_grad_(False)  # a frozen layer stays frozen through both conversions
    converted = to_sparse(nn.Sequential(frozen))
    assert converted[0].values.requires_grad is False
    assert to_dense(converted)[0].weight.requires_grad is False


def _train(sparse: bool, make_alg, steps=240, opt="sgd", data=None):
    model = _mlp()
    if sparse:
        to_sparse(model)
    if opt == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    sp = st.Sparsifier(model, optimizer, make_alg(), total_steps=steps)
    data = data or _data()
    losses, masks_over_time = [], []
    for i in range(steps):
        x, y = data[i % len(data)]
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if sp.history and len(masks_over_time) < len(sp.history):
            masks_over_time.append({n: m.clone() for n, m in sp.masks.items()})
    weights = {n: (l.sparse_module.dense_weight() if l.sparse_module is not None else l.param.detach().clone())
               for n, l in sp.layers.items()}
    return losses, masks_over_time, weights, sp, model, optimizer


@pytest.mark.parametrize("name,make_alg", [
    ("set", lambda: st.SET(density=0.2, update_interval=20, seed=3)),
    ("rigl", lambda: st.RigL(density=0.2, update_interval=20, seed=3)),
    ("dstee", lambda: st.DSTEE(density=0.2, update_interval=20, c=0.01, seed=3)),
])
def test_truly_sparse_training_matches_masked_dense(name, make_alg):
    masked = _train(False, make_alg)
    sparse = _train(True, make_alg)
    spb, opt = sparse[3], sparse[5]
    assert len(masked[1]) == len(sparse[1]) == masked[3].updates > 5
    _assert_same_training(masked, sparse)  # identical topology after every update
    # optimizer state holds only the nonzeros
    for layer in spb.layers.values():
        values = layer.sparse_module.values
        assert values.numel() == layer.n_active == layer.sparse_module.nnz
        assert opt.state[values]["momentum_buffer"].shape == values.shape


def test_adam_state_follows_the_structure_and_grown_weights_start_fresh():
    make = lambda: st.RigL(density=0.25, update_interval=10, seed=0)  # noqa: E731
    _, ma, wa, _, _, _ = _train(False, make, steps=60, opt="adam")
    _, mb, wb, spb, model, opt = _train(True, make, steps=60, opt="adam")
    assert all(torch.equal(ma[-1][n], mb[-1][n]) for n in ma[-1])
    for n in wa:
        assert torch.allclose(wa[n], wb[n], atol=1e-5)
    # one more update by hand: grown weights have zero value and zero Adam moments
    layer = next(iter(spb.layers.values()))
    before = layer.mask.clone()
    x, y = _data()[0]
    spb.request_update(0.5, grow="random")
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad()
    new = layer.mask & ~before
    assert int(new.sum()) > 0
    values = layer.sparse_module.values
    state = opt.state[values]
    flat = torch.zeros(layer.numel, dtype=torch.bool)
    flat[layer.sparse_module.flat_index()] = True
    grown = new.reshape(-1)[layer.sparse_module.flat_index()]
    assert torch.all(values[grown] == 0)
    assert torch.all(state["exp_avg"][grown] == 0) and torch.all(state["exp_avg_sq"][grown] == 0)
    assert state["exp_avg"].shape == values.shape


def test_granet_changes_nnz_and_the_structure_follows():
    steps = 200
    make = lambda: st.GraNet(density=0.1, initial_density=0.5, update_interval=20, seed=0)  # noqa: E731
    _, ma, wa, spa, _, _ = _train(False, make, steps=steps)
    _, mb, wb, spb, model, opt = _train(True, make, steps=steps)
    assert all(torch.equal(ma[-1][n], mb[-1][n]) for n in ma[-1])
    for layer in spb.layers.values():
        module = layer.sparse_module
        assert module.nnz == layer.n_active <= module.capacity
        assert opt.state[module.values]["momentum_buffer"].shape == module.values.shape
        assert torch.all(module.values[module.nnz:] == 0)  # pruning's padding stays zero
    assert spb.density == pytest.approx(0.1, abs=2e-3)


def test_sparsifier_state_and_model_state_resume_exactly(tmp_path):
    make = lambda: st.RigL(density=0.2, update_interval=15, seed=1)  # noqa: E731
    data = _data()
    _, _, w_full, _, model_full, _ = _train(True, make, steps=90, data=data)

    model = to_sparse(_mlp())
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sp = st.Sparsifier(model, opt, make(), total_steps=90)
    for i in range(50):
        x, y = data[i % len(data)]
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sp": sp.state_dict()}, tmp_path / "c.pt")
    sp.remove()
    ck = torch.load(tmp_path / "c.pt", weights_only=True)
    model = to_sparse(_mlp(seed=5))  # other init, full pattern: the checkpoint brings the structure
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sp = st.Sparsifier(model, opt, make(), total_steps=90)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    sp.load_state_dict(ck["sp"])
    for i in range(50, 90):
        x, y = data[i % len(data)]
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    for n, layer in sp.layers.items():
        assert torch.equal(layer.sparse_module.dense_weight(), w_full[n])


def test_flops_counts_compressed_layers():
    model = to_sparse(_mlp())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = st.Sparsifier(model, opt, st.Static(density=0.1), total_steps=10)
    report = st.flops(model, torch.randn(1, 20))
    assert report.dense == 20 * 64 + 64 * 48 + 48 * 5
    assert report.sparse == sum(l.n_active for l in sp.layers.values())


def test_pack_bits_roundtrip():
    g = torch.Generator().manual_seed(0)
    for n in (1, 7, 8, 9, 1000):
        m = torch.rand(n, generator=g) < 0.3
        assert torch.equal(unpack_bits(pack_bits(m), n), m)


def test_compressed_checkpoint_roundtrip_and_size(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 300), nn.ReLU(), nn.Linear(300, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sizes = {}
    for density in (0.5, 0.1, 0.01):
        sp = st.Sparsifier(model, opt, st.Static(density=density, distribution="uniform"), total_steps=10)
        path = tmp_path / f"m{density}.pt"
        sizes[density] = save_compressed(model, path, masks=sp.masks)
        state = load_compressed(path)
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        sp.remove()
    torch.save(model.state_dict(), tmp_path / "dense.pt")
    dense = (tmp_path / "dense.pt").stat().st_size
    assert sizes[0.01] < sizes[0.1] < sizes[0.5] < dense
    assert sizes[0.01] < 0.05 * dense  # values + int32 positions
    assert compressed_size(model, masks={}) > 0.9 * dense
    with pytest.raises(ValueError, match="not entries"):
        save_compressed(model, tmp_path / "x.pt", masks={"nope": torch.ones(1, dtype=torch.bool)})


def test_scored_initial_masks_refuse_compressed_layers():
    model = to_sparse(_mlp())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data()[0]
    with pytest.raises(ValueError, match="to_sparse"):
        st.Sparsifier(model, opt, st.SNIP(density=0.1, batch=(x, y)), total_steps=10)


def test_compressed_checkpoint_of_a_truly_sparse_model_loads_back(tmp_path):
    model = to_sparse(_mlp())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = st.Sparsifier(model, opt, st.Static(density=0.1), total_steps=10)
    size = save_compressed(model, tmp_path / "m.pt")
    full = tmp_path / "full.pt"
    torch.save(model.state_dict(), full)
    assert size < 0.75 * full.stat().st_size  # no transposed structure, no padding
    fresh = to_sparse(_mlp(seed=3))
    fresh.load_state_dict(load_compressed(tmp_path / "m.pt"))
    x = torch.randn(4, 20)
    assert torch.allclose(fresh(x), model(x), atol=1e-6)
    for a, b in zip(model.modules(), fresh.modules()):
        if isinstance(a, SparseLinear):
            assert torch.equal(a.t_perm, b.t_perm) and torch.equal(a.t_col_indices, b.t_col_indices)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as hs  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(out_f=hs.integers(1, 9), in_f=hs.integers(1, 9), batch=hs.integers(1, 5), density=hs.floats(0.0, 1.0),
       seed=hs.integers(0, 10_000), int64=hs.booleans(), lead=hs.sampled_from([(), (3,), (2, 1)]))
def test_sparse_linear_equals_masked_linear_for_any_shape_and_mask(out_f, in_f, batch, density, seed, int64, lead):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    mask = torch.rand(out_f, in_f, generator=g) < density  # empty rows, columns, or no entries at all
    lin = nn.Linear(in_f, out_f)
    with torch.no_grad():
        lin.weight.copy_(w * mask)
    sp = SparseLinear.from_linear(lin, mask=mask, index_dtype=torch.int64 if int64 else torch.int32)
    assert sp.nnz == int(mask.sum()) and torch.equal(sp.mask(), mask)
    # (batch, in) or with more leading dimensions (a transformer's (B, T, D): row-major outputs)
    x = torch.randn(batch, *lead, in_f, generator=g)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y1, y2 = lin(x1), sp(x2)
    assert y2.shape == y1.shape and torch.allclose(y1, y2, atol=1e-5)
    if lead:
        assert y2.is_contiguous()  # what attention kernels and LayerNorm need
    gy = torch.randn(batch, *lead, out_f, generator=g)
    y1.backward(gy)
    y2.backward(gy)
    assert torch.allclose(x1.grad, x2.grad, atol=1e-5)
    assert torch.allclose(sp.values.grad, lin.weight.grad[mask], atol=1e-5)
    assert torch.equal(sp.dense_weight(), lin.weight.detach())


def test_a_meta_device_model_trains_without_ever_allocating_dense_weights():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(20, 300), nn.ReLU(), nn.Linear(300, 5))
    to_sparse(model)
    layers = [m for m in model if isinstance(m, SparseLinear)]
    assert all(m.deferred and m.values.numel() == 0 and not m.values.is_meta for m in layers)
    with pytest.raises(RuntimeError, match="attach a sparsetrain.Sparsifier first"):
        model(torch.randn(2, 20))
    assert not layers[0].mask().any() and layers[0].nnz == 0 and "nnz=0" in repr(layers[0])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = st.Sparsifier(model, opt, st.SET(density=0.05, update_interval=2), total_steps=20)
    for m, name in zip(layers, ("0.weight", "2.weight")):
        assert not m.deferred and m.nnz == sp.layers[name].n_active == m.values.numel()
        assert torch.equal(m.mask(), sp.masks[name])
        # nn.Linear's default initialisation, drawn at the chosen positions only
        b = 1 / m.in_features ** 0.5
        v = m.values.detach()
        assert float(v.abs().max()) <= b and float(v.std()) > 0.4 * b
    for x, y in _data(6):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert sp.updates >= 2 and all(m.nnz == m.values.numel() for m in layers)
    # the same seed draws the same model
    with torch.device("meta"):
        again = nn.Sequential(nn.Linear(20, 300), nn.ReLU(), nn.Linear(300, 5))
    to_sparse(again)
    st.Sparsifier(again, torch.optim.SGD(again.parameters(), lr=0.1), st.SET(density=0.05), total_steps=20)
    with torch.device("meta"):
        third = nn.Sequential(nn.Linear(20, 300), nn.ReLU(), nn.Linear(300, 5))
    to_sparse(third)
    st.Sparsifier(third, torch.optim.SGD(third.parameters(), lr=0.1), st.SET(density=0.05), total_steps=20)
    assert torch.equal(again[0].values, third[0].values) and torch.equal(again[0].crow_indices, third[0].crow_indices)


def test_a_deferred_layer_resumes_from_a_checkpoint():
    def build():
        with torch.device("meta"):
            m = nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 3))
        return to_sparse(m)

    model = build()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp = st.Sparsifier(model, opt, st.RigL(density=0.2, update_interval=3), total_steps=30)
    data = [(torch.randn(8, 12), torch.randint(0, 3, (8,))) for _ in range(7)]
    for x, y in data[:4]:
        opt.zero_grad(); nn.functional.cross_entropy(model(x), y).backward(); opt.step()
    # a copy, as a checkpoint file would be (state dicts alias the live tensors)
    ckpt = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "sp": sp.state_dict()})
    other = build()
    opt2 = torch.optim.Adam(other.parameters(), lr=1e-2)
    sp2 = st.Sparsifier(other, opt2, st.RigL(density=0.2, update_interval=3), total_steps=30, state=ckpt["sp"])
    other.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    for x, y in data[4:]:
        for m, o in ((model, opt), (other, opt2)):
            o.zero_grad(); nn.functional.cross_entropy(m(x), y).backward(); o.step()
    assert torch.equal(sp.masks["0.weight"], sp2.masks["0.weight"])
    assert torch.allclose(model[0].values, other[0].values)
    assert torch.allclose(model[2].values, other[2].values)


def test_large_random_masks_are_exact_and_uniform_without_a_permutation():
    from sparsetrain.masks import LARGE_LAYER, random_mask

    g = torch.Generator().manual_seed(0)
    shape = (LARGE_LAYER // 1000 + 1, 1000)  # just above the limit
    for count in (1, 12345, shape[0] * shape[1] - 7):
        m = random_mask(shape, count, g)
        assert int(m.sum()) == count
    m = random_mask(shape, 200_000, g)
    rows = m.sum(1).float()
    # every position equally likely: row counts have the mean and (nearly binomial) spread of that
    p = 200_000 / (shape[0] * shape[1])
    expected_var = shape[1] * p * (1 - p)
    assert abs(float(rows.mean()) - 200_000 / shape[0]) < 1e-3
    assert 0.75 * expected_var < float(rows.var()) < 1.25 * expected_var
    assert torch.equal(random_mask(shape, 5000, torch.Generator().manual_seed(3)),
                       random_mask(shape, 5000, torch.Generator().manual_seed(3)))


def _all_layers_large(monkeypatch, limit=100):
    """Every layer above ``limit`` positions counts as large (streaming updates, sampled growth)."""
    import sparsetrain.scores as scores_mod
    import sparsetrain.storage as storage_mod

    monkeypatch.setattr(storage_mod, "LARGE_LAYER", limit)
    monkeypatch.setattr(scores_mod, "LARGE_LAYER", limit)


def _assert_same_training(a, b, history_keys=(), rel=None):
    """Two ``_train`` results: identical masks after every update, losses and weights within float
    tolerance, the same R_s and per-update metrics."""
    la, ma, wa, spa = a[:4]
    lb, mb, wb, spb = b[:4]
    for x, y in zip(ma, mb):
        assert all(torch.equal(x[n], y[n]) for n in x)
    assert torch.allclose(torch.tensor(la), torch.tensor(lb), rtol=1e-4, atol=1e-5)
    for n in wa:
        assert torch.allclose(wa[n], wb[n], atol=1e-5)
    assert spa.itop_rate == spb.itop_rate
    for key in history_keys:
        assert [h[key] for h in spa.history] == pytest.approx([h[key] for h in spb.history], rel=rel)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_large_layers_stream_their_updates_and_still_match_masked_dense(monkeypatch, opt):
    # every layer counts as "large": compressed layers update without dense temporaries, and the
    # masked-dense SET samples its growth the same way; the two runs must stay identical
    _all_layers_large(monkeypatch)
    calls = []
    original = StreamingStorage.stream_update

    def spy(self, layer, *args):
        calls.append(layer.name)
        return original(self, layer, *args)

    monkeypatch.setattr(StreamingStorage, "stream_update", spy)
    make = lambda: st.SET(density=0.2, update_interval=20, seed=3)  # noqa: E731
    masked = _train(False, make, opt=opt)
    assert not calls  # masked-dense layers never stream
    sparse = _train(True, make, opt=opt)
    spb, optimizer = sparse[3], sparse[5]
    # the last layer is denser than 25% under ERK: it takes the dense path, where ranking differs
    assert spb.layers["4.weight"].density > 0.25
    assert sorted(set(calls)) == ["0.weight", "2.weight"] and len(calls) == 2 * spb.updates and spb.updates > 5
    _assert_same_training(masked, sparse, ("turnover", "exploration"))
    for layer in spb.layers.values():
        m = layer.sparse_module
        assert m.nnz == layer.n_active == int(layer.mask.sum()) and torch.equal(m.mask(), layer.mask)
        for v in optimizer.state[m.values].values():
            if torch.is_tensor(v) and v.dim():
                assert v.shape == m.values.shape


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_rigl_streams_gradient_growth_from_factors_block_by_block(monkeypatch, opt):
    # large compressed layers rank growth from the gradient's factors, a few rows at a time
    # (blocks of 3 rows here); masks, weights and metrics equal the masked-dense RigL
    import sparsetrain.capture as capture_mod
    import sparsetrain.storage.streaming as streaming_mod

    _all_layers_large(monkeypatch)
    monkeypatch.setattr(streaming_mod, "GRADIENT_BLOCK", 64)
    captured = []
    original = capture_mod.accumulate

    def spy(layer, grad, step):
        captured.append(type(grad).__name__)
        return original(layer, grad, step)

    monkeypatch.setattr(capture_mod, "accumulate", spy)
    make = lambda: st.RigL(density=0.2, update_interval=20, seed=3)  # noqa: E731
    masked = _train(False, make, opt=opt)
    assert set(captured) == {"Tensor"}
    captured.clear()
    sparse = _train(True, make, opt=opt)
    spb = sparse[3]
    assert captured.count("LowRankGrad") == 2 * spb.updates and captured.count("Tensor") == spb.updates
    assert len(masked[1]) == len(sparse[1]) == spb.updates > 5
    _assert_same_training(masked, sparse, ("turnover", "exploration", "exploitation"), rel=1e-4)


def test_low_rank_gradient_factors_equal_the_dense_gradient():
    from sparsetrain.sparse import LowRankGrad

    g = torch.Generator().manual_seed(0)
    a = LowRankGrad(torch.randn(7, 5, generator=g), torch.randn(5, 9, generator=g))
    b = LowRankGrad(torch.randn(7, 3, generator=g), torch.randn(3, 9, generator=g))
    da, db = a.factors[0][0] @ a.factors[0][1], b.factors[0][0] @ b.factors[0][1]
    total = (a + b) * 0.5
    assert total.shape == (7, 9)
    torch.testing.assert_close(total.dense(), (da + db) * 0.5)
    torch.testing.assert_close(total.rows(2, 5), ((da + db) * 0.5)[2:5])
    torch.testing.assert_close((a * 2.0 + b).dense(), 2 * da + db)  # different scales fold in
    mask = torch.rand(7, 9, generator=g) < 0.4
    layer = SparseLinear(9, 7, mask=mask)
    torch.testing.assert_close(total.at(layer), ((da + db) * 0.5)[mask])
    assert total.isfinite() and not LowRankGrad(torch.full((7, 1), float("nan")), torch.ones(1, 9)).isfinite()
    with pytest.raises(TypeError):
        a + LowRankGrad(torch.ones(2, 1), torch.ones(1, 2))


@pytest.mark.parametrize("grow", ["random", "gradient"])
def test_a_forced_update_streams_on_large_compressed_layers(monkeypatch, grow):
    _all_layers_large(monkeypatch)
    results = []
    for compressed in (False, True):
        model = _mlp()
        if compressed:
            to_sparse(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sp = st.Sparsifier(model, opt, st.RigL(density=0.1, update_interval=10**6, end=None, seed=2), total_steps=100)
        data = _data(3)
        for x, y in data[:2]:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        sp.request_update(0.5, grow=grow, drop="magnitude")
        x, y = data[2]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        rec = sp.history[-1]
        assert rec["forced"] == f"magnitude/{grow}"
        results.append((sp.masks, rec["turnover"], sp.density))
    assert all(torch.equal(results[0][0][n], results[1][0][n]) for n in results[0][0])
    assert results[0][1:] == pytest.approx(results[1][1:])


def test_a_removed_sparsifier_leaves_working_layers_behind():
    model = to_sparse(_mlp())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = st.Sparsifier(model, opt, st.RigL(density=0.2, update_interval=2), total_steps=20)
    layer = model[0]
    assert layer.dense_grad_request is not None
    sp.remove()
    assert layer.dense_grad_request is None
    a, b = torch.randn(64, 3), torch.randn(3, 20)
    assert torch.allclose(layer.dense_grad_sink(a, b), a @ b)  # the module's own default again
    x, y = _data()[0]
    nn.functional.cross_entropy(model(x), y).backward()
    assert layer.values.grad is not None and layer.values.grad.shape == layer.values.shape


def test_to_sparse_keeps_the_linears_a_transformer_encoder_layer_reads_as_weights():
    # its forward reads linear1.weight / linear2.weight (fast-path checks): converting them broke it
    torch.manual_seed(0)
    model = nn.Sequential(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0), nn.Flatten(),
                          nn.Linear(16 * 3, 4))
    st.sparse.to_sparse(model)
    assert type(model[0].linear1) is nn.Linear and type(model[0].linear2) is nn.Linear
    assert isinstance(model[2], st.sparse.SparseLinear)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = st.Sparsifier(model, opt, st.RigL(density=0.2, update_interval=2), total_steps=8)
    assert sp.layers["0.linear1.weight"].storage.kind == "masked" and sp.layers["2.weight"].storage.kind == "compressed"
    for _ in range(8):
        nn.functional.cross_entropy(model(torch.randn(4, 3, 16)), torch.randint(0, 4, (4,))).backward()
        opt.step()
        opt.zero_grad()
        st.testing.assert_invariants(sp, opt)
    model.eval()
    with torch.no_grad():  # the fused eval path too
        assert model(torch.randn(2, 3, 16)).shape == (2, 4)


def test_a_gradient_penalty_differentiates_through_the_backward():
    """``create_graph=True`` (a gradient penalty): the compiled kernels have no autograd of their own, so the
    first layer's value gradient of the penalty came out 0, silently; it must equal the masked dense layer's."""
    torch.manual_seed(0)
    lin, mask = nn.Linear(16, 8), torch.rand(8, 16) < 0.3
    ref = nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 1))
    ref[0].load_state_dict(lin.state_dict())
    with torch.no_grad():
        ref[0].weight.mul_(mask)
    m = to_sparse(nn.Sequential(lin, nn.Tanh(), copy.deepcopy(ref[2])), masks={"0.weight": mask})
    x = torch.randn(5, 16)

    def penalty(model):
        xi = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(model(xi).sum(), xi, create_graph=True)
        (g.norm(dim=1) - 1).pow(2).mean().backward()

    penalty(m)
    penalty(ref)
    assert m[0].values.grad.abs().sum() > 0
    assert torch.allclose(m[0].values.grad, ref[0].weight.grad[m[0].mask()], atol=1e-6)


def test_to_dense_refuses_layers_a_live_sparsifier_holds():
    m = to_sparse(_mlp())
    sp = st.Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), st.RigL(density=0.2), total_steps=1000)
    with pytest.raises(st.InputError, match=r"values are held by a Sparsifier .* call .remove\(\) on it before"):
        to_dense(m)
    sp.remove()
    assert isinstance(to_dense(m)[0], nn.Linear)


def test_save_compressed_takes_the_sparsifiers_masks_of_a_mixed_model(tmp_path):
    """A masked conv and a compressed head (``--execution sparse`` on a CNN): ``masks=sp.masks`` names the head's
    weight, which the state_dict holds as CSR; it was refused as "not entries of the model's state_dict"."""
    torch.manual_seed(0)
    m = to_sparse(nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)))
    sp = st.Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), st.RigL(density=0.1), total_steps=1000)
    size = save_compressed(m, tmp_path / "m.pt", masks=sp.masks)
    assert size < save_compressed(m, tmp_path / "dense_conv.pt")  # the conv stored at its mask
    back = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    back.load_state_dict(load_compressed(tmp_path / "m.pt", dense=True))
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(back(x), m(x), atol=1e-5)
    with pytest.raises(st.InputError, match="not entries of the model's state_dict"):
        save_compressed(m, tmp_path / "x.pt", masks={"nope.weight": torch.ones(2, 2, dtype=torch.bool)})


def test_to_sparse_that_converts_nothing_says_so():
    with pytest.warns(st.InputWarning, match="to_sparse converted no layer of this model: it has no plain nn.Linear"):
        to_sparse(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()))
    with pytest.warns(st.InputWarning, match="include= selected none of them"):
        to_sparse(_mlp(), include=lambda name, m: False)
