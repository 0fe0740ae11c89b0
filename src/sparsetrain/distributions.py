"""Layer-wise density distributions: uniform, ER, ERK (with dense capping) and custom.

A distribution turns a global density ``D`` (fraction of prunable weights that are active)
into one density per layer, and then into exact integer counts of active weights per layer.

The scaling with dense capping (spec §1.2): with raw scores ``r_l`` find ``eps`` so that
``sum_l eps * r_l * N_l = D * sum_l N_l``; while some ``eps * r_l > 1`` make the layer with
the largest ``r_l`` dense, remove it from the pool and solve again.

Counts are then apportioned with the largest-remainder method so that the total number of
active weights is exactly ``round(D * sum_l N_l)`` and each layer is within one weight of its
ideal ``d_l * N_l``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Callable, Mapping, Sequence, Union

import torch

from .errors import InputError, InputTypeError, InputWarning

__all__ = [
    "DISTRIBUTIONS",
    "DistributionSpec",
    "layer_densities",
    "layer_counts",
    "exact_counts",
    "raw_scores",
]

#: A distribution: a registered name, an explicit ``{name: density}`` mapping, or a callable
#: ``f(names, shapes, density) -> {name: density}``.
DistributionSpec = Union[str, Mapping[str, float], Callable[..., Mapping[str, float]]]

#: Names accepted for ``distribution=``.
DISTRIBUTIONS = ("uniform", "er", "erk")


def raw_scores(shapes: Sequence[torch.Size], kind: str, power: float = 1.0) -> list[float]:
    """Raw (unnormalised) density scores ``r_l`` for ``kind`` in ``"er"``/``"erk"``/``"uniform"``.

    ER uses ``(n_in + n_out) / (n_in * n_out)`` (kernel dimensions ignored); ERK uses
    ``(sum of all dims / product of all dims) ** power``. ``uniform`` gives 1 for every layer.
    """
    out = []
    for shape in shapes:
        dims = list(shape)
        if kind == "uniform" or len(dims) == 0:
            out.append(1.0)
        elif kind == "er":
            n_out = dims[0]
            n_in = dims[1] if len(dims) > 1 else 1
            out.append((n_in + n_out) / (n_in * n_out))
        elif kind == "erk":
            out.append((sum(dims) / math.prod(dims)) ** power)
        else:  # pragma: no cover - guarded by the caller
            raise ValueError(kind)
    return out


def _scaled(scores: list[float], sizes: list[int], density: float, pinned: set[int]) -> list[float]:
    """Scale ``scores`` so the weighted mean density is ``density``, capping layers at 1."""
    total = sum(sizes)
    budget = density * total
    dense = set(pinned)
    pinned_size = sum(sizes[i] for i in dense)
    if pinned_size > budget + 1e-9:
        raise InputError(
            f"the layers pinned dense hold {pinned_size} of {total} prunable weights, more than the "
            f"global density {density} allows ({budget:.0f}); raise the density or pin fewer layers"
        )
    while True:
        free = [i for i in range(len(sizes)) if i not in dense]
        if not free:
            break
        remaining = budget - sum(sizes[i] for i in dense)
        denom = sum(scores[i] * sizes[i] for i in free)
        eps = remaining / denom if denom > 0 else 0.0
        over = [i for i in free if eps * scores[i] > 1.0 + 1e-12]
        if not over:
            break
        # Make the layer with the largest raw score dense and solve again.
        dense.add(max(over, key=lambda i: scores[i]))
    densities = []
    for i in range(len(sizes)):
        densities.append(1.0 if i in dense else min(1.0, eps * scores[i]))
    return densities


def layer_densities(
    names: Sequence[str],
    shapes: Sequence[torch.Size],
    density: float,
    distribution: DistributionSpec = "erk",
    *,
    dense: Sequence[str] = (),
    power: float = 1.0,
) -> dict[str, float]:
    """Per-layer target densities for a global ``density`` over the given prunable weights.

    Args:
        names: parameter names, in a fixed order.
        shapes: their shapes.
        density: the global density ``D`` in (0, 1].
        distribution: ``"uniform"``, ``"er"``, ``"erk"``, a mapping name -> density, or a
            callable ``f(names, shapes, density)`` returning such a mapping.
        dense: names pinned dense; the other layers are scaled so that the global density
            still equals ``density``.
        power: ERK exponent (``0`` gives uniform).
    """
    if isinstance(distribution, str):
        kind = distribution.lower()
        if kind not in DISTRIBUTIONS:
            raise InputError(
                f"unknown distribution {distribution!r}; valid names are {', '.join(DISTRIBUTIONS)}, "
                "or pass a dict of parameter name -> density, or a callable"
            )
        sizes = [math.prod(s) for s in shapes]
        pinned = {i for i, n in enumerate(names) if n in set(dense)}
        scores = raw_scores(shapes, kind, power)
        return dict(zip(names, _scaled(scores, sizes, density, pinned)))
    if callable(distribution) and not isinstance(distribution, Mapping):
        result = distribution(list(names), list(shapes), density)
        if not isinstance(result, Mapping):
            raise InputTypeError(f"a distribution callable must return a dict of parameter name -> density, "
                                 f"got {type(result).__name__}: {result!r:.80}")
        result = dict(result)
    elif isinstance(distribution, Mapping):
        result = dict(distribution)
    else:
        raise InputTypeError(
            f"distribution must be a name, a mapping or a callable, got {type(distribution).__name__}"
        )
    shown = ", ".join(map(repr, names[:6])) + (", ..." if len(names) > 6 else "")
    unknown = [str(n) for n in result if n not in set(names)]
    if unknown:
        raise InputError(f"the distribution gives densities for {', '.join(map(repr, unknown[:4]))}, which "
                         f"{'is not a sparse parameter' if len(unknown) == 1 else 'are not sparse parameters'}; "
                         f"the sparse parameters are {shown} (see sp.summary())")
    missing = [n for n in names if n not in result]
    if missing:
        raise InputError(f"custom distribution gives no density for: {', '.join(missing)}; every sparse parameter "
                         f"needs one ({shown})")
    for n in dense:
        result[n] = 1.0
    for n, d in result.items():
        if isinstance(d, bool) or not isinstance(d, numbers.Real) or not 0.0 < float(d) <= 1.0:
            raise InputError(f"custom density for {n!r} is {d!r}; densities must lie in (0, 1]")
    out = {n: float(result[n]) for n in names}
    sizes = [math.prod(s) for s in shapes]
    total = sum(sizes)
    implied = sum(out[n] * k for n, k in zip(names, sizes))
    if total and abs(implied - density * total) > max(1.0, 0.01 * density * total) + len(names):
        warnings.warn(
            f"the custom distribution's densities give a global density of {implied / total:.4f}, not the "
            f"requested density={density:g}: the per-layer densities are used as given (scale them, or pass "
            f"density={implied / total:.4f} to say so)", InputWarning, stacklevel=4)
    return out


def layer_counts(densities: Mapping[str, float], sizes: Mapping[str, int], total: int | None = None) -> dict[str, int]:
    """Exact integer active counts per layer by largest-remainder apportionment.

    Each count is ``floor`` or ``ceil`` of ``d_l * N_l`` (and at least 1); the sum equals
    ``total`` (default: ``round(sum_l d_l N_l)``), so the realised global density equals the
    target up to rounding of the *global* count, not of every layer.
    """
    ideal = {n: densities[n] * sizes[n] for n in densities}
    if total is None:
        total = int(round(sum(ideal.values())))
    counts = {n: min(sizes[n], max(1, int(math.floor(v + 1e-9)))) for n, v in ideal.items()}
    remaining = total - sum(counts.values())
    if remaining > 0:
        # Hand out the remainder to the largest fractional parts (stable: name order on ties).
        order = sorted(ideal, key=lambda n: (-(ideal[n] - math.floor(ideal[n] + 1e-9)), list(ideal).index(n)))
        for n in order:
            if remaining == 0:
                break
            if counts[n] < sizes[n] and ideal[n] - counts[n] > 1e-9:
                counts[n] += 1
                remaining -= 1
    return counts


def exact_counts(
    names: Sequence[str],
    shapes: Sequence[torch.Size],
    density: float,
    distribution: "DistributionSpec",
    *,
    dense: Sequence[str] = (),
    power: float = 1.0,
) -> tuple[dict[str, float], dict[str, int]]:
    """Per-layer densities and exact active counts for a global ``density`` in one call.

    With a named distribution the counts sum to exactly ``round(density · Σ N_l)`` (layers in
    ``dense`` included, at their full size); with an explicit mapping or a callable each layer
    gets ``d_l · N_l`` apportioned by largest remainder.
    """
    dens = layer_densities(names, shapes, density, distribution, dense=dense, power=power)
    sizes = {n: torch.Size(s).numel() for n, s in zip(names, shapes)}
    total = int(round(density * sum(sizes.values()))) if isinstance(distribution, str) else None
    return dens, layer_counts(dens, sizes, total)
