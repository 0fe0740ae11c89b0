"""Drop and grow ranked across all layers at once (``ranking="global"``), for RigL, SET, DST-EE, ...

With per-layer ranking (the papers' default) every layer drops and regrows ``round(p_t n_l)``
weights, so each layer keeps its count. With global ranking one update drops the
``K = round(p_t · Σ_l n_l)`` active weights with the lowest drop score over *all* layers and
grows the ``K`` positions with the highest grow score over all positions inactive after the
drop; per-layer counts move, the global count stays exactly constant. Scores must be
comparable across layers: ``|w|``, ``|∂L/∂w|`` (RigL), uniform random (SET: growth lands in
proportion to the free positions), DST-EE's acquisition function.

Every layer keeps at least its highest-scoring active weight. Layers dense from the start
(pinned or capped by the distribution) are left out, as SET's ``drop="signed"`` (a per-layer
rule) cannot be combined with global ranking.

Use the mixin on any :class:`~sparsetrain.algorithms.Algorithm` whose selection is by
``drop_score``/``grow_score``, or the ready classes::

    st.Sparsifier(model, opt, GlobalRigL(density=0.1), total_steps=T)
    st.Sparsifier(model, opt, GlobalSET(density=0.1, ranking="layer"), total_steps=T)  # = SET
"""

from __future__ import annotations

from typing import Type

import torch

from ..errors import InputError
from .._util import global_topk
from .base import Algorithm
from .dstee import DSTEE
from .rigl import RigL
from .set import SET

__all__ = ["GlobalRanking", "RANKINGS", "with_global_ranking", "GlobalRigL", "GlobalSET", "GlobalDSTEE"]

#: ``"layer"``: each layer drops and grows its own share; ``"global"``: one ranking over all layers.
RANKINGS = ("layer", "global")


class GlobalRanking:
    """Mixin adding ``ranking="layer" | "global"`` to an algorithm (put it first in the bases)."""

    #: the ranking used when ``ranking=`` is not given
    default_ranking = "layer"

    def __init__(self, *args, ranking=None, **kwargs):
        super().__init__(*args, **kwargs)
        ranking = self.default_ranking if ranking is None else ranking
        if ranking not in RANKINGS:
            raise InputError(f"unknown ranking {ranking!r}; valid values are {', '.join(RANKINGS)}")
        if ranking == "global" and getattr(self, "drop", None) == "signed":
            raise InputError("drop='signed' is a per-layer rule; it cannot be combined with ranking='global'")
        self.ranking = ranking
        self._drop_sel: dict[str, torch.Tensor] = {}
        self._grow_sel: dict[str, torch.Tensor] = {}

    def config(self):
        return {**super().config(), "ranking": self.ranking}

    def plan(self, layers, ctx):
        if self.ranking == "layer":
            return super().plan(layers, ctx)
        self._drop_sel, self._grow_sel = {}, {}
        eligible = [l for l in layers if not l.frozen and l.n_active > 0]
        if not eligible:
            return {}
        k = int(round(ctx.drop_fraction * sum(l.n_active for l in eligible)))
        k = min(k, sum(l.n_active - 1 for l in eligible))
        if k <= 0:
            return {}
        # global drop: the k lowest drop scores; each layer keeps its best active weight
        flat = []
        for layer in eligible:
            s = self.drop_score(layer, ctx).detach().float().reshape(-1).cpu().clone()
            active = layer.mask.reshape(-1).cpu()
            s[~active] = float("inf")
            s[torch.argmax(s.masked_fill(~active, float("-inf")))] = float("inf")
            flat.append(s.view(layer.shape))
        drop = dict(zip((l.name for l in eligible), global_topk(flat, k, largest=False)))
        # global growth: the k highest grow scores among positions inactive after the drop
        flat = []
        for layer in eligible:
            available = (~(layer.mask.cpu() & ~drop[layer.name])).reshape(-1)
            s = self.grow_score(layer, ctx).detach().float().reshape(-1).cpu().clone()
            s = torch.nan_to_num(s, nan=float("-inf"))
            s[~available] = float("-inf")
            flat.append(s.view(layer.shape))
        grow = dict(zip((l.name for l in eligible), global_topk(flat, k, largest=True)))
        out = {}
        for layer in eligible:
            d, g = drop[layer.name], grow[layer.name]
            kd, kg = int(d.sum()), int(g.sum())
            if kd or kg:
                self._drop_sel[layer.name] = d.to(layer.mask.device)
                self._grow_sel[layer.name] = g.to(layer.mask.device)
                out[layer.name] = (kd, kg)
        return out

    def select_drop(self, layer, k, ctx):
        sel = self._drop_sel.get(layer.name) if self.ranking == "global" else None
        if sel is not None and int(sel.sum()) == k:
            return sel
        return super().select_drop(layer, k, ctx)

    def select_grow(self, layer, k, available, ctx):
        sel = self._grow_sel.get(layer.name) if self.ranking == "global" else None
        if sel is not None and int(sel.sum()) == k and not bool((sel & ~available).any()):
            return sel
        return super().select_grow(layer, k, available, ctx)


def with_global_ranking(cls: Type[Algorithm], default: str = "global") -> Type[Algorithm]:
    """``cls`` with the :class:`GlobalRanking` mixin, ``ranking=default`` unless given."""
    name = f"Global{cls.__name__}"
    doc = f"{cls.__name__} with drop and grow ranked across layers (``ranking='{default}'`` by default).\n\n" \
          f"See :mod:`sparsetrain.algorithms.global_ranking`."
    return type(name, (GlobalRanking, cls), {"default_ranking": default, "__doc__": doc, "__module__": __name__,
                                             "__qualname__": name})


GlobalRigL = with_global_ranking(RigL)
GlobalSET = with_global_ranking(SET)
GlobalDSTEE = with_global_ranking(DSTEE)
