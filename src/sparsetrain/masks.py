"""Per-parameter sparse state: the mask and the bookkeeping that travels with it.

One :class:`LayerState` per sparse parameter holds

- ``mask``: bool tensor with the weight's dense shape, ``True`` where the weight is active;
- ``ever_active``: bool tensor, ``True`` where the weight has been active at least once
  (initial mask included) — the numerator of the ITOP rate R_s;
- ``counter``: int32 tensor, the number of optimizer steps each weight has been active
  (usage counter N of DST-EE). It is updated *lazily*: between topology updates the mask does
  not change, so ``counter += mask * (t - count_step)`` is applied only when the mask is about
  to change, when the counters are read, or when the state is saved — no per-step cost;
- ``pinned``: the layer was pinned dense with ``Sparsifier(dense=...)``;
- ``active_steps``: ``sum_t n_active(t)`` over the steps so far (exact training-FLOPs accounting);
- ``grad_buffer``: the dense gradient of the current step, captured only when the next
  optimizer step is followed by a topology update that needs it
  (:mod:`sparsetrain.capture`);
- ``storage``: where the weight lives (:mod:`sparsetrain.storage`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

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
    """The sparse state of one parameter (see the module docstring).

    The mask, counters and ever-active map always have the weight's *dense* shape. Where the
    weight actually lives is the layer's :attr:`storage` (:mod:`sparsetrain.storage`): a masked
    dense parameter or a compressed :class:`~sparsetrain.sparse.SparseLinear`. Algorithms read
    the weight through :attr:`weight` and its last gradient through :attr:`weight_grad`, both
    dense-shaped whatever the storage.
    """

    name: str
    #: the parameter the optimizer holds (``values`` of a compressed layer)
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
    #: dense shape of the weight
    shape: Optional[torch.Size] = None
    #: where the weight lives (a :class:`~sparsetrain.storage.Storage`); set by the Sparsifier
    storage: Optional[Any] = field(default=None, repr=False)
    #: flat positions the last topology update made newly active (``None`` before the first);
    #: the next update reports how many of them survive it
    last_grown: Optional[torch.Tensor] = field(default=None, repr=False)

    def __post_init__(self):
        if self.shape is None:
            self.shape = self.param.shape
        self.shape = torch.Size(self.shape)

    def set_mask(self, mask: torch.Tensor) -> None:
        """Replace the mask (bool); the storage refreshes what it derives from it."""
        self.mask = mask
        if self.storage is not None:
            self.storage.mask_changed(mask)

    @property
    def weight(self) -> torch.Tensor:
        """The weight with its dense shape (zeros off the mask). For a masked layer this is the
        parameter itself; for a compressed one a dense copy, made once per topology update."""
        return self.storage.dense_weight() if self.storage is not None else self.param

    @property
    def weight_grad(self) -> Optional[torch.Tensor]:
        """The gradient of the last backward with the weight's dense shape (zeros off the mask), or ``None``."""
        return self.storage.dense_grad() if self.storage is not None else self.param.grad

    @property
    def sparse_module(self) -> Optional[torch.nn.Module]:
        """The compressed module holding this weight (a SparseLinear), or ``None`` for a masked one."""
        return getattr(self.storage, "module", None)

    @property
    def values_param(self) -> torch.nn.Parameter:
        """The parameter the optimizer holds (the same as :attr:`param`)."""
        return self.param

    @property
    def numel(self) -> int:
        """Number of entries of the (dense) weight."""
        return self.shape.numel()

    @property
    def is_dense(self) -> bool:
        """Whether every entry is active (no topology updates apply)."""
        return self.n_active >= self.numel

    @property
    def frozen(self) -> bool:
        """Whether the layer never takes part in drop and grow: pinned with ``dense=`` or given
        every weight by the distribution."""
        return self.pinned or self.target_density >= 1.0

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
        if self.mask.device != dev:
            self.ever_active = self.ever_active.to(dev)
            if self.counter is not None:
                self.counter = self.counter.to(dev)
            self.set_mask(self.mask.to(dev))
        elif self.storage is not None:
            self.storage.mask_changed(self.mask)
