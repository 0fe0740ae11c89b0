"""Which Linear layers to run truly sparse: a break-even measured on the machine at hand.

Whether a layer trains faster as a :class:`~sparsetrain.sparse.SparseLinear` than masked dense
depends on its shape, its density, the batch, the CPU and the thread count, so
``execution="auto"`` asks :func:`sparse_layer_faster` per layer instead of comparing the density
with a constant. The measurement (one forward + backward of each form on random data, medians of
interleaved repetitions) is made once per shape class and cached with the kernel choices
(:mod:`sparsetrain.sparse.autotune`).
"""

from __future__ import annotations

from typing import Optional

import torch

from . import autotune
from .linear import SparseLinear

__all__ = ["sparse_layer_faster"]


def sparse_layer_faster(in_features: int, out_features: int, batch: int, density: float, reps: int = 5,
                        seq: Optional[int] = None) -> bool:
    """Whether one Linear layer trains (forward + backward) faster truly sparse than masked dense at
    ``density`` with this batch, on this machine (measured once per shape class, cached). ``seq``: the
    layer sees ``(batch, seq, in_features)`` inputs (a transformer's tokens), measured in that layout
    (row-major outputs), which costs differently from ``batch · seq`` rows of a 2-D input. With
    measuring turned off (``SPARSETRAIN_AUTOTUNE=0``): ``density < autotune.DEFAULT_BREAK_EVEN``."""
    if not autotune.enabled():
        return density < autotune.DEFAULT_BREAK_EVEN
    if density >= 1.0:
        return False
    nnz = max(1, round(density * in_features * out_features))
    key = autotune.shape_class("layer", out_features, in_features, batch * (seq or 1), nnz,
                               f"btd{1 << max(0, (int(seq) - 1).bit_length())}" if seq else "")
    known = autotune.decisions().get(key)
    if known is not None:
        return known["choice"] == "sparse"
    gen = torch.Generator().manual_seed(0)
    dense = torch.nn.Linear(in_features, out_features)
    mask = torch.zeros(out_features * in_features, dtype=torch.bool)
    mask[torch.randperm(mask.numel(), generator=gen)[:nnz]] = True
    mask = mask.view(out_features, in_features)
    sparse = SparseLinear.from_linear(dense, mask)
    shape = (batch, seq, in_features) if seq else (batch, in_features)
    x = torch.randn(*shape, generator=gen, requires_grad=True)

    def masked_step():
        w = dense.weight * mask  # what masked training computes: the product with a masked weight
        torch.nn.functional.linear(x, w, dense.bias).sum().backward()

    def sparse_step():
        sparse(x).sum().backward()

    return autotune.measured_choice(key, sparse_step, masked_step, ("sparse", "masked"), reps)["choice"] == "sparse"
