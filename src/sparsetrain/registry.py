"""The one registry of algorithms: classes and presets by name (``algorithm="rigl"``, ``"rigl-itop"``).

A leaf module: it imports nothing else from the library at import time, so any module may use
it. Algorithm classes are registered by :mod:`sparsetrain.algorithms`, presets by
:mod:`sparsetrain.presets` (both imported by ``import sparsetrain``); a user registers their own
with :func:`register` (a class decorator) or :func:`register_preset`.
"""

from __future__ import annotations

from typing import Any, Callable

from ._util import parse_value

__all__ = ["ALGORITHMS", "PRESETS", "register", "register_preset", "names", "lookup", "make_algorithm",
           "parse_method"]

#: what a registered class must have (the :class:`~sparsetrain.Algorithm` interface)
_INTERFACE = ("plan", "select_drop", "select_grow", "initial_masks", "drop_fraction", "is_update_step")

#: name -> Algorithm subclass
ALGORITHMS: dict[str, type] = {}
#: name -> preset factory ``f(density, **kwargs) -> Algorithm`` (configurations from the papers)
PRESETS: dict[str, Callable[..., Any]] = {}


def register(cls: type) -> type:
    """Register an :class:`~sparsetrain.Algorithm` subclass under ``cls.name`` (usable as a decorator)."""
    # checked by interface, so that this module imports nothing of the library
    if not (isinstance(cls, type) and isinstance(getattr(cls, "name", None), str)
            and all(callable(getattr(cls, a, None)) for a in _INTERFACE)):
        raise TypeError(f"only Algorithm subclasses can be registered, got {cls!r}")
    ALGORITHMS[cls.name.lower()] = cls
    return cls


def register_preset(name: str, factory: Callable[..., Any]) -> Callable[..., Any]:
    """Register a preset: a factory ``f(density, **kwargs)`` returning a configured algorithm."""
    if not callable(factory):
        raise TypeError(f"a preset must be callable, got {factory!r}")
    PRESETS[str(name).lower()] = factory
    return factory


def names() -> list[str]:
    """Every registered name: algorithms, then presets (sorted within each)."""
    return sorted(ALGORITHMS) + sorted(PRESETS)


def lookup(name: str) -> Callable[..., Any]:
    """The class or preset factory registered as ``name`` (case-insensitive); a clear error otherwise."""
    key = str(name).lower()
    if key in ALGORITHMS:
        return ALGORITHMS[key]
    if key in PRESETS:
        return PRESETS[key]
    raise ValueError(f"unknown algorithm {name!r}; valid names are {', '.join(names())}")


def make_algorithm(name: str, **kwargs) -> Any:
    """Build a registered algorithm or preset by name, e.g. ``make_algorithm("rigl", density=0.1)``."""
    factory = lookup(name)
    if "density" not in kwargs:
        raise ValueError(f"algorithm {name!r} needs a density, e.g. density=0.1 for 90% sparsity")
    return factory(**kwargs)


def parse_method(spec: str) -> tuple[str, dict]:
    """Parse a method spec ``"name:key=value:key=value"`` into ``(name, kwargs)``.

    Values are read by :func:`sparsetrain._util.parse_value` (int, float, ``true``/``false``,
    ``none``, else str): ``parse_method("dstee:c=0.001:bonus=ucb") == ("dstee", {"c": 0.001, "bonus": "ucb"})``.
    """
    parts = [p for p in str(spec).split(":") if p != ""]
    if not parts:
        raise ValueError("empty method spec; expected e.g. 'rigl' or 'dstee:c=0.001'")
    kwargs: dict = {}
    for item in parts[1:]:
        if "=" not in item:
            raise ValueError(f"bad option {item!r} in method spec {spec!r}; expected key=value")
        key, raw = item.split("=", 1)
        kwargs[key.strip().replace("-", "_")] = parse_value(raw)
    return parts[0].strip(), kwargs
