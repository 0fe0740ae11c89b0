import copy

import pytest
import torch
from torch import nn

import sparsetrain as st
from sparsetrain.algorithms.snip import SNIP, GraSP


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


def _batch(n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 20, generator=g), torch.randint(0, 5, (n,), generator=g)


def _sparsifier(alg, model=None, opt="sgd", **kw):
    model = model if model is not None else _model()
    if opt == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    return st.Sparsifier(model, optimizer, alg, **kw), model, optimizer


def _lowest(values, k):
    return set(torch.topk(values, k, largest=False).indices.tolist())


# -- SNIP ------------------------------------------------------------------------------------
def test_snip_keeps_the_top_sensitivity_on_a_hand_made_case():
    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -0.1, 0.5, 2.0]]))
    x, y = torch.tensor([[1.0, 20.0, 1.0, 0.1]]), torch.zeros(1, 1)
    # out = -0.3, dL/dout = -0.6, g = -0.6 x = [-0.6, -12, -0.6, -0.06], |g w| = [0.6, 1.2, 0.3, 0.12]
    alg = SNIP(0.5, batch=(x, y), loss_fn=nn.functional.mse_loss)
    scores = alg.scores(model, [("0.weight", model[0].weight)])["0.weight"]
    assert torch.allclose(scores, torch.tensor([[0.6, 1.2, 0.3, 0.12]]))
    sp, _, _ = _sparsifier(alg, model=model)
    # the two most sensitive weights, not the two largest (0 and 3) nor the largest gradients alone
    assert sp.masks["0.weight"].tolist() == [[True, True, False, False]]
    assert torch.equal(model[0].weight.detach(), torch.tensor([[1.0, -0.1, 0.0, 0.0]]))


def test_snip_ranks_globally_and_matches_backward():
    model = _model()
    x, y = _batch()
    reference = copy.deepcopy(model)
    nn.functional.cross_entropy(reference(x), y).backward()
    expected = {n: (p.grad * p).abs() for n, p in reference.named_parameters() if n.endswith("weight")}
    sp, model, _ = _sparsifier(SNIP(0.1, batch=(x, y)), model=model)
    allscores = torch.cat([expected[n].flatten() for n in sp.layers])
    k = round(0.1 * allscores.numel())
    threshold = torch.topk(allscores, k).values.min()
    for n, layer in sp.layers.items():
        assert torch.equal(layer.mask, expected[n] >= threshold), n
    assert sum(l.n_active for l in sp.layers.values()) == k
    # not uniform: the global ranking sets its own per-layer densities
    assert len({round(l.density, 3) for l in sp.layers.values()}) == 3


def test_several_batches_sum_the_gradients_and_num_batches_limits_them():
    model = _model()
    b1, b2 = _batch(seed=1), _batch(seed=2)
    named = [(n, p) for n, p in model.named_parameters() if n.endswith("weight")]
    params = [p for _, p in named]
    g1 = torch.autograd.grad(nn.functional.cross_entropy(model(b1[0]), b1[1]), params)
    g2 = torch.autograd.grad(nn.functional.cross_entropy(model(b2[0]), b2[1]), params)
    both = SNIP(0.1, batch=[b1, b2]).scores(model, named)
    first = SNIP(0.1, batch=iter([b1, b2]), num_batches=1).scores(model, named)
    for (n, p), a, b in zip(named, g1, g2):
        assert torch.allclose(both[n], ((a + b) * p).abs(), atol=1e-7)
        assert torch.allclose(first[n], (a * p).abs(), atol=1e-7)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*_batch(64)), batch_size=16)
    assert SNIP(0.1, batch=loader, num_batches=2).batches(torch.device("cpu"))[1][0].shape == (16, 20)


# -- GraSP -----------------------------------------------------------------------------------
def test_grasp_score_matches_the_hand_computed_hessian_gradient_product():
    # f = b * (a * x), x = 1, y = 0, L = (a b)^2: g = (2ab^2, 2a^2b),
    # H = [[2b^2, 4ab], [4ab, 2a^2]], score = -w * (H g) = -(4a^2b^4 + 8a^4b^2, 8a^2b^4 + 4a^4b^2)
    a, b = 0.5, -1.5
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(a)
        model[1].weight.fill_(b)
    alg = GraSP(0.5, batch=(torch.ones(1, 1), torch.zeros(1, 1)), loss_fn=nn.functional.mse_loss, temperature=1.0)
    s = alg.scores(model, list(model.named_parameters()))
    assert s["0.weight"].item() == pytest.approx(-(4 * a**2 * b**4 + 8 * a**4 * b**2))
    assert s["1.weight"].item() == pytest.approx(-(8 * a**2 * b**4 + 4 * a**4 * b**2))


