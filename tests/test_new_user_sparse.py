"""The truly sparse path used as a new user would: odd inputs, odd models, wrong input.

Each test checks SparseLinear against the dense computation it replaces (``nn.Linear`` on the
masked weight), on the compiled kernels and on torch's.
"""

import copy
import io
import logging
import shutil

import pytest
import torch
from torch import nn

import sparsetrain as st
from sparsetrain.errors import InputError
from sparsetrain.sparse import SparseLinear, kernels, to_dense, to_sparse


@pytest.fixture(autouse=True, params=["native", "torch"])
def kernel_backend(request):
    """Every test runs on the compiled kernels and on torch's CSR kernels."""
    if request.param == "native" and shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine")
    saved = kernels._state["backend"]
    kernels.set_backend(request.param)
    yield request.param
    kernels._state["backend"] = saved


def _pair(in_f=13, out_f=7, density=0.3, bias=True, seed=0, dtype=torch.float32):
    """A masked nn.Linear and the SparseLinear holding the same weight."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias)
    mask = torch.rand(out_f, in_f, generator=g) < density
    with torch.no_grad():
        lin.weight.mul_(mask)
    sp = SparseLinear.from_linear(lin, mask=mask)
    return lin.to(dtype), sp.to(dtype), mask


def test_an_input_of_the_wrong_width_is_an_error_not_a_reshape():
    lin, sp, _ = _pair()
    # 26 = 2 × 13 inputs: a reshape to (-1, 13) would silently compute on the wrong rows
    for shape in [(2, 26), (3, 26), (2, 3, 26), (5, 12), (12,)]:
        with pytest.raises(InputError, match=r"in_features=13.*" + str(shape[-1])):
            sp(torch.randn(*shape))
    with pytest.raises(InputError, match="in_features=13"):
        sp(torch.tensor(1.0))
    assert sp(torch.randn(13)).shape == (7,)  # a single vector, as nn.Linear


def test_float64_works_and_a_dtype_mismatch_names_both_dtypes():
    lin, sp, mask = _pair(dtype=torch.float64)
    x = torch.randn(5, 2, 13, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = lin(x1), sp(x2)
    assert y2.dtype == torch.float64
    torch.testing.assert_close(y1, y2)
    gy = torch.randn_like(y1)
    y1.backward(gy)
    y2.backward(gy)
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(lin.weight.grad[mask], sp.values.grad)
    _, sp32, _ = _pair()
    with pytest.raises(InputError, match=r"float64.*float32"):
        sp32(torch.randn(4, 13, dtype=torch.float64))
    with pytest.raises(InputError, match=r"int64.*float32"):
        sp32(torch.randint(0, 3, (4, 13)))


def test_low_precision_values_on_cpu_are_refused_with_the_fix():
    _, sp, _ = _pair()
    sp = sp.to(torch.bfloat16)
    with pytest.raises(InputError, match="autocast"):
        sp(torch.randn(4, 13, dtype=torch.bfloat16))


@pytest.mark.parametrize("backward_inside", [False, True])
def test_autocast_runs_the_sparse_products_in_the_layers_dtype(backward_inside):
    torch.manual_seed(0)
    first = nn.Linear(13, 13)
    lin, sp, mask = _pair()
    x = torch.randn(6, 13)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = torch.relu(first(x))  # bf16 under autocast
        assert h.dtype == torch.bfloat16
        h2 = h.detach().requires_grad_()
        y = sp(h2)
        if backward_inside:
            y.square().sum().backward()
    if not backward_inside:
        y.square().sum().backward()
    assert y.dtype == torch.float32  # the sparse products have no bf16 kernels: computed in float32
    # the reference: the same (bf16-rounded) activations through the masked layer in float32
    h1 = h.detach().float().requires_grad_()
    y1 = lin(h1)
    y1.square().sum().backward()
    torch.testing.assert_close(y, y1)
    torch.testing.assert_close(sp.values.grad, lin.weight.grad[mask])
    assert h2.grad.dtype == torch.bfloat16
    torch.testing.assert_close(h2.grad.float(), h1.grad, atol=2e-2, rtol=2e-2)


def test_a_linear_used_twice_stays_one_layer():
    torch.manual_seed(0)
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(4, 8)
    ref = model(x)
    to_sparse(model)
    assert isinstance(model[0], SparseLinear) and model[0] is model[2]
    torch.testing.assert_close(model(x), ref)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = st.Sparsifier(model, opt, st.RigL(density=0.3, update_interval=2), total_steps=8)
    assert sorted(sp.layers) == ["0.weight", "4.weight"]
    for _ in range(4):
        model(x).square().sum().backward()
        opt.step()
        opt.zero_grad()
    assert model[0] is model[2] and model[0].nnz == sp.layers["0.weight"].n_active


def _trained_mlp(algorithm, sparse=True, rows=3, total=20, momentum=0.9, seed=0):
    """An 8-16-4 MLP (truly sparse if ``sparse``) trained 3 steps with ``algorithm`` on one batch."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    if sparse:
        to_sparse(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    sp = st.Sparsifier(model, opt, algorithm, total_steps=total)
    x = torch.randn(rows, 8)
    for _ in range(3):
        model(x).square().sum().backward()
        opt.step()
        opt.zero_grad()
    return model, sp, opt, x


def _trained_sparse_mlp():
    return _trained_mlp(st.RigL(density=0.3, update_interval=2))


def test_copies_and_pickles_of_an_attached_model_do_not_carry_the_sparsifiers_hooks():
    model, sp, opt, x = _trained_sparse_mlp()
    layer = model[0]
    assert layer.dense_grad_request is not None
    buf = io.BytesIO()
    torch.save(model, buf)  # the sparsifier's closures are not part of the model
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    twin = copy.deepcopy(model)
    for other in (loaded, twin):
        assert other[0].dense_grad_request is None
        torch.testing.assert_close(other(x), model(x))
    # the copy's backward never reaches the original's sparsifier, even at a capture step
    captured = []
    layer.dense_grad_sink = lambda gyt, xx: captured.append(1)
    layer.dense_grad_request = lambda: True
    twin(x).sum().backward()
    assert captured == [] and twin[0].values.grad is not None
    assert model[0].dense_grad_request is not None  # the original is untouched


def test_a_masked_checkpoint_loads_into_a_sparse_model():
    dense, _, _, x = _trained_mlp(st.SET(density=0.3, update_interval=2), sparse=False, rows=5, total=10, momentum=0.0)
    target = to_sparse(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))
    target.load_state_dict(dense.state_dict())
    torch.testing.assert_close(target(x), dense(x))
    w = dense[0].weight.detach()
    assert target[0].nnz == int((w != 0).sum()) and torch.equal(target[0].dense_weight(), w)
    # and back: a truly sparse model's function as a dense state_dict
    back = to_dense(copy.deepcopy(target))
    torch.testing.assert_close(back(x), dense(x))
    with pytest.raises(InputError, match=r"0\.weight.*\(16, 8\).*\(16, 9\)"):
        to_sparse(nn.Sequential(nn.Linear(9, 16), nn.ReLU(), nn.Linear(16, 4))).load_state_dict(dense.state_dict())


