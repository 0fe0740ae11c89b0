"""Which :class:`~sparsetrain.Sparsifier` holds a parameter.

A parameter belongs to at most one live Sparsifier: a second one on the same weights (a notebook
cell run twice) would fight the first, and converting a held layer with
:func:`~sparsetrain.sparse.to_sparse` would leave the Sparsifier and its optimizer training a weight
the model no longer uses. The registry keeps weak references only: a parameter or Sparsifier that
is garbage-collected stops counting, with or without ``remove()``.
"""

from __future__ import annotations

import weakref
from typing import Any, Iterable, Optional

import torch

__all__ = ["claim", "release", "held_by", "was_released"]

# id(parameter) -> (weak parameter, weak holder)
_OWNERS: dict[int, tuple[weakref.ref, weakref.ref]] = {}
# id(parameter) -> weak parameter, for parameters a removed Sparsifier held (they carry its zeros)
_RELEASED: dict[int, weakref.ref] = {}


def held_by(param: torch.Tensor) -> Optional[Any]:
    """The live holder (a Sparsifier) of ``param``, or ``None``."""
    entry = _OWNERS.get(id(param))
    if entry is None or entry[0]() is not param:
        return None  # never claimed, or the id was reused by another tensor
    return entry[1]()


def claim(params: Iterable[torch.Tensor], holder: Any) -> list[int]:
    """Record ``holder`` as the holder of ``params``; returns the keys to pass to :func:`release`."""
    keys = []
    for p in params:
        _OWNERS[id(p)] = (weakref.ref(p), weakref.ref(holder))
        keys.append(id(p))
    return keys


def release(keys: Iterable[int], holder: Any) -> None:
    """Forget the claims of ``holder`` under ``keys`` (claims since taken by another holder stay)."""
    for key in [k for k, ref in _RELEASED.items() if ref() is None]:
        del _RELEASED[key]
    for key in keys:
        entry = _OWNERS.get(key)
        if entry is not None and entry[1]() is holder:
            del _OWNERS[key]
            _RELEASED[key] = entry[0]


def was_released(param: torch.Tensor) -> bool:
    """Whether a Sparsifier that held ``param`` was removed (so its masked-out entries are zeros)."""
    ref = _RELEASED.get(id(param))
    return ref is not None and ref() is param
