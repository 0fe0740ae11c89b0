"""Behavioural tests of the Sparsifier: invariants for every optimizer, growth from dense
gradients, gradient accumulation, GradScaler, odd parameter layouts, errors, metrics, state.

Every test is seeded and uses models with tens of units, so the file runs in seconds.
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from torch import nn

import sparsetrain as st
from sparsetrain.testing import assert_invariants

# ----------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: intra-op threads only add overhead (and thrash on a busy 2-core machine)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "sgd_wd": lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=0.05),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adam_amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True, weight_decay=1e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.9, centered=True, weight_decay=1e-3),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.05, initial_accumulator_value=0.1),
    "adamax": lambda p: torch.optim.Adamax(p, lr=1e-2),
    "nadam": lambda p: torch.optim.NAdam(p, lr=1e-2),
    "radam": lambda p: torch.optim.RAdam(p, lr=1e-2),
}
# optimizers that keep no weight-shaped state
STATELESS = {"sgd", "sgd_wd"}

ALGOS = {
    "static": lambda d, **kw: st.Static(density=d),
    "set": lambda d, **kw: st.SET(density=d, **kw),
    "rigl": lambda d, **kw: st.RigL(density=d, **kw),
}


class Net(nn.Module):
    """A small CNN + MLP: 2 convs with BatchNorm, 2 linears."""

    def __init__(self, n_out: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8 * 3 * 3, 24)
        self.fc2 = nn.Linear(24, n_out)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def mlp(seed=0, sizes=(12, 20, 16, 4), bias=True, dtype=torch.float32):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers).to(dtype)


def net_batch(step: int, n: int = 6):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 5, (n,), generator=g)


def mlp_batch(step: int, n: int = 8, d_in: int = 12, n_out: int = 4, dtype=torch.float32):
    g = torch.Generator().manual_seed(2000 + step)
    return torch.randn(n, d_in, generator=g, dtype=dtype), torch.randint(0, n_out, (n,), generator=g)


def weight_state(opt, param):
    """Optimizer-state tensors shaped like ``param``."""
    return {k: v for k, v in opt.state.get(param, {}).items() if torch.is_tensor(v) and v.shape == param.shape}


def check_invariants(sp, opt, counts, density=None):
    """Spec §1.5 after an optimizer step; returns how many optimizer-state tensors were checked."""
    assert all(torch.equal(sp.masks[n], l.mask) for n, l in sp.layers.items())
    return assert_invariants(sp, opt, counts, density)


def masks_of(sp):
    return {n: m.clone() for n, m in sp.masks.items()}


def spy_updates(sp):
    """Record, at each topology update, the (post-step, pre-update) weights, masks and state."""
    seen = []
    orig = sp._update  # what the step hook calls (sp.update() is the public, by-hand entry)

    def update(*args, **kwargs):
        seen.append({
            "step": sp.step,
            "weights": {n: l.param.detach().clone() for n, l in sp.layers.items()},
            "masks": {n: l.mask.clone() for n, l in sp.layers.items()},
            "state": {n: {k: v.clone() for k, v in weight_state(sp.optimizer, l.param).items()}
                      for n, l in sp.layers.items()},
        })
        return orig(*args, **kwargs)

    sp._update = update
    return seen


def reference_rigl(weight, old_mask, dense_grad, k):
    """Spec §1.4 for RigL: drop the k smallest |w| among active, grow the k largest dense |g|
    among the positions inactive after the drop."""
    w = weight.abs().flatten().masked_fill(~old_mask.flatten(), float("inf"))
    drop = torch.zeros_like(old_mask.flatten())
    drop[torch.topk(w, k, largest=False).indices] = True
    after = old_mask.flatten() & ~drop
    g = dense_grad.abs().flatten().masked_fill(after, float("-inf"))
    grow = torch.zeros_like(drop)
    grow[torch.topk(g, k).indices] = True
    return (after | grow).view_as(old_mask), grow.view_as(old_mask)


def dense_grad_of(model_fn, state, loss_fn, name):
    """The dense gradient of ``name`` computed on a hook-free copy of a model state."""
    ref = model_fn()
    ref.load_state_dict(state)
    loss_fn(ref).backward()
    return dict(ref.named_parameters())[name].grad.detach().clone()


# ----------------------------------------------------------------------------- 1. invariants


@pytest.mark.parametrize("algo", ["set", "rigl"])
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_invariants_after_every_step(opt_name, algo):
    torch.manual_seed(0)
    model = Net()
    opt = OPTIMIZERS[opt_name](model.parameters())
    density = 0.2
    sp = st.Sparsifier(model, opt, ALGOS[algo](density, update_interval=3), total_steps=20)
    counts = {n: l.n_active for n, l in sp.layers.items()}
    assert set(counts) == {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
    first = masks_of(sp)
    check_invariants(sp, opt, counts, density)
    crit = nn.CrossEntropyLoss()
    checked = 0
    for step in range(20):
        x, y = net_batch(step)
        crit(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        assert sp.step == step + 1
        checked += check_invariants(sp, opt, counts, density)
    assert sp.updates == 4  # steps 3, 6, 9, 12 (end = 0.75 * 20 = 15)
    assert [h["step"] for h in sp.history] == [3, 6, 9, 12]
    assert any(not torch.equal(first[n], sp.masks[n]) for n in first), "no update moved any connection"
    if opt_name not in STATELESS:
        assert checked > 0, "no weight-shaped optimizer state was checked"


# ----------------------------------------------------------------------------- 2. random models


@hs.composite
def model_specs(draw):
    return {
        "kind": draw(hs.sampled_from(["linear", "conv1d", "conv2d"])),
        "widths": draw(hs.lists(hs.integers(2, 12), min_size=1, max_size=3)),
        "bn": draw(hs.booleans()),
        "bias": draw(hs.booleans()),
        "seed": draw(hs.integers(0, 2**16)),
    }


def build_random(spec):
    torch.manual_seed(spec["seed"])
    kind, bn, bias = spec["kind"], spec["bn"], spec["bias"]
    layers, c = [], 3
    for w in spec["widths"]:
        if kind == "linear":
            layers += [nn.Linear(c, w, bias=bias)] + ([nn.BatchNorm1d(w)] if bn else [])
        elif kind == "conv1d":
            layers += [nn.Conv1d(c, w, 3, padding=1, bias=bias)] + ([nn.BatchNorm1d(w)] if bn else [])
        else:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=bias)] + ([nn.BatchNorm2d(w)] if bn else [])
        layers.append(nn.ReLU())
        c = w
    if kind == "conv1d":
        layers += [nn.AdaptiveAvgPool1d(1), nn.Flatten()]
    elif kind == "conv2d":
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    layers.append(nn.Linear(c, 3))
    shape = {"linear": (6, 3), "conv1d": (6, 3, 5), "conv2d": (6, 3, 4, 4)}[kind]
    return nn.Sequential(*layers), shape


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    spec=model_specs(),
    opt_name=hs.sampled_from(sorted(OPTIMIZERS)),
    density=hs.floats(0.05, 1.0, exclude_min=True, allow_nan=False),
    algo=hs.sampled_from(sorted(ALGOS)),
)
def test_invariants_random_models(spec, opt_name, density, algo):
    model, shape = build_random(spec)
    opt = OPTIMIZERS[opt_name](model.parameters())
    sp = st.Sparsifier(model, opt, ALGOS[algo](density, update_interval=2, end=None, drop_schedule="constant"),
                       total_steps=6)
    # biases and norm parameters are never sparse by default
    expected = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))}
    assert set(sp.layers) == expected
    counts = {n: l.n_active for n, l in sp.layers.items()}
    total = sum(l.numel for l in sp.layers.values())
    target = round(density * total)
    if all(l.target_density * l.numel >= 1 for l in sp.layers.values()):
        assert sum(counts.values()) == target
    else:  # a layer whose ideal count is below one keeps one weight (never a dead layer)
        assert target <= sum(counts.values()) <= target + len(counts)
    assert all(c >= 1 for c in counts.values())
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(spec["seed"])
    for _ in range(6):
        x = torch.randn(*shape, generator=g)
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        check_invariants(sp, opt, counts)
    assert sp.updates == (2 if algo != "static" else 0)
    for n, p in model.named_parameters():
        if n not in sp.layers:
            assert n.endswith("bias") or isinstance(dict(model.named_modules())[n.rsplit(".", 1)[0]],
                                                    (nn.BatchNorm1d, nn.BatchNorm2d))
            assert not torch.any((p == 0) & (init[n] != 0)), f"{n} is not sparse but was zeroed"


# ----------------------------------------------------------------------------- 3. regrowth init


def _train_with_spy(algo, opt_name="adam", steps=3, seed=0):
    model = mlp(seed)
    opt = OPTIMIZERS[opt_name](model.parameters())
    sp = st.Sparsifier(model, opt, algo, total_steps=10)
    seen = spy_updates(sp)
    crit = nn.CrossEntropyLoss()
    for step in range(steps):
        x, y = mlp_batch(step)
        crit(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return model, opt, sp, seen


@pytest.mark.parametrize("algo_name", ["set", "rigl"])
def test_regrown_weights_start_at_zero_with_fresh_state(algo_name):
    algo = ALGOS[algo_name](0.3, update_interval=3, end=None, drop_schedule="constant", drop_fraction=0.3)
    model, opt, sp, seen = _train_with_spy(algo)
    assert sp.updates == 1 and len(seen) == 1 and seen[0]["step"] == 3
    pre = seen[0]
    n_new = 0
    for name, layer in sp.layers.items():
        old, new = pre["masks"][name], layer.mask
        newly, kept, dropped = new & ~old, new & old, old & ~new
        n_new += int(newly.sum())
        w = layer.param.detach()
        assert torch.all(w[newly] == 0)
        assert torch.all(w[dropped] == 0)
        assert torch.equal(w[kept], pre["weights"][name][kept]), "surviving weights must keep their value"
        state = weight_state(opt, layer.param)
        assert {"exp_avg", "exp_avg_sq"} <= set(state)
        for key, t in state.items():
            assert torch.all(t[newly] == 0), f"{key} of a regrown weight is not fresh"
            assert torch.all(t[dropped] == 0)
            assert torch.equal(t[kept], pre["state"][name][key][kept]), f"{key} of surviving weights changed"
    assert n_new > 0
    # the next step trains the regrown weights
    x, y = mlp_batch(99)
    nn.CrossEntropyLoss()(model(x), y).backward()
    opt.step()
    newly = {n: sp.masks[n] & ~pre["masks"][n] for n in sp.masks}
    assert any(torch.any(sp.layers[n].param.detach()[m] != 0) for n, m in newly.items())


def test_grow_init_init_draws_nonzero_weights():
    algo = st.SET(density=0.3, update_interval=3, end=None, drop_schedule="constant", grow_init="init")
    model, opt, sp, seen = _train_with_spy(algo, opt_name="sgd_momentum")
    pre = seen[0]
    for name, layer in sp.layers.items():
        newly = layer.mask & ~pre["masks"][name]
        kept = layer.mask & pre["masks"][name]
        w = layer.param.detach()
        assert newly.any()
        assert torch.all(w[newly] != 0)
        assert torch.equal(w[kept], pre["weights"][name][kept])
        # drawn from N(0, sigma) with sigma the std of the layer's weights at attach time
        assert float(w[newly].abs().max()) < 6 * layer.init_std
        assert torch.all(weight_state(opt, layer.param)["momentum_buffer"][newly] == 0)


# ----------------------------------------------------------------------------- 4. masked vs dense gradients


def test_optimizer_sees_masked_gradients():
    model = mlp(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = st.Sparsifier(model, opt, st.RigL(density=0.2, update_interval=2, end=None, drop_schedule="constant"))
    crit = nn.CrossEntropyLoss()
    for step in range(4):  # steps 2 and 4 capture the dense gradient for an update, 1 and 3 do not
        x, y = mlp_batch(step)
        loss_fn = lambda m: crit(m(x), y)  # noqa: E731
        state = {k: v.clone() for k, v in model.state_dict().items()}
        loss_fn(model).backward()
        for name, layer in sp.layers.items():
            dense = dense_grad_of(lambda: mlp(1), state, loss_fn, name)
            mask = layer.mask
            assert torch.all(layer.param.grad[~mask] == 0)
            assert torch.equal(layer.param.grad[mask], dense[mask])
            assert torch.any(dense[~mask] != 0)  # the masking did something
        opt.step()
        opt.zero_grad()
    assert sp.updates == 2


def test_rigl_grows_where_the_dense_gradient_is_largest():
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Linear(16, 8, bias=False))  # noqa: E731
    torch.manual_seed(0)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = st.Sparsifier(model, opt, st.RigL(density=0.25, distribution="uniform", update_interval=1, end=None,
                                           drop_schedule="constant", drop_fraction=0.3))
    seen = spy_updates(sp)
    mask = sp.masks["0.weight"]
    i, j = (int(v) for v in (~mask).nonzero()[5])  # an inactive position
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(4, 16, generator=g)
    x[:, j] = 10.0
    c = torch.full((4, 8), 0.01)
    c[:, i] = 1.0
    loss_fn = lambda m: (m(x) * c).sum()  # noqa: E731
    state = {k: v.clone() for k, v in model.state_dict().items()}
    dense = dense_grad_of(make, state, loss_fn, "0.weight")
    assert dense.abs().argmax() == i * 16 + j  # the huge dense gradient sits at an inactive weight
    loss_fn(model).backward()
    opt.step()
    assert sp.updates == 1
    new = sp.masks["0.weight"]
    assert new[i, j], "RigL did not grow the position with by far the largest dense gradient"
    k = round(0.3 * sp.layers["0.weight"].n_active)
    expected, _ = reference_rigl(seen[0]["weights"]["0.weight"], seen[0]["masks"]["0.weight"], dense, k)
    assert torch.equal(new, expected)


# ----------------------------------------------------------------------------- 5. accumulation


def _accum_run(micro: bool, set_to_none: bool = True, steps: int = 3):
    model = mlp(3, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = st.Sparsifier(model, opt, st.RigL(density=0.2, update_interval=3, end=None, drop_schedule="constant"))
    crit = nn.CrossEntropyLoss(reduction="sum")
    for step in range(steps):
        x1, y1 = mlp_batch(2 * step, dtype=torch.float64)
        x2, y2 = mlp_batch(2 * step + 1, dtype=torch.float64)
        if micro:
            crit(model(x1), y1).backward()
            crit(model(x2), y2).backward()
        else:
            crit(model(torch.cat([x1, x2])), torch.cat([y1, y2])).backward()
        opt.step()
        opt.zero_grad(set_to_none=set_to_none)
    return model, sp


@pytest.mark.parametrize("set_to_none", [True, False])
def test_gradient_accumulation_grows_like_one_big_batch(set_to_none):
    _, a = _accum_run(micro=True, set_to_none=set_to_none)
    _, b = _accum_run(micro=False, set_to_none=set_to_none)
    _, before = _accum_run(micro=False, steps=0)
    assert a.updates == b.updates == 1
    assert any(not torch.equal(before.masks[n], b.masks[n]) for n in b.masks)
    for n in a.masks:
        assert torch.equal(a.masks[n], b.masks[n]), n


def test_accumulation_keeps_a_micro_batch_whose_masked_gradient_is_zero():
    """The first micro-batch only touches inputs with no active weight: its *masked* gradient is
    all zeros but its dense gradient is not, and it must still count for RigL's growth."""

    def run(micro):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 2, bias=False))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sp = st.Sparsifier(model, opt, st.RigL(density=0.25, distribution="uniform", update_interval=1, end=None,
                                               drop_schedule="constant", drop_fraction=0.34))
        mask = sp.masks["0.weight"]
        j = int((~mask.any(0)).nonzero()[0])  # a column with no active weight
        a = int(mask.any(0).nonzero()[0])  # a column with one
        x1 = torch.zeros(1, 6)
        x1[0, j] = 10.0
        x2 = torch.zeros(1, 6)
        x2[0, a] = 1.0
        loss = lambda x: (model(x) * torch.tensor([1.0, 0.5])).sum()  # noqa: E731
        if micro:
            loss(x1).backward()
            assert not model[0].weight.grad.any()
            loss(x2).backward()
        else:
            loss(torch.cat([x1, x2])).backward()
        opt.step()
        return sp.masks["0.weight"], j

    micro, j = run(True)
    big, _ = run(False)
    assert big[:, j].any()  # the big batch grows into column j (largest dense gradient)
    assert torch.equal(micro, big), "the first micro-batch's dense gradient was dropped"