def test_grasp_score_matches_an_explicit_hessian_on_a_tiny_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    names = ["0.weight", "2.weight"]
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    flat0 = torch.cat([params[n].detach().flatten() for n in names])

    def loss(flat):
        parts, i = {}, 0
        for n, shape in zip(names, shapes):
            parts[n] = flat[i:i + shape.numel()].view(shape)
            i += shape.numel()
        out = torch.func.functional_call(model, {**{k: v.detach() for k, v in params.items()}, **parts}, (x,))
        return nn.functional.cross_entropy(out / 200.0, y)

    g = torch.func.grad(loss)(flat0)
    hessian = torch.autograd.functional.hessian(loss, flat0)
    expected = -(flat0 * (hessian @ g))
    got = GraSP(0.5, batch=(x, y)).scores(model, [(n, params[n]) for n in names])
    assert torch.allclose(torch.cat([got[n].flatten() for n in names]), expected, rtol=1e-4, atol=1e-12)


def test_grasp_keeps_the_lowest_scores_globally():
    model = _model()
    x, y = _batch()
    alg = GraSP(0.2, batch=(x, y))
    named = [(n, p) for n, p in model.named_parameters() if n.endswith("weight")]
    scores = alg.scores(model, named)
    sp, _, _ = _sparsifier(alg, model=model)
    flat = torch.cat([scores[n].flatten() for n, _ in named])
    kept = torch.cat([sp.masks[n].flatten() for n, _ in named])
    k = round(0.2 * flat.numel())
    assert int(kept.sum()) == k
    assert set(torch.nonzero(kept).flatten().tolist()) == _lowest(flat, k)


# -- options and invariants ------------------------------------------------------------------
@pytest.mark.parametrize("cls", [SNIP, GraSP])
def test_random_positions_keep_the_per_layer_counts(cls):
    x, y = _batch()
    scored, _, _ = _sparsifier(cls(0.1, batch=(x, y)))
    rand1, _, _ = _sparsifier(cls(0.1, batch=(x, y), positions="random", seed=5))
    rand2, _, _ = _sparsifier(cls(0.1, batch=(x, y), positions="random", seed=5))
    for n in scored.layers:
        assert scored.layers[n].n_active == rand1.layers[n].n_active
        assert torch.equal(rand1.masks[n], rand2.masks[n])
    assert any(not torch.equal(scored.masks[n], rand1.masks[n]) for n in scored.layers)


@pytest.mark.parametrize("cls", [SNIP, GraSP])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_static_mask_and_invariants_while_training(cls, opt):
    x, y = _batch()
    sp, model, optimizer = _sparsifier(cls(0.1, batch=(x, y)), opt=opt)
    masks = {n: m.clone() for n, m in sp.masks.items()}
    for i in range(6):
        xb, yb = _batch(seed=10 + i)
        nn.functional.cross_entropy(model(xb), yb).backward()
        optimizer.step()
        optimizer.zero_grad()
        for layer in sp.layers.values():
            assert bool((layer.param.detach()[~layer.mask] == 0).all())
            for v in optimizer.state[layer.param].values():
                if torch.is_tensor(v) and v.shape == layer.param.shape:
                    assert bool((v[~layer.mask] == 0).all())
    assert sp.updates == 0 and all(torch.equal(masks[n], sp.masks[n]) for n in masks)
    assert sp.itop_rate == pytest.approx(0.1, abs=1e-3)


def test_model_is_restored_after_scoring():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 5))
    model.eval()
    model[3].train()  # mixed modes survive too
    modes = [m.training for m in model.modules()]
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    x, y = _batch()
    for cls in (SNIP, GraSP):
        sp, _, _ = _sparsifier(cls(0.3, batch=(x, y)), model=model)
        sp.remove()
        assert [m.training for m in model.modules()] == modes
        assert all(p.grad is None for p in model.parameters())
        after = model.state_dict()
        for k, v in before.items():
            if k in sp.layers:
                assert torch.equal(after[k][sp.masks[k]], v[sp.masks[k]])
            else:  # biases, BatchNorm affine and running statistics
                assert torch.equal(after[k], v), k
        assert torch.equal(torch.get_rng_state(), rng)
        model.load_state_dict(before)


def test_pinned_layers_stay_dense_and_the_global_count_is_exact():
    x, y = _batch()
    sp, _, _ = _sparsifier(SNIP(0.3, batch=(x, y)), dense=["4.weight"])
    assert sp.layers["4.weight"].is_dense
    assert sum(l.n_active for l in sp.layers.values()) == round(0.3 * 2150)


