"""GraNet (Liu et al., 2021): gradual global magnitude pruning with zero-cost neuroregeneration."""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

from ..errors import InputError, InputTypeError
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

    The pruning is global (one ranking of ``|w|`` over the active weights of every sparse layer).
    A large compressed layer (:mod:`sparsetrain.storage.streaming`) enters that ranking with its
    stored values only (the active weights: memory ∝ nnz), its share of the prune is kept as
    positions, and its update streams: the prune plus the lowest ``|w|`` of the rest dropped,
    gradient growth ranked block of rows by block of rows from the gradient's factors; the same
    selection as the dense path up to exact ties. Such a layer takes the dense path while it is
    denser than 25% (e.g. from the default D_i = 0.5 until the pruning has thinned it).
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
            raise InputTypeError(f"initial_density must be a number in (0, 1], got {initial_density!r}") from None
        if not (0.0 < d_init <= 1.0):
            raise InputError(f"initial_density must lie in (0, 1] (1.0 starts dense), got {initial_density}")
        if d_init < self.density:
            raise InputError(
                f"initial_density={d_init} is below the final density={self.density}: GraNet prunes from "
                "initial_density down to density, so initial_density must be >= density"
            )
        for what, x in (("prune_start", prune_start), ("prune_end", prune_end)):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not x >= 0 or not math.isfinite(x):
                raise InputError(f"{what} must be a fraction of total_steps (float <= 1) or a step count, got {x!r}")
        if type(prune_start) is type(prune_end) and prune_end <= prune_start:
            raise InputError(f"prune_end ({prune_end}) must come after prune_start ({prune_start})")
        self._d_init = d_init
        self.prune_start = prune_start
        self.prune_end = prune_end
        # per update: name -> the weights removed by the global pruning: a bool tensor of the
        # layer's shape, or sorted int64 flat positions on a layer whose update streams
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
        if total_steps is not None:  # no update at or after the run's last step: pruning ends by the last one
            i_f = min(i_f, (int(total_steps) - 1) // dt)
        if i_f <= i0:
            raise InputError(
                f"pruning ends (step {sf}) less than one update interval ({dt}) after it starts (step {s0}): "
                "move prune_end later or use a smaller update_interval"
            )
        return i0, i_f

    def target_density(self, step: int, total_steps: Optional[int]) -> float:
        """The global density an update after optimizer step ``step`` prunes to."""
        i0, i_f = self.prune_rounds(total_steps)
        return cubic_density(step // self.update_schedule.interval, i0, i_f, self._d_init, self.density)

    def check_total_steps(self, total_steps, warn=True):
        super().check_total_steps(total_steps, warn)
        try:
            self.prune_rounds(total_steps)
        except ValueError as exc:
            raise InputError(f"GraNet: {exc}. Pass total_steps=len(loader) * epochs to the Sparsifier.") from None

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
        pruned = self._global_prune(eligible, n_prune, self._streaming(eligible))
        out = {}
        for layer in eligible:
            p = pruned.get(layer.name)
            k_prune = (int(p.numel()) if p.dtype == torch.int64 else int(p.sum())) if p is not None else 0
            remaining = layer.n_active - k_prune
            k_regrow = 0
            if remaining < layer.numel:  # a layer still dense cannot move anything
                k_regrow = min(int(round(ctx.drop_fraction * remaining)), remaining)
            if k_prune or k_regrow:
                if p is not None:
                    self._pruned[layer.name] = p
                out[layer.name] = (k_prune + k_regrow, k_regrow)
        return out

    def _streaming(self, layers) -> set:
        """The names of ``layers`` whose update by this algorithm streams (large compressed ones)."""
        return {l.name for l in layers if l.index_backed and l.storage.stream_growth(l, self) is not None}

    @staticmethod
    def _global_prune(layers, k: int, streaming=frozenset()) -> dict[str, torch.Tensor]:
        """The ``k`` active weights with the smallest |w| over all ``layers``; each keeps its largest.

        A layer named in ``streaming`` is ranked by its stored values only (no dense tensor) and
        its share is returned as sorted flat positions; any other as a bool tensor of its shape."""
        if k <= 0:
            return {}
        flat = []
        for layer in layers:
            if layer.name in streaming:  # the active weights themselves, in row-major order
                s = scores.magnitude(layer.sparse_module.active_values()).float().clone()
                if s.numel():
                    s[torch.argmax(s)] = float("inf")  # never empty a layer
                flat.append(s)
                continue
            s = scores.magnitude(layer.weight).float().reshape(-1).clone()
            active = layer.mask.reshape(-1)
            s[~active] = float("inf")
            top = torch.argmax(s.masked_fill(~active, float("-inf")))
            s[top] = float("inf")  # never empty a layer
            flat.append(s.view(layer.shape))
        chosen = global_topk(flat, k, largest=False)
        out = {}
        for layer, part in zip(layers, chosen):
            if not bool(part.any()):
                continue
            if layer.name in streaming:
                idx = layer.sparse_module.flat_index()
                out[layer.name] = idx[part.to(idx.device)]
            else:
                out[layer.name] = part.to(layer.mask.device)
        return out

    def _pruned_mask(self, layer) -> Optional[torch.Tensor]:
        """This update's pruned weights of ``layer`` as a bool tensor of its shape (dense path)."""
        pruned = self._pruned.get(layer.name)
        if pruned is not None and pruned.dtype == torch.int64:
            mask = torch.zeros(layer.numel, dtype=torch.bool, device=pruned.device)
            mask[pruned] = True
            pruned = mask.view(layer.shape)
        return pruned

    def select_drop(self, layer, k, ctx):
        pruned = self._pruned_mask(layer)
        if pruned is None:
            return super().select_drop(layer, k, ctx)
        rest = k - int(pruned.sum())
        if rest <= 0:
            return pruned
        return pruned | scores.select_lowest(self.drop_score(layer, ctx), layer.mask & ~pruned, rest)

    # -- streaming (large compressed layers) ------------------------------------------
    @property
    def stream_growth(self) -> Optional[str]:
        """``"gradient"``: a large compressed layer sparser than 25% takes the streaming update
        (:meth:`stream_pruned` then the lowest ``|w|``, gradient growth ranked block by block, zero
        regrowth); ``None`` for ``grow_init="init"`` and subclasses that change the criteria."""
        cls = type(self)
        same = (cls.select_drop is GraNet.select_drop and cls.select_grow is Algorithm.select_grow
                and cls.drop_score is Algorithm.drop_score and cls.grow_score is GraNet.grow_score
                and cls._global_prune is GraNet._global_prune)
        return "gradient" if same and self.grow_init == "zero" else None

    def stream_pruned(self, layer, ctx) -> Optional[torch.Tensor]:
        """This update's global pruning in ``layer`` as sorted flat positions, dropped before the
        lowest ``|w|`` of the rest (:meth:`select_drop` on the stored entries), or ``None``."""
        pruned = self._pruned.get(layer.name)
        if pruned is not None and pruned.dtype != torch.int64:  # chosen on the dense view
            pruned = pruned.reshape(-1).nonzero().squeeze(1)
        return pruned

    def grow_score(self, layer, ctx):
        return scores.gradient_magnitude(layer.grad_buffer)