# ----------------------------------------------------------------------------- 6. GradScaler


def _scaler_run(scaler: bool, inf_before_update: bool = False, set_to_none: bool = True, steps: int = 7):
    model = mlp(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = st.Sparsifier(model, opt, st.RigL(density=0.25, update_interval=3, end=None, drop_schedule="constant"))
    sc = torch.amp.GradScaler("cpu", init_scale=2.0**16) if scaler else None
    crit = nn.CrossEntropyLoss()
    for step in range(steps):
        if inf_before_update and step == 2:  # next counted step (3) is an update step
            x, y = mlp_batch(500)
            loss = model(x).pow(2).sum() * 1e38  # overflows once scaled
            sc.scale(loss).backward()
            sc.step(opt)
            sc.update()
            opt.zero_grad(set_to_none=set_to_none)
            assert sp.step == 2 and sp.updates == 0 and sp.history == []
            assert sc.get_scale() == 2.0**15
        x, y = mlp_batch(step)
        loss = crit(model(x), y)
        if sc is None:
            loss.backward()
            opt.step()
        else:
            sc.scale(loss).backward()
            sc.step(opt)
            sc.update()
        opt.zero_grad(set_to_none=set_to_none)
    return model, sp


def test_gradscaler_exists_on_cpu():
    assert hasattr(torch.amp, "GradScaler")
    assert torch.amp.GradScaler("cpu").is_enabled()


def test_gradscaler_scaled_steps_choose_like_unscaled():
    ref_model, ref = _scaler_run(scaler=False)
    model, sp = _scaler_run(scaler=True)
    assert sp.updates == ref.updates == 2 and sp.step == ref.step == 7
    for n in sp.masks:
        assert torch.equal(sp.masks[n], ref.masks[n])
    for (n, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_gradscaler_skipped_step_is_not_counted(set_to_none):
    ref_model, ref = _scaler_run(scaler=True)
    model, sp = _scaler_run(scaler=True, inf_before_update=True, set_to_none=set_to_none)
    assert sp.step == 7 and sp.updates == 2 and [h["step"] for h in sp.history] == [3, 6]
    assert all("skipped" not in h for h in sp.history)
    for n in sp.masks:
        assert torch.equal(sp.masks[n], ref.masks[n]), "the skipped step's gradient leaked into growth"
    for (n, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- 7. layouts


def _train(model, opt, sp, steps, d_in=12, n_out=4):
    crit = nn.CrossEntropyLoss()
    counts = {n: l.n_active for n, l in sp.layers.items()}
    for step in range(steps):
        x, y = mlp_batch(step, d_in=d_in, n_out=n_out)
        crit(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        check_invariants(sp, opt, counts)


def test_multiple_param_groups():
    model = mlp(5)
    opt = torch.optim.SGD(
        [{"params": [model[0].weight, model[0].bias], "lr": 0.1},
         {"params": [p for n, p in model.named_parameters() if not n.startswith("0.")], "lr": 0.01}],
        momentum=0.9,
    )
    sp = st.Sparsifier(model, opt, st.RigL(density=0.3, update_interval=2), total_steps=10)
    _train(model, opt, sp, 10)
    assert sp.updates == 3
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    assert set(sp.layers) == {"0.weight", "2.weight", "4.weight"}


def test_excluded_parameter_not_in_optimizer():
    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp(6)
            self.aux = nn.Linear(3, 3)  # not used in forward, not optimized

        def forward(self, x):
            return self.net(x)

    model = WithAux()
    aux = model.aux.weight.detach().clone()
    opt = torch.optim.Adam(model.net.parameters(), lr=1e-2)
    with pytest.raises(ValueError, match="aux.weight.*not held by the optimizer"):
        st.Sparsifier(model, opt, st.SET(density=0.3, update_interval=2), total_steps=10)
    sp = st.Sparsifier(model, opt, st.SET(density=0.3, update_interval=2), total_steps=10, exclude="aux.*")
    assert "aux.weight" not in sp.layers
    _train(model, opt, sp, 6)
    assert torch.equal(model.aux.weight, aux)


def test_frozen_layer_left_dense():
    model = mlp(7)
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    sp = st.Sparsifier(model, opt, st.RigL(density=0.3, update_interval=2), total_steps=10)
    assert set(sp.layers) == {"2.weight", "4.weight"}
    _train(model, opt, sp, 8)
    assert sp.updates == 3
    assert torch.equal(model[0].weight, frozen) and torch.all(frozen != 0)


def test_a_layer_frozen_at_attach_then_unfrozen_is_warned_once():
    # staged fine-tuning: frozen (so left dense) when the Sparsifier is built, unfrozen later
    model = mlp(7)
    model[0].weight.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = st.Sparsifier(model, opt, st.RigL(density=0.3, update_interval=2), total_steps=10)
    x, y = torch.randn(8, 12), torch.randint(0, 4, (8,))

    def step():
        nn.functional.cross_entropy(model(x), y).backward()
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            opt.step()
        opt.zero_grad()
        return [str(w.message) for w in rec if "frozen" in str(w.message)]

    assert step() == []  # still frozen: nothing to say
    model[0].weight.requires_grad_(True)
    said = step()
    assert len(said) == 1 and "0.weight was frozen" in said[0] and "unfreeze it before building" in said[0]
    assert step() == []  # once
    assert "0.weight" not in sp.layers
    sp.remove()
    # a frozen compressed layer (its parameter is `values`, its name `<module>.weight`) is left dense too
    sparse_model = st.sparse.to_sparse(mlp(7))
    sparse_model[2].values.requires_grad_(False)
    sp = st.Sparsifier(sparse_model, torch.optim.SGD(sparse_model.parameters(), lr=0.1), st.RigL(density=0.3),
                       total_steps=100)
    assert "2.weight" not in sp.layers and sp.selection.frozen["2.weight"] is sparse_model[2].values


def test_a_model_that_is_already_sparse_and_an_unreachable_density_are_said():
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def notes(**kw):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            sp = st.Sparsifier(model, opt, st.RigL(update_interval=2, **kw), total_steps=100)
        return sp, [str(w.message) for w in rec if issubclass(w.category, st.InputWarning)]

    sp, said = notes(density=0.2)
    assert said == []  # a freshly initialised model: nothing to say
    sp.remove()
    sp, said = notes(density=0.6)  # re-attached denser: most of its new active weights are the old zeros
    assert len(said) == 1 and "sparse under a Sparsifier that was removed" in said[0] and "state=" in said[0]
    sp.remove()
    irnn = nn.RNN(8, 16)  # an identity-initialised recurrent weight: zeros the model chose
    nn.init.eye_(irnn.weight_hh_l0)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        st.Sparsifier(irnn, torch.optim.SGD(irnn.parameters(), lr=0.1), st.RigL(density=0.3), total_steps=100)
    assert not [w for w in rec if "removed" in str(w.message)]
    fresh = mlp()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        sp = st.Sparsifier(fresh, torch.optim.SGD(fresh.parameters(), lr=0.1), st.RigL(density=1e-9), total_steps=100)
    said = [str(w.message) for w in rec if "realises" in str(w.message)]
    assert len(said) == 1 and "every sparse layer keeps at least one weight" in said[0]
    assert sp.density == pytest.approx(len(sp.layers) / sum(l.numel for l in sp.layers.values()))


class Reused(nn.Module):
    """The same Linear applied twice."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(12, 10)
        self.block = nn.Linear(10, 10)
        self.out = nn.Linear(10, 4)

    def forward(self, x):
        x = torch.tanh(self.inp(x))
        x = torch.tanh(self.block(x))
        x = torch.tanh(self.block(x))
        return self.out(x)


class Shared(nn.Module):
    """Two modules holding one Parameter."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(12, 10)
        self.a = nn.Linear(10, 10)
        self.b = nn.Linear(10, 10)
        self.b.weight = self.a.weight
        self.out = nn.Linear(10, 4)

    def forward(self, x):
        x = torch.tanh(self.inp(x))
        return self.out(torch.tanh(self.b(torch.tanh(self.a(x)))))


@pytest.mark.parametrize("cls,name", [(Reused, "block.weight"), (Shared, "a.weight")])
def test_tied_weight_is_one_sparse_entry(cls, name):
    def make():
        torch.manual_seed(8)
        return cls()

    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = st.Sparsifier(model, opt, st.RigL(density=0.3, update_interval=3, end=None, drop_schedule="constant"))
    assert sum(1 for n in sp.layers if n in ("block.weight", "a.weight", "b.weight")) == 1 and name in sp.layers
    seen = spy_updates(sp)
    crit = nn.CrossEntropyLoss()
    for step in range(3):
        x, y = mlp_batch(step)
        loss_fn = lambda m: crit(m(x), y)  # noqa: E731
        state = {k: v.clone() for k, v in model.state_dict().items()}
        loss_fn(model).backward()
        opt.step()
        opt.zero_grad()
    # the update used the dense gradient summed over both uses of the shared weight
    dense = dense_grad_of(make, state, loss_fn, name)
    k = round(0.3 * sp.layers[name].n_active)
    expected, _ = reference_rigl(seen[0]["weights"][name], seen[0]["masks"][name], dense, k)
    assert torch.equal(sp.masks[name], expected)
    check_invariants(sp, opt, {n: l.n_active for n, l in sp.layers.items()})
    if cls is Shared:
        assert model.a.weight is model.b.weight


# ----------------------------------------------------------------------------- 8. bad input


@pytest.mark.parametrize("density", [0, 1.5, -0.1, float("nan")])
def test_bad_density(density):
    with pytest.raises(ValueError, match="density must lie in"):
        st.RigL(density=density)
    model = mlp()
    with pytest.raises(ValueError, match="density"):
        st.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), "set", density=density)


def test_no_prunable_parameter():
    bn = nn.Sequential(nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="no prunable parameter"):
        st.Sparsifier(bn, torch.optim.SGD(bn.parameters(), lr=0.1), st.Static(density=0.5))
    model = mlp()
    with pytest.raises(ValueError, match="no prunable parameter.*exclude"):
        st.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), st.Static(density=0.5), exclude="*")


