"""Per-parameter sparse state: the mask and the bookkeeping that travels with it.

One :class:`LayerState` per sparse parameter holds

- ``mask``: bool tensor, ``True`` where the weight is active, and ``mask_mul``, the same mask
  in the parameter's dtype (multiplying by a float mask is ~10× faster than by a bool one, and
  the per-step enforcement does exactly that);
- ``ever_active``: bool tensor, ``True`` where the weight has been active at least once
  (initial mask included) — the numerator of the ITOP rate R_s;
- ``counter``: int32 tensor, the number of optimizer steps each weight has been active
  (usage counter N of DST-EE). It is updated *lazily*: between topology updates the mask does
  not change, so ``counter += mask * (t - count_step)`` is applied only when the mask is about
  to change, when the counters are read, or when the state is saved — no per-step cost;
- ``pinned``: the layer was pinned dense with ``Sparsifier(dense=...)``;
- ``active_steps``: ``sum_t n_active(t)`` over the steps so far (exact training-FLOPs accounting);
- ``grad_buffer``: the dense gradient of the current step, captured only when the next
  optimizer step is followed by a topology update that needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

__all__ = ["LayerState", "random_mask", "sample_positions", "LARGE_LAYER"]


# Above this many positions (2²⁰) a layer is "large": random masks and random growth are sampled
# in memory proportional to the count instead of through a permutation or a dense score tensor
# (4-8 bytes per position), and compressed layers update without dense float temporaries (3.8×
# cheaper for a 4096 × 4096 layer at 2%). Every layer of the committed results is below it.
LARGE_LAYER = 1 << 20


def sample_positions(numel: int, count: int, generator: torch.Generator, taken: torch.Tensor) -> torch.Tensor:
    """Mark ``count`` uniformly random positions of ``numel`` not yet marked in the flat bool
    ``taken`` (in place) and return them (int64, in draw order).

    Draws positions with replacement, keeps the first occurrence of each position not yet taken,
    in draw order, until ``count`` are found: a uniform sample without replacement among the
    untaken positions, in memory proportional to ``count`` (``count`` must not exceed them).
    """
    need, found = count, []
    while need > 0:
        draw = torch.randint(0, numel, (need + need // 8 + 64,), generator=generator).to(taken.device)
        draw = draw[~taken[draw]]
        if draw.numel():
            uniq, inv = torch.unique(draw, return_inverse=True)
            first = torch.full((uniq.numel(),), draw.numel(), dtype=torch.int64, device=draw.device)
            first.scatter_reduce_(0, inv, torch.arange(draw.numel(), device=draw.device), reduce="amin")
            picked = draw[first.sort().values[:need]]
            taken[picked] = True
            found.append(picked)
            need -= picked.numel()
    return torch.cat(found) if found else torch.empty(0, dtype=torch.int64, device=taken.device)


def random_mask(shape: torch.Size, count: int, generator: torch.Generator, device=None) -> torch.Tensor:
    """A bool mask of ``shape`` with exactly ``count`` ``True`` entries at uniformly random positions.

    Up to ``LARGE_LAYER`` (2²⁰) positions the mask is the first ``count`` entries of a random
    permutation; larger layers are sampled in memory proportional to ``count`` (a permutation of a
    20,000 × 20,000 layer alone would take 3.2 GB).
    """
    numel = 1
    for s in shape:
        numel *= int(s)
    flat = torch.zeros(numel, dtype=torch.bool)
    if count >= numel:
        flat.fill_(True)
    elif count > 0 and numel <= LARGE_LAYER:
        flat[torch.randperm(numel, generator=generator)[:count]] = True
    elif count > 0:
        if count <= numel // 2:
            sample_positions(numel, count, generator, flat)
        else:  # sample the positions left out
            sample_positions(numel, numel - count, generator, flat)
            flat = ~flat
    return flat.view(shape).to(device) if device is not None else flat.view(shape)


@dataclass
class LayerState:
    """The sparse state of one parameter (see the module docstring)."""

    name: str
    param: torch.nn.Parameter
    target_density: float
    n_active: int
    mask: torch.Tensor
    ever_active: torch.Tensor
    counter: Optional[torch.Tensor] = None
    count_step: int = 0
    active_steps: int = 0
    init_std: float = 0.0
    pinned: bool = False
    grad_buffer: Optional[torch.Tensor] = field(default=None, repr=False)
    grad_buffer_step: int = -1
    grad_signature: tuple = field(default=(), repr=False)
    mask_mul: Optional[torch.Tensor] = field(default=None, repr=False)
    #: dense shape of the weight (``param.shape`` unless the layer is stored compressed)
    shape: Optional[torch.Size] = None
    #: the :class:`~sparsetrain.sparse.SparseLinear` holding this weight as CSR, if any; then
    #: ``param`` is its nnz-sized ``values`` (outside topology updates)
    sparse_module: Optional[torch.nn.Module] = field(default=None, repr=False)

    def __post_init__(self):
        if self.shape is None:
            self.shape = self.param.shape
        self.shape = torch.Size(self.shape)
        self.set_mask(self.mask)

    def set_mask(self, mask: torch.Tensor) -> None:
        """Replace the mask (bool) and refresh its multiplicative copy."""
        self.mask = mask
        # a compressed layer never multiplies by its mask: no dense float copy for it
        self.mask_mul = mask.to(self.param.dtype) if self.sparse_module is None else None

    @property
    def numel(self) -> int:
        """Number of entries of the (dense) weight."""
        return self.shape.numel()

    @property
    def values_param(self) -> torch.nn.Parameter:
        """The parameter the optimizer holds (``values`` for a compressed layer)."""
        return self.sparse_module.values if self.sparse_module is not None else self.param

    @property
    def is_dense(self) -> bool:
        """Whether every entry is active (no topology updates apply)."""
        return self.n_active >= self.numel

    @property
    def density(self) -> float:
        """Realised density of this layer."""
        return self.n_active / self.numel

    def flush(self, step: int) -> None:
        """Bring ``counter`` and ``active_steps`` up to ``step`` (exact, integer arithmetic)."""
        elapsed = step - self.count_step
        if elapsed <= 0:
            return
        if self.counter is not None:
            self.counter.add_(self.mask.to(torch.int32), alpha=elapsed)
        self.active_steps += self.n_active * elapsed
        self.count_step = step

    def sync_device(self) -> None:
        """Move the bookkeeping tensors to the parameter's device if the model was moved."""
        dev = self.param.device
        stale = self.mask_mul is not None and (self.mask_mul.dtype != self.param.dtype or self.mask_mul.device != dev)
        if self.mask.device != dev or stale:
            self.set_mask(self.mask.to(dev))
            self.ever_active = self.ever_active.to(dev)
            if self.counter is not None:
                self.counter = self.counter.to(dev)
