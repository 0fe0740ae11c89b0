"""sparsetrain.capture: the dense gradient of an update step, summed over micro-batches, at the
optimizer's scale, checked for finiteness."""

import warnings

import torch
from torch import nn

import sparsetrain as st


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sp = st.Sparsifier(model, opt, st.RigL(density=0.4, update_interval=1, end=None), total_steps=10)
    return model, opt, sp, sp.layers["0.weight"]


def test_micro_batches_sum_and_zero_grad_starts_afresh():
    model, opt, sp, layer = _setup()
    x1, x2 = torch.randn(3, 6), torch.randn(3, 6)
    model(torch.randn(3, 6)).sum().backward()  # a stale backward, then zero_grad
    opt.zero_grad()
    model(x1).sum().backward()
    model(x2).sum().backward()
    ref = nn.Linear(6, 5)
    ref.load_state_dict(model[0].state_dict())
    (ref(x1).sum() + ref(x2).sum()).backward()
    assert torch.allclose(layer.grad_buffer, ref.weight.grad)  # dense: masked positions included
    assert torch.all(model[0].weight.grad[~layer.mask] == 0)  # what the optimizer sees is masked


def test_clipping_is_propagated_and_a_nonfinite_gradient_skips_the_update(monkeypatch):
    import sparsetrain.sparsifier as sparsifier_mod

    model, opt, sp, layer = _setup()
    model(torch.randn(3, 6)).sum().backward()
    dense = layer.grad_buffer.clone()
    nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
    captured = {}
    orig = sparsifier_mod.run_update

    def spy(sp_, rule):
        captured["buf"] = layer.grad_buffer.clone()
        return orig(sp_, rule)

    monkeypatch.setattr(sparsifier_mod, "run_update", spy)
    opt.step()
    ratio = captured["buf"].norm() / dense.norm()
    assert torch.allclose(captured["buf"], dense * ratio) and float(ratio) < 1
    opt.zero_grad()
    (model(torch.randn(3, 6)).sum() * float("nan")).backward()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        opt.step()
    assert sp.history[-1]["skipped"] == "non-finite gradient" and any("non-finite" in str(x.message) for x in w)


def test_an_update_without_any_gradient_is_skipped_and_one_missing_layer_is_named():
    model, opt, sp, layer = _setup()
    model(torch.randn(3, 6)).sum().backward()
    opt.step()
    opt.zero_grad()
    assert sp.updates == 1 and "skipped" not in sp.history[-1]
    masks = sp.masks["0.weight"].clone()
    with warnings.catch_warnings(record=True) as w:  # optimizer.step() with no backward: was a normal update
        warnings.simplefilter("always")
        opt.step()
    assert sp.history[-1]["skipped"] == "no gradient" and sp.updates == 1 and sp.step == 2
    assert torch.equal(sp.masks["0.weight"], masks)
    assert any("no sparse layer received a gradient" in str(x.message) and "loss.backward()" in str(x.message)
               for x in w)
    torch.manual_seed(0)  # two layers, one unused in the forward: its topology kept, named in the record
    two = nn.ModuleDict({"used": nn.Linear(6, 5), "unused": nn.Linear(6, 5)})
    opt2 = torch.optim.SGD(two.parameters(), lr=0.0)
    sp2 = st.Sparsifier(two, opt2, st.RigL(density=0.4, update_interval=1, end=None), total_steps=10)
    two["used"](torch.randn(3, 6)).sum().backward()
    opt2.step()
    assert sp2.updates == 1 and sp2.history[-1]["no_gradient"] == ["unused.weight"]
    assert "unused.weight" not in sp2.history[-1]["layers"] and "used.weight" in sp2.history[-1]["layers"]
