"""SET (Mocanu et al., 2018): magnitude drop, random growth."""

from __future__ import annotations

from ..errors import InputError
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
            raise InputError(f"unknown drop criterion {drop!r}; valid values are 'magnitude', 'signed'")
        self.drop = drop

    def config(self):
        return {**super().config(), "drop": self.drop}

    def select_drop(self, layer, k, ctx):
        if self.drop == "signed":
            return scores.signed_drop(layer.weight, layer.mask, k)
        return super().select_drop(layer, k, ctx)

    def grow_score(self, layer, ctx):
        return scores.random_scores(layer.weight, ctx.generator)

    @property
    def stream_growth(self):
        """``"random"``: a compressed large layer may update without dense temporaries (magnitude
        drop, uniform random growth, zero-initialised regrowth: selections the streaming path
        reproduces exactly); ``None`` for ``drop="signed"``, ``grow_init="init"`` and subclasses
        that change the criteria."""
        cls = type(self)
        same = (cls.select_drop is SET.select_drop and cls.select_grow is SET.select_grow
                and cls.drop_score is Algorithm.drop_score)
        return "random" if same and self.drop == "magnitude" and self.grow_init == "zero" else None

    def select_grow(self, layer, k, available, ctx):
        # uniform among the available positions; sampled without a dense score tensor on large
        # layers (the same rule for masked and compressed layers)
        return scores.select_random(available, k, ctx.generator)
