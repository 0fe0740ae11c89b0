"""Which :class:`~sparsetrain.Sparsifier` holds a parameter.

A parameter belongs to at most one live Sparsifier: a second one on the same weights (a notebook
cell run twice) would fight the first, and converting a held layer with
:func:`~sparsetrain.sparse.to_sparse` would leave the Sparsifier and its optimizer training a weight
the model no longer uses. The registry keeps weak references only: a parameter or Sparsifier that
is garbage-collected stops counting, with or without ``remove()``.

It also notices an optimizer other than a holder's own stepping the held weights (the user built a
new optimizer mid-run and kept the Sparsifier): the Sparsifier acts only in its optimizer's step
hooks, so its topology updates and state masking would stop without a word. A step-post hook
common to all optimizers (``torch.optim.optimizer.register_optimizer_step_post_hook``, registered
when the first Sparsifier claims weights) checks each optimizer once per new claim and warns.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Iterable, Optional

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from .errors import InputWarning

__all__ = ["claim", "release", "held_by", "was_released"]

# id(parameter) -> (weak parameter, weak holder)
_OWNERS: dict[int, tuple[weakref.ref, weakref.ref]] = {}
# id(parameter) -> weak parameter, for parameters a removed Sparsifier held (they carry its zeros)
_RELEASED: dict[int, weakref.ref] = {}
# optimizer -> the claim generation it was last checked at (a new claim checks every optimizer again)
_CHECKED: "weakref.WeakKeyDictionary[torch.optim.Optimizer, int]" = weakref.WeakKeyDictionary()
_generation = 0
_hook: Any = None


def held_by(param: torch.Tensor) -> Optional[Any]:
    """The live holder (a Sparsifier) of ``param``, or ``None``."""
    entry = _OWNERS.get(id(param))
    if entry is None or entry[0]() is not param:
        return None  # never claimed, or the id was reused by another tensor
    return entry[1]()


def claim(params: Iterable[torch.Tensor], holder: Any) -> list[int]:
    """Record ``holder`` as the holder of ``params``; returns the keys to pass to :func:`release`."""
    global _generation, _hook
    _generation += 1
    if _hook is None:
        _hook = register_optimizer_step_post_hook(_check_foreign_step)
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


def _check_foreign_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Warn once if ``optimizer`` steps weights a holder attached to another optimizer holds.

    A holder (Sparsifier) exposes ``optimizer`` and ``_in_step`` (True inside its own optimizer's
    step, so an inner optimizer a wrapper steps, e.g. ZeroRedundancyOptimizer's, is not foreign)."""
    if not _OWNERS or _CHECKED.get(optimizer) == _generation:
        return
    foreign, holder = [], None
    for group in optimizer.param_groups:
        for p in group["params"]:
            h = held_by(p)
            if h is None or getattr(h, "optimizer", optimizer) is optimizer:
                continue
            if getattr(h, "_in_step", False):
                return  # stepped from inside the holder's optimizer: a wrapper's inner optimizer
            foreign.append(p)
            holder = h
    _CHECKED[optimizer] = _generation
    if holder is None:
        return
    names = {id(l.param): n for n, l in getattr(holder, "layers", {}).items()}
    shown = [names.get(id(p), "?") for p in foreign[:3]] + (["..."] if len(foreign) > 3 else [])
    warnings.warn(
        f"sparsetrain: an optimizer ({type(optimizer).__name__}) other than the Sparsifier's "
        f"({type(holder.optimizer).__name__}) steps {len(foreign)} of its sparse weights ({', '.join(shown)}): "
        "the Sparsifier counts steps, masks optimizer state and updates the topology only in its own "
        "optimizer's step(), so from here on it does none of that. To switch optimizers mid-run: "
        "state = sp.state_dict(); sp.remove(); sp = Sparsifier(model, new_optimizer, algorithm, "
        "total_steps=..., state=state)", InputWarning, stacklevel=3)
