"""Per-parameter sparse state: the mask and the bookkeeping that travels with it.

One :class:`LayerState` per sparse parameter holds

- ``mask``: bool tensor with the weight's dense shape, ``True`` where the weight is active;
- ``ever_active``: bool tensor, ``True`` where the weight has been active at least once
  (initial mask included) — the numerator of the ITOP rate R_s;
- ``counter``: int32 tensor, the number of optimizer steps each weight has been active
  (usage counter N of DST-EE); on an index-backed (large compressed) layer a
  :class:`~sparsetrain.bits.SparseCounts` holding counts for the ever-active positions only
  (never-active positions count 0). It is updated *lazily*: between topology updates the mask does
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

from typing import Any, Optional

import torch

from .bits import PackedBits, SparseCounts

__all__ = ["LayerState", "random_mask", "random_positions", "sample_positions", "sample_free_positions", "in_sorted", "LARGE_LAYER"]


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
    def is_taken(draw: torch.Tensor) -> torch.Tensor:
        return taken[draw]

    def mark(picked: torch.Tensor) -> None:
        taken[picked] = True

    return _sample(numel, count, generator, taken.device, is_taken, mark)


def sample_free_positions(numel: int, count: int, generator: torch.Generator, taken: torch.Tensor) -> torch.Tensor:
    """:func:`sample_positions` with the taken positions given as a sorted int64 index set
    instead of a dense bool tensor (left unchanged): the same draws from the same generator
    state, the same positions in the same order, in memory proportional to ``taken`` and ``count``."""
    chosen = [torch.empty(0, dtype=torch.int64, device=taken.device)]

    def is_taken(draw: torch.Tensor) -> torch.Tensor:
        return in_sorted(taken, draw) | in_sorted(chosen[0], draw)

    def mark(picked: torch.Tensor) -> None:
        chosen[0] = torch.sort(torch.cat([chosen[0], picked])).values

    return _sample(numel, count, generator, taken.device, is_taken, mark)


def in_sorted(index: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Whether each of ``positions`` occurs in the sorted int64 tensor ``index`` (bool)."""
    if not index.numel():
        return torch.zeros(positions.shape, dtype=torch.bool, device=positions.device)
    at = torch.searchsorted(index, positions).clamp_(max=index.numel() - 1)
    return index[at] == positions


