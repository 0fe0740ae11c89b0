"""The one registry of algorithms: classes and presets by name (``algorithm="rigl"``, ``"rigl-itop"``).

A leaf module: it imports only the leaves ``_util`` and ``errors`` of the library, so any module
may use it. Algorithm classes are registered by :mod:`sparsetrain.algorithms`, presets by
:mod:`sparsetrain.presets` (both imported by ``import sparsetrain``); a user registers their own
with :func:`register` (a class decorator) or :func:`register_preset`.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

from ._util import parse_value
from .errors import InputError, InputTypeError

__all__ = ["ALGORITHMS", "PRESETS", "register", "register_preset", "names", "lookup", "accepted_kwargs",
           "make_algorithm", "parse_method"]

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


def _near(word: str, options) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options``, or ``""``."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def lookup(name: str) -> Callable[..., Any]:
    """The class or preset registered as ``name`` (case-insensitive, surrounding spaces ignored);
    an :class:`~sparsetrain.errors.InputError` naming the nearest name and all valid ones otherwise."""
    key = str(name).strip().lower()
    if key in ALGORITHMS:
        return ALGORITHMS[key]
    if key in PRESETS:
        return PRESETS[key]
    hint = (" (dense training needs no Sparsifier: leave it out)" if key == "dense"
            else _near(key, names()) or _near(key.replace("_", "-"), names()))
    raise InputError(f"unknown algorithm {name!r}{hint}; valid names are {', '.join(names())}")


def accepted_kwargs(cls: type) -> set:
    """The keyword arguments an algorithm class accepts, following ``**kwargs`` up its base classes."""
    out: set = set()
    for c in cls.__mro__:
        if "__init__" not in vars(c):
            continue
        params = inspect.signature(c.__init__).parameters.values()
        out |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return out


def make_algorithm(name: str, **kwargs) -> Any:
    """Build a registered algorithm or preset by name, e.g. ``make_algorithm("rigl", density=0.1)``.

    A missing ``density`` and (for a class) a keyword the algorithm does not take raise
    :class:`~sparsetrain.errors.InputError`, naming the nearest valid keyword.
    """
    factory = lookup(name)
    accepted = accepted_kwargs(factory) if isinstance(factory, type) else None
    if accepted is not None:
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            valid = sorted(accepted - {"density"})
            extra = (" (a static mask has no topology updates)"
                     if not getattr(factory, "dynamic", True) and unknown[0] in _SCHEDULE_KWARGS else "")
            raise InputTypeError(
                f"unexpected keyword argument {unknown[0]!r} for algorithm {name!r}{_near(unknown[0], accepted)}"
                f"{extra}; valid: density, {', '.join(valid)}")
    if "density" not in kwargs:
        typo = next((k for k in kwargs if _near(k, ["density"])), None)
        hint = f" ({typo!r} is not a setting: did you mean 'density'?)" if typo else ""
        raise InputError(f"algorithm {name!r} needs a density, e.g. density=0.1 for 90% sparsity{hint}")
    return factory(**kwargs)


#: settings of the update schedule that a static algorithm does not take
_SCHEDULE_KWARGS = ("update_interval", "drop_fraction", "drop_schedule", "end", "start", "grow_init")


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
