"""Sparse-training algorithms and their registry (``algorithm="rigl"`` or ``st.RigL(...)``)."""

from __future__ import annotations

from typing import Type

from .base import Algorithm, UpdateContext
from .dstee import DSTEE
from .rigl import RigL
from .set import SET
from .static import Static

__all__ = ["Algorithm", "UpdateContext", "Static", "SET", "RigL", "DSTEE", "ALGORITHMS", "register", "make_algorithm"]

#: name -> algorithm class
ALGORITHMS: dict[str, Type[Algorithm]] = {}


def register(cls: Type[Algorithm]) -> Type[Algorithm]:
    """Register an :class:`Algorithm` subclass under ``cls.name`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise TypeError(f"only Algorithm subclasses can be registered, got {cls!r}")
    ALGORITHMS[cls.name.lower()] = cls
    return cls


for _cls in (Static, SET, RigL, DSTEE):
    register(_cls)


def make_algorithm(name: str, **kwargs) -> Algorithm:
    """Build a registered algorithm by name, e.g. ``make_algorithm("rigl", density=0.1)``."""
    key = str(name).lower()
    if key not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; valid names are {', '.join(sorted(ALGORITHMS))}")
    if "density" not in kwargs:
        raise ValueError(f"algorithm {name!r} needs a density, e.g. density=0.1 for 90% sparsity")
    return ALGORITHMS[key](**kwargs)