def _sample(numel: int, count: int, generator: torch.Generator, device, is_taken, mark) -> torch.Tensor:
    need, found = count, []
    while need > 0:
        draw = torch.randint(0, numel, (need + need // 8 + 64,), generator=generator).to(device)
        draw = draw[~is_taken(draw)]
        if draw.numel():
            uniq, inv = torch.unique(draw, return_inverse=True)
            first = torch.full((uniq.numel(),), draw.numel(), dtype=torch.int64, device=draw.device)
            first.scatter_reduce_(0, inv, torch.arange(draw.numel(), device=draw.device), reduce="amin")
            picked = draw[first.sort().values[:need]]
            mark(picked)
            found.append(picked)
            need -= picked.numel()
    return torch.cat(found) if found else torch.empty(0, dtype=torch.int64, device=device)


def random_positions(numel: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """The sorted flat positions of :func:`random_mask` (the same generator draws, the same set);
    above ``LARGE_LAYER`` positions and up to half of them, without any dense tensor."""
    if numel <= LARGE_LAYER or count > numel // 2:
        return random_mask(torch.Size([numel]), count, generator).nonzero().squeeze(1)
    return torch.sort(sample_free_positions(numel, count, generator, torch.empty(0, dtype=torch.int64))).values


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


class LayerState:
    """The sparse state of one parameter (see the module docstring).

    The mask, counters and ever-active map have the weight's *dense* shape, except on a layer
    whose storage holds its own sorted index of active positions (``storage.index_backed``: a
    large compressed layer, :class:`~sparsetrain.storage.StreamingStorage`). There no dense bool
    is kept: :attr:`mask` is derived from the storage's index when read (a transient dense bool;
    the streaming update and the metrics never read it) and :attr:`ever_active` is a
    :class:`~sparsetrain.bits.PackedBits` (1 bit per position) and the usage counters, when kept,
    a :class:`~sparsetrain.bits.SparseCounts` (counts of the ever-active positions). :meth:`active_positions`,
    :meth:`ever_count`, :meth:`ever_at` and :meth:`mark_ever` work on either form. Where the
    weight actually lives is the layer's :attr:`storage` (:mod:`sparsetrain.storage`): a masked
    dense parameter or a compressed :class:`~sparsetrain.sparse.SparseLinear`. Algorithms read
    the weight through :attr:`weight` and its last gradient through :attr:`weight_grad`, both
    dense-shaped whatever the storage.
    """

    def __init__(self, name: str, param: torch.nn.Parameter, target_density: float, n_active: int,
                 mask: torch.Tensor, ever_active: Any, counter: Optional[torch.Tensor] = None,
                 count_step: int = 0, active_steps: int = 0, init_std: float = 0.0, pinned: bool = False,
                 grad_buffer: Optional[torch.Tensor] = None, grad_buffer_step: int = -1,
                 grad_signature: tuple = (), shape: Optional[torch.Size] = None, storage: Optional[Any] = None,
                 last_grown: Optional[torch.Tensor] = None):
        self.name = name
        #: the parameter the optimizer holds (``values`` of a compressed layer)
        self.param = param
        self.target_density = target_density
        self.n_active = n_active
        self._mask = mask
        self.counter = counter
        self.count_step = count_step
        self.active_steps = active_steps
        self.init_std = init_std
        self.pinned = pinned
        self.grad_buffer = grad_buffer
        self.grad_buffer_step = grad_buffer_step
        self.grad_signature = grad_signature
        #: this backward's gradient, staged until ``.grad`` is accumulated (:mod:`sparsetrain.capture`)
        self.grad_pending: Optional[tuple] = None
        #: the step of the last backward that accumulated into ``.grad``
        self.grad_accumulated_at = -1
        #: dense shape of the weight
        self.shape = torch.Size(shape if shape is not None else param.shape)
        #: where the weight lives (a :class:`~sparsetrain.storage.Storage`); set by the Sparsifier
        self.storage = storage
        #: flat positions the last topology update made newly active (``None`` before the first);
        #: the next update reports how many of them survive it
        self.last_grown = last_grown
        self.ever_active = ever_active

    def __repr__(self) -> str:
        return (f"LayerState(name={self.name!r}, shape={tuple(self.shape)}, n_active={self.n_active}, "
                f"target_density={self.target_density}, pinned={self.pinned})")

    # -- the active set ----------------------------------------------------------------------
    @property
    def index_backed(self) -> bool:
        """Whether the storage's sorted index is the active set (no dense mask is kept)."""
        return bool(getattr(self.storage, "index_backed", False))

    @property
    def ever_active(self) -> Any:
        """Positions active at least once: a bool tensor of the dense shape, or
        :class:`~sparsetrain.bits.PackedBits` on an index-backed layer."""
        return self._ever

    @ever_active.setter
    def ever_active(self, value: Any) -> None:
        if self.index_backed and torch.is_tensor(value):
            value = PackedBits.from_bool(value)
        elif not self.index_backed and isinstance(value, PackedBits):
            value = value.to_bool(self.shape)
        self._ever = value

    @property
    def mask(self) -> torch.Tensor:
        """Bool tensor of the dense shape, ``True`` where the weight is active (on an index-backed
        layer a fresh tensor made from the storage's index at each read)."""
        if self._mask is None:
            return self.storage.dense_mask()
        return self._mask

    def active_positions(self) -> torch.Tensor:
        """The active flat positions, sorted (int64)."""
        if self._mask is None:
            return self.storage.module.flat_index()
        return self._mask.reshape(-1).nonzero().squeeze(1)

    def is_active(self, positions: torch.Tensor) -> torch.Tensor:
        """Whether each flat position of ``positions`` is active (bool)."""
        if self._mask is not None:
            return self._mask.reshape(-1)[positions.to(self._mask.device)]
        flat = self.active_positions()
        return in_sorted(flat, positions.to(flat.device, torch.int64))

    def ever_count(self) -> int:
        """How many positions have been active at least once."""
        ever = self._ever
        return ever.count if isinstance(ever, PackedBits) else int(torch.count_nonzero(ever))

    def ever_at(self, positions: torch.Tensor) -> torch.Tensor:
        """Whether each flat position of ``positions`` has been active before (bool)."""
        ever = self._ever
        if isinstance(ever, PackedBits):
            return ever.test(positions)
        return ever.reshape(-1)[positions.to(ever.device)]

    def mark_ever(self, new: torch.Tensor) -> None:
        """Record as ever active the positions of ``new``: a bool mask of the dense shape or int64
        flat positions."""
        ever = self._ever
        if isinstance(ever, PackedBits):
            ever.add(new.reshape(-1).nonzero().squeeze(1) if new.dtype == torch.bool else new)
        elif new.dtype == torch.bool:
            ever |= new.view(ever.shape)
        else:
            ever.reshape(-1)[new.to(ever.device)] = True

    def ever_dense(self) -> torch.Tensor:
        """The ever-active map as a bool tensor of the dense shape (a copy)."""
        ever = self._ever
        return ever.to_bool(self.shape) if isinstance(ever, PackedBits) else ever.clone()

    def set_mask(self, mask: Optional[torch.Tensor]) -> None:
        """Replace the mask (bool); the storage refreshes what it derives from it. An index-backed
        layer whose storage already holds its pattern keeps no copy (see the class docstring);
        ``None`` there means: the pattern the storage now holds."""
        if self.storage is not None:
            self.storage.mask_changed(mask)
        self._mask = None if self.index_backed and self.storage.holds_pattern() else mask

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
            if isinstance(self.counter, SparseCounts):
                self.counter.add(self.active_positions(), elapsed)
            elif self._mask is None:
                self.counter.view(-1).index_add_(0, self.active_positions(), torch.full(
                    (self.n_active,), elapsed, dtype=torch.int32, device=self.counter.device))
            else:
                self.counter.add_(self._mask.to(torch.int32), alpha=elapsed)
        self.active_steps += self.n_active * elapsed
        self.count_step = step

    def sync_device(self) -> None:
        """Move the bookkeeping tensors to the parameter's device if the model was moved."""
        dev = self.param.device
        if self._ever.device != dev:
            self._ever = self._ever.to(dev)
            if self.counter is not None:
                self.counter = self.counter.to(dev)
        if self._mask is None:
            return
        if self._mask.device != dev:
            self.set_mask(self._mask.to(dev))
        elif self.storage is not None:
            self.storage.mask_changed(self._mask)
