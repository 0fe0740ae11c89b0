"""SET (Mocanu et al., 2018): magnitude drop, random growth."""

from __future__ import annotations

from .. import scores
from .base import Algorithm

__all__ = ["SET"]


class SET(Algorithm):
    """Sparse Evolutionary Training: drop the smallest-magnitude weights, regrow at random.

    Defaults follow RigL's comparison setup (ERK, ΔT = 100, cosine α = 0.3, end at 75%);
    ``drop="signed"`` drops the ``k/2`` smallest positive and ``k/2`` largest negative weights,
    as in the original paper.
    """

    name = "set"

    def __init__(self, density: float, *, drop: str = "magnitude", **kwargs):
        super().__init__(density, **kwargs)
        if drop not in ("magnitude", "signed"):
            raise ValueError(f"unknown drop criterion {drop!r}; valid values are 'magnitude', 'signed'")
        self.drop = drop

    def config(self):
        return {**super().config(), "drop": self.drop}

    def select_drop(self, layer, k, ctx):
        if self.drop == "signed":
            return scores.signed_drop(layer.param, layer.mask, k)
        return super().select_drop(layer, k, ctx)

    def grow_score(self, layer, ctx):
        return scores.random_scores(layer.param, ctx.generator)
