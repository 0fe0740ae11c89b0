"""RigL (Evci et al., 2020): magnitude drop, growth by dense-gradient magnitude."""

from __future__ import annotations

from .. import scores
from .base import Algorithm

__all__ = ["RigL"]


class RigL(Algorithm):
    """Rigging the Lottery: drop the smallest |w|, grow where the dense |∂L/∂w| is largest.

    Defaults from the paper: ERK, ΔT = 100, cosine drop fraction α = 0.3, updates until 75%
    of training, regrown weights start at zero. The dense gradient is the current batch's
    (summed over micro-batches), computed only at update steps.
    """

    name = "rigl"
    needs_dense_grad = True

    def grow_score(self, layer, ctx):
        return scores.gradient_magnitude(layer.grad_buffer)
