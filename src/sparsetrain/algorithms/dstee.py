"""DST-EE (Huang et al., 2022): growth by an exploitation + exploration acquisition function."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from ..errors import InputError
from ..bits import SparseCounts
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

    On a large compressed layer (index-backed, :mod:`sparsetrain.storage.streaming`) the update
    streams: the drop ranks the stored values, and the acquisition is computed block of rows by
    block of rows from the gradient's factors, the bonus read from usage counts kept for the
    ever-active positions only (:class:`~sparsetrain.bits.SparseCounts`: the Sparsifier's
    counters for ``count="steps"``, this algorithm's round counts for ``count="updates"``;
    never-active positions have ``N = 0``). Memory: nnz, 12 bytes per ever-active position for
    the counts, and a few temporaries of one block of rows (``GRADIENT_BLOCK`` = 2²⁴ entries,
    64 MiB in float32; a layer smaller than that is one block) — no tensor of the layer's size
    once it is larger than a block. ``grad_norm`` needs the layer's max or mean ``|g|`` before
    ranking: one more pass over the gradient's blocks (a second gradient product per update).
    The selection is the dense path's up to exact ties (``layer_mean``'s mean is summed in
    float64 by blocks and may differ in its last bit).

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
            raise InputError(f"c must be a finite number >= 0 (0 is RigL), got {c!r}")
        if not (isinstance(eps, (int, float)) and eps > 0 and math.isfinite(eps)):
            raise InputError(f"eps must be a finite number > 0, got {eps!r}")
        if bonus not in BONUSES:
            raise InputError(f"unknown bonus {bonus!r}; valid values are {', '.join(BONUSES)}")
        if count not in COUNTS:
            raise InputError(f"unknown count {count!r}; valid values are {', '.join(COUNTS)}")
        if grad_norm not in GRAD_NORMS:
            raise InputError(f"unknown grad_norm {grad_norm!r}; valid values are None, 'layer_max', 'layer_mean'")
        self.c = float(c)
        self.eps = float(eps)
        self.bonus = bonus
        self.count = count
        self.grad_norm = grad_norm
        # update-round counters (count="updates"): name -> int32 tensor, or SparseCounts on an
        # index-backed (large compressed) layer
        self._rounds: dict[str, Any] = {}

    def config(self):
        return {**super().config(), "c": self.c, "eps": self.eps, "bonus": self.bonus, "count": self.count,
                "grad_norm": self.grad_norm}

    # -- usage counts ------------------------------------------------------------------
    def on_update_start(self, layers, ctx):
        if self.count != "updates":
            return
        for name, layer in layers.items():
            r = self._rounds.get(name)
            if layer.index_backed:  # counts of the ever-active positions only, from the index
                if torch.is_tensor(r):  # saved from a dense layer
                    r = SparseCounts.from_dense(r) if r.numel() == layer.numel else None
                if r is None or r.numel != layer.numel:
                    r = SparseCounts(layer.numel, device=layer.param.device)
                r = r.to(layer.param.device)
                r.add(layer.active_positions(), 1)
                self._rounds[name] = r
                continue
            if isinstance(r, SparseCounts):
                r = r.to_dense(layer.shape) if r.numel == layer.numel else None
            if r is None or r.shape != layer.mask.shape:
                r = torch.zeros(layer.mask.shape, dtype=torch.int32, device=layer.mask.device)
            r = r.to(layer.mask.device)
            # one more round elapsed: the weights active during it count it
            self._rounds[name] = r + layer.mask.to(torch.int32)

    @property
    def needs_usage_counters(self) -> bool:  # type: ignore[override]
        """``count="steps"`` reads N_i from the Sparsifier's usage counters."""
        return self.count == "steps"

    def usage(self, layer) -> Any:
        """N_i for ``layer``: steps active (from the sparsifier's counters) or update rounds; an int32
        tensor of the layer's shape, or :class:`~sparsetrain.bits.SparseCounts` on an index-backed layer."""
        if self.count == "updates":
            return self._rounds[layer.name]
        if layer.counter is None:
            raise RuntimeError("DSTEE with count='steps' needs usage counters: construct the Sparsifier with track_usage=True")
        return layer.counter

    def _log_t(self, ctx) -> float:
        t = ctx.step if self.count == "steps" else ctx.update_index + 1
        return math.log(max(t, 1))

    def _bonus(self, usage: torch.Tensor, log_t: float) -> torch.Tensor:
        """``bonus(t, N)`` of int32 usage counts ``N`` (any shape)."""
        ratio = log_t / (usage.to(torch.float32) + self.eps)
        return ratio.sqrt() if self.bonus == "ucb" else ratio

    def bonus_values(self, layer, ctx) -> torch.Tensor:
        """``bonus(t, N_i)`` for every position of ``layer`` (a dense tensor: the dense path)."""
        usage = self.usage(layer)
        if isinstance(usage, SparseCounts):
            usage = usage.to_dense(layer.shape)
        return self._bonus(usage, self._log_t(ctx))

    def grow_score(self, layer, ctx):
        g = layer.grad_buffer.detach().abs().float()
        if self.c == 0.0:
            return g  # exactly RigL's score
        if self.grad_norm is not None:
            scale = g.max() if self.grad_norm == "layer_max" else g.mean()
            if float(scale) > 0:
                g = g / scale
        return g + self.c * self.bonus_values(layer, ctx)

    # -- streaming (large compressed layers) ------------------------------------------
    @property
    def stream_growth(self) -> Optional[str]:
        """``"gradient"``: a large compressed layer takes the streaming update (magnitude drop on
        the stored values, the acquisition ranked block by block, zero regrowth); ``None`` for
        ``grow_init="init"`` and subclasses that change the criteria (global ranking included)."""
        cls = type(self)
        same = (cls.select_drop is Algorithm.select_drop and cls.select_grow is Algorithm.select_grow
                and cls.drop_score is Algorithm.drop_score and cls.grow_score is DSTEE.grow_score
                and cls.bonus_values is DSTEE.bonus_values and cls.usage is DSTEE.usage
                and cls.plan is Algorithm.plan)
        return "gradient" if same and self.grow_init == "zero" else None

    def stream_grow_score(self, layer, ctx, layer_scale):
        """The acquisition of one block of positions from its ``|g|`` (see
        :mod:`sparsetrain.storage.streaming`): the same float32 operations as :meth:`grow_score`
        on the block, the usage counts read from the index-backed counts, the ``grad_norm`` scale
        from ``layer_scale("max" | "mean")``; ``None`` for ``c = 0`` (``|g|`` itself: exactly RigL)."""
        if self.c == 0.0:
            return None
        scale = None
        if self.grad_norm is not None:
            scale = layer_scale("max" if self.grad_norm == "layer_max" else "mean")
            if not float(scale) > 0:
                scale = None
        usage, log_t = self.usage(layer), self._log_t(ctx)

        def score(g: torch.Tensor, start: int, stop: int) -> torch.Tensor:
            # g / scale + c · bonus, in place where the result is bit for bit the dense one's
            # (log_t / x is reciprocal(x) · log_t in torch; a + b == b + a in IEEE arithmetic)
            n = (usage.dense_span(start, stop) if isinstance(usage, SparseCounts)
                 else usage.reshape(-1)[start:stop])
            b = n.to(device=g.device, dtype=torch.float32, copy=True)
            del n
            b.add_(self.eps).reciprocal_().mul_(log_t)
            if self.bonus == "ucb":
                b.sqrt_()
            return b.mul_(self.c).add_(g / scale if scale is not None else g)

        return score

    # -- state -------------------------------------------------------------------------
    def state_dict(self):
        """The round counts (``count="updates"``): an int32 tensor per layer, or on an index-backed
        layer ``{"numel", "index", "counts"}`` (its ever-active positions and their counts)."""
        out = {}
        for n, r in self._rounds.items():
            out[n] = ({"numel": r.numel, "index": r.index.clone(), "counts": r.counts.clone()}
                      if isinstance(r, SparseCounts) else r.clone())
        return {"rounds": out}

    def load_state_dict(self, state):
        rounds = {}
        for n, r in state.get("rounds", {}).items():
            rounds[n] = (SparseCounts(int(r["numel"]), r["index"].clone(), r["counts"].clone())
                         if isinstance(r, dict) else r.clone())
        self._rounds = rounds  # each converted to its layer's form at the next update
