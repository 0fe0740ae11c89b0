"""Streaming storage: a large compressed layer whose topology updates need no dense float tensor.

Above :data:`~sparsetrain.masks.LARGE_LAYER` positions a compressed layer updates in memory
proportional to nnz (plus one block of gradient rows) when the rule allows: the weight, its
gradient and the scores are never materialised. A rule streams when its ``stream_growth`` is
``"random"`` or ``"gradient"`` (zero-initialised regrowth); it may refine the update with three
optional hooks, which see the layer's stored entries only:

- ``rule.stream_pruned(layer, ctx)``: sorted flat positions dropped first (GraNet's share of its
  global pruning), or ``None``; the rest of the ``k_drop`` are the lowest drop scores;
- ``rule.stream_drop_score(layer, active, ctx)``: the drop score of the ``nnz`` stored entries
  (:class:`Active`: sorted flat positions, values, value gradients; the lowest are dropped), or
  ``None`` for ``|w|``. MEST's is ``|w| + λ|g|``;
- ``rule.stream_grow_score(layer, ctx, scale)``: for gradient growth, a function
  ``score(g, start, stop)`` turning ``|∂L/∂W|`` of flat positions ``start .. stop - 1`` (one
  block of rows, float32; not to be modified in place) into grow scores, or ``None`` for
  ``|∂L/∂W|`` itself. ``scale(how)`` is the layer's ``"max"`` or ``"mean"`` of ``|∂L/∂W|``, by
  one more pass over the blocks (:func:`gradient_scale`). DST-EE adds its exploration bonus from
  its index-backed usage counts (and divides by the scale for ``grad_norm``).

Selections equal the dense path's: the ``k_drop`` stored entries of lowest drop score (ranked in
the same row-major order as the dense path ranks the active weights), ``k_grow`` positions drawn
by :func:`~sparsetrain.masks.sample_free_positions` (the draws of
:func:`~sparsetrain.masks.sample_positions` on a sorted index set) from the same generator state
(which is also what SET and MEST use for large masked-dense layers), or the ``k_grow`` available
positions of highest grow score, ranked block of rows by block of rows from the gradient's factors
(:class:`~sparsetrain.sparse.LowRankGrad`) — the same set as the dense ranking up to exact ties.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import torch

from .. import scores
from ..masks import in_sorted, sample_free_positions
from ..sparse.linear import LowRankGrad
from ..update import layer_record
from .compressed import CompressedStorage

if TYPE_CHECKING:  # pragma: no cover
    from ..masks import LayerState

__all__ = ["StreamingStorage", "GRADIENT_BLOCK", "Active", "lowest", "gradient_blocks", "gradient_scale",
           "top_gradient_positions"]

#: entries of the dense gradient formed at once by a streaming gradient-growth update (64 MiB in float32)
GRADIENT_BLOCK = 1 << 24


@dataclass
class Active:
    """The stored entries of a large compressed layer, all ``nnz`` long and in row-major order:
    ``positions`` (sorted int64 flat positions), ``values`` (the weights) and ``grad`` (the
    last backward's value gradient at those positions, or ``None``)."""

    positions: torch.Tensor
    values: torch.Tensor
    grad: Optional[torch.Tensor]


def lowest(score: torch.Tensor, k: int, among: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bool tensor over the entries of the 1-d ``score``: ``True`` for the ``k`` lowest (of those
    where ``among`` is ``True``, if given). Ranks the same vector the dense path ranks (its
    candidates in row-major order, ``torch.topk``), so it picks the same entries."""
    out = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    if k <= 0:
        return out
    idx = among.nonzero().squeeze(1) if among is not None else None
    n = idx.numel() if idx is not None else score.numel()
    if k > n:
        raise RuntimeError(f"cannot drop {k} of {n} entries")
    if idx is None:
        if k == n:
            return out.fill_(True)
        out[torch.topk(score.float(), k, largest=False, sorted=False).indices] = True
    elif k == n:
        out[idx] = True
    else:
        out[idx[torch.topk(score[idx].float(), k, largest=False, sorted=False).indices]] = True
    return out


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

    def _drop(self, layer: "LayerState", k: int, flat: torch.Tensor, values: torch.Tensor, rule: Any,
              ctx: Any) -> torch.Tensor:
        """Bool over the stored entries: the rule's pruned positions, then the lowest drop scores."""
        if k <= 0:
            return torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        first = getattr(rule, "stream_pruned", None)
        pruned = first(layer, ctx) if first is not None else None
        make = getattr(rule, "stream_drop_score", None)
        score = None
        if make is not None:
            g = self.module.values.grad
            score = make(layer, Active(flat, values, g[:flat.numel()].detach() if g is not None else None), ctx)
        if score is None:
            score = values.abs()
        elif score.shape != values.shape:  # an algorithm bug, never user input
            raise RuntimeError(f"{type(getattr(rule, 'algorithm', rule)).__name__}'s stream_drop_score for "
                               f"{layer.name} has shape {tuple(score.shape)}, not one score per stored entry")
        if pruned is None:
            return lowest(score, k)
        dropped = in_sorted(pruned.to(flat.device, torch.int64), flat)
        rest = k - int(torch.count_nonzero(dropped))
        if rest > 0:
            dropped |= lowest(score, rest, among=~dropped)
        return dropped

    @torch.no_grad()
    def stream_update(self, layer: "LayerState", k_drop: int, k_grow: int, growth: str,
                      generator: torch.Generator, optimizer: torch.optim.Optimizer, rule: Any = None,
                      ctx: Any = None) -> dict[str, float]:
        """Drop ``k_drop`` stored entries (``rule.stream_pruned`` first, then the lowest
        ``rule.stream_drop_score``, default ``|w|``) and grow ``k_grow`` positions by ``growth``
        (``"random"``, or ``"gradient"`` ranked by ``rule.stream_grow_score``) without dense
        temporaries; returns the layer's update record."""
        module = self.module
        flat, nnz = module.flat_index(), module.nnz
        values = module.active_values().detach()
        dropped = self._drop(layer, min(k_drop, nnz), flat, values, rule, ctx)
        if int(torch.count_nonzero(dropped)) != min(k_drop, nnz):
            # an algorithm bug, never user input
            name = type(getattr(rule, "algorithm", rule)).__name__
            raise RuntimeError(f"{name} selected an inconsistent drop set in {layer.name}")
        keep = ~dropped
        kept = flat[keep]  # sorted: the active set after the drop
        numel = layer.numel
        k_grow = max(0, min(int(k_grow), numel - kept.numel()))
        exploit = None
        if growth == "gradient":
            make = getattr(rule, "stream_grow_score", None)
            score = make(layer, ctx, lambda how: gradient_scale(layer, how)) if make is not None and k_grow else None
            grown, exploit = top_gradient_positions(layer, kept, k_grow, score)
        elif growth == "random":
            grown = sample_free_positions(numel, k_grow, generator, kept)
        else:
            raise ValueError(f"unknown streaming growth {growth!r}; valid: 'random', 'gradient'")
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


def gradient_blocks(layer: "LayerState") -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(start, stop, |g|)`` for consecutive blocks of rows of about :data:`GRADIENT_BLOCK`
    entries: ``|∂L/∂W|`` at flat positions ``start .. stop - 1`` as a 1-d float32 tensor, formed
    from the captured gradient (factors, or a dense tensor under DDP) one block at a time."""
    grad = layer.grad_buffer
    if grad is None:
        raise RuntimeError(f"{layer.name}: no gradient captured for its streaming update")
    out_f, in_f = layer.shape
    block = max(1, GRADIENT_BLOCK // max(in_f, 1))
    for r0 in range(0, out_f, block):
        r1 = min(out_f, r0 + block)
        g = grad.rows(r0, r1).abs_() if isinstance(grad, LowRankGrad) else grad[r0:r1].abs()
        yield r0 * in_f, r1 * in_f, g.float().reshape(-1)


def gradient_scale(layer: "LayerState", how: str) -> torch.Tensor:
    """The layer's ``max`` or ``mean`` of ``|∂L/∂W|`` over all positions (a 0-d float32 tensor),
    by one pass over :func:`gradient_blocks`. The max equals the dense one exactly; the mean is
    summed block by block in float64, so it can differ from the dense float32 mean in the last bit."""
    if how == "max":
        best = None
        for _, _, g in gradient_blocks(layer):
            m = g.max()
            best = m if best is None else torch.maximum(best, m)
        return best
    if how == "mean":
        total = 0.0
        for _, _, g in gradient_blocks(layer):
            total += float(g.sum(dtype=torch.float64))
        return torch.tensor(total / layer.numel, dtype=torch.float32)
    raise ValueError(f"unknown gradient scale {how!r}; valid: 'max', 'mean'")


def top_gradient_positions(layer: "LayerState", taken: torch.Tensor, k: int,
                           score: Optional[Callable[[torch.Tensor, int, int], torch.Tensor]] = None):
    """The ``k`` positions not in ``taken`` (sorted int64 flat positions) of highest grow score,
    computed from the captured gradient in blocks of rows (:func:`gradient_blocks`) with a running
    top-k; the score is ``|∂L/∂W|``, or ``score(|g|, start, stop)`` of each block (a rule's
    ``stream_grow_score``). Also returns the exploitation degree (mean ``|g|`` of the grown over
    mean ``|g|`` of the available positions), or ``None``."""
    best_v = torch.empty(0, dtype=torch.float32, device=taken.device)
    best_p = torch.empty(0, dtype=torch.int64, device=taken.device)
    best_g = best_v
    total_avail, n_avail = 0.0, 0
    if k <= 0:
        return best_p, None
    for lo, hi, g in gradient_blocks(layer):
        b0, b1 = torch.searchsorted(taken, torch.tensor([lo, hi], dtype=torch.int64, device=taken.device)).tolist()
        busy = taken[b0:b1] - lo  # active after the drop: ~nnz
        free = g.numel() - busy.numel()
        n_avail += free
        if free:
            total_avail += float(g.sum()) - float(g[busy].sum())
        s = g if score is None else score(g, lo, hi)
        s.index_fill_(0, busy, float("-inf"))
        kk = min(k, free)
        if kk <= 0:
            continue
        # only entries above the running k-th best can enter the top k
        floor = float(best_v.min()) if best_v.numel() >= k else None
        v, i = scores.topk_large(s, kk, floor=floor)
        best_v, best_p = torch.cat([best_v, v]), torch.cat([best_p, i + lo])
        best_g = best_v if score is None else torch.cat([best_g, g[i]])
        if best_v.numel() > k:
            keep = torch.topk(best_v, k, sorted=False).indices
            best_v, best_p = best_v[keep], best_p[keep]
            best_g = best_v if score is None else best_g[keep]
    exploit = None
    if n_avail and total_avail > 0:
        exploit = float(best_g.sum()) / k / (total_avail / n_avail)
    return best_p, exploit
