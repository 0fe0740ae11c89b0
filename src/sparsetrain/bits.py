"""A set of flat positions stored as one bit per position: the ever-active map of a large layer.

:class:`PackedBits` holds ``numel`` bits in ``ceil(numel / 8)`` bytes (``uint8``; bit ``p & 7`` of
byte ``p >> 3`` is position ``p``) and keeps its population count up to date, so R_s needs no pass
over the bytes. A 20,000 × 20,000 layer's map takes 50 MB instead of the 400 MB of a dense bool
tensor. Every operation takes or returns int64 flat positions (row-major) and costs memory in
proportion to them, except the explicit conversions :meth:`PackedBits.to_bool` /
:meth:`PackedBits.from_bool`.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["PackedBits"]

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
        return ((self.data[positions >> 3] >> (positions & 7).to(torch.uint8)) & 1).to(torch.bool)

    def add(self, positions: torch.Tensor) -> int:
        """Set the bits at ``positions`` (repeats allowed); returns how many were newly set."""
        positions = positions.to(self.data.device, torch.int64).reshape(-1)
        if not positions.numel():
            return 0
        new = torch.unique(positions[~self.test(positions)])
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
