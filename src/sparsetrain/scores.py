"""Drop and grow scores shared by the algorithms, and top-k selection over masked tensors.

Conventions: a *drop* score ranks active weights by importance (the lowest are dropped); a
*grow* score ranks inactive positions by promise (the highest are grown).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .masks import LARGE_LAYER, sample_positions

__all__ = ["magnitude", "gradient_magnitude", "random_scores", "select_lowest", "select_highest", "signed_drop",
           "select_random", "topk_large", "kth_largest"]


def magnitude(weight: torch.Tensor) -> torch.Tensor:
    """``|w|``: magnitude drop score."""
    return weight.detach().abs()


def gradient_magnitude(grad: torch.Tensor) -> torch.Tensor:
    """``|dL/dw|``: RigL's grow score on the dense gradient."""
    return grad.detach().abs()


def random_scores(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform random scores shaped like ``like``, drawn from a CPU ``generator``.

    Drawn on the CPU and moved, so the same seed gives the same choice on every device and rank.
    """
    return torch.rand(like.shape, generator=generator).to(like.device)


def select_random(candidates: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Bool tensor marking ``k`` uniformly random positions among ``candidates``.

    Up to ``masks.LARGE_LAYER`` positions: the ``k`` highest of :func:`random_scores`; above it a
    sample without replacement by :func:`~sparsetrain.masks.sample_positions`, in memory
    proportional to ``k`` instead of a dense score tensor (both from the CPU ``generator``).
    """
    if candidates.numel() <= LARGE_LAYER:
        return select_highest(random_scores(candidates, generator), candidates, k)
    taken = ~candidates.reshape(-1)
    out = torch.zeros(candidates.numel(), dtype=torch.bool, device=candidates.device)
    out[sample_positions(taken.numel(), k, generator, taken).to(candidates.device)] = True
    return out.view(candidates.shape)


def _select(scores: torch.Tensor, candidates: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    out = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k <= 0:
        return out.view(scores.shape)
    flat_c = candidates.reshape(-1)
    s = scores.detach().reshape(-1)
    n_c = int(torch.count_nonzero(flat_c))
    if k <= n_c and 4 * n_c < flat_c.numel():
        # few candidates (drop among the active weights of a sparse layer): rank only them
        idx = flat_c.nonzero().reshape(-1)
        if k == n_c:
            out[idx] = True
        else:
            out[idx[torch.topk(s[idx].float(), k, largest=largest, sorted=False).indices]] = True
    else:
        fill = float("-inf") if largest else float("inf")
        s = s.float().masked_fill(~flat_c, fill)
        if s.numel() >= _LARGE_TOPK:  # same set as torch.topk up to exact ties, several times faster
            out[topk_large(s if largest else s.neg_(), k)[1]] = True
        else:
            out[torch.topk(s, k, largest=largest, sorted=False).indices] = True
    return out.view(scores.shape)


def select_lowest(scores: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """Bool tensor marking the ``k`` candidates with the lowest score (ties: deterministic)."""
    return _select(scores, candidates, k, largest=False)


def select_highest(scores: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """Bool tensor marking the ``k`` candidates with the highest score (ties: deterministic)."""
    return _select(scores, candidates, k, largest=True)


def signed_drop(weight: torch.Tensor, active: torch.Tensor, k: int) -> torch.Tensor:
    """SET's signed drop: the ``k//2`` smallest positive and ``k - k//2`` largest negative weights.

    If one sign has too few active weights, the rest comes from the other sign, so exactly ``k``
    weights are dropped (the reference code's version of this is buggy; this follows the definition).
    """
    w = weight.detach()
    pos = active & (w > 0)
    neg = active & ~(w > 0)
    n_pos, n_neg = int(torch.count_nonzero(pos)), int(torch.count_nonzero(neg))
    k_pos = min(k // 2, n_pos)
    k_neg = min(k - k_pos, n_neg)
    k_pos = min(k - k_neg, n_pos)
    # smallest positive: lowest w among positives; largest negative: highest w among non-positives
    return select_lowest(w, pos, k_pos) | select_highest(w, neg, k_neg)


# below this many entries topk_large is plain torch.topk
_LARGE_TOPK = 1 << 18


def topk_large(x: torch.Tensor, k: int, floor: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(x, k, sorted=False)`` of a long 1-d tensor, faster when ``k`` is large.

    ``torch.topk`` on CPU costs far more than a pass over the data when ``k`` is in the tens of
    thousands. This estimates a threshold from a strided sample of 65,536 entries (keeping about
    twice ``k`` above it), keeps the entries above it, and ranks only those; if fewer than ``k``
    pass, it falls back to the plain ``topk``. The result is exact: whenever at least ``k``
    entries exceed a threshold, the top ``k`` are all among them (which of several entries tied
    at the k-th value is chosen may differ from ``torch.topk``'s choice). With ``floor`` (e.g.
    the k-th best of earlier blocks), entries at or below it are left out, and fewer than ``k``
    may be returned.
    """
    n = x.numel()
    if floor is not None:
        idx = (x > floor).nonzero().squeeze(1)
        if idx.numel() <= k:
            return x[idx], idx
        v, j = torch.topk(x[idx], k, sorted=False)
        return v, idx[j]
    if n < _LARGE_TOPK or 8 * k > n:
        return torch.topk(x, k, sorted=False)
    sample = x[:: max(1, n // 65536)].float()
    sample = sample[torch.isfinite(sample)]
    if sample.numel() > 16:
        keep = min(1.0, 2.0 * k / n)
        t = float(torch.quantile(sample, 1.0 - keep)) if keep < 1.0 else float("-inf")
        idx = (x > t).nonzero().squeeze(1)
        if k <= idx.numel() < n // 2:
            v, j = torch.topk(x[idx], k, sorted=False)
            return v, idx[j]
    return torch.topk(x, k, sorted=False)


def kth_largest(x: torch.Tensor, k: int) -> float:
    """The ``k``-th largest entry of the 1-d ``x`` (``1 ≤ k ≤ x.numel()``), as ``torch.kthvalue``
    gives it, in a few passes over ``x`` instead of a selection over all of it.

    A strided sample brackets the value; two counts confirm the bracket, and only the entries
    inside it are ranked. If the sample misleads, the plain ``torch.kthvalue`` runs."""
    n = x.numel()
    if not 1 <= k <= n:
        raise ValueError(f"no {k}-th largest of {n} entries")
    if n > _LARGE_KTH:
        sample = x[:: max(1, n // 8192)]
        ns = sample.numel()
        j = k * ns / n  # the rank in the sample expected to hold it
        d = 4.0 * math.sqrt(j * (1.0 - min(j / ns, 1.0))) + 8.0
        hi_r, lo_r = int(j - d), int(math.ceil(j + d))
        hi = float(torch.kthvalue(sample, ns - hi_r + 1).values) if hi_r >= 1 else float("inf")
        lo = float(torch.kthvalue(sample, ns - lo_r + 1).values) if lo_r <= ns else float("-inf")
        above = int(torch.count_nonzero(x > hi)) if hi_r >= 1 else 0
        if above < k:
            band = x[(x >= lo) & (x <= hi)] if hi_r >= 1 else x[x >= lo]
            if above + band.numel() >= k:
                r = k - above  # its rank among the entries in the bracket
                return float(torch.kthvalue(band, band.numel() - r + 1).values)
    return float(torch.kthvalue(x, n - k + 1).values)


# above this many entries kth_largest narrows down with a sample first
_LARGE_KTH = 1 << 16
