"""Static sparse training: a fixed mask from the start, no topology updates."""

from __future__ import annotations

from .base import Algorithm

__all__ = ["Static"]


class Static(Algorithm):
    """A fixed random mask with exact per-layer counts (ERK by default); never updated.

    Its ITOP rate stays at the density: ``R_s = D``.
    """

    name = "static"
    dynamic = False

    def __init__(self, density: float, *, distribution="erk", seed: int = 0, erk_power: float = 1.0):
        super().__init__(density, distribution=distribution, end=None, seed=seed, erk_power=erk_power,
                         drop_schedule="constant", drop_fraction=0.0)

    def config(self):
        cfg = super().config()
        for key in ("update_interval", "start", "end", "drop_schedule", "grow_init"):
            cfg.pop(key, None)
        return cfg
