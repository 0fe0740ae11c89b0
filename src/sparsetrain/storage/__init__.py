"""Where a sparse weight lives: one :class:`Storage` per sparse layer, behind one interface.

- :class:`MaskedStorage`: an ordinary dense parameter, zeroed off its mask;
- :class:`CompressedStorage`: a :class:`~sparsetrain.sparse.SparseLinear` (CSR, only the nonzeros);
- :class:`StreamingStorage`: a compressed layer above :data:`~sparsetrain.masks.LARGE_LAYER`
  positions, whose updates stream without dense temporaries.

:func:`storage_for` picks one for a parameter. A new way of holding weights (block-sparse, a
quantised layer, ...) is a new :class:`Storage` subclass plus a line in :func:`storage_for`;
the engine and the algorithms do not change. :func:`dense_state` / :func:`load_dense_state` read
and write a model's state with every compressed weight under its dense name and shape (used
by Sup-tickets to average models whatever their storage).
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn

from ..masks import LARGE_LAYER
from ..sparse.linear import SparseLinear
from .base import Hooks, Storage
from .compressed import CompressedStorage
from .masked import MaskedStorage
from .streaming import StreamingStorage

__all__ = ["Storage", "Hooks", "MaskedStorage", "CompressedStorage", "StreamingStorage", "storage_for",
           "compressed_modules", "dense_state", "load_dense_state"]


def storage_for(param: nn.Parameter, module: Optional[nn.Module] = None) -> Storage:
    """The storage of ``param`` held by ``module``: compressed (streaming when large) for a
    SparseLinear's ``values``, masked dense otherwise."""
    if isinstance(module, SparseLinear) and param is module.values:
        if module.weight_shape.numel() > LARGE_LAYER:
            return StreamingStorage(module)
        return CompressedStorage(module)
    return MaskedStorage(param)


def compressed_modules(model: nn.Module) -> dict[str, SparseLinear]:
    """``{dense weight name: SparseLinear}`` of every compressed layer of ``model``."""
    return {(f"{n}.weight" if n else "weight"): m for n, m in model.named_modules() if isinstance(m, SparseLinear)}


_INTERNAL = ("values", "crow_indices", "col_indices", "t_crow_indices", "t_col_indices", "t_perm")


@torch.no_grad()
def dense_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` (detached copies) with every compressed weight as a dense tensor
    under its dense name (``"net.1.weight"``) in place of its CSR entries."""
    comp = compressed_modules(model)
    prefixes = {name[: -len("weight")] for name in comp}
    out = {}
    for key, value in model.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        prefix = f"{prefix}." if prefix else ""
        if prefix in prefixes and leaf in _INTERNAL:
            continue
        out[key] = value.detach().clone()
    for name, module in comp.items():
        out[name] = module.dense_weight()
    return out


@torch.no_grad()
def load_dense_state(model: nn.Module, state: Mapping[str, torch.Tensor],
                     masks_: Optional[Mapping[str, torch.Tensor]] = None) -> None:
    """Inverse of :func:`dense_state`: load ``state`` into ``model``; a compressed layer takes the
    pattern ``masks_[name]`` (default: the nonzeros of its dense weight) with those values."""
    comp = compressed_modules(model)
    rest = {k: v for k, v in state.items() if k not in comp}
    prefixes = tuple(name[: -len("weight")] for name in comp)
    own = {k: v for k, v in model.state_dict().items()
           if not (k.startswith(prefixes) and k.rpartition(".")[2] in _INTERNAL)} if comp else model.state_dict()
    missing = sorted(set(own) - set(rest))
    unexpected = sorted(set(rest) - set(own))
    if missing or unexpected:
        raise ValueError(f"state does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(rest, strict=False)
    for name, module in comp.items():
        w = state[name].to(module.values.device, module.values.dtype)
        mask = masks_[name] if masks_ is not None and name in masks_ else (w != 0)
        mask = mask.to(w.device, torch.bool)
        module.set_structure(mask, w[mask], reallocate=True)