def test_sparse_parameter_missing_from_optimizer():
    model = mlp()
    opt = torch.optim.SGD(model[0].parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"2\.weight.*not held by the optimizer"):
        st.Sparsifier(model, opt, st.Static(density=0.5))


def test_load_state_dict_from_a_different_model():
    m1 = mlp(sizes=(12, 20, 4))
    sp1 = st.Sparsifier(m1, torch.optim.SGD(m1.parameters(), lr=0.1), st.Static(density=0.5))
    state = sp1.state_dict()
    m2 = mlp(sizes=(12, 20, 16, 4))  # extra layer: names differ
    sp2 = st.Sparsifier(m2, torch.optim.SGD(m2.parameters(), lr=0.1), st.Static(density=0.5))
    with pytest.raises(ValueError, match="different model"):
        sp2.load_state_dict(state)
    m3 = mlp(sizes=(12, 21, 4))  # same names, other shapes
    sp3 = st.Sparsifier(m3, torch.optim.SGD(m3.parameters(), lr=0.1), st.Static(density=0.5))
    with pytest.raises(ValueError, match="different model"):
        sp3.load_state_dict(state)
    with pytest.raises(ValueError, match="state_dict"):
        sp3.load_state_dict({"layers": {}})


def test_a_checkpoint_with_fewer_sparse_layers_names_the_exclude_that_loads_it():
    # a checkpoint saved before MultiheadAttention's in_proj_weight was sparse by default
    torch.manual_seed(0)
    m1 = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    sp1 = st.Sparsifier(m1, torch.optim.SGD(m1.parameters(), lr=0.1), st.Static(density=0.5),
                        exclude=["*.in_proj_weight"])
    state = sp1.state_dict()
    m2 = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    opt2 = torch.optim.SGD(m2.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"exclude=\['self_attn\.in_proj_weight'\] to load it"):
        st.Sparsifier(m2, opt2, st.Static(density=0.5), state=state)
    with pytest.raises(ValueError, match="algorithm"):  # refused after attaching: detached again
        st.Sparsifier(m2, opt2, st.SET(density=0.5), exclude=["self_attn.in_proj_weight"], state=state,
                      total_steps=100)
    sp2 = st.Sparsifier(m2, opt2, st.Static(density=0.5), exclude=["self_attn.in_proj_weight"], state=state)
    assert all(torch.equal(sp2.masks[n], sp1.masks[n]) for n in sp1.masks)


