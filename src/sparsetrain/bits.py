"""Per-position bookkeeping of a large layer in memory ∝ the positions it concerns.

- :class:`PackedBits`: a set of flat positions stored as one bit per position (the ever-active
  map of a large layer);
- :class:`SparseCounts`: an int32 count per position, stored only for the positions that have
  one (sorted int64 positions + their counts; every other position counts 0) — the usage
  counters N_i of a large layer, kept for its ever-active set instead of 4 bytes per position.

:class:`PackedBits` holds ``numel`` bits in ``ceil(numel / 8)`` bytes (``uint8``; bit ``p & 7`` of
byte ``p >> 3`` is position ``p``) and keeps its population count up to date, so R_s needs no pass
over the bytes. A 20,000 × 20,000 layer's map takes 50 MB instead of the 400 MB of a dense bool
tensor. Every :class:`PackedBits` operation takes or returns int64 flat positions (row-major) and costs memory in
proportion to them, except the explicit conversions :meth:`PackedBits.to_bool` /
:meth:`PackedBits.from_bool`.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["PackedBits", "SparseCounts"]

# bytes converted at once by the passes over the whole map (popcount, positions): 16 MiB
_CHUNK = 1 << 24
_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.uint8)
_WEIGHTS = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8)


class PackedBits:
    """``numel`` bits, packed eight to a byte (see the module docstring).

    Args:
        numel: number of positions.
        data: the packed bytes (``uint8``, ``ceil(numel / 8)`` of them); default: all clear.
        count: the number of set bits, if known (else counted).
    """

    def __init__(self, numel: int, data: Optional[torch.Tensor] = None, count: Optional[int] = None,
                 device=None):
        self.numel = int(numel)
        n_bytes = (self.numel + 7) // 8
        if data is None:
            data = torch.zeros(n_bytes, dtype=torch.uint8, device=device)
            count = 0
        if data.dtype != torch.uint8 or data.dim() != 1 or data.numel() != n_bytes:
            raise ValueError(f"packed bits of {self.numel} positions need {n_bytes} uint8 bytes, "
                             f"got {data.dtype} of shape {tuple(data.shape)}")
        self.data = data
        self.count = self.popcount() if count is None else int(count)

    # -- conversions ------------------------------------------------------------------------
    @classmethod
    def from_bool(cls, mask: torch.Tensor) -> "PackedBits":
        """The bits of a bool tensor (any shape, read row-major)."""
        flat = mask.reshape(-1).to(torch.bool)
        numel = flat.numel()
        data = torch.empty((numel + 7) // 8, dtype=torch.uint8, device=flat.device)
        weights = _WEIGHTS.to(flat.device)
        for b0 in range(0, data.numel(), _CHUNK):  # chunk by chunk: no temporary of the full size
            part = flat[b0 * 8:(b0 + _CHUNK) * 8]
            pad = (-part.numel()) % 8
            if pad:
                part = torch.cat([part, part.new_zeros(pad)])
            data[b0:b0 + _CHUNK] = (part.view(-1, 8).to(torch.uint8) * weights).sum(1, dtype=torch.uint8)
        return cls(numel, data, int(torch.count_nonzero(flat)))

    @classmethod
    def from_positions(cls, numel: int, positions: torch.Tensor, device=None) -> "PackedBits":
        """The bits set at ``positions`` (flat, any order, repeats allowed)."""
        out = cls(numel, device=device if device is not None else positions.device)
        out.add(positions)
        return out

    def to_bool(self, shape=None) -> torch.Tensor:
        """A dense bool tensor (flat, or of ``shape``): one byte per position, for small layers."""
        bits = (self.data.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8, device=self.data.device)) & 1
        flat = bits.reshape(-1)[: self.numel].to(torch.bool)
        return flat.view(shape) if shape is not None else flat

    def positions(self) -> torch.Tensor:
        """The set positions, sorted (int64), computed chunk by chunk."""
        out = []
        for b0 in range(0, self.data.numel(), _CHUNK):
            chunk = self.data[b0:b0 + _CHUNK]
            nz = chunk.nonzero().squeeze(1)
            if not nz.numel():
                continue
            bits = (chunk[nz].unsqueeze(1) >> torch.arange(8, dtype=torch.uint8, device=chunk.device)) & 1
            r, c = bits.nonzero(as_tuple=True)
            out.append((nz[r] + b0) * 8 + c)
        return torch.cat(out) if out else torch.empty(0, dtype=torch.int64, device=self.data.device)

    # -- set operations ---------------------------------------------------------------------
    def test(self, positions: torch.Tensor) -> torch.Tensor:
        """Whether each of ``positions`` is set (bool, same shape)."""
        positions = positions.to(self.data.device, torch.int64)
        shape = positions.shape
        positions = positions.reshape(-1)
        byte = self.data.index_select(0, positions >> 3)
        return ((byte >> (positions & 7).to(torch.uint8)) & 1).to(torch.bool).view(shape)

    def add(self, positions: torch.Tensor) -> int:
        """Set the bits at ``positions`` (repeats allowed); returns how many were newly set."""
        positions = positions.to(self.data.device, torch.int64).reshape(-1)
        if not positions.numel():
            return 0
        new = positions[~self.test(positions)]
        if new.numel() > 1 and not bool((new[1:] > new[:-1]).all()):  # sorted and distinct needs no unique
            new = torch.unique(new)
        if new.numel():
            # distinct bits of one byte: their sum is their OR
            self.data.index_add_(0, new >> 3, torch.bitwise_left_shift(torch.ones_like(new), new & 7).to(torch.uint8))
        self.count += int(new.numel())
        return int(new.numel())

    def popcount(self) -> int:
        """The number of set bits, counted over the bytes (the maintained :attr:`count` is the same)."""
        table = _POPCOUNT.to(self.data.device)
        return sum(int(table[self.data[b0:b0 + _CHUNK].to(torch.int64)].sum(dtype=torch.int64))
                   for b0 in range(0, self.data.numel(), _CHUNK))

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the bytes live."""
        return self.data.device

    def to(self, device) -> "PackedBits":
        """The same bits on ``device`` (``self`` when already there)."""
        if self.data.device == torch.device(device):
            return self
        return PackedBits(self.numel, self.data.to(device), self.count)

    def clone(self) -> "PackedBits":
        """An independent copy."""
        return PackedBits(self.numel, self.data.clone(), self.count)

    def __repr__(self) -> str:
        return f"PackedBits(numel={self.numel}, count={self.count})"