def _mlp():
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 5))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("method", ["mest-soft", "snfs"])
def test_a_layer_outgrowing_its_capacity_keeps_training_in_an_ordinary_loop(method, optimizer):
    """MEST's soft bound and SNFS's redistribution grow layers past their compressed capacity:
    ``values`` is reallocated while the previous step's graph (``loss``) is still alive."""

    def algorithm():
        if method == "snfs":
            return st.SNFS(density=0.1, update_interval=5, seed=0)
        return st.MEST(density=0.1, memory_bound="soft", update_interval=5, seed=0)

    runs = {}
    for kind in ("masked", "sparse"):
        torch.manual_seed(0)
        model = _mlp()
        if kind == "sparse":
            to_sparse(model)
        opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if optimizer == "sgd"
               else torch.optim.Adam(model.parameters(), lr=1e-2))
        sp = st.Sparsifier(model, opt, algorithm(), total_steps=40)
        g = torch.Generator().manual_seed(1)
        masks = []
        modules = dict(model.named_modules())
        start = {n: modules[n[: -len(".weight")]].capacity for n in sp.layers} if kind == "sparse" else {}
        for step in range(1, 31):
            x, y = torch.randn(16, 20, generator=g), torch.randint(0, 5, (16,), generator=g)
            loss = nn.functional.cross_entropy(model(x), y)  # the previous `loss` is alive here
            loss.backward()
            opt.step()
            opt.zero_grad()
            if step % 5 == 0:
                masks.append({n: m.clone() for n, m in sp.masks.items()})
            if kind == "sparse":
                for name, layer in sp.layers.items():
                    m = modules[name[: -len(".weight")]]
                    assert m.nnz == layer.n_active and torch.equal(m.mask(), layer.mask)
                    for v in opt.state[m.values].values():
                        if torch.is_tensor(v) and v.dim():
                            assert v.shape == m.values.shape and not v[m.nnz:].any()
                    assert not m.values.detach()[m.nnz:].any()
        if kind == "sparse":  # the case in question happened: some layer was reallocated larger
            assert any(modules[n[: -len(".weight")]].capacity > start[n] for n in sp.layers)
        runs[kind] = masks
    for a, b in zip(runs["masked"], runs["sparse"]):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_conversion_arguments_are_checked_where_they_enter():
    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

    with pytest.raises(InputError, match=r"'0\.wieght'.*0\.weight"):  # a typo is not silently ignored
        to_sparse(mlp(), masks={"0.wieght": torch.ones(16, 8, dtype=torch.bool)})
    with pytest.raises(InputError, match=r"mask of shape \(8, 16\).*\(16, 8\)"):
        to_sparse(mlp(), masks={"0.weight": torch.ones(8, 16, dtype=torch.bool)})
    with pytest.raises(InputError, match="bool"):
        to_sparse(mlp(), masks={"0.weight": torch.rand(16, 8)})
    for dtype in (torch.float32, torch.int16):
        with pytest.raises(InputError, match="index_dtype"):
            to_sparse(mlp(), index_dtype=dtype)
    # a 0/1 mask of another dtype is a mask
    model = to_sparse(mlp(), masks={"0.weight": (torch.rand(16, 8) < 0.3).float()})
    assert model[0].nnz < 128
    # masks of layers that are not converted (a conv of a masked run's sp.masks) are fine
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 4))
    to_sparse(conv, masks={"0.weight": torch.ones(2, 1, 3, 3, dtype=torch.bool)})