def test_total_steps_required_only_when_needed():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="total_steps"):
        st.Sparsifier(model, opt, st.RigL(density=0.1))
    sp = st.Sparsifier(model, opt, st.SET(density=0.1, end=None, drop_schedule="constant", update_interval=2))
    _train(model, opt, sp, 4)
    assert sp.updates == 2


def test_unknown_algorithm_and_distribution_names():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="valid names are.*rigl.*set.*static"):
        st.Sparsifier(model, opt, "rigel", density=0.1)
    with pytest.raises(ValueError, match="unknown distribution 'erx'.*valid names are uniform, er, erk"):
        st.Sparsifier(model, opt, st.Static(density=0.1, distribution="erx"))


def _nan_setup(nan_safe=False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4, bias=False), nn.Tanh(), nn.Linear(4, 3))
    inject = {"where": None}
    holder = {}

    def hook(g):  # registered before the Sparsifier's hook, so it changes the dense gradient
        if inject["where"] is None:
            return g
        mask = holder["sp"].masks["0.weight"]
        pos = tuple(int(v) for v in (mask if inject["where"] == "active" else ~mask).nonzero()[0])
        g = g.clone()
        g[pos] = float("nan")
        return g

    model[0].weight.register_hook(hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = st.Sparsifier(model, opt, st.RigL(density=0.4, update_interval=2, end=None, drop_schedule="constant"),
                       nan_safe=nan_safe)
    holder["sp"] = sp
    return model, opt, sp, inject


@pytest.mark.parametrize("where", ["active", "inactive"])
def test_nan_gradient_at_update_step_skips_the_update(where):
    model, opt, sp, inject = _nan_setup()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    model(x).sum().backward()
    opt.step()
    opt.zero_grad()
    before = masks_of(sp)
    inject["where"] = where
    model(x).sum().backward()
    with pytest.warns(RuntimeWarning, match="non-finite gradient in 0.weight.*skipped"):
        opt.step()
    assert sp.step == 2 and sp.updates == 0
    assert sp.history[-1]["step"] == 2 and sp.history[-1]["skipped"]
    for n in before:
        assert torch.equal(before[n], sp.masks[n])


def test_nan_dense_gradient_at_inactive_position_does_not_reach_the_weights():
    """With nan_safe=True, a non-finite dense gradient at an *inactive* weight must not leak into
    the weights: the optimizer sees masked gradients, and masked weights stay exactly 0 (spec §1.5)."""
    model, opt, sp, inject = _nan_setup(nan_safe=True)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    inject["where"] = "inactive"
    model(x).sum().backward()
    mask = sp.masks["0.weight"]
    assert torch.all(model[0].weight.grad[~mask] == 0), "masked gradient is not 0 (NaN * 0 = NaN)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        opt.step()
    assert torch.all(model[0].weight[~mask] == 0)
    assert torch.isfinite(model[0].weight).all()


def test_default_multiplicative_masking_lets_nan_at_a_masked_position_through():
    """The documented price of the fast default: NaN·0 = NaN reaches the masked gradient."""
    model, opt, sp, inject = _nan_setup(nan_safe=False)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    inject["where"] = "inactive"
    model(x).sum().backward()
    mask = sp.masks["0.weight"]
    assert torch.isnan(model[0].weight.grad[~mask]).any()
    assert torch.all(model[0].weight.grad[mask] == model[0].weight.grad[mask])  # active entries finite


def test_nan_safe_masking_after_a_step_clears_a_nan_that_reached_a_masked_weight():
    """NaN·0 = NaN: the post-step masking must select, not multiply, under nan_safe; a NaN put into
    the gradient after backward (past the gradient hook) is cleared from the weights and the state."""
    for nan_safe in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sp = st.Sparsifier(model, opt, "set", density=0.25, update_interval=2, total_steps=20, nan_safe=nan_safe)
        model(torch.randn(4, 10)).pow(2).mean().backward()
        mask = sp.masks["0.weight"]
        model[0].weight.grad[~mask] = float("nan")
        opt.step()
        nan_weights = int(torch.isnan(model[0].weight[~mask]).sum())
        nan_state = int(torch.isnan(opt.state[model[0].weight]["momentum_buffer"][~mask]).sum())
        if nan_safe:
            assert nan_weights == nan_state == 0
            assert torch.isfinite(model[0].weight).all()
        else:  # the documented price of the fast default
            assert nan_weights == int((~mask).sum())


def test_a_topology_update_zeroes_the_last_gradient_at_the_weights_it_drops():
    """.grad is zero off the mask after every step, update steps included (the dropped weights'
    last gradient is not left behind for a loop that reads or accumulates .grad)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = st.Sparsifier(model, opt, "rigl", density=0.25, update_interval=2, total_steps=20)
    updates = 0
    for _ in range(6):
        before = {n: m.clone() for n, m in sp.masks.items()}
        model(torch.randn(8, 10)).pow(2).mean().backward()
        opt.step()
        for n, layer in sp.layers.items():
            assert int((layer.param.grad[~layer.mask] != 0).sum()) == 0, n
            updates += int(not torch.equal(before[n], layer.mask))
        st.testing.assert_invariants(sp, opt)
        opt.zero_grad()
    assert updates > 0  # the masks did change


# ----------------------------------------------------------------------------- 9. metrics


def _metric_run(algo, steps=12):
    model = mlp(9)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = st.Sparsifier(model, opt, algo, total_steps=steps)
    in_effect = []  # the mask during each optimizer step
    r_s = [sp.itop_rate]
    crit = nn.CrossEntropyLoss()
    for step in range(steps):
        in_effect.append(masks_of(sp))
        x, y = mlp_batch(step)
        crit(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        r_s.append(sp.metrics()["itop_rate"])
    return sp, in_effect, r_s


def test_metrics_static():
    sp, in_effect, r_s = _metric_run(st.Static(density=0.2))
    m = sp.metrics()
    assert {"density", "itop_rate", "layer_density", "updates"} <= set(m)
    assert m["updates"] == 0 and sp.history == []
    total = sum(l.numel for l in sp.layers.values())
    assert m["density"] == round(0.2 * total) / total
    assert all(r == m["density"] for r in r_s)  # R_s = D for static sparse training
    assert m["layer_density"] == {n: l.n_active / l.numel for n, l in sp.layers.items()}
    counters = sp.usage_counters()
    for n, mask in sp.masks.items():
        assert counters[n].dtype == torch.int32
        assert torch.equal(counters[n], mask.to(torch.int32) * 12)


@pytest.mark.parametrize("algo", ["set", "rigl"])
def test_metrics_dynamic(algo):
    sp, in_effect, r_s = _metric_run(ALGOS[algo](0.2, update_interval=3, end=None, drop_schedule="constant"))
    m = sp.metrics()
    assert m["updates"] == sp.updates == 3
    assert all(b >= a for a, b in zip(r_s, r_s[1:])), "R_s decreased"
    assert r_s[-1] > r_s[0] == m["density"]
    assert [h["step"] for h in sp.history] == [3, 6, 9]  # none after the last step (12)
    for h in sp.history:
        assert {"step", "drop_fraction", "turnover", "itop_rate"} <= set(h)
        assert h["drop_fraction"] == pytest.approx(0.3)
        assert 0 < h["turnover"] <= 1
    assert [h["itop_rate"] for h in sp.history] == [r_s[s] for s in (3, 6, 9)]
    counters = sp.usage_counters()
    ever = {n: torch.zeros_like(c, dtype=torch.bool) for n, c in counters.items()}
    for n in counters:
        expected = sum(mask[n].to(torch.int32) for mask in in_effect)
        assert torch.equal(counters[n], expected), n
        for mask in in_effect + [sp.masks]:
            ever[n] |= mask[n]
        assert torch.equal(sp.layers[n].ever_active, ever[n])
    total = sum(c.numel() for c in counters.values())
    assert m["itop_rate"] == sum(int(e.sum()) for e in ever.values()) / total


# ----------------------------------------------------------------------------- 10. state_dict


def test_state_dict_loads_with_weights_only(tmp_path):
    sp, _, _ = _metric_run(st.RigL(density=0.2, update_interval=3), steps=8)
    path = tmp_path / "sp.pt"
    torch.save(sp.state_dict(), path)
    state = torch.load(path, weights_only=True)
    buf = io.BytesIO()
    torch.save(sp.state_dict(), buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["step"] == 8
    model = mlp(123)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp2 = st.Sparsifier(model, opt, st.RigL(density=0.2, update_interval=3), total_steps=8)
    sp2.load_state_dict(state)
    assert sp2.step == sp.step and sp2.updates == sp.updates and sp2.history == sp.history
    for n in sp.masks:
        assert torch.equal(sp2.masks[n], sp.masks[n])
        assert torch.equal(sp2.layers[n].ever_active, sp.layers[n].ever_active)
        assert torch.equal(sp2.usage_counters()[n], sp.usage_counters()[n])
        assert torch.all(model.state_dict()[n][~sp.masks[n]] == 0)  # loading applies the masks


# ----------------------------------------------------------------------------- hooks


def test_remove_and_hooks_disabled():
    model = mlp(10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = st.Sparsifier(model, opt, st.Static(density=0.2))
    x, y = mlp_batch(0)
    crit = nn.CrossEntropyLoss()
    with sp.hooks_disabled():
        crit(model(x), y).backward()
    mask = sp.masks["0.weight"]
    assert torch.any(model[0].weight.grad[~mask] != 0)  # dense gradient, e.g. for saliency
    opt.zero_grad()
    sp.remove()
    crit(model(x), y).backward()
    opt.step()
    assert sp.step == 0
    assert torch.any(model[0].weight[~mask] != 0)  # no longer enforced
    st.Sparsifier(model, opt, st.Static(density=0.2))  # the optimizer is free again


def test_a_second_sparsifier_on_the_same_optimizer_is_refused_until_removed():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = st.Sparsifier(model, opt, st.Static(density=0.5))
    with pytest.raises(RuntimeError, match="already attached"):
        st.Sparsifier(model, opt, st.Static(density=0.5))
    sp.remove()
    st.Sparsifier(model, opt, st.Static(density=0.5))


# ---------------------------------------------------------------------------- AMP and torch.compile
def _conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.ReLU(),
                         nn.Linear(16, 3))


def test_bf16_autocast_on_cpu_keeps_the_invariants():
    model = _conv_net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sp = st.Sparsifier(model, opt, st.RigL(density=0.3, update_interval=3, end=None), total_steps=12)
    counts = {n: l.n_active for n, l in sp.layers.items()}
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        x, y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        assert_invariants(sp, opt)
    assert sp.updates == 3 and {n: l.n_active for n, l in sp.layers.items()} == counts
    assert all(r["turnover"] > 0 for r in sp.history[:-1])  # the drop fraction is 0 at the very end


def test_torch_compile_with_the_sparsifier_attached():
    model = _conv_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sp = st.Sparsifier(model, opt, st.RigL(density=0.3, update_interval=3, end=None), total_steps=9)
    # aot_eager: dynamo graph capture + AOT autograd without a C++ toolchain (CI has none guaranteed)
    compiled = torch.compile(model, backend="aot_eager")
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(9)]
    for x, y in data:
        nn.functional.cross_entropy(compiled(x), y).backward()
        opt.step()
        opt.zero_grad()
        assert_invariants(sp, opt)
    assert sp.updates == 2 and all(r["grown"] > 0 for r in sp.history[:-1])
    # the compiled model computes with the current (updated) masks: same output as eager
    with torch.no_grad():
        assert torch.allclose(compiled(data[0][0]), model(data[0][0]), atol=1e-5)


def test_a_sparsifier_attached_to_the_compiled_model_uses_the_plain_names():
    # torch.compile(m) names m's parameters "_orig_mod.*": masks, reports and checkpoints of a
    # Sparsifier built on either must be the same
    torch.manual_seed(0)
    model = _conv_net()
    compiled = torch.compile(model, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sp = st.Sparsifier(compiled, opt, st.RigL(density=0.3, update_interval=3), total_steps=9)
    assert sp.model is model and set(sp.masks) == {n for n, _ in model.named_parameters() if n in sp.layers}
    assert not any(n.startswith("_orig_mod") for n in sp.masks)
    x = torch.randn(2, 1, 8, 8)
    plain, via_compiled = st.flops(model, x, masks=sp.masks), st.flops(compiled, x, masks=sp.masks)
    assert plain.sparse == via_compiled.sparse < plain.dense
    prefixed = {f"_orig_mod.{n}": m for n, m in sp.masks.items()}  # masks of a compiled model's names
    assert st.flops(model, x, masks=prefixed).sparse == plain.sparse
    sp.remove()
    opt2 = torch.optim.SGD(model.parameters(), lr=0.05)
    st.Sparsifier(model, opt2, st.RigL(density=0.3, update_interval=3), total_steps=9, state=sp.state_dict())
    with pytest.raises(st.InputError, match="'0.weigth'.*not a parameter"):
        st.flops(model, x, masks={"0.weigth": next(iter(sp.masks.values()))})


def test_meta_device_model_is_refused_with_the_fix():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="meta device.*to_empty"):
        st.Sparsifier(model, opt, st.RigL(density=0.5), total_steps=10)


def test_attach_with_state_keeps_restored_weights_and_optimizer_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp = st.Sparsifier(model, opt, st.RigL(density=0.3, update_interval=2), total_steps=10)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        nn.functional.cross_entropy(model(torch.randn(4, 6, generator=g)), torch.randint(0, 3, (4,), generator=g)).backward()
        opt.step()
        opt.zero_grad()
    saved = {"model": {k: v.clone() for k, v in model.state_dict().items()}, "opt": opt.state_dict(),
             "sp": sp.state_dict()}
    sp.remove()
    # a trainer restores weights and optimizer state first, then the callback attaches
    torch.manual_seed(5)
    model2 = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    sp2 = st.Sparsifier(model2, opt2, st.RigL(density=0.3, update_interval=2), total_steps=10, state=saved["sp"])
    assert all(torch.equal(model2.state_dict()[k], v) for k, v in saved["model"].items())
    assert all(torch.equal(sp2.masks[n], sp.masks[n]) for n in sp.masks) and sp2.step == 5
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], saved["opt"]["state"][0]["exp_avg"])
    lin = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="format tag"):
        st.Sparsifier(lin, torch.optim.SGD(lin.parameters(), lr=0.1), "rigl", density=0.5, total_steps=4,
                      state={"nope": 1})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_model_cast_to_another_dtype_after_attaching_keeps_training(dtype):
    # model.to(dtype) after the Sparsifier was built: the gradient hook must return a gradient of
    # the parameter's new dtype (it used to return float32 for bf16/fp16: "hook 'on_grad' has
    # changed the type of value") and the masks must still hold
    model = mlp(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sp = st.Sparsifier(model, opt, st.RigL(density=0.3, update_interval=3, end=None), total_steps=9)
    counts = {n: l.n_active for n, l in sp.layers.items()}
    model.to(dtype)
    for step in range(9):
        x, y = mlp_batch(step, dtype=dtype)
        nn.functional.cross_entropy(model(x).float(), y).backward()
        assert all(l.param.grad.dtype == dtype for l in sp.layers.values())
        opt.step()
        opt.zero_grad()
        assert check_invariants(sp, opt, counts) > 0
    assert sp.updates == 2 and all(l.param.dtype == dtype for l in sp.layers.values())


@pytest.mark.parametrize("make, key, value", [
    (lambda p: torch.optim.Rprop(p, lr=0.01, step_sizes=(0.0, 50.0)), "step_size", 0.01),
    (lambda p: torch.optim.Adagrad(p, lr=0.05, initial_accumulator_value=0.1), "sum", 0.1),
])
def test_regrown_weights_get_the_state_a_new_parameter_starts_from(make, key, value):
    # Rprop's step sizes and Adagrad's accumulator do not start at 0: zeroing them for regrown
    # weights froze them (Rprop with step_size_min=0 never moves them again) or gave them an
    # outsized first step (Adagrad)
    model = mlp(0)
    opt = make(model.parameters())
    sp = st.Sparsifier(model, opt, st.SET(density=0.3, update_interval=3, end=None, drop_schedule="constant"),
                       total_steps=10)
    seen = spy_updates(sp)

    def train(steps):
        for step in steps:
            x, y = mlp_batch(step)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            assert_invariants(sp, opt)

    train(range(3))
    assert sp.updates == 1
    newly = {n: l.mask & ~seen[0]["masks"][n] for n, l in sp.layers.items()}
    for name, layer in sp.layers.items():
        assert newly[name].any()
        assert torch.all(opt.state[layer.param][key][newly[name]] == value), f"{key} of regrown {name} is not fresh"
    train(range(3, 5))
    moved = sum(int((l.param.detach()[newly[n] & l.mask] != 0).sum()) for n, l in sp.layers.items())
    assert moved > 0  # the step after the update trained the regrown weights


class _Seq2Seq(nn.Module):
    """Attention over an LSTM's outputs: the layers sparse by default besides Linear/Conv."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 16)
        self.rnn = nn.LSTM(16, 8, num_layers=2, bidirectional=True, batch_first=True)
        self.att = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16, 30)

    def forward(self, x):
        h = self.emb(x)
        r = self.rnn(h)[0]
        return self.fc(self.att(h, r, r)[0])


