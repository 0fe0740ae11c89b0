"""Streaming storage: a large compressed layer whose topology updates need no dense float tensor.

Above :data:`~sparsetrain.masks.LARGE_LAYER` positions a compressed layer updates in memory
proportional to nnz plus its bool masks when the rule allows (magnitude drop, uniform random or
gradient-magnitude growth, zero-initialised regrowth — :attr:`Algorithm.stream_growth`): the
weight, its gradient and the scores are never materialised. Selections equal the dense path's:
the ``k_drop`` active weights of lowest magnitude, ``k_grow`` positions drawn by
:func:`~sparsetrain.masks.sample_positions` from the same generator state (which is also what
SET uses for large masked-dense layers), or the ``k_grow`` available positions of largest
dense-gradient magnitude, ranked block of rows by block of rows from the gradient's factors
(:class:`~sparsetrain.sparse.LowRankGrad`) — the same set as the dense ranking up to exact ties.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch

from .. import scores
from ..masks import sample_positions
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

    def stream_growth(self, layer: "LayerState", rule: Any) -> Optional[str]:
        if layer.is_dense or 4 * layer.n_active >= layer.numel:  # the dense path ranks differently there
            return None
        return getattr(rule, "stream_growth", None)

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
        old = layer.mask.reshape(-1)
        taken = old.clone()
        taken[flat[~keep]] = False  # after the drop; becomes the new mask below
        k_grow = max(0, min(int(k_grow), taken.numel() - (nnz - k_drop)))
        exploit = None
        if growth == "gradient":
            grown, exploit = top_gradient_positions(layer, taken, k_grow)
            taken[grown] = True
        else:
            grown = sample_positions(taken.numel(), k_grow, generator, taken)
        fresh = int(torch.count_nonzero(~layer.ever_active.reshape(-1)[grown])) if k_grow else 0
        # grown positions start at zero, except one dropped and regrown in this same update, which
        # keeps its value (and, in restructure, its optimizer state), as on the dense path
        regrown = old[grown]
        grown_values = torch.zeros(k_grow, dtype=values.dtype, device=values.device)
        if bool(regrown.any()):
            grown_values[regrown] = values[torch.searchsorted(flat, grown[regrown])]
        new_flat, order = torch.sort(torch.cat([flat[keep], grown]))
        new_values = torch.cat([values[keep], grown_values])[order]
        new = taken.view(layer.shape)
        self.restructure(layer, new, optimizer, new_values, new_flat)
        layer.set_mask(new)
        layer.ever_active.reshape(-1)[grown] = True
        changed = k_grow - int(torch.count_nonzero(regrown))
        return layer_record(k_drop, k_grow, nnz, fresh, changed, exploit, newly=grown[~regrown])


def top_gradient_positions(layer: "LayerState", taken: torch.Tensor, k: int):
    """The ``k`` positions not in ``taken`` (flat bool) of largest ``|∂L/∂W|``, computed from the
    captured gradient (factors, or a dense tensor under DDP) in blocks of rows of about
    :data:`GRADIENT_BLOCK` entries with a running top-k; also the exploitation degree (mean |g| of
    the grown over mean |g| of the available positions), or ``None``."""
    grad = layer.grad_buffer
    if grad is None:
        raise RuntimeError(f"{layer.name}: no gradient captured for its streaming update")
    out_f, in_f = layer.shape
    block = max(1, GRADIENT_BLOCK // max(in_f, 1))
    best_v = torch.empty(0, dtype=torch.float32, device=taken.device)
    best_p = torch.empty(0, dtype=torch.int64, device=taken.device)
    total_avail, n_avail = 0.0, 0
    for r0 in range(0, out_f, block):
        r1 = min(out_f, r0 + block)
        g = grad.rows(r0, r1).abs_() if isinstance(grad, LowRankGrad) else grad[r0:r1].abs()
        g = g.float().reshape(-1)
        busy = taken[r0 * in_f:r1 * in_f].nonzero().squeeze(1)  # active after the drop: ~nnz
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