def test_converting_a_model_a_sparsifier_already_holds_is_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = st.Sparsifier(model, opt, st.SET(density=0.3, update_interval=2), total_steps=10)
    # the optimizer and the Sparsifier would keep training the old weights, not the new layers
    with pytest.raises(InputError, match="before creating the optimizer"):
        to_sparse(model)
    assert type(model[0]) is nn.Linear
    sp.remove()
    to_sparse(model)  # once it is removed, converting is the user's call
    assert isinstance(model[0], SparseLinear)


def test_an_input_on_another_device_is_named():
    _, sp, _ = _pair()
    with pytest.raises(InputError, match=r"on cpu but got an input on meta.*\.to\("):
        sp(torch.randn(2, 13, device="meta"))


def test_zero_input_features_give_the_bias_like_nn_linear():
    torch.manual_seed(0)
    lin = nn.Linear(0, 4)
    sp = SparseLinear.from_linear(lin, mask=torch.zeros(4, 0, dtype=torch.bool))
    x = torch.randn(3, 0)
    torch.testing.assert_close(sp(x), lin(x))
    torch.testing.assert_close(sp(torch.randn(2, 3, 0)), lin(torch.randn(2, 3, 0)))


def test_a_compressed_checkpoint_loads_into_a_dense_model(tmp_path):
    model, sp, opt, x = _trained_sparse_mlp()
    path = tmp_path / "model.pt"
    st.sparse.save_compressed(model, path)
    dense = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    dense.load_state_dict(st.sparse.load_compressed(path, dense=True))
    torch.testing.assert_close(dense(x), model(x))
    again = to_sparse(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))
    again.load_state_dict(st.sparse.load_compressed(path, dense=True))  # and into a sparse model
    torch.testing.assert_close(again(x), model(x))
    assert again[0].nnz == model[0].nnz or again[0].nnz == int((model[0].dense_weight() != 0).sum())


def test_a_converted_model_never_given_a_mask_loads_into_a_dense_model(tmp_path):
    # its layers hold every position and no CSR yet: the saved shape used to read as [-1, -1]
    torch.manual_seed(0)
    model = to_sparse(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))
    path = tmp_path / "fresh.pt"
    st.sparse.save_compressed(model, path)
    dense = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    dense.load_state_dict(st.sparse.load_compressed(path, dense=True))
    x = torch.randn(3, 8)
    torch.testing.assert_close(dense(x), model(x))
    again = to_sparse(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))
    again.load_state_dict(st.sparse.load_compressed(path))  # the weights were cut to nothing before
    torch.testing.assert_close(again(x), model(x))
    st.sparse.save_compressed(model.state_dict(), path)  # from a state dict: the bias gives the rows
    dense.load_state_dict(st.sparse.load_compressed(path, dense=True))
    torch.testing.assert_close(dense(x), model(x))


def test_a_compiled_model_trains_like_the_eager_one():
    """torch.compile breaks the graph at each SparseLinear (its kernels and autotuning run eagerly)."""
    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = to_sparse(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sp = st.Sparsifier(model, opt, st.RigL(density=0.3, update_interval=2, seed=0), total_steps=10)
        run = torch.compile(model, backend="aot_eager") if compiled else model
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            run(torch.randn(3, 8, generator=g)).square().sum().backward()
            opt.step()
            opt.zero_grad()
        runs.append((sp.masks, [p.detach().clone() for p in model.parameters()]))
    (m1, p1), (m2, p2) = runs
    assert all(torch.equal(m1[k], m2[k]) for k in m1)
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b)