@pytest.mark.parametrize("opt_cls", [torch.optim.Adam, torch.optim.SGD])
def test_recurrent_and_attention_weights_train_sparse_with_every_invariant(opt_cls):
    torch.manual_seed(0)
    m = _Seq2Seq()
    opt = opt_cls(m.parameters(), lr=0.01, **({"momentum": 0.9} if opt_cls is torch.optim.SGD else {}))
    sp = st.Sparsifier(m, opt, st.RigL(density=0.2, update_interval=4), total_steps=24)
    assert {"rnn.weight_hh_l1_reverse", "att.in_proj_weight"} <= set(sp.masks)
    before = {n: sp.masks[n].clone() for n in sp.masks}
    for _ in range(24):
        x = torch.randint(0, 30, (4, 10))
        nn.functional.cross_entropy(m(x).reshape(-1, 30), x.reshape(-1)).backward()
        opt.step()
        opt.zero_grad()
        assert_invariants(sp, opt)
    assert sp.updates == 4  # steps 4, 8, 12, 16 (end=0.75: step 18)
    assert all(not torch.equal(before[n], sp.masks[n]) for n in ("rnn.weight_ih_l0", "att.in_proj_weight"))
    assert int(sp.masks["rnn.weight_ih_l0"].sum()) == int((m.rnn.weight_ih_l0 != 0).sum())  # the LSTM reads these


