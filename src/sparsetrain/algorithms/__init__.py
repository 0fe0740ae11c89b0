"""Sparse-training algorithms and their registry (``algorithm="rigl"`` or ``st.RigL(...)``)."""

from __future__ import annotations

from typing import Type

from .base import Algorithm, UpdateContext
from .dstee import DSTEE
from .global_ranking import GlobalDSTEE, GlobalRigL, GlobalSET
from .granet import GraNet
from .mest import MEST
from .snfs import SNFS
from .snip import SNIP, GraSP
from .rigl import RigL
from .set import SET
from .static import Static

__all__ = ["Algorithm", "UpdateContext", "Static", "SET", "RigL", "DSTEE", "SNFS", "MEST", "GraNet", "SNIP", "GraSP",
    "GlobalRigL", "GlobalSET", "GlobalDSTEE", "ALGORITHMS", "register", "make_algorithm", "parse_method"]

#: name -> algorithm class
ALGORITHMS: dict[str, Type[Algorithm]] = {}


def register(cls: Type[Algorithm]) -> Type[Algorithm]:
    """Register an :class:`Algorithm` subclass under ``cls.name`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise TypeError(f"only Algorithm subclasses can be registered, got {cls!r}")
    ALGORITHMS[cls.name.lower()] = cls
    return cls


for _cls in (Static, SET, RigL, DSTEE, SNFS, MEST, GraNet, SNIP, GraSP):
    register(_cls)


def make_algorithm(name: str, **kwargs) -> Algorithm:
    """Build a registered algorithm or preset by name, e.g. ``make_algorithm("rigl", density=0.1)``.

    Preset names (``"set-itop"``, ``"rigl-itop"``) come from :mod:`sparsetrain.presets`.
    """
    from ..presets import PRESETS  # presets build on the classes registered here

    key = str(name).lower()
    if key not in ALGORITHMS and key not in PRESETS:
        valid = sorted(ALGORITHMS) + sorted(PRESETS)
        raise ValueError(f"unknown algorithm {name!r}; valid names are {', '.join(valid)}")
    if "density" not in kwargs:
        raise ValueError(f"algorithm {name!r} needs a density, e.g. density=0.1 for 90% sparsity")
    if key in PRESETS:
        return PRESETS[key](**kwargs)
    return ALGORITHMS[key](**kwargs)


def parse_method(spec: str) -> tuple[str, dict]:
    """Parse a method spec ``"name:key=value:key=value"`` into ``(name, kwargs)``.

    Values are read as int, float, ``true``/``false``, ``none``, or else kept as strings:
    ``parse_method("dstee:c=0.001:bonus=ucb") == ("dstee", {"c": 0.001, "bonus": "ucb"})``.
    """
    parts = [p for p in str(spec).split(":") if p != ""]
    if not parts:
        raise ValueError("empty method spec; expected e.g. 'rigl' or 'dstee:c=0.001'")
    kwargs: dict = {}
    for item in parts[1:]:
        if "=" not in item:
            raise ValueError(f"bad option {item!r} in method spec {spec!r}; expected key=value")
        key, raw = item.split("=", 1)
        low = raw.lower()
        if low in ("true", "false"):
            value: object = low == "true"
        elif low in ("none", "null"):
            value = None
        else:
            try:
                value = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                except ValueError:
                    value = raw
        kwargs[key.strip().replace("-", "_")] = value
    return parts[0].strip(), kwargs
