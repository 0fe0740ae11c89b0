"""Streaming storage: a large compressed layer whose topology updates need no dense float tensor.

Above :data:`~sparsetrain.masks.LARGE_LAYER` positions a compressed layer updates in memory
proportional to nnz when the rule allows (magnitude drop, uniform random or
gradient-magnitude growth, zero-initialised regrowth — :attr:`Algorithm.stream_growth`): the
weight, its gradient and the scores are never materialised. Selections equal the dense path's:
the ``k_drop`` active weights of lowest magnitude, ``k_grow`` positions drawn by
:func:`~sparsetrain.masks.sample_free_positions` (the draws of
:func:`~sparsetrain.masks.sample_positions` on a sorted index set) from the same generator state (which is also what
SET uses for large masked-dense layers), or the ``k_grow`` available positions of largest
dense-gradient magnitude, ranked block of rows by block of rows from the gradient's factors
(:class:`~sparsetrain.sparse.LowRankGrad`) — the same set as the dense ranking up to exact ties.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch

from .. import scores
from ..masks import in_sorted, sample_free_positions
from ..sparse.linear import LowRankGrad
from ..update import layer_record
from .compressed import CompressedStorage

if TYPE_CHECKING:  # pragma: no cover
    from ..masks import LayerState

__all__ = ["StreamingStorage", "GRADIENT_BLOCK", "top_gradient_positions"]

#: entries of the dense gradient formed at once by a streaming gradient-growth update (64 MiB in float32)
GRADIENT_BLOCK = 1 << 24


class StreamingStorage(CompressedStorage):
    """A compressed layer above ``LARGE_LAYER`` positions (see the module docstring)."""

    kind = "streaming"
    index_backed = True

    def holds_pattern(self) -> bool:
        return not (self.module.deferred or self.module.dense_pattern)

    def dense_mask(self) -> torch.Tensor:
        return self.module.mask()

    @torch.no_grad()
    def realise_at(self, positions: torch.Tensor, values: Optional[torch.Tensor] = None) -> None:
        """:meth:`realise` from sorted flat ``positions`` (no dense mask): ``values`` for a deferred
        layer, else the module's weights at those positions."""
        module = self.module
        if values is None:
            values = module.dense_weight().reshape(-1)[positions] if module.dense_pattern else \
                module.active_values().detach()[torch.searchsorted(module.flat_index(), positions)]
        module.set_structure_at(positions, values.to(self.param.device), reallocate=True)

    def stream_growth(self, layer: "LayerState", rule: Any) -> Optional[str]:
        if layer.is_dense or 4 * layer.n_active >= layer.numel:  # the dense path ranks differently there
            return None
        return getattr(rule, "stream_growth", None)

    @torch.no_grad()
    def adopt(self, layer: "LayerState", flat: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Make the stored pattern the sorted flat positions ``flat`` (a loaded state's): values and
        optimizer state stay where the positions were already stored, zero elsewhere."""
        module = self.module
        flat = flat.to(self.param.device, torch.int64)
        cur = module.flat_index()
        if self.holds_pattern() and cur.numel() == flat.numel() and torch.equal(cur, flat):
            return
        values = module.active_values().detach()
        new_values = torch.zeros(flat.numel(), dtype=values.dtype, device=values.device)
        if self.holds_pattern() and cur.numel():
            found = in_sorted(cur, flat)
            new_values[found] = values[torch.searchsorted(cur, flat[found])]
            self.restructure(layer, None, optimizer, new_values, flat)
        else:
            module.set_structure_at(flat, new_values, reallocate=True)

    @torch.no_grad()
    def stream_update(self, layer: "LayerState", k_drop: int, k_grow: int, growth: str,
                      generator: torch.Generator, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        module = self.module
        flat, nnz = module.flat_index(), module.nnz
        values = module.active_values().detach()
        keep = torch.ones(nnz, dtype=torch.bool, device=flat.device)
        if k_drop >= nnz:
            keep.fill_(False)
        elif k_drop > 0:
            keep[torch.topk(values.abs().float(), k_drop, largest=False, sorted=False).indices] = False
        kept = flat[keep]  # sorted: the active set after the drop
        numel = layer.numel
        k_grow = max(0, min(int(k_grow), numel - (nnz - k_drop)))
        exploit = None
        if growth == "gradient":
            grown, exploit = top_gradient_positions(layer, kept, k_grow)
        else:
            grown = sample_free_positions(numel, k_grow, generator, kept)
        fresh = int(torch.count_nonzero(~layer.ever_at(grown))) if k_grow else 0
        # grown positions start at zero, except one dropped and regrown in this same update, which
        # keeps its value (and, in restructure, its optimizer state), as on the dense path
        regrown = in_sorted(flat, grown)
        grown_values = torch.zeros(k_grow, dtype=values.dtype, device=values.device)
        if bool(regrown.any()):
            grown_values[regrown] = values[torch.searchsorted(flat, grown[regrown])]
        new_flat, order = torch.sort(torch.cat([kept, grown]))
        new_values = torch.cat([values[keep], grown_values])[order]
        self.restructure(layer, None, optimizer, new_values, new_flat)
        layer.set_mask(None)  # the pattern just stored is the mask
        layer.mark_ever(grown)
        changed = k_grow - int(torch.count_nonzero(regrown))
        return layer_record(k_drop, k_grow, nnz, fresh, changed, exploit, newly=grown[~regrown])


def top_gradient_positions(layer: "LayerState", taken: torch.Tensor, k: int):
    """The ``k`` positions not in ``taken`` (sorted int64 flat positions) of largest ``|∂L/∂W|``,
    computed from the captured gradient (factors, or a dense tensor under DDP) in blocks of rows
    of about :data:`GRADIENT_BLOCK` entries with a running top-k; also the exploitation degree
    (mean |g| of the grown over mean |g| of the available positions), or ``None``."""
    grad = layer.grad_buffer
    if grad is None:
        raise RuntimeError(f"{layer.name}: no gradient captured for its streaming update")
    out_f, in_f = layer.shape
    block = max(1, GRADIENT_BLOCK // max(in_f, 1))
    best_v = torch.empty(0, dtype=torch.float32, device=taken.device)
    best_p = torch.empty(0, dtype=torch.int64, device=taken.device)
    total_avail, n_avail = 0.0, 0
    starts = torch.arange(0, out_f + block, block, device=taken.device).clamp_(max=out_f) * in_f
    bounds = torch.searchsorted(taken, starts).tolist()  # each block's slice of the sorted positions
    for b, r0 in enumerate(range(0, out_f, block)):
        r1 = min(out_f, r0 + block)
        g = grad.rows(r0, r1).abs_() if isinstance(grad, LowRankGrad) else grad[r0:r1].abs()
        g = g.float().reshape(-1)
        busy = taken[bounds[b]:bounds[b + 1]] - r0 * in_f  # active after the drop: ~nnz
        free = g.numel() - busy.numel()
        n_avail += free
        if free:
            total_avail += float(g.sum()) - float(g[busy].sum())
        g.index_fill_(0, busy, float("-inf"))
        kk = min(k, free)
        if kk <= 0:
            continue
        # only entries above the running k-th best can enter the top k
        floor = float(best_v.min()) if best_v.numel() >= k else None
        v, i = scores.topk_large(g, kk, floor=floor)
        best_v, best_p = torch.cat([best_v, v]), torch.cat([best_p, i + r0 * in_f])
        if best_v.numel() > k:
            keep = torch.topk(best_v, k, sorted=False).indices
            best_v, best_p = best_v[keep], best_p[keep]
    exploit = None
    if k and n_avail and total_avail > 0:
        exploit = float(best_v.sum()) / k / (total_avail / n_avail)
    return best_p, exploit