def _in_sorted(index: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Whether each of ``positions`` occurs in the sorted int64 tensor ``index`` (bool)."""
    if not index.numel():
        return torch.zeros(positions.shape, dtype=torch.bool, device=positions.device)
    at = torch.searchsorted(index, positions).clamp_(max=index.numel() - 1)
    return index[at] == positions


class SparseCounts:
    """An int32 count per flat position of a layer of ``numel`` positions, stored only where it
    was ever counted: :attr:`index` (sorted distinct int64 positions) and :attr:`counts` (int32,
    one per stored position); every position not stored counts 0.

    The usage counters of a large (index-backed) layer: a position enters when it is first
    counted active, so the storage is the layer's ever-active set at 12 bytes per position
    (8 for the position, 4 for the count) instead of 4 bytes per position of the whole layer —
    smaller as long as fewer than a third of the positions were ever active. Every operation costs
    memory in proportion to the positions it is given and the positions stored, except the
    explicit conversions :meth:`to_dense` / :meth:`from_dense`.

    Args:
        numel: number of positions of the layer.
        index: sorted distinct positions (int64); default: none.
        counts: their counts (int32, same length).
    """

    def __init__(self, numel: int, index: Optional[torch.Tensor] = None, counts: Optional[torch.Tensor] = None,
                 device=None):
        self.numel = int(numel)
        if index is None:
            index = torch.empty(0, dtype=torch.int64, device=device)
            counts = torch.empty(0, dtype=torch.int32, device=device)
        if counts is None or index.dim() != 1 or counts.shape != index.shape:
            raise ValueError("sparse counts need a 1-d index and as many counts")
        self.index = index.to(torch.int64)
        self.counts = counts.to(torch.int32)

    # -- conversions ------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, counter: torch.Tensor) -> "SparseCounts":
        """The nonzero counts of a dense counter tensor (any shape, read row-major)."""
        flat = counter.reshape(-1)
        index = flat.nonzero().squeeze(1)
        return cls(flat.numel(), index, flat[index].to(torch.int32))

    def to_dense(self, shape=None) -> torch.Tensor:
        """A dense int32 tensor (flat, or of ``shape``): 4 bytes per position, on request only."""
        out = torch.zeros(self.numel, dtype=torch.int32, device=self.index.device)
        out[self.index] = self.counts
        return out.view(shape) if shape is not None else out

    # -- counting ---------------------------------------------------------------------------
    def add(self, positions: torch.Tensor, amount: int = 1) -> None:
        """Add ``amount`` to the count of each of ``positions`` (flat int64; a position given
        twice counts twice); positions not stored yet enter the index."""
        positions = positions.to(self.index.device, torch.int64).reshape(-1)
        if not positions.numel() or amount == 0:
            return
        new = positions[~_in_sorted(self.index, positions)]
        if new.numel():
            new = torch.unique(new)
            index, order = torch.sort(torch.cat([self.index, new]))
            counts = torch.cat([self.counts, torch.zeros(new.numel(), dtype=torch.int32, device=new.device)])
            self.index, self.counts = index, counts[order]
        at = torch.searchsorted(self.index, positions)
        self.counts.index_add_(0, at, torch.full((positions.numel(),), int(amount), dtype=torch.int32,
                                                 device=positions.device))

    def at(self, positions: torch.Tensor) -> torch.Tensor:
        """The counts of ``positions`` (int32, same shape; 0 where not stored)."""
        positions = positions.to(self.index.device, torch.int64)
        out = torch.zeros(positions.shape, dtype=torch.int32, device=positions.device)
        if self.index.numel():
            at = torch.searchsorted(self.index, positions).clamp_(max=self.index.numel() - 1)
            hit = self.index[at] == positions
            out[hit] = self.counts[at[hit]]
        return out

    def span(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored positions in ``[start, stop)``, as offsets from ``start``, and their counts."""
        bounds = torch.searchsorted(self.index, torch.tensor([start, stop], dtype=torch.int64,
                                                             device=self.index.device)).tolist()
        return self.index[bounds[0]:bounds[1]] - start, self.counts[bounds[0]:bounds[1]]

    def dense_span(self, start: int, stop: int) -> torch.Tensor:
        """The counts of positions ``start .. stop - 1`` as a dense int32 tensor (a block of a layer)."""
        out = torch.zeros(stop - start, dtype=torch.int32, device=self.index.device)
        offsets, counts = self.span(start, stop)
        out[offsets] = counts
        return out

    def sum(self) -> int:
        """The sum of all counts."""
        return int(self.counts.sum(dtype=torch.int64))

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the index and counts live."""
        return self.index.device

    @property
    def stored(self) -> int:
        """How many positions are stored."""
        return int(self.index.numel())

    def to(self, device) -> "SparseCounts":
        """The same counts on ``device`` (``self`` when already there)."""
        if self.index.device == torch.device(device):
            return self
        return SparseCounts(self.numel, self.index.to(device), self.counts.to(device))

    def clone(self) -> "SparseCounts":
        """An independent copy."""
        return SparseCounts(self.numel, self.index.clone(), self.counts.clone())

    def __repr__(self) -> str:
        return f"SparseCounts(numel={self.numel}, stored={self.stored})"
