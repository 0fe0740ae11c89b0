"""Checks for tests — ours and yours: :func:`assert_invariants` after any optimizer step.

    sp = st.Sparsifier(model, opt, st.RigL(density=0.1), total_steps=T)
    ...
    loss.backward(); opt.step()
    st.testing.assert_invariants(sp, opt)        # raises AssertionError naming the layer

The invariants (``docs/correctness.md``), for every sparse layer whatever its storage:

1. the mask is a bool tensor of the weight's dense shape with exactly ``n_active`` entries
   (and ``counts[name]`` of them when ``counts`` is given); the global count is
   ``round(density · total)`` when ``density`` is given;
2. every masked weight is exactly zero, and so is its gradient (``.grad``, when there is one);
3. every optimizer-state tensor shaped like the stored parameter is exactly zero at masked
   positions (a compressed layer: its state is nnz-sized, zero on the capacity padding);
4. a compressed layer stores exactly its mask's pattern;
5. the ever-active map contains the mask.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch

__all__ = ["assert_invariants"]


def _state_tensors(optimizer, param) -> dict[str, torch.Tensor]:
    if optimizer is None:
        return {}
    return {k: v for k, v in optimizer.state.get(param, {}).items() if torch.is_tensor(v) and v.shape == param.shape}


@torch.no_grad()
def assert_invariants(sp, optimizer: Optional[torch.optim.Optimizer] = None,
                      counts: Optional[Mapping[str, int]] = None, density: Optional[float] = None) -> int:
    """Assert the sparsity invariants of Sparsifier ``sp`` (see the module docstring).

    ``optimizer`` defaults to the sparsifier's. Returns the number of optimizer-state tensors
    checked (so a test can assert the check was not vacuous).
    """
    optimizer = sp.optimizer if optimizer is None else optimizer
    checked = 0
    for name, layer in sp.layers.items():
        mask = layer.mask
        assert mask.dtype == torch.bool and mask.shape == layer.shape, f"{name}: mask must be bool of shape {layer.shape}"
        n = int(torch.count_nonzero(mask))
        assert n == layer.n_active, f"{name}: mask has {n} active weights, the layer counts {layer.n_active}"
        if counts is not None and name in counts:
            assert n == counts[name], f"{name}: {n} active weights, expected {counts[name]}"
        assert bool((layer.ever_dense() | ~mask).all()), f"{name}: an active weight is missing from the ever-active map"
        ever = layer.ever_active
        if hasattr(ever, "popcount"):  # packed bits: the maintained count is the bits' count
            assert ever.count == ever.popcount(), f"{name}: the packed ever-active count is off"
        module = layer.sparse_module
        if module is None:
            assert bool((layer.param.detach()[~mask] == 0).all()), f"masked weights of {name} are not exactly 0"
            grad = layer.param.grad
            assert grad is None or bool((grad[~mask.to(grad.device)] == 0).all()), \
                f"the gradient (.grad) of {name} is not 0 at masked positions"
            for key, t in _state_tensors(optimizer, layer.param).items():
                checked += 1
                assert bool((t[~mask] == 0).all()), f"optimizer state {key!r} of {name} is not 0 at masked positions"
        else:
            assert module.nnz == n and torch.equal(module.mask(), mask.to(module.values.device)), \
                f"{name}: the compressed pattern differs from the mask"
            for key, t in _state_tensors(optimizer, layer.param).items():
                checked += 1
                assert bool((t[module.nnz:] == 0).all()), f"optimizer state {key!r} of {name} is not 0 on the padding"
            assert bool((module.values.detach()[module.nnz:] == 0).all()), f"{name}: nonzero values on the padding"
    if density is not None:
        total = sum(l.numel for l in sp.layers.values())
        active = sum(l.n_active for l in sp.layers.values())
        assert active == round(density * total), f"{active} active weights, expected round({density} · {total})"
    return checked
