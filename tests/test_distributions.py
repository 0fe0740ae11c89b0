import math
import warnings

import pytest
import torch
from hypothesis import given, settings, strategies as hs

from sparsetrain import distributions as D


def test_erk_hand_computed_two_layers():
    # raw ERK scores: (10+784)/(10*784) and (10+10)/(10*10)
    shapes = [torch.Size([10, 784]), torch.Size([10, 10])]
    r = [794 / 7840, 20 / 100]
    dens = D.layer_densities(["a", "b"], shapes, 0.1, "erk")
    eps = 0.1 * 7940 / (r[0] * 7840 + r[1] * 100)
    assert dens["a"] == pytest.approx(eps * r[0])
    assert dens["b"] == pytest.approx(eps * r[1])
    assert dens["a"] * 7840 + dens["b"] * 100 == pytest.approx(794.0)


def test_erk_dense_capping_makes_small_layer_dense_and_keeps_global_density():
    shapes = [torch.Size([3, 3]), torch.Size([500, 400]), torch.Size([300, 500])]
    names = ["tiny", "big1", "big2"]
    dens = D.layer_densities(names, shapes, 0.2, "erk")
    assert dens["tiny"] == 1.0
    assert all(0 < d <= 1 for d in dens.values())
    sizes = {n: math.prod(s) for n, s in zip(names, shapes)}
    assert sum(dens[n] * sizes[n] for n in names) == pytest.approx(0.2 * sum(sizes.values()))


def test_er_ignores_kernel_dims_and_erk_uses_them():
    conv = torch.Size([16, 8, 3, 3])
    assert D.raw_scores([conv], "er")[0] == pytest.approx((16 + 8) / (16 * 8))
    assert D.raw_scores([conv], "erk")[0] == pytest.approx((16 + 8 + 3 + 3) / (16 * 8 * 9))


def test_uniform_and_pinned_dense():
    names, shapes = ["a", "b", "c"], [torch.Size([100, 10])] * 3
    dens = D.layer_densities(names, shapes, 0.1, "uniform")
    assert all(d == pytest.approx(0.1) for d in dens.values())
    dens = D.layer_densities(names, shapes, 0.4, "uniform", dense=["a"])
    assert dens["a"] == 1.0 and dens["b"] == pytest.approx(0.1) and dens["c"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="pinned dense"):
        D.layer_densities(names, shapes, 0.2, "uniform", dense=["a"])


def test_custom_mapping_and_callable_and_errors():
    names, shapes = ["a", "b"], [torch.Size([4, 4])] * 2
    assert D.layer_densities(names, shapes, 0.5, {"a": 0.25, "b": 0.75}) == {"a": 0.25, "b": 0.75}
    f = lambda ns, ss, d: {n: d for n in ns}  # noqa: E731
    assert D.layer_densities(names, shapes, 0.3, f) == {"a": 0.3, "b": 0.3}
    with pytest.raises(ValueError, match="no density for: b"):
        D.layer_densities(names, shapes, 0.5, {"a": 0.5})
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        D.layer_densities(names, shapes, 0.5, {"a": 0.5, "b": 1.5})
    with pytest.raises(ValueError, match="uniform, er, erk"):
        D.layer_densities(names, shapes, 0.5, "gaussian")


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    dims=hs.lists(hs.tuples(hs.integers(1, 64), hs.integers(1, 64), hs.sampled_from([0, 1, 3])), min_size=1, max_size=6),
    density=hs.floats(0.01, 1.0),
    kind=hs.sampled_from(["uniform", "er", "erk"]),
)
def test_counts_hit_global_density_exactly(dims, density, kind):
    shapes = [torch.Size([o, i] + ([k, k] if k else [])) for o, i, k in dims]
    names = [f"l{j}" for j in range(len(shapes))]
    sizes = {n: math.prod(s) for n, s in zip(names, shapes)}
    dens = D.layer_densities(names, shapes, density, kind)
    assert all(0 < d <= 1 + 1e-12 for d in dens.values())
    counts = D.layer_counts(dens, sizes, int(round(density * sum(sizes.values()))))
    for n in names:
        assert 1 <= counts[n] <= sizes[n]
        ideal = dens[n] * sizes[n]
        assert math.floor(ideal - 1e-6) <= counts[n] <= math.ceil(ideal + 1e-6) or counts[n] == 1
    target = int(round(density * sum(sizes.values())))
    if all(dens[n] * sizes[n] >= 1 for n in names):
        assert sum(counts.values()) == target
    else:  # the at-least-one-weight-per-layer floor may add a few
        assert target <= sum(counts.values()) <= target + len(names)


def test_a_custom_distribution_naming_no_sparse_parameter_is_refused():
    # a misspelt key used to be ignored silently (the layer it meant got its density from nowhere)
    from sparsetrain.errors import InputError, InputTypeError
    names, shapes = ["fc1.weight", "fc2.weight"], [torch.Size([4, 4])] * 2
    with pytest.raises(InputError, match=r"'fc3\.weight', which is not a sparse parameter.*'fc1\.weight', 'fc2\.weight'"):
        D.layer_densities(names, shapes, 0.5, {"fc1.weight": 0.5, "fc2.weight": 0.5, "fc3.weight": 0.5})
    with pytest.raises(InputError, match="no density for: fc2.weight"):
        D.layer_densities(names, shapes, 0.5, {"fc1.weight": 0.5})
    with pytest.raises(InputTypeError, match="must return a dict.*got list"):
        D.layer_densities(names, shapes, 0.5, lambda ns, ss, d: [d] * len(ns))
    with pytest.raises(InputError, match=r"'fc1\.weight' is '0\.5'.*\(0, 1\]"):
        D.layer_densities(names, shapes, 0.5, {"fc1.weight": "0.5", "fc2.weight": 0.5})
    with pytest.raises(InputError, match="pinned dense"):
        D.layer_densities(names, shapes, 0.2, "uniform", dense=["fc1.weight"])


def test_a_custom_distribution_that_ignores_the_density_warns():
    from sparsetrain.errors import InputWarning
    names, shapes = ["a", "b"], [torch.Size([100, 10])] * 2
    with pytest.warns(InputWarning, match=r"global density of 0\.3000, not the requested density=0\.1"):
        assert D.layer_densities(names, shapes, 0.1, {"a": 0.5, "b": 0.1}) == {"a": 0.5, "b": 0.1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D.layer_densities(names, shapes, 0.3, {"a": 0.5, "b": 0.1})  # consistent: no warning
