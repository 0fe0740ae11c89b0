"""A layer's dense weight gradient kept as its low-rank factors (large layers' streaming updates)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from . import kernels
from .linear import _sampled_grad

if TYPE_CHECKING:
    from .linear import SparseLinear

__all__ = ["LowRankGrad"]


class LowRankGrad:
    """The dense weight gradient of a :class:`SparseLinear`, ``scale · Σᵢ gytᵢ @ xᵢ``, kept as its
    factors (``out × B`` and ``B × in``: memory ∝ batch × width instead of out × in).

    A large layer's streaming topology update ranks growth candidates from it block of rows by
    block of rows (:meth:`rows`), so the full gradient never exists. Micro-batches add factors
    (``+``), loss-scale corrections multiply ``scale`` (``*``).
    """

    def __init__(self, gyt: torch.Tensor, x: torch.Tensor, scale: float = 1.0):
        self.factors = [(gyt, x)]
        self.scale = float(scale)

    @property
    def shape(self) -> torch.Size:
        """Shape of the dense gradient, ``(out, in)``."""
        return torch.Size((self.factors[0][0].shape[0], self.factors[0][1].shape[1]))

    def __add__(self, other: "LowRankGrad") -> "LowRankGrad":
        if not isinstance(other, LowRankGrad) or other.shape != self.shape:
            raise TypeError("a LowRankGrad adds only to another of the same shape")
        out = LowRankGrad.__new__(LowRankGrad)
        if self.scale == other.scale:
            out.factors, out.scale = self.factors + other.factors, self.scale
        else:  # fold the scales into the first factor of each (one batch-sized copy)
            out.factors = ([(g * self.scale, x) for g, x in self.factors]
                           + [(g * other.scale, x) for g, x in other.factors])
            out.scale = 1.0
        return out

    def __mul__(self, ratio: float) -> "LowRankGrad":
        out = LowRankGrad.__new__(LowRankGrad)
        out.factors, out.scale = list(self.factors), self.scale * float(ratio)
        return out

    __rmul__ = __mul__

    def isfinite(self) -> bool:
        """Whether every factor is finite (then so is the product)."""
        return math.isfinite(self.scale) and all(bool(torch.isfinite(g).all()) and bool(torch.isfinite(x).all())
                                                 for g, x in self.factors)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of the dense gradient (``(stop - start) × in``)."""
        out = None
        for g, x in self.factors:
            part = torch.mm(g[start:stop], x)
            out = part if out is None else out.add_(part)
        return out.mul_(self.scale) if self.scale != 1.0 else out

    def dense(self) -> torch.Tensor:
        """The whole dense gradient (``out × in``)."""
        return self.rows(0, self.shape[0])

    def at(self, module: "SparseLinear") -> torch.Tensor:
        """The gradient at ``module``'s stored entries (row-major, nnz)."""
        out = None
        values = module.active_values()
        for g, x in self.factors:
            part = _sampled_grad(module, values, g, x, kernels.use_native(g, x, values))
            out = part if out is None else out.add_(part)
        return out.mul_(self.scale) if self.scale != 1.0 else out
