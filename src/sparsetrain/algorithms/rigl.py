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

    @property
    def stream_growth(self):
        """``"gradient"``: a compressed large layer may update without dense temporaries
        (magnitude drop; growth ranked from the gradient's factors block by block; zero
        regrowth); ``None`` for ``grow_init="init"`` and subclasses that change the criteria."""
        cls = type(self)
        same = (cls.select_drop is Algorithm.select_drop and cls.select_grow is Algorithm.select_grow
                and cls.drop_score is Algorithm.drop_score and cls.grow_score is RigL.grow_score)
        return "gradient" if same and self.grow_init == "zero" else None