@pytest.mark.parametrize("order", ["model_first", "sparsifier_first", "sparsifier_state_before_model"])
def test_loading_the_model_before_building_the_sparsifier_is_warned_at_the_next_step(order):
    # building a Sparsifier zeroes the weights off its fresh random mask: loaded weights were lost silently
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = st.Sparsifier(model, opt, st.RigL(density=0.2, update_interval=2), total_steps=20)
    x, y = torch.randn(8, 12), torch.randint(0, 4, (8,))
    for _ in range(3):
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    ck = {"m": model.state_dict(), "o": opt.state_dict(), "s": sp.state_dict()}
    m2 = mlp(seed=1)
    o2 = torch.optim.SGD(m2.parameters(), lr=0.1)
    if order == "model_first":
        m2.load_state_dict(ck["m"])
    sp2 = st.Sparsifier(m2, o2, st.RigL(density=0.2, update_interval=2), total_steps=20)
    if order == "sparsifier_state_before_model":
        sp2.load_state_dict(ck["s"])
    if order != "model_first":
        m2.load_state_dict(ck["m"])
    o2.load_state_dict(ck["o"])
    if order != "sparsifier_state_before_model":
        sp2.load_state_dict(ck["s"])
    nn.functional.cross_entropy(m2(x), y).backward()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        o2.step()
    lost = [w for w in rec if "loaded before this Sparsifier was built" in str(w.message)]
    assert len(lost) == (1 if order == "model_first" else 0)
