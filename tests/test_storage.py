"""Storages: how a mask is realised on a masked dense parameter, a compressed and a streaming layer."""

import torch
from torch import nn

import sparsetrain as st
from sparsetrain import storage as storage_mod
from sparsetrain.masks import LayerState
from sparsetrain.sparse import SparseLinear, to_sparse
from sparsetrain.storage import (CompressedStorage, MaskedStorage, StreamingStorage, dense_state, load_dense_state,
                                 storage_for)


def _layer(mask, storage=None, param=None):
    p = param if param is not None else nn.Parameter(torch.randn(mask.shape))
    storage = storage or MaskedStorage(p)
    layer = LayerState("w", p, 0.5, int(mask.sum()), mask, mask.clone(), shape=storage.shape, storage=storage)
    layer.set_mask(mask)
    return layer


def test_masked_storage_multiplier_follows_mask_dtype_and_values():
    layer = _layer(torch.tensor([True, False]))
    s = layer.storage
    assert s.mask_mul.dtype == layer.param.dtype and s.mask_mul.tolist() == [1.0, 0.0]
    layer.set_mask(torch.tensor([False, True]))
    assert s.mask_mul.tolist() == [0.0, 1.0]
    assert layer.density == 0.5 and not layer.is_dense
    layer.param.data = layer.param.data.double()
    layer.sync_device()
    assert s.mask_mul.dtype == torch.float64
    assert layer.weight is layer.param  # the dense view of a masked layer is the parameter itself


def test_masked_storage_enforces_weights_and_every_state_slot():
    mask = torch.tensor([[True, False], [False, True]])
    layer = _layer(mask)
    opt = torch.optim.Adam([layer.param], lr=0.1)
    layer.param.grad = torch.ones(2, 2)
    opt.step()
    layer.storage.enforce(layer, opt)
    assert torch.all(layer.param[~mask] == 0)
    for v in opt.state[layer.param].values():
        if torch.is_tensor(v) and v.shape == mask.shape:
            assert torch.all(v[~mask] == 0)


def test_compressed_storage_dense_view_is_made_once_per_update_and_committed():
    torch.manual_seed(0)
    lin = SparseLinear(6, 4)
    mask = torch.rand(4, 6) < 0.5
    store = storage_for(lin.values, lin)
    assert isinstance(store, CompressedStorage) and store.shape == (4, 6)
    layer = _layer(mask, store, lin.values)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    store.realise(layer, opt)
    assert lin.nnz == int(mask.sum()) and torch.equal(lin.mask(), mask)
    lin(torch.randn(3, 6)).sum().backward()
    opt.step()
    dense = lin.dense_weight()
    store.begin_update()
    w = layer.weight
    assert w is layer.weight and torch.equal(w, dense)  # one copy for the whole update
    g = layer.weight_grad
    assert g.shape == (4, 6) and torch.all(g[~mask] == 0)
    new = mask.clone()
    flat = new.reshape(-1)
    on, off = flat.nonzero()[0], (~flat).nonzero()[0]
    flat[on], flat[off] = False, True  # move one weight
    kept = mask & new
    w.mul_(kept)
    store.commit(layer, new, kept, opt)
    store.end_update()
    assert torch.equal(lin.mask(), new) and lin.nnz == int(new.sum())
    assert torch.equal(lin.dense_weight(), dense * kept)
    buf = opt.state[lin.values]["momentum_buffer"]
    assert buf.shape == lin.values.shape
    grown_at = int((new & ~mask).reshape(-1).nonzero()[0])
    pos = int((lin.flat_index() == grown_at).nonzero()[0])
    assert buf[pos] == 0  # a grown weight starts with fresh state


def test_large_compressed_layers_get_the_streaming_storage(monkeypatch):
    monkeypatch.setattr(storage_mod, "LARGE_LAYER", 10)
    lin = SparseLinear(4, 4)
    assert isinstance(storage_for(lin.values, lin), StreamingStorage)
    assert isinstance(storage_for(nn.Linear(4, 4).weight), MaskedStorage)


def test_dense_state_round_trips_compressed_and_masked_models():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    with torch.no_grad():
        model[0].weight.mul_(torch.rand(7, 5) < 0.4)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    to_sparse(model)  # keeps the nonzeros of model[0]; model[2] keeps all
    state = dense_state(model)
    assert set(state) == set(reference)
    for k in reference:
        assert torch.equal(state[k], reference[k])
    state["0.weight"] = state["0.weight"] * 2
    mask = state["0.weight"] != 0
    load_dense_state(model, state, {"0.weight": mask})
    assert torch.equal(model[0].dense_weight(), reference["0.weight"] * 2) and torch.equal(model[0].mask(), mask)
    plain = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    load_dense_state(plain, dense_state(model))
    assert torch.equal(plain[0].weight, reference["0.weight"] * 2)
    try:
        load_dense_state(plain, {"0.weight": state["0.weight"]})
    except ValueError as e:
        assert "missing" in str(e)
    else:  # pragma: no cover
        raise AssertionError("an incomplete state must be refused")


def test_summary_names_each_layers_storage():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    model[0] = SparseLinear.from_linear(model[0])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = st.Sparsifier(model, opt, st.RigL(density=0.5), total_steps=10)
    assert isinstance(sp.layers["0.weight"].storage, CompressedStorage)
    assert isinstance(sp.layers["2.weight"].storage, MaskedStorage)
    rows = {line.split()[0]: line.split() for line in sp.summary().splitlines()[2:] if line.strip()}
    assert rows["0.weight"][2] == "compressed" and rows["2.weight"][2] == "masked"
    sp.remove()
    assert model[0].dense_grad_request is None  # the storage detached its hooks


def _closure(model, opt, x):
    """A closure for ``opt.step(closure)`` (LBFGS) on ``model(x).sum()``."""
    def closure():
        opt.zero_grad()
        loss = model(x).sum()
        loss.backward()
        return loss

    return closure


def test_optimizer_state_masks_cannot_reach_is_warned_about_after_the_first_step():
    import warnings

    import pytest

    for make, keys in ((lambda p: torch.optim.Adafactor(p, lr=0.01), "col_var, row_var"),
                       (lambda p: torch.optim.LBFGS(p), "d, old_dirs, old_stps, prev_flat_grad")):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        opt = make(m.parameters())
        sp = st.Sparsifier(m, opt, st.RigL(density=0.3, update_interval=2), total_steps=100)
        closure = _closure(m, opt, torch.randn(5, 8))
        with pytest.warns(st.InputWarning, match=rf"{type(opt).__name__} keeps state not shaped like the weights "
                                                 rf"\({keys} of 0.weight"):
            opt.step(closure)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            opt.step(closure)  # once
        sp.remove()
    # per-weight state (Adam's moments): masked, so nothing to say
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.Adam(m.parameters())
    sp = st.Sparsifier(m, opt, st.RigL(density=0.3), total_steps=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(torch.randn(5, 8)).sum().backward()
        opt.step()
    sp.remove()


def test_lbfgs_state_is_warned_about_whatever_its_first_parameter():
    import pytest

    torch.manual_seed(0)
    m = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.LBFGS(m.parameters())  # its state sits under the LayerNorm's weight, which is not sparse
    sp = st.Sparsifier(m, opt, st.RigL(density=0.3, update_interval=2), total_steps=100)
    closure = _closure(m, opt, torch.randn(5, 8))
    with pytest.warns(st.InputWarning, match=r"LBFGS keeps state not shaped like the weights \(d, old_dirs"):
        opt.step(closure)
    sp.remove()
