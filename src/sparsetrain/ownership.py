"""Which :class:`~sparsetrain.Sparsifier` holds a parameter.

A parameter belongs to at most one live Sparsifier: a second one on the same weights (a notebook
cell run twice) would fight the first, and converting a held layer with
:func:`~sparsetrain.sparse.to_sparse` would leave the Sparsifier and its optimizer training a weight
the model no longer uses. The registry keeps weak references only: a parameter or Sparsifier that
is garbage-collected stops counting, with or without ``remove()``.

It also notices an optimizer other than a holder's own stepping the held weights (the user built a
new optimizer mid-run and kept the Sparsifier): the Sparsifier acts only in its optimizer's step
hooks, so its topology updates and state masking would stop without a word. Step pre- and
post-hooks common to all optimizers (``torch.optim.optimizer.register_optimizer_step_pre_hook`` /
``..._post_hook``, registered when the first Sparsifier claims weights) check each optimizer once
per new claim and warn.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Iterable, Optional

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from .errors import InputWarning

__all__ = ["claim", "release", "held_by", "was_released"]

# id(parameter) -> (weak parameter, weak holder)
_OWNERS: dict[int, tuple[weakref.ref, weakref.ref]] = {}
# id(parameter) -> weak parameter, for parameters a removed Sparsifier held (they carry its zeros)
_RELEASED: dict[int, weakref.ref] = {}
# optimizer -> the claim generation it was last checked at (a new claim checks every optimizer again)
_CHECKED: "weakref.WeakKeyDictionary[torch.optim.Optimizer, int]" = weakref.WeakKeyDictionary()
# optimizer being checked -> {id(holder): holder's step count} when its step() began
_START: "weakref.WeakKeyDictionary[torch.optim.Optimizer, dict[int, Any]]" = weakref.WeakKeyDictionary()
_generation = 0
_hooks: list = []


def held_by(param: torch.Tensor) -> Optional[Any]:
    """The live holder (a Sparsifier) of ``param``, or ``None``."""
    entry = _OWNERS.get(id(param))
    if entry is None or entry[0]() is not param:
        return None  # never claimed, or the id was reused by another tensor
    return entry[1]()


def claim(params: Iterable[torch.Tensor], holder: Any) -> list[int]:
    """Record ``holder`` as the holder of ``params``; returns the keys to pass to :func:`release`."""
    global _generation
    _generation += 1
    if not _hooks:
        _hooks.extend([register_optimizer_step_pre_hook(_note_start), register_optimizer_step_post_hook(_check_foreign_step)])
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


def _holders() -> dict[int, Any]:
    return {id(h): h for _, ref in list(_OWNERS.values()) if (h := ref()) is not None}


def _note_start(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Before an unchecked optimizer's step: each holder's step count (a holder that counts a step
    meanwhile was stepped from inside it: a wrapper such as SAM around the holder's optimizer)."""
    if _OWNERS and _CHECKED.get(optimizer) != _generation:
        _START[optimizer] = {k: getattr(h, "step", None) for k, h in _holders().items()}


def _check_foreign_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Warn once if ``optimizer`` steps weights a holder attached to another optimizer holds.

    A holder (Sparsifier) exposes ``optimizer``, ``step`` and ``_in_step`` (True inside its own
    optimizer's step). Not foreign: an optimizer stepped inside the holder's (a wrapper's inner
    optimizer, e.g. ZeroRedundancyOptimizer's), one inside whose step the holder's stepped (a
    wrapper around it, e.g. SAM), and one whose held weights have no gradient (frozen: it steps
    nothing of them; checked again once they have one). A step of the holder's optimizer that
    raised leaves ``_in_step`` set until its next step, and an optimizer first stepped meanwhile
    is taken as nested."""
    if not _OWNERS or _CHECKED.get(optimizer) == _generation:
        return
    start = _START.pop(optimizer, {})
    foreign, holder, idle = [], None, False
    for group in optimizer.param_groups:
        for p in group["params"]:
            h = held_by(p)
            if h is None or getattr(h, "optimizer", optimizer) is optimizer:
                continue
            if getattr(h, "_in_step", False) or start.get(id(h), getattr(h, "step", None)) != getattr(h, "step", None):
                _CHECKED[optimizer] = _generation  # nested, one way or the other
                return
            if p.grad is None:
                idle = True
                continue
            foreign.append(p)
            holder = h
    if holder is None and idle:
        return
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