@pytest.mark.parametrize("cls", [SNIP, GraSP])
def test_missing_or_bad_arguments_fail_clearly(cls):
    name = cls.__name__
    with pytest.raises(ValueError, match=rf"{name} needs a batch: {name}\(density, batch=\(x, y\)\)"):
        cls(0.1)
    x, y = _batch()
    with pytest.raises(ValueError, match="scored, random"):
        cls(0.1, batch=(x, y), positions="top")
    with pytest.raises(ValueError, match="num_batches"):
        cls(0.1, batch=(x, y), num_batches=0)
    with pytest.raises(TypeError, match="loss_fn"):
        cls(0.1, batch=(x, y), loss_fn=3)
    with pytest.raises(TypeError, match="batch must be"):
        cls(0.1, batch=5)
    with pytest.raises(ValueError, match="no batch"):
        _sparsifier(cls(0.1, batch=[]))
    with pytest.raises(ValueError, match="density"):
        cls(1.5, batch=(x, y))


def test_grasp_temperature_and_configs():
    x, y = _batch()
    with pytest.raises(ValueError, match="temperature"):
        GraSP(0.1, batch=(x, y), temperature=0)
    cfg = GraSP(0.1, batch=(x, y)).config()
    assert cfg["name"] == "grasp" and cfg["temperature"] == 200.0 and cfg["positions"] == "scored"
    assert cfg["loss_fn"] == "cross_entropy" and "update_interval" not in cfg
    assert all(isinstance(v, (int, float, str, dict, type(None))) for v in cfg.values())
    assert not SNIP.dynamic and not GraSP.dynamic and SNIP.needs_batch and GraSP.needs_batch


class _Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 6, batch_first=True)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


def test_recurrent_models_are_scored_and_on_cuda_without_cudnn_rnn_kernels():
    import contextlib

    from sparsetrain.algorithms.snip import _without_cudnn_rnn

    torch.manual_seed(0)
    model, x, y = _Tagger(), torch.randn(8, 5, 4), torch.randint(0, 3, (8,))
    for alg in (SNIP(0.3, batch=(x, y), train_mode=False), GraSP(0.3, batch=(x, y))):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sp = st.Sparsifier(model, opt, alg)  # the LSTM's weights are scored (sparse by default)
        assert {"rnn.weight_ih_l0", "rnn.weight_hh_l0"} <= set(sp.masks) and abs(sp.density - 0.3) < 1 / 258
        sp.remove()
    # cuDNN has no double backward for RNNs (GraSP) and no eval-mode backward (SNIP): off for scoring
    assert not isinstance(_without_cudnn_rnn(model, torch.device("cuda")), contextlib.nullcontext)
    assert isinstance(_without_cudnn_rnn(model, torch.device("cpu")), contextlib.nullcontext)
    assert isinstance(_without_cudnn_rnn(nn.Linear(2, 2), torch.device("cuda")), contextlib.nullcontext)


def test_the_default_loss_that_does_not_fit_a_language_model_names_loss_fn():
    torch.manual_seed(0)

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc = nn.Embedding(20, 8), nn.Linear(8, 20)

        def forward(self, x):
            return self.fc(self.emb(x))  # (B, T, V)

    x = torch.randint(0, 20, (4, 10))
    model = LM()
    with pytest.raises(ValueError, match="loss_fn=.*flatten"):  # was torch's "Expected target size"
        st.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), SNIP(0.3, batch=(x, x)))
    fit = SNIP(0.3, batch=(x, x), loss_fn=lambda out, y: nn.functional.cross_entropy(out.flatten(0, 1), y.flatten()))
    sp = st.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), fit)
    assert abs(sp.density - 0.3) < 0.01


def test_a_batch_of_keyword_inputs_is_scored_like_its_tensor_form():
    """A Hugging Face batch is a mapping of keyword inputs: ``(mapping, y)`` was refused ("every batch must be an
    (x, y) pair, got dict") and ``[(mapping, y)]`` failed inside the model."""

    class Net(nn.Module):
        def __init__(self, logits_dict=False):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
            self.logits_dict = logits_dict

        def forward(self, inputs):
            out = self.net(inputs)
            return {"logits": out} if self.logits_dict else out

    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))

    def masks(batch, **kw):
        m = Net(**kw)
        return st.Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), st.SNIP(density=0.3, batch=batch)).masks

    ref = masks((x, y))
    for batch in (({"inputs": x}, y), [({"inputs": x}, y)]):
        got = masks(batch)
        assert all(torch.equal(got[n], ref[n]) for n in ref)
    assert all(0 < int(ref[n].sum()) < ref[n].numel() for n in ref)
    # a mapping alone (targets inside it) is one batch, and a list of mappings several: loss_fn(output, None)
    def masks_of(batch):
        m = Net()
        alg = st.SNIP(density=0.3, batch=batch, loss_fn=lambda out, y: out.pow(2).mean())
        return st.Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), alg).masks

    one, two = masks_of({"inputs": x}), masks_of([{"inputs": x}, {"inputs": x}])
    assert all(torch.equal(one[n], two[n]) for n in one)  # the same batch twice ranks the same
    m = Net(logits_dict=True)
    with pytest.raises(st.InputError, match="GraSP divides the model's output by its temperature"):
        st.Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), st.GraSP(density=0.3, batch=({"inputs": x}, y)))
