"""GraNet (Liu et al., 2021): gradual global magnitude pruning with zero-cost neuroregeneration."""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

from .. import scores
from .._util import global_topk, to_step
from .base import Algorithm

__all__ = ["GraNet", "cubic_density"]

Bound = Union[float, int]


def cubic_density(i: int, i0: int, i_f: int, d_init: float, d_final: float) -> float:
    """density(i) = D_f + (D_i − D_f)(1 − (i − i₀)/(i_f − i₀))³, constant outside [i₀, i_f]."""
    if i <= i0:
        return d_init
    if i >= i_f:
        return d_final
    return d_final + (d_init - d_final) * (1.0 - (i - i0) / (i_f - i0)) ** 3


class GraNet(Algorithm):
    """Gradual pruning with zero-cost neuroregeneration.

    Starts at ``initial_density`` D_i (ERK by default; ``1.0`` starts dense) and ends at
    ``density`` D_f. Topology updates happen every ΔT steps from ``prune_start`` until the end
    of training. With update rounds ``i = t // ΔT``, ``i₀ = prune_start // ΔT`` and
    ``i_f = prune_end // ΔT`` (``prune_start``/``prune_end`` are fractions of ``total_steps``
    when floats ≤ 1, else steps), an update at round ``i``

    1. prunes globally by magnitude, over all sparse layers at once, down to
       ``round(density(i) · N)`` active weights with
       ``density(i) = D_f + (D_i − D_f)(1 − (i − i₀)/(i_f − i₀))³`` (D_i before i₀, D_f
       after i_f; each layer keeps at least its largest weight);
    2. then, per layer (neuroregeneration), drops ``round(p_t · n_l)`` of the remaining active
       weights by magnitude and regrows as many where the dense gradient is largest
       (positions pruned in step 1 included), ``p_t`` from ``cosine_annealing`` (p₀ = 0.5).

    So the realised global density after every update is exactly ``density(i)`` up to the
    rounding of one global count, and after ``prune_end`` updates keep exploring at D_f.

    Defaults: ERK, D_i = 0.5, ΔT = 100, pruning from step 0 to 110/160 of training (the
    CIFAR recipe), drop fraction ``cosine_annealing`` from 0.5.
    """

    name = "granet"
    needs_dense_grad = True

    def __init__(
        self,
        density: float,
        *,
        initial_density: float = 0.5,
        prune_start: Bound = 0.0,
        prune_end: Bound = 0.6875,
        drop_fraction=0.5,
        drop_schedule: str = "cosine_annealing",
        end=None,
        **kwargs,
    ):
        super().__init__(density, drop_fraction=drop_fraction, drop_schedule=drop_schedule, end=end, **kwargs)
        try:
            d_init = float(initial_density)
        except (TypeError, ValueError):
            raise TypeError(f"initial_density must be a number in (0, 1], got {initial_density!r}") from None
        if not (0.0 < d_init <= 1.0):
            raise ValueError(f"initial_density must lie in (0, 1] (1.0 starts dense), got {initial_density}")
        if d_init < self.density:
            raise ValueError(
                f"initial_density={d_init} is below the final density={self.density}: GraNet prunes from "
                "initial_density down to density, so initial_density must be >= density"
            )
        for what, x in (("prune_start", prune_start), ("prune_end", prune_end)):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not x >= 0 or not math.isfinite(x):
                raise ValueError(f"{what} must be a fraction of total_steps (float <= 1) or a step count, got {x!r}")
        if type(prune_start) is type(prune_end) and prune_end <= prune_start:
            raise ValueError(f"prune_end ({prune_end}) must come after prune_start ({prune_start})")
        self._d_init = d_init
        self.prune_start = prune_start
        self.prune_end = prune_end
        # per update: name -> bool tensor of the weights removed by the global pruning
        self._pruned: dict[str, torch.Tensor] = {}
        # layer sizes and initial counts of every sparse layer (from initial_masks)
        self._sizes: dict[str, int] = {}
        self._init_counts: dict[str, int] = {}
        # every LayerState seen (references, so their counts are current)
        self._seen: dict = {}

    @property
    def initial_density(self) -> float:
        return self._d_init

    def config(self):
        return {**super().config(), "initial_density": self._d_init, "prune_start": self.prune_start,
                "prune_end": self.prune_end}

    # -- schedule ------------------------------------------------------------------------
    def prune_rounds(self, total_steps: Optional[int]) -> tuple[int, int]:
        """``(i₀, i_f)``: the update rounds where pruning starts and ends."""
        dt = self.update_schedule.interval
        s0 = to_step(self.prune_start, total_steps, "prune_start")
        sf = to_step(self.prune_end, total_steps, "prune_end")
        i0, i_f = s0 // dt, sf // dt
        if i_f <= i0:
            raise ValueError(
                f"pruning ends (step {sf}) less than one update interval ({dt}) after it starts (step {s0}): "
                "move prune_end later or use a smaller update_interval"
            )
        return i0, i_f

    def target_density(self, step: int, total_steps: Optional[int]) -> float:
        """The global density an update after optimizer step ``step`` prunes to."""
        i0, i_f = self.prune_rounds(total_steps)
        return cubic_density(step // self.update_schedule.interval, i0, i_f, self._d_init, self.density)

    def check_total_steps(self, total_steps):
        super().check_total_steps(total_steps)
        try:
            self.prune_rounds(total_steps)
        except ValueError as exc:
            raise ValueError(f"GraNet: {exc}. Pass total_steps=len(loader) * epochs to the Sparsifier.") from None

    def is_update_step(self, step, total_steps):
        if not super().is_update_step(step, total_steps):
            return False
        return step >= to_step(self.prune_start, total_steps, "prune_start")

    # -- initial state ---------------------------------------------------------------------
    def initial_masks(self, model, named_params, counts, generator):
        named_params = list(named_params)
        self._sizes = {name: p.numel() for name, p in named_params}
        self._init_counts = {name: int(c) for name, c in counts.items()}
        return None

    def on_update_start(self, layers, ctx):
        self._seen = dict(layers)

    # -- one update ----------------------------------------------------------------------
    def plan(self, layers, ctx):
        self._pruned = {}
        names = {l.name for l in layers}
        total = sum(self._sizes.values()) if self._sizes else sum(l.numel for l in layers)
        current = sum(l.n_active for l in layers)
        for name in self._sizes:
            if name not in names:  # no gradient this time: not updated, but counted
                current += self._seen[name].n_active if name in self._seen else self._init_counts.get(name, 0)
        keep = int(round(self.target_density(ctx.step, ctx.total_steps) * total))
        # pinned layers stay dense; layers the distribution capped dense are pruned (as the reference does)
        eligible = [l for l in layers if not l.pinned and l.n_active > 0]
        n_prune = max(0, current - keep)
        n_prune = min(n_prune, sum(l.n_active - 1 for l in eligible))
        pruned = self._global_prune(eligible, n_prune)
        out = {}
        for layer in eligible:
            p = pruned.get(layer.name)
            k_prune = int(p.sum()) if p is not None else 0
            remaining = layer.n_active - k_prune
            k_regrow = 0
            if remaining < layer.numel:  # a layer still dense cannot move anything
                k_regrow = min(int(round(ctx.drop_fraction * remaining)), remaining)
            if k_prune or k_regrow:
                if p is not None:
                    self._pruned[layer.name] = p
                out[layer.name] = (k_prune + k_regrow, k_regrow)
        return out

    @staticmethod
    def _global_prune(layers, k: int) -> dict[str, torch.Tensor]:
        """The ``k`` active weights with the smallest |w| over all ``layers``; each keeps its largest."""
        if k <= 0:
            return {}
        flat = []
        for layer in layers:
            s = scores.magnitude(layer.weight).float().reshape(-1).clone()
            active = layer.mask.reshape(-1)
            s[~active] = float("inf")
            top = torch.argmax(s.masked_fill(~active, float("-inf")))
            s[top] = float("inf")  # never empty a layer
            flat.append(s.view(layer.shape))
        chosen = global_topk(flat, k, largest=False)
        return {layer.name: part.to(layer.mask.device) for layer, part in zip(layers, chosen) if bool(part.any())}

    def select_drop(self, layer, k, ctx):
        pruned = self._pruned.get(layer.name)
        if pruned is None:
            return super().select_drop(layer, k, ctx)
        rest = k - int(pruned.sum())
        if rest <= 0:
            return pruned
        return pruned | scores.select_lowest(self.drop_score(layer, ctx), layer.mask & ~pruned, rest)

    def grow_score(self, layer, ctx):
        return scores.gradient_magnitude(layer.grad_buffer)
