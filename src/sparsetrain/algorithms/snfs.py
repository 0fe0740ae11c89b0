"""SNFS / sparse momentum (Dettmers & Zettlemoyer, 2019): growth and redistribution by momentum."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from ..errors import InputError
from .base import Algorithm

__all__ = ["SNFS", "REDISTRIBUTIONS", "apportion"]

#: How the regrowth budget moves across layers.
REDISTRIBUTIONS = ("momentum", "none")


def apportion(total: int, weights: Sequence[float], caps: Sequence[int]) -> list[int]:
    """Split the integer ``total`` into parts proportional to ``weights``, part ``i`` at most ``caps[i]``.

    Water-filling: a part whose proportional share exceeds its cap gets the cap and the rest is
    shared again among the others; what the floors leave goes to the largest fractional
    remainders (ties: lowest index). The parts sum to ``total`` exactly. If every part with room
    left has zero weight, the room itself is used as the weight.
    """
    n = len(weights)
    caps = [max(0, int(c)) for c in caps]
    total = int(total)
    if total < 0:
        raise ValueError(f"cannot apportion a negative total ({total})")
    if total > sum(caps):
        raise ValueError(f"cannot apportion {total} into parts capped at {sum(caps)} in all")
    w = [float(x) if math.isfinite(float(x)) and float(x) > 0 else 0.0 for x in weights]
    out = [0] * n
    capped: set[int] = set()
    while True:
        free = [i for i in range(n) if i not in capped and caps[i] > 0]
        remaining = total - sum(caps[i] for i in capped)
        if remaining <= 0 or not free:
            break
        ws = {i: w[i] for i in free}
        if sum(ws.values()) <= 0:
            ws = {i: float(caps[i]) for i in free}
        wsum = sum(ws.values())
        ideal = {i: remaining * ws[i] / wsum for i in free}
        over = [i for i in free if ideal[i] > caps[i]]
        if over:
            capped.update(over)
            continue
        for i in free:
            out[i] = min(caps[i], int(math.floor(ideal[i] + 1e-9)))
        order = sorted(free, key=lambda i: (-(ideal[i] - out[i]), i))
        left = remaining - sum(out[i] for i in free)
        while left > 0:  # one pass suffices in exact arithmetic; loop for float slop
            for i in order:
                if left > 0 and out[i] < caps[i]:
                    out[i] += 1
                    left -= 1
        while left < 0:
            for i in reversed(order):
                if left < 0 and out[i] > 0:
                    out[i] -= 1
                    left += 1
        break
    for i in capped:
        out[i] = caps[i]
    assert sum(out) == total and all(0 <= out[i] <= caps[i] for i in range(n))
    return out


class SNFS(Algorithm):
    """Sparse momentum: magnitude drop, growth where |momentum| is largest, budget moved across layers.

    At every optimizer step the momentum of each sparse layer is updated from that step's
    *dense* gradient ``g`` (never masked, so inactive positions have momentum too)::

        m ← β m + (1 − β) g                      (β = ``momentum``, 0.9)

    At an update with drop fraction ``p_t``, every layer ``l`` drops ``round(p_t n_l)`` active
    weights by magnitude; the total dropped is regrown, shared across layers in proportion to
    each layer's mean ``|m|`` over its active weights (exact integer apportionment, never more
    than a layer's free positions, so the total active count stays exactly constant), and
    within a layer at the inactive positions with the largest ``|m|``.

    Defaults: ERK, ``cosine_annealing`` drop fraction from ``p_0 = 0.5``, ΔT = 100, updates
    until the end of training (``total_steps`` is required). ``redistribution="none"`` keeps
    every layer's count (growth by momentum only).

    Layers that start dense (pinned with ``dense=``, or capped by the distribution) are never
    updated. The momentum is part of :meth:`state_dict`, so a resumed run continues exactly.

    **Dense by definition, also on large compressed layers.** The growth criterion is the
    momentum of *every* position, inactive ones included, and an exponential average of dense
    gradients is nonzero almost everywhere (its rank grows with every batch), so it has no
    representation ∝ nnz: SNFS keeps a float32 tensor of the layer's full size for the whole run
    (4 bytes per position), forms the dense gradient at every step to update it, and ranks it
    over all free positions at each update. Its updates therefore take the dense path on every
    layer, and the Sparsifier says so for large compressed ones (:attr:`dense_note`). A streaming
    variant would have to change the method (e.g. momentum kept only for the active and recently
    active positions), which would no longer be SNFS.
    """

    #: what SNFS keeps dense on large compressed layers, and why (the Sparsifier's warning)
    dense_note = ("SNFS grows where the momentum of the dense gradient is largest among all free positions, so it "
                  "keeps that momentum for every position (a float32 tensor of the layer's full size, held for the "
                  "whole run) and forms the layer's dense gradient at every step to update it; this has no form "
                  "proportional to nnz, so its updates take the dense path")

    name = "snfs"
    needs_dense_grad = True
    dense_grad_every_step = True

    def __init__(self, density: float, *, momentum: float = 0.9, redistribution: str = "momentum",
                 drop_fraction=0.5, drop_schedule: str = "cosine_annealing", end=None, **kwargs):
        super().__init__(density, drop_fraction=drop_fraction, drop_schedule=drop_schedule, end=end, **kwargs)
        if not (isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0):
            raise InputError(f"momentum must be a number in [0, 1) (0.9 in the paper), got {momentum!r}")
        if redistribution not in REDISTRIBUTIONS:
            raise InputError(f"unknown redistribution {redistribution!r}; valid values are {', '.join(REDISTRIBUTIONS)}")
        self.momentum = float(momentum)
        self.redistribution = redistribution
        #: name -> exponential moving average of the dense gradient (float32)
        self._ema: dict[str, torch.Tensor] = {}

    def config(self):
        return {**super().config(), "momentum": self.momentum, "redistribution": self.redistribution}

    # -- momentum ----------------------------------------------------------------------
    def on_step(self, layers, step):
        beta = self.momentum
        for name, layer in layers.items():
            if layer.frozen:
                continue
            g = layer.grad_buffer
            if g is None or layer.grad_buffer_step != step - 1:
                continue  # no gradient reached this layer at this step: its momentum is kept
            g = g.detach().float()
            if not bool(torch.isfinite(g).all()):
                continue  # a non-finite gradient would poison the average for good
            m = self._ema.get(name)
            if m is None or m.shape != g.shape:
                self._ema[name] = g.mul(1.0 - beta)
            else:
                if m.device != g.device:
                    m = m.to(g.device)
                self._ema[name] = m.mul_(beta).add_(g, alpha=1.0 - beta)

    def momentum_of(self, layer) -> torch.Tensor:
        """The layer's momentum (zeros before the first step)."""
        m = self._ema.get(layer.name)
        if m is None:
            return torch.zeros(layer.shape, dtype=torch.float32, device=layer.mask.device)
        return m

    def layer_weight(self, layer) -> float:
        """Mean ``|momentum|`` over the layer's active weights: its share of the regrowth budget."""
        if layer.n_active == 0:
            return 0.0
        m = self.momentum_of(layer).abs()
        return float(m[layer.mask.to(m.device)].mean())

    # -- one update ----------------------------------------------------------------------
    def plan(self, layers, ctx):
        eligible = [l for l in layers if not l.frozen]
        drops = [min(int(round(ctx.drop_fraction * l.n_active)), l.n_active) for l in eligible]
        if self.redistribution == "none":
            return {l.name: (k, k) for l, k in zip(eligible, drops) if k > 0}
        total = sum(drops)
        if total == 0:
            return {}
        caps = [l.numel - l.n_active + k for l, k in zip(eligible, drops)]
        grows = apportion(total, [self.layer_weight(l) for l in eligible], caps)
        return {l.name: (kd, kg) for l, kd, kg in zip(eligible, drops, grows) if kd or kg}

    def grow_score(self, layer, ctx):
        return self.momentum_of(layer).abs()

    # -- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"momentum": {n: m.clone() for n, m in self._ema.items()}}

    def load_state_dict(self, state):
        self._ema = {n: m.clone() for n, m in state.get("momentum", {}).items()}
