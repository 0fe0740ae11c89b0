"""Rank consistency under ``torch.distributed`` (DDP): every rank must take the same decisions.

- :func:`process_group` resolves the group to agree with (``None``: a single process);
- :func:`all_reduce_dense_grads` averages the captured dense gradients over the ranks, as DDP
  averages ``.grad``, so growth ranks the same gradient everywhere (one collective);
- :func:`verify_masks` compares a checksum of every mask across ranks after an update and raises,
  naming the layer, if they diverge.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import torch

from .masks import LayerState
from .sparse.lowrank import LowRankGrad

__all__ = ["process_group", "all_reduce_dense_grads", "verify_masks"]


def process_group(distributed: Union[bool, str], group: Any) -> Optional[Any]:
    """The process group to agree with, or ``None`` for a single process (``distributed``: see
    ``Sparsifier(distributed=...)``)."""
    dist = torch.distributed
    if distributed is False or not dist.is_available() or not dist.is_initialized():
        if distributed is True:
            raise RuntimeError("Sparsifier(distributed=True) needs torch.distributed.init_process_group() first")
        return None
    if dist.get_world_size(group) < 2 and distributed == "auto":
        return None
    return group if group is not None else dist.group.WORLD


def all_reduce_dense_grads(layers: Sequence[LayerState], step: int, group: Any) -> None:
    """Average this step's captured dense gradients across the ranks (in place on each layer)."""
    layers = [l for l in layers if not l.is_dense]
    if not layers:
        return
    present = [l.grad_buffer is not None and l.grad_buffer_step == step for l in layers]
    for l, ok in zip(layers, present):
        if ok and isinstance(l.grad_buffer, LowRankGrad):
            # factors cannot be summed across ranks: averaging needs the dense gradient
            l.grad_buffer = l.grad_buffer.dense()
    ref = next((l.grad_buffer for l, ok in zip(layers, present) if ok), None)
    dtype = ref.dtype if ref is not None else layers[0].param.dtype
    device = ref.device if ref is not None else layers[0].param.device
    # one collective: every layer's gradient, then one "this rank had it" flag per layer
    flat = torch.cat([
        (l.grad_buffer.reshape(-1).to(dtype) if ok else torch.zeros(l.numel, dtype=dtype, device=device))
        for l, ok in zip(layers, present)
    ] + [torch.tensor([float(ok) for ok in present], dtype=dtype, device=device)])
    torch.distributed.all_reduce(flat, group=group)
    flags = flat[-len(layers):].tolist()
    flat /= torch.distributed.get_world_size(group)
    offset = 0
    for l, seen in zip(layers, flags):
        part = flat[offset:offset + l.numel].view(l.shape)
        offset += l.numel
        if seen > 0:
            l.grad_buffer = part
            l.grad_buffer_step = step


def verify_masks(layers: Mapping[str, LayerState], step: int, group: Any) -> None:
    """Compare a checksum of every layer's mask across ranks; raise naming the first divergence."""
    sums = []
    for l in layers.values():
        idx = l.mask.reshape(-1).nonzero().reshape(-1).to(torch.int64)
        sums.append([int(((idx * 2654435761) % 2147483647).sum()), int(idx.numel())])
    # on the masks' device: where the backend communicates (CUDA for NCCL)
    mine = torch.tensor(sums, dtype=torch.int64, device=next(iter(layers.values())).mask.device)
    gathered = [torch.zeros_like(mine) for _ in range(torch.distributed.get_world_size(group))]
    torch.distributed.all_gather(gathered, mine, group=group)
    for rank, other in enumerate(gathered):
        if not torch.equal(other.cpu(), mine.cpu()):
            row = int((other.cpu() != mine.cpu()).any(1).nonzero()[0])
            name = list(layers)[row]
            raise RuntimeError(
                f"sparsetrain: the masks of {name} differ between this rank and rank {rank} after the update at "
                f"step {step}: every rank needs the same algorithm seed and the same gradients (wrap the model "
                "in DistributedDataParallel; give every rank the same seed)"
            )
