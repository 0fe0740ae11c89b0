"""sparsetrain.initial: where the first masks come from (distribution, algorithm, checkpoint, converted pattern)."""

import warnings

import pytest
import torch
from torch import nn

import sparsetrain as st
from sparsetrain.sparse import to_sparse


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))


def test_a_layer_converted_with_masks_keeps_its_pattern():
    """The workflow SNIP's error gives (score dense, convert with the masks, train truly sparse): the Sparsifier on
    the converted model used to draw fresh random masks, keeping ~15% of the given positions."""
    m = _mlp()
    x, y = torch.randn(64, 32), torch.randint(0, 10, (64,))
    sp = st.Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), st.SNIP(density=0.1, batch=(x, y)))
    masks = {k: v.clone() for k, v in sp.masks.items()}
    with torch.no_grad():
        ref = m(x)
    sp.remove()
    with pytest.raises(st.InputError, match=r"sp.remove\(\); st.sparse.to_sparse\(model, masks=masks\)"):
        conv = to_sparse(_mlp())
        st.Sparsifier(conv, torch.optim.SGD(conv.parameters(), lr=0.1), st.SNIP(density=0.1, batch=(x, y)))
    to_sparse(m, masks=masks)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", st.InputWarning)  # density 0.1 as given: nothing to say
        sp2 = st.Sparsifier(m, opt, st.RigL(density=0.1), total_steps=1000)
    assert all(torch.equal(sp2.masks[k], masks[k]) for k in masks)
    with torch.no_grad():
        assert torch.allclose(m(x), ref, atol=1e-6)  # the weights at the pattern are the scored model's
    assert sp2.layers["0.weight"].target_density == pytest.approx(float(masks["0.weight"].float().mean()))


def test_a_converted_pattern_of_another_density_is_kept_and_warned_about():
    m = _mlp()
    half = {"0.weight": torch.rand(64, 32) < 0.5, "2.weight": torch.rand(10, 64) < 0.5}
    to_sparse(m, masks=half)
    with pytest.warns(st.InputWarning, match=r"start from the masks they hold .* density is "
                                             r"0\.4\d+, not the 0\.1\d* the algorithm"):
        sp = st.Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), st.SET(density=0.1), total_steps=100)
    assert all(torch.equal(sp.masks[k], half[k]) for k in half)
    # converted without masks (every weight stored): the Sparsifier draws its masks as usual
    full = to_sparse(_mlp())
    sp = st.Sparsifier(full, torch.optim.SGD(full.parameters(), lr=0.1), st.SET(density=0.1), total_steps=100)
    assert sp.density == pytest.approx(0.1, abs=0.002)


def test_only_masks_given_to_to_sparse_are_kept_and_never_for_a_pinned_layer():
    # zeros are not a mask: a zero-initialised head converted without masks gets drawn weights (it kept none)
    m = _mlp()
    nn.init.zeros_(m[2].weight)
    to_sparse(m)
    sp = st.Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), st.RigL(density=0.1), total_steps=1000)
    assert sp.layers["2.weight"].n_active > 0 and sp.density == pytest.approx(0.1, abs=0.002)
    # an all-True mask is a given mask too (SNIP's global ranking often keeps a small layer whole)
    m = _mlp()
    given = {"0.weight": torch.ones(64, 32, dtype=torch.bool), "2.weight": torch.rand(10, 64) < 0.1}
    to_sparse(m, masks=given)
    with pytest.warns(st.InputWarning, match="start from the masks they hold"):
        sp = st.Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), st.RigL(density=0.1), total_steps=1000)
    assert all(torch.equal(sp.masks[k], given[k]) for k in given)
    # a layer pinned dense with dense= is dense, whatever its given mask
    m = _mlp()
    to_sparse(m, masks={"0.weight": torch.rand(64, 32) < 0.3, "2.weight": torch.rand(10, 64) < 0.3})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sp = st.Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), st.RigL(density=0.5), dense=["2.weight"],
                           total_steps=1000)
    assert sp.layers["2.weight"].pinned and bool(sp.masks["2.weight"].all())


def test_a_reloaded_compressed_model_keeps_its_trained_pattern(tmp_path):
    """Fine-tuning from a compressed checkpoint without the Sparsifier's state: the loaded pattern is a (trained)
    mask, kept when a new Sparsifier attaches; a random draw over the loaded weights lost them."""
    from sparsetrain.sparse import load_compressed, save_compressed

    m = to_sparse(_mlp())
    sp = st.Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), st.RigL(density=0.1), total_steps=1000)
    masks = {k: v.clone() for k, v in sp.masks.items()}
    save_compressed(m, tmp_path / "m.pt")
    x = torch.randn(4, 32)
    with torch.no_grad():
        ref = m(x)
    fresh = to_sparse(_mlp())
    fresh.load_state_dict(load_compressed(tmp_path / "m.pt"))
    sp2 = st.Sparsifier(fresh, torch.optim.SGD(fresh.parameters(), lr=0.1), st.RigL(density=0.1), total_steps=1000)
    assert all(torch.equal(sp2.masks[k], masks[k]) for k in masks)
    with torch.no_grad():
        assert torch.allclose(fresh(x), ref, atol=1e-6)
