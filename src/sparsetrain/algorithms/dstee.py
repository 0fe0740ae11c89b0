"""DST-EE (Huang et al., 2022): growth by an exploitation + exploration acquisition function."""

from __future__ import annotations

import math
from typing import Optional

import torch

from .base import Algorithm

__all__ = ["DSTEE", "BONUSES", "COUNTS", "GRAD_NORMS"]

#: Exploration bonus forms.
BONUSES = ("log_ratio", "ucb")
#: What the usage count N_i counts.
COUNTS = ("steps", "updates")
#: Per-layer normalisations of the gradient term.
GRAD_NORMS = (None, "layer_max", "layer_mean")


class DSTEE(Algorithm):
    """Dynamic sparse training with an exploration–exploitation acquisition function.

    RigL's skeleton (magnitude drop, ERK, cosine drop fraction, updates every ΔT until
    ``end``) with growth ranked, over inactive positions ``i``, by

        A_i(t) = |∂L/∂w_i| / s_l  +  c · bonus(t, N_i)

    where ``N_i`` is how long weight ``i`` has been active so far (optimizer steps by default,
    or update rounds with ``count="updates"``), ``s_l`` is 1 or the layer's max/mean gradient
    magnitude (``grad_norm``), and

        bonus = ln(t) / (N_i + eps)             (bonus="log_ratio", default)
        bonus = sqrt(ln(t) / (N_i + eps))       (bonus="ucb")

    with ``t`` the current step (``count="steps"``) or the number of update rounds elapsed
    including this one, plus one (``count="updates"``, so the first update has ``t = 2``).
    ``c = 0`` is exactly RigL (the bonus is not even computed).

    Args:
        density: global density.
        c: exploration weight, ``>= 0``.
        eps: ``> 0``, keeps the bonus of never-active weights finite.
        bonus: ``"log_ratio"`` or ``"ucb"``.
        count: ``"steps"`` or ``"updates"``.
        grad_norm: ``None``, ``"layer_max"`` or ``"layer_mean"``.
        **kwargs: the common options of :class:`~sparsetrain.algorithms.Algorithm`.
    """

    name = "dstee"
    needs_dense_grad = True

    def __init__(self, density: float, *, c: float = 1e-3, eps: float = 1.0, bonus: str = "log_ratio",
                 count: str = "steps", grad_norm: Optional[str] = None, **kwargs):
        super().__init__(density, **kwargs)
        if not (isinstance(c, (int, float)) and c >= 0 and math.isfinite(c)):
            raise ValueError(f"c must be a finite number >= 0 (0 is RigL), got {c!r}")
        if not (isinstance(eps, (int, float)) and eps > 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
        if bonus not in BONUSES:
            raise ValueError(f"unknown bonus {bonus!r}; valid values are {', '.join(BONUSES)}")
        if count not in COUNTS:
            raise ValueError(f"unknown count {count!r}; valid values are {', '.join(COUNTS)}")
        if grad_norm not in GRAD_NORMS:
            raise ValueError(f"unknown grad_norm {grad_norm!r}; valid values are None, 'layer_max', 'layer_mean'")
        self.c = float(c)
        self.eps = float(eps)
        self.bonus = bonus
        self.count = count
        self.grad_norm = grad_norm
        # update-round counters (count="updates"): name -> int32 tensor
        self._rounds: dict[str, torch.Tensor] = {}

    def config(self):
        return {**super().config(), "c": self.c, "eps": self.eps, "bonus": self.bonus, "count": self.count,
                "grad_norm": self.grad_norm}

    # -- usage counts ------------------------------------------------------------------
    def on_update_start(self, layers, ctx):
        if self.count != "updates":
            return
        for name, layer in layers.items():
            r = self._rounds.get(name)
            if r is None or r.shape != layer.mask.shape:
                r = torch.zeros(layer.mask.shape, dtype=torch.int32, device=layer.mask.device)
            r = r.to(layer.mask.device)
            # one more round elapsed: the weights active during it count it
            self._rounds[name] = r + layer.mask.to(torch.int32)

    def usage(self, layer) -> torch.Tensor:
        """N_i for ``layer``: steps active (from the sparsifier's counters) or update rounds."""
        if self.count == "updates":
            return self._rounds[layer.name]
        if layer.counter is None:
            raise RuntimeError("DSTEE with count='steps' needs usage counters: construct the Sparsifier with track_usage=True")
        return layer.counter

    def bonus_values(self, layer, ctx) -> torch.Tensor:
        """``bonus(t, N_i)`` for every position of ``layer``."""
        t = ctx.step if self.count == "steps" else ctx.update_index + 1
        log_t = math.log(max(t, 1))
        ratio = log_t / (self.usage(layer).to(torch.float32) + self.eps)
        return ratio.sqrt() if self.bonus == "ucb" else ratio

    def grow_score(self, layer, ctx):
        g = layer.grad_buffer.detach().abs().float()
        if self.c == 0.0:
            return g  # exactly RigL's score
        if self.grad_norm is not None:
            scale = g.max() if self.grad_norm == "layer_max" else g.mean()
            if float(scale) > 0:
                g = g / scale
        return g + self.c * self.bonus_values(layer, ctx)

    # -- state -------------------------------------------------------------------------
    def state_dict(self):
        return {"rounds": {n: r.clone() for n, r in self._rounds.items()}}

    def load_state_dict(self, state):
        self._rounds = {n: r.clone() for n, r in state.get("rounds", {}).items()}
