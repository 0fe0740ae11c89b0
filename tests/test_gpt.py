"""sparsetrain.experiments.gpt: the GPT-style decoder, sparse in the right places, truly sparse projections."""

import pytest
import torch
from torch import nn

import sparsetrain as st
from sparsetrain.experiments.gpt import GPT, GPTConfig
from sparsetrain.experiments.models import build_model, model_context
from sparsetrain.sparse import SparseLinear, to_sparse

MICRO = GPTConfig(layers=2, width=16, heads=2, context=12, vocab=32)


def _gpt(seed=0, cfg=MICRO):
    torch.manual_seed(seed)
    return GPT(cfg)


def test_shapes_tied_head_and_registry():
    m = _gpt()
    assert m.head.weight is m.tok.weight
    assert m(torch.randint(0, 32, (3, 7))).shape == (3, 7, 32)
    mini = build_model("gpt-mini", 1, 256, 0)
    assert model_context("gpt-mini") == 128 and model_context("mlp") is None
    blocks = sum(p.numel() for n, p in mini.named_parameters() if n.startswith("blocks") and p.dim() == 2)
    assert blocks == 4 * 12 * 128 * 128  # qkv 3d², proj d², MLP 8d² per layer
    assert sum(p.numel() for p in mini.parameters()) == 842_496
    with pytest.raises(ValueError, match="longer than the model's context"):
        m(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible by heads"):
        GPTConfig(width=10, heads=4)


def test_causal_the_future_does_not_change_the_past():
    m = _gpt().eval()
    x = torch.randint(0, 32, (2, 10))
    y = x.clone()
    y[:, 6:] = torch.randint(0, 32, (2, 4))
    assert torch.allclose(m(x)[:, :6], m(y)[:, :6], atol=1e-6)


def test_default_selection_is_the_projections_only():
    m = _gpt()
    sp = st.Sparsifier(m, torch.optim.AdamW(m.parameters()), st.RigL(density=0.1), total_steps=1000)
    assert sorted(sp.layers) == sorted(f"blocks.{i}.{k}.weight" for i in range(2)
                                       for k in ("attn.qkv", "attn.proj", "fc", "out"))
    text = sp.summary()
    assert "tok.weight" in text and "embedding, tied to head.weight" in text and "pos.weight" in text
    sp.remove()


def test_flops_fraction_counts_attention_dense_and_the_tied_head():
    m = _gpt()
    sp = st.Sparsifier(m, torch.optim.AdamW(m.parameters()), st.Static(density=0.1), total_steps=10)
    r = st.flops(m, torch.randint(0, 32, (1, 12)), masks=sp.masks)
    t, d = 12, 16
    assert r.attention == {f"blocks.{i}.attn": 2 * t * t * d for i in range(2)}
    weights = 2 * t * 12 * d * d
    assert r.dense == weights + t * 32 * d + 2 * (2 * t * t * d)  # projections, head, attention
    assert r.sparse == t * sp.metrics()["active"] + t * 32 * d + 2 * (2 * t * t * d)
    sp.remove()


@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 7), (2, 2, 3, 7)])
def test_sparse_linear_takes_any_leading_shape_with_correct_gradients(shape):
    torch.manual_seed(0)
    lin = nn.Linear(7, 4)
    mask = torch.rand(4, 7) < 0.4
    with torch.no_grad():
        lin.weight.mul_(mask)
    sl = SparseLinear.from_linear(lin, mask=mask)
    x1 = torch.randn(*shape, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    g = torch.randn(*shape[:-1], 4)
    y1, y2 = lin(x1), sl(x2)
    assert y2.shape == y1.shape and torch.allclose(y1, y2, atol=1e-6)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)
    assert torch.allclose(lin.weight.grad[mask], sl.values.grad, atol=1e-5)
    assert torch.allclose(lin.bias.grad, sl.bias.grad, atol=1e-5)


def _train_gpt(truly_sparse: bool, steps=12):
    m = _gpt(seed=1)
    if truly_sparse:
        to_sparse(m)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    sp = st.Sparsifier(m, opt, st.RigL(density=0.3, update_interval=4, seed=2), total_steps=steps)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        x = torch.randint(0, 32, (4, 13), generator=g)
        logits = m(x[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, 32), x[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return m, sp, losses


def test_truly_sparse_gpt_trains_like_the_masked_one():
    mm, spm, lm = _train_gpt(False)
    ms, sps, ls = _train_gpt(True)
    converted = [n for n, mod in ms.named_modules() if isinstance(mod, SparseLinear)]
    assert len(converted) == 8 and isinstance(ms.head, nn.Linear) and ms.head.weight is ms.tok.weight
    assert sorted(spm.layers) == sorted(sps.layers) and spm.updates == sps.updates == 2
    for n in spm.masks:
        assert torch.equal(spm.masks[n], sps.masks[n]), n
        assert torch.allclose(spm.layers[n].param.detach(), sps.layers[n].sparse_module.dense_weight(), atol=1e-5), n
    assert lm == pytest.approx(ls, abs=1e-4)
