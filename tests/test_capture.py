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

    def spy(sp_, rule, manual=False):
        captured["buf"] = layer.grad_buffer.clone()
        return orig(sp_, rule, manual)

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


def _dense_grad(model, x):
    """The unmasked gradient of ``model(x).pow(2).sum()`` (a hook-free copy of the layer)."""
    ref = nn.Linear(6, 5)
    ref.load_state_dict(model[0].state_dict())
    ref(x).pow(2).sum().backward()
    return ref.weight.grad


def test_a_torch_autograd_grad_probe_between_backward_and_step_is_not_captured():
    """A gradient penalty or probe with ``torch.autograd.grad`` after ``backward()`` runs the gradient hooks too;
    it used to be added to the growth gradient."""
    model, opt, sp, layer = _setup()
    x = torch.randn(3, 6)
    opt.zero_grad()
    model(x).pow(2).sum().backward()
    torch.autograd.grad(model(torch.randn(3, 6)).sum() * 100, [model[0].weight])
    assert torch.allclose(layer.grad_buffer, _dense_grad(model, x))


def test_an_assigned_grad_is_masked_and_captured():
    """``p.grad = g`` instead of ``backward()``: the optimizer used to see an unmasked gradient and growth none."""
    model, opt, sp, layer = _setup()
    x = torch.randn(3, 6)
    dense = _dense_grad(model, x)
    # from torch.autograd.grad (through the hooks, so g is masked): growth ranks the dense gradient the hooks saw
    opt.zero_grad()
    (g,) = torch.autograd.grad(model(x).pow(2).sum(), [model[0].weight])
    assert torch.all(g[~layer.mask] == 0)
    model[0].weight.grad, model[0].bias.grad = g, torch.zeros(5)
    sp._pre_step(opt, (), {})
    assert torch.allclose(layer.grad_buffer, dense)
    # from elsewhere (dense as given): masked before the step, and taken as the growth gradient
    model2, opt2, sp2, layer2 = _setup()
    model2[0].weight.grad, model2[0].bias.grad = dense.clone(), torch.zeros(5)
    sp2._pre_step(opt2, (), {})
    assert torch.equal(layer2.grad_buffer, dense)
    assert torch.all(model2[0].weight.grad[~layer2.mask] == 0)
    assert torch.equal(model2[0].weight.grad[layer2.mask], dense[layer2.mask])
    # and an update follows it like one after backward()
    model3, opt3, sp3, layer3 = _setup()
    opt3.zero_grad()
    model3(x).pow(2).sum().backward()
    opt.step()
    opt2.step()
    opt3.step()
    assert sp.updates == sp2.updates == sp3.updates == 1
    assert torch.equal(layer.mask, layer3.mask) and torch.equal(layer2.mask, layer3.mask)


def test_a_closure_that_assigns_grad_gets_the_dense_gradient_it_computed():
    """The step pre-hook runs before the closure (LBFGS style): the gradient a closure assigns from
    ``torch.autograd.grad`` is adopted after the step, before the update, not the previous step's ``.grad``."""
    def run(assign):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 16))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        sp = st.Sparsifier(model, opt, st.RigL(density=0.2, update_interval=2, end=None, drop_fraction=0.3),
                           total_steps=50)
        params, x = list(model.parameters()), torch.randn(8, 16)

        def closure():
            opt.zero_grad()
            loss = model(x).pow(2).mean()
            if assign:
                for p, g in zip(params, torch.autograd.grad(loss, params)):
                    p.grad = g
            else:
                loss.backward()
            return loss

        for _ in range(6):
            opt.step(closure)
        return sp

    assigned, backward = run(True), run(False)
    assert assigned.updates == backward.updates == 3
    assert not any(h.get("skipped") for h in assigned.history)
    assert torch.equal(assigned.layers["0.weight"].mask, backward.layers["0.weight"].mask)


def test_an_assigned_grad_at_a_reused_address_is_still_seen():
    """``zero_grad()`` frees ``.grad`` and the next assigned tensor often gets its memory: the check is by tensor
    identity, not by address (by address, some steps' gradients were neither masked nor captured)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sp = st.Sparsifier(model, opt, st.RigL(density=0.4, update_interval=1, end=None), total_steps=100)
    layer = sp.layers["0.weight"]
    for _ in range(20):
        opt.zero_grad()
        g = torch.randn(5, 6)
        model[0].weight.grad, model[0].bias.grad = g, torch.zeros(5)
        mask = layer.mask.clone()
        sp._pre_step(opt, (), {})
        assert torch.all(g[~mask] == 0)
        opt.step()
    assert sp.updates == 20 and not any(h.get("skipped") for h in sp.history)
