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
  block of rows, float32; not to be modified in place nor kept: the next block overwrites it)
  into grow scores, or ``None`` for ``|∂L/∂W|`` itself. ``scale(how)`` is the layer's ``"max"``
  or ``"mean"`` of ``|∂L/∂W|``, by one more pass over the blocks (:func:`gradient_scale`). DST-EE
  adds its exploration bonus from its index-backed usage counts (and divides by the scale for
  ``grad_norm``).

Selections equal the dense path's: the ``k_drop`` stored entries of lowest drop score (ranked in
the same row-major order as the dense path ranks the active weights), ``k_grow`` positions drawn
by :func:`~sparsetrain.masks.sample_free_positions` (the draws of
:func:`~sparsetrain.masks.sample_positions` on a sorted index set) from the same generator state
(which is also what SET and MEST use for large masked-dense layers), or the ``k_grow`` available
positions of highest grow score, ranked block of rows by block of rows from the gradient's factors
(:class:`~sparsetrain.sparse.LowRankGrad`) — the same set as the dense ranking up to exact ties
(:func:`top_gradient_positions`: thresholds screen each block, a chunk maximum at a time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import torch

from .. import scores
from ..masks import in_sorted, sample_free_positions
from ..sparse.lowrank import LowRankGrad
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
    def realise_at(self, positions: torch.Tensor, values: Optional[torch.Tensor] = None,
                   optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """:meth:`realise` from sorted flat ``positions`` (no dense mask): ``values`` for a deferred
        layer, else the module's weights at those positions; ``optimizer``: state it already holds for
        ``values`` follows the positions."""
        module = self.module
        if values is None:
            values = module.dense_weight().reshape(-1)[positions] if module.dense_pattern else \
                module.active_values().detach()[torch.searchsorted(module.flat_index(), positions)]
        old = self._pattern()
        module.set_structure_at(positions, values.to(self.param.device), reallocate=True)
        self._carry_state(optimizer, old)

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
        keep_at = (~dropped).nonzero().squeeze(1)  # where the kept entries are stored now
        kept = flat.index_select(0, keep_at)  # sorted: the active set after the drop
        numel = layer.numel
        k_grow = max(0, min(int(k_grow), numel - kept.numel()))
        exploit = None
        if growth == "gradient":
            make = getattr(rule, "stream_grow_score", None)
            score = make(layer, ctx, lambda how: gradient_scale(layer, how)) if make is not None and k_grow else None
            grown, exploit = top_gradient_positions(layer, kept, k_grow, score)  # sorted
        elif growth == "random":
            grown = torch.sort(sample_free_positions(numel, k_grow, generator, kept)).values
        else:
            raise ValueError(f"unknown streaming growth {growth!r}; valid: 'random', 'gradient'")
        fresh = int(torch.count_nonzero(~layer.ever_at(grown))) if k_grow else 0
        new_flat, source, regrown = _merge(flat, dropped, keep_at, kept, grown)
        # grown positions start at zero, except one dropped and regrown in this same update, which
        # keeps its value (and, in restructure, its optimizer state), as on the dense path
        stored = source >= 0
        new_values = torch.zeros(new_flat.numel(), dtype=values.dtype, device=values.device)
        if nnz:
            new_values = torch.where(stored, values.index_select(0, source.clamp(min=0)), new_values)
        self.restructure(layer, None, optimizer, new_values, new_flat, source=source)
        layer.set_mask(None)  # the pattern just stored is the mask
        layer.mark_ever(grown)
        changed = k_grow - int(torch.count_nonzero(regrown))
        return layer_record(k_drop, k_grow, nnz, fresh, changed, exploit, newly=grown[~regrown])


def _merge(flat: torch.Tensor, dropped: torch.Tensor, keep_at: torch.Tensor, kept: torch.Tensor,
           grown: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The new pattern (sorted flat positions) from the old one (``flat``, its ``dropped`` entries,
    ``keep_at`` the indices of the others, ``kept`` their positions) and the sorted ``grown``
    positions; for each new entry the index of its old entry (``-1`` for none): kept entries and
    grown ones that were stored (dropped and regrown); and which grown ones were stored. One
    binary search of the grown positions in the old pattern instead of a sort of the union and
    searches of every entry."""
    n_new, k, nnz = kept.numel() + grown.numel(), grown.numel(), flat.numel()
    if not k:
        return kept, keep_at, torch.zeros(0, dtype=torch.bool, device=flat.device)
    at = torch.searchsorted(flat, grown)  # old entries before each grown position
    regrown = (flat.index_select(0, at.clamp(max=nnz - 1)) == grown) if nnz else \
        torch.zeros(k, dtype=torch.bool, device=flat.device)
    # kept entries before a grown position: old entries before it less the dropped ones among them
    dropped_before = torch.zeros(nnz + 1, dtype=torch.int64, device=flat.device)
    dropped_before[1:] = torch.cumsum(dropped, 0)
    to = at - dropped_before.index_select(0, at) + torch.arange(k, device=flat.device)
    source = torch.empty(n_new, dtype=torch.int64, device=flat.device)
    new_flat = torch.empty(n_new, dtype=torch.int64, device=flat.device)
    is_kept = torch.ones(n_new, dtype=torch.bool, device=flat.device)
    is_kept[to] = False
    new_flat[to] = grown
    new_flat.masked_scatter_(is_kept, kept)
    source[to] = torch.where(regrown, at, -1)
    source.masked_scatter_(is_kept, keep_at)
    return new_flat, source, regrown


def _block_rows(grad, r0: int, r1: int, out: Optional[torch.Tensor]) -> torch.Tensor:
    """``|∂L/∂W|`` of rows ``r0:r1`` as a 1-d float32 tensor, written into ``out`` (1-d float32,
    at least that many entries) when given and the gradient allows it: the same values as
    ``grad.rows(r0, r1).abs_()`` (the same products in the same order), without a fresh 64 MiB
    allocation (and its page faults) per block."""
    in_f = grad.shape[1]
    if out is not None and isinstance(grad, LowRankGrad):
        ok = all(g.dtype == torch.float32 and x.dtype == torch.float32 and g.device == out.device
                 for g, x in grad.factors)
        if ok:
            dst = out[: (r1 - r0) * in_f].view(r1 - r0, in_f)
            for i, (g, x) in enumerate(grad.factors):  # as LowRankGrad.rows: the first product, then the others added
                if i == 0:
                    torch.mm(g[r0:r1], x, out=dst)
                else:
                    dst.add_(torch.mm(g[r0:r1], x))
            if grad.scale != 1.0:
                dst.mul_(grad.scale)
            return dst.abs_().view(-1)
    elif out is not None and torch.is_tensor(grad) and grad.dtype == torch.float32 and grad.device == out.device:
        dst = out[: (r1 - r0) * in_f]
        return torch.abs(grad[r0:r1].reshape(-1), out=dst)
    g = grad.rows(r0, r1).abs_() if isinstance(grad, LowRankGrad) else grad[r0:r1].abs()
    return g.float().reshape(-1)


def _block_size(layer: "LayerState") -> int:
    """Rows per block of :func:`gradient_blocks`."""
    return max(1, GRADIENT_BLOCK // max(layer.shape[1], 1))


def gradient_blocks(layer: "LayerState", rows: Optional[list[int]] = None) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(start, stop, |g|)`` for consecutive blocks of rows of about :data:`GRADIENT_BLOCK`
    entries: ``|∂L/∂W|`` at flat positions ``start .. stop - 1`` as a 1-d float32 tensor, formed
    from the captured gradient (factors, or a dense tensor under DDP) one block at a time, into
    one buffer: each block's tensor is overwritten by the next (copy what must outlive it).
    ``rows``: only the blocks starting at these rows (multiples of the block's row count)."""
    grad = layer.grad_buffer
    if grad is None:
        raise RuntimeError(f"{layer.name}: no gradient captured for its streaming update")
    out_f, in_f = layer.shape
    block = _block_size(layer)
    buf = None
    device = grad.factors[0][0].device if isinstance(grad, LowRankGrad) else grad.device
    for r0 in (range(0, out_f, block) if rows is None else rows):
        r1 = min(out_f, r0 + block)
        if buf is None:
            buf = torch.empty(min(block, out_f) * in_f, dtype=torch.float32, device=device)
        yield r0 * in_f, r1 * in_f, _block_rows(grad, r0, r1, buf)


def gradient_scale(layer: "LayerState", how: str) -> torch.Tensor:
    """The layer's ``max`` or ``mean`` of ``|∂L/∂W|`` over all positions (a 0-d float32 tensor),
    by one pass over :func:`gradient_blocks`. The max equals the dense one exactly; the mean is
    summed in float64 (a million entries at a time), so it can differ from the dense float32 mean
    in the last bit."""
    if how == "max":
        best = None
        for _, _, g in gradient_blocks(layer):
            m = g.max()
            best = m if best is None else torch.maximum(best, m)
        return best
    if how == "mean":
        total = 0.0
        for _, _, g in gradient_blocks(layer):
            # float64 a piece at a time: the float64 sum of a whole block is ~10x slower
            total += sum(float(part.double().sum()) for part in g.split(1 << 20))
        return torch.tensor(total / layer.numel, dtype=torch.float32)
    raise ValueError(f"unknown gradient scale {how!r}; valid: 'max', 'mean'")


# -- gradient growth: the top k of a layer's free positions, block of rows by block of rows --------

#: entries of a block screened together by their maximum (see :func:`_above`); a power of two
_CHUNK = 64
#: the first block's estimate of the layer's k-th best score is set to admit this many times k
#: positions over the whole layer (blocks of rows differ: the estimate must not be too high); the
#: estimate is refined from the blocks seen, with a margin shrinking as their number grows
_MARGIN = 3.0
#: ... and this many times k when the layer is a single block (only the sample's error to cover)
_MARGIN_ONE = 1.25
#: strided sample of a block for the first estimate
_SAMPLE = 1 << 16


def _above(s: torch.Tensor, t: float, rate: float = 0.0) -> torch.Tensor:
    """Sorted indices of the entries of the 1-d ``s`` greater than ``t`` (``rate``: the fraction
    expected). Screens chunks of :data:`_CHUNK` entries by their maximum and compares only the
    chunks that hold a candidate: for a selective threshold one pass over the block instead of
    the three of a comparison and ``nonzero``."""
    n = s.numel()
    if n < 16 * _CHUNK or t == float("-inf") or rate > 0.015:  # most chunks would hold one
        return (s > t).nonzero().squeeze(1)
    m = n - n % _CHUNK
    chunks = s[:m].view(-1, _CHUNK)
    hit = chunks.amax(1) > t
    ids = hit.nonzero().squeeze(1)
    if 3 * ids.numel() > hit.numel():  # not selective: the plain comparison is cheaper from here
        return (s > t).nonzero().squeeze(1)
    j = (chunks.index_select(0, ids).view(-1) > t).nonzero().squeeze(1)
    shift = _CHUNK.bit_length() - 1
    # chunk by chunk, in order within each: sorted
    out = ids.index_select(0, j >> shift).bitwise_left_shift_(shift).bitwise_or_(j & (_CHUNK - 1))
    if m < n:
        out = torch.cat([out, (s[m:] > t).nonzero().squeeze(1) + m])
    return out


def _estimate_kth(s: torch.Tensor, j: float) -> float:
    """An estimate of the ``j``-th largest entry of the 1-d ``s`` from a strided sample
    (``-inf`` when ``j`` reaches the number of entries)."""
    n = s.numel()
    if j >= n:
        return float("-inf")
    sample = s[:: max(1, n // _SAMPLE)]
    r = min(sample.numel(), max(1, int(round(j * sample.numel() / n))))
    return float(torch.kthvalue(sample, sample.numel() - r + 1).values)


class _Candidates:
    """The running candidates of gradient growth: scores ``v``, flat positions ``p`` (ascending)
    and, when the score is not ``|g|`` itself, ``|g|`` ``a`` of the entries kept so far; and
    ``floor``: a score that at least ``k`` of them reach (``None`` while fewer than ``k`` are kept).
    No entry below the floor can be among the top ``k``: a block contributes its entries above it,
    and the kept ones below it are let go whenever their number has doubled."""

    def __init__(self, k: int, with_grad: bool):
        self.k, self.with_grad = k, with_grad
        self.v: list[torch.Tensor] = []
        self.p: list[torch.Tensor] = []
        self.a: list[torch.Tensor] = []
        self.size = 0
        self.floor: Optional[float] = None
        self._at_floor = 0  # size when the floor was last computed

    def add(self, s: torch.Tensor, idx: torch.Tensor, start: int, g: Optional[torch.Tensor]) -> None:
        """The entries ``idx`` of a block's scores ``s`` (its flat positions from ``start``; ``g``:
        its ``|g|``, when the scores are not ``|g|``)."""
        if not idx.numel():
            return
        self.v.append(s.index_select(0, idx))
        self.p.append(idx + start)
        if self.with_grad:
            self.a.append(g.index_select(0, idx))
        self.size += idx.numel()
        if self.size >= self.k and (self.floor is None or self.size >= 2 * max(self._at_floor, self.k)):
            self.raise_floor()

    def flat(self) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        if len(self.v) > 1:
            self.v, self.p = [torch.cat(self.v)], [torch.cat(self.p)]
            if self.with_grad:
                self.a = [torch.cat(self.a)]
        return self.v[0], self.p[0], (self.a[0] if self.with_grad else None)

    def kth(self) -> float:
        """The k-th best score kept (``-inf`` while fewer than ``k`` are kept)."""
        return scores.kth_largest(self.flat()[0], self.k) if self.size >= self.k else float("-inf")

    def raise_floor(self) -> None:
        """The floor becomes the k-th best score kept; entries below it are let go."""
        v, p, a = self.flat()
        self.floor = scores.kth_largest(v, self.k)
        keep = (v >= self.floor).nonzero().squeeze(1)
        if keep.numel() < v.numel():
            self.v, self.p = [v.index_select(0, keep)], [p.index_select(0, keep)]
            if self.with_grad:
                self.a = [a.index_select(0, keep)]
        self.size = self._at_floor = keep.numel()


def top_gradient_positions(layer: "LayerState", taken: torch.Tensor, k: int,
                           score: Optional[Callable[[torch.Tensor, int, int], torch.Tensor]] = None):
    """The ``k`` positions not in ``taken`` (sorted int64 flat positions) of highest grow score,
    computed from the captured gradient in blocks of rows (:func:`gradient_blocks`); the score is
    ``|∂L/∂W|``, or ``score(|g|, start, stop)`` of each block (a rule's ``stream_grow_score``).
    Returns them sorted, and the exploitation degree (mean ``|g|`` of the grown over mean ``|g|``
    of the available positions), or ``None``. The same set as ``torch.topk`` over the dense score
    with the taken positions excluded, up to exact ties at the k-th score.

    Each block contributes only its entries above a threshold (:func:`_above`): the running floor
    (the k-th best score kept so far, see :class:`_Candidates`) or, while that is lower, an
    estimate of the layer's k-th best score: from the first block's sample, set to admit
    :data:`_MARGIN` times ``k`` positions over the layer, then from the scores kept of the blocks
    seen (after 2, 4, 8, ... blocks, with a margin shrinking as ``1 + (_MARGIN - 1)/√blocks``). A
    block ranked with a threshold above the final k-th best score left out candidates: it is
    ranked again (its gradient formed again, unless it is the last block) from that score up to
    its threshold, so the result is exact either way; with the margins this does not happen
    unless the first blocks' scores are far above the rest of the layer's."""
    if k <= 0:
        return torch.empty(0, dtype=torch.int64, device=taken.device), None
    in_f = layer.shape[1]
    single = _block_size(layer) >= layer.shape[0]
    n_free = max(layer.numel - taken.numel(), 1)
    cand = _Candidates(k, score is not None)
    total_avail, n_avail, seen = 0.0, 0, 0
    estimate: Optional[float] = None
    rate: Optional[float] = None
    thresholds: dict[int, float] = {}  # first row of each block -> the threshold it was ranked with
    last = None

    def block(lo: int, hi: int, g: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The block's scores with the taken positions at ``-inf``, and its number of free positions."""
        nonlocal total_avail, n_avail
        b0, b1 = torch.searchsorted(taken, torch.tensor([lo, hi], dtype=torch.int64, device=taken.device)).tolist()
        busy = taken[b0:b1] - lo  # active after the drop: ~nnz
        free = g.numel() - busy.numel()
        if free:
            n_avail += free
            total_avail += float(g.sum()) - float(g.index_select(0, busy).sum())
        s = g if score is None else score(g, lo, hi)
        return s.index_fill_(0, busy, float("-inf")), free

    for lo, hi, g in gradient_blocks(layer):
        s, free = block(lo, hi, g)
        last = (lo, s, g)
        if not free:
            continue
        seen += 1
        if estimate is None:
            estimate = _estimate_kth(s, (_MARGIN_ONE if single else _MARGIN) * k * g.numel() / n_free)
        t = estimate if cand.floor is None else max(cand.floor, estimate)
        thresholds[lo // in_f] = t
        if rate is None:  # the first block's estimate was set to admit this fraction
            rate = (_MARGIN_ONE if single else _MARGIN) * k / n_free
        idx = _above(s, t, rate)
        rate = idx.numel() / g.numel()  # the next block's is much the same
        cand.add(s, idx, lo, g if score is not None else None)
        if seen > 1 and seen & (seen - 1) == 0:  # after 2, 4, 8, ... blocks: refine the estimate
            want = max(1, int((1.0 + (_MARGIN - 1.0) / math.sqrt(seen)) * k * n_avail / n_free))
            if cand.size >= want:  # the want-th best kept (lower than the truth where thresholds were above it)
                estimate = scores.kth_largest(cand.flat()[0], want)
            else:  # fewer than expected: from this block's sample, if that is lower
                estimate = min(estimate, _estimate_kth(s, want * g.numel() / max(n_avail, 1)))

    final = cand.kth()
    redo = sorted(r for r, t in thresholds.items() if t > final)
    if redo:
        # blocks ranked above the final k-th best score: add their entries from there up to their
        # threshold (those above it are in already)
        cand.floor = final if cand.size >= k else None
        again = [r for r in redo if r * in_f != last[0]]
        blocks = gradient_blocks(layer, again) if again else iter(())
        n_avail_done, total_done = n_avail, total_avail
        for r in redo:
            if r * in_f == last[0]:
                lo, s, g = last  # still in memory, the taken positions already excluded
            else:
                lo, hi, g = next(blocks)
                s = block(lo, hi, g)[0]
            s.masked_fill_(s > thresholds[r], float("-inf"))
            if cand.floor is None:
                v, idx = scores.topk_large(s, min(k, s.numel()))
                idx = idx[v > float("-inf")]
            else:  # at most its best k: no more can be among the top k
                idx = scores.topk_large(s, k, floor=cand.floor)[1]
            cand.add(s, torch.sort(idx).values, lo, g if score is not None else None)
        n_avail, total_avail = n_avail_done, total_done  # counted in the first pass
        final = cand.kth()
    v, p, a = cand.flat()
    if cand.size <= k:
        chosen = torch.arange(cand.size, device=v.device)
    else:
        chosen = v > final
        short = k - int(torch.count_nonzero(chosen))
        if short > 0:  # ties at the k-th score: the first of them
            chosen[(v == final).nonzero().squeeze(1)[:short]] = True
        chosen = chosen.nonzero().squeeze(1)
    best_p, best_g = p.index_select(0, chosen), (v if a is None else a).index_select(0, chosen)
    if redo:  # the blocks ranked again came after the others
        order = torch.argsort(best_p)
        best_p, best_g = best_p.index_select(0, order), best_g.index_select(0, order)
    exploit = None
    if n_avail and total_avail > 0:
        exploit = float(best_g.sum()) / k / (total_avail / n_avail)
    return best_p, exploit
