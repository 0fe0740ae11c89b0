"""Compressed storage: the weight lives in a :class:`~sparsetrain.sparse.SparseLinear` as CSR.

Only the active weights exist (``values``, nnz-sized, with nnz-sized optimizer state), so there
is nothing to zero after a step. The layer's backward hands over the dense weight gradient
``∂L/∂yᵀ x`` only when a topology update needs it. An update scores a dense copy of the weight
(made once, :meth:`CompressedStorage.begin_update`) and :meth:`CompressedStorage.commit`
rebuilds the CSR structure, remapping the optimizer state in O(nnz).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Optional

import torch

from ..sparse.linear import SparseLinear, form_dense_grad
from ..sparse.lowrank import LowRankGrad
from .base import Hooks, Storage

if TYPE_CHECKING:  # pragma: no cover
    from ..masks import LayerState

__all__ = ["CompressedStorage"]

log = logging.getLogger(__name__)


class CompressedStorage(Storage):
    """The weight of a :class:`~sparsetrain.sparse.SparseLinear` (``param`` is its ``values``)."""

    kind = "compressed"

    def __init__(self, module: SparseLinear):
        super().__init__(module.values, module.weight_shape)
        self.module = module
        self._dense: Optional[torch.Tensor] = None
        self._grad: Optional[torch.Tensor] = None
        self._in_update = False

    # -- life cycle ----------------------------------------------------------------------
    def attach(self, layer: "LayerState", hooks: Hooks) -> None:
        module = self.module

        def sink(gyt: torch.Tensor, x: torch.Tensor) -> Optional[torch.Tensor]:
            if hooks.stream_growth(layer) == "gradient":
                # a large layer's streaming update ranks growth from the factors, block by block
                hooks.capture(layer, LowRankGrad(gyt.detach(), x.detach()))
                return None
            dense = torch.mm(gyt, x)
            hooks.capture(layer, dense)
            return dense

        # gradients exist only at the nonzeros: nothing to mask; the dense gradient comes from
        # the layer's backward when a topology update needs it
        module.dense_grad_request = lambda: hooks.enabled() and hooks.capturing()
        module.dense_grad_sink = sink

    def detach(self) -> None:
        super().detach()
        self.module.dense_grad_request = None
        self.module.dense_grad_sink = form_dense_grad

    def initial_weight(self) -> Optional[torch.Tensor]:
        return None if self.module.deferred else self.module.dense_weight()

    def deferred_init_std(self, count: int) -> float:
        """The std of the values a deferred layer draws for ``count`` active weights."""
        return self.module.init_bound(max(count, 1) / self.shape.numel()) / math.sqrt(3.0)

    @torch.no_grad()
    def draw_values(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` values from the deferred layer's initialisation ``U(-b, b)`` (see ``SparseLinear.init``)."""
        b = self.module.init_bound(max(count, 1) / self.shape.numel())
        return torch.rand(count, generator=generator, dtype=self.param.dtype).mul_(2 * b).sub_(b)

    @torch.no_grad()
    def realise(self, layer: "LayerState", optimizer: torch.optim.Optimizer,
                values: Optional[torch.Tensor] = None) -> None:
        if values is None:
            dense = self.module.dense_weight()
            values = dense[layer.mask.to(dense.device)]
        old = self._pattern()
        # keep only the chosen weights: memory ∝ nnz from here on
        self.module.set_structure(layer.mask, values.to(self.param.device), reallocate=True)
        self._carry_state(optimizer, old)

    def _pattern(self) -> tuple[torch.Tensor, int, int]:
        """The stored pattern's flat positions, its nnz and the length of ``values`` (before a reallocation)."""
        module = self.module
        flat = torch.empty(0, dtype=torch.int64, device=self.param.device) if module.deferred else module.flat_index()
        return flat, (0 if module.deferred else module.nnz), self.param.numel()

    @torch.no_grad()
    def _carry_state(self, optimizer: Optional[torch.optim.Optimizer], old: tuple[torch.Tensor, int, int]) -> None:
        """After the layer was set up on a new pattern: optimizer state that already existed for the
        old ``values`` (an optimizer that creates it eagerly, as Adagrad does, or steps taken before
        the Sparsifier) follows its positions; positions not stored before start as a new
        parameter's would (see :meth:`fresh_state_values`). O(nnz)."""
        state = optimizer.state.get(self.param) if optimizer is not None else None
        if not state:
            return
        old_flat, old_nnz, old_len = old
        new_flat = self.module.flat_index()
        at = torch.searchsorted(old_flat, new_flat).clamp_(max=max(old_nnz - 1, 0))
        found = (old_flat[at] == new_flat) if old_nnz else torch.zeros_like(new_flat, dtype=torch.bool)
        fresh = self.fresh_state_values(optimizer, self.param)
        for key, v in list(state.items()):
            if torch.is_tensor(v) and v.dim() == 1 and v.numel() == old_len:
                start = torch.full((), fresh.get(key, 0.0), dtype=v.dtype, device=v.device)
                kept = v[:old_nnz].index_select(0, at) if old_nnz else start.expand(new_flat.numel())
                state[key] = torch.where(found, kept, start)

    # -- the dense view of an update ------------------------------------------------------
    def begin_update(self) -> None:
        self._in_update = True
        self._dense = self._grad = None

    def end_update(self) -> None:
        self._in_update = False
        self._dense = self._grad = None

    def dense_weight(self) -> torch.Tensor:
        if self._dense is not None:
            return self._dense
        dense = self.module.dense_weight()
        if self._in_update:
            self._dense = dense
        return dense

    @torch.no_grad()
    def dense_grad(self) -> Optional[torch.Tensor]:
        if self._grad is not None:
            return self._grad
        g = self.module.values.grad
        if g is None:
            return None
        full = torch.zeros(self.shape.numel(), dtype=g.dtype, device=g.device)
        full[self.module.flat_index()] = g[: self.module.nnz]
        full = full.view(self.shape)
        if self._in_update:
            self._grad = full
        return full

    def grad_at_active(self, layer: "LayerState", grad) -> torch.Tensor:
        if isinstance(grad, LowRankGrad):
            return grad.at(self.module)
        return grad.reshape(-1)[self.module.flat_index()]  # = grad[mask]: the same row-major order

    @torch.no_grad()
    def commit(self, layer: "LayerState", new: torch.Tensor, kept: torch.Tensor,
               optimizer: torch.optim.Optimizer) -> None:
        self.restructure(layer, new, optimizer, self.dense_weight()[new])

    def restructure(self, layer: "LayerState", new: torch.Tensor, optimizer: torch.optim.Optimizer,
                    new_values: torch.Tensor, new_flat: Optional[torch.Tensor] = None,
                    source: Optional[torch.Tensor] = None) -> None:
        """Rebuild the CSR for mask ``new`` with ``new_values`` (row-major; ``new_flat``: their flat
        positions, if known; ``new=None``: the pattern is ``new_flat``, no dense mask) and move the
        optimizer state along: kept positions take theirs, grown ones start as a new parameter's
        would (zero, but Rprop's step size and Adagrad's initial accumulator); O(nnz), no dense
        temporaries. ``source``: for each new entry the index of its entry in the old pattern,
        or ``-1`` where it had none, if the caller knows it (else it is searched for)."""
        module = self.module
        values = module.values
        old_flat, old_nnz, old_capacity = module.flat_index(), module.nnz, module.capacity
        state = optimizer.state.get(values) or {}
        moved = {}
        if any(torch.is_tensor(v) and v.shape == values.shape for v in state.values()):
            # where each new position sits in the old (sorted, row-major) pattern
            if source is not None:
                found = source >= 0
                at = source.clamp(min=0)
            else:
                if new_flat is None:
                    new_flat = new.reshape(-1).nonzero().squeeze(1)
                at = torch.searchsorted(old_flat, new_flat).clamp_(max=max(old_nnz - 1, 0))
                found = (old_flat[at] == new_flat) if old_nnz else torch.zeros_like(new_flat, dtype=torch.bool)
            fresh = self.fresh_state_values(optimizer, values)  # Rprop's step size, Adagrad's sum: not 0
            for key, v in state.items():
                if torch.is_tensor(v) and v.shape == values.shape:
                    start = fresh.get(key, 0.0)
                    moved[key] = torch.where(found, v[:old_nnz].index_select(0, at) if old_nnz else start,
                                             start).to(v.dtype)
        resized = (module.set_structure_at(new_flat, new_values) if new is None
                   else module.set_structure(new, new_values))
        if resized:
            # safe in an ordinary loop: the next graph gets a fresh gradient accumulator even while the
            # previous step's graph is alive (SparseLinear._put_values)
            log.info("sparsetrain: %s outgrew its compressed capacity (%d -> %d entries); values and their "
                     "optimizer state were reallocated", layer.name, old_capacity, module.capacity)
        for key, v in moved.items():
            if resized:
                state[key] = v
            else:  # same tensors, same size: the pattern's state first, zero padding after
                state[key][: v.numel()] = v
                state[key][v.numel():] = 0
        if values.grad is not None:
            values.grad = None  # it belonged to the old structure
        self._grad = None
