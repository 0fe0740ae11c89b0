"""Small mechanisms shared across the library, each written once.

- :func:`atomic_save` / :func:`atomic_write_text`: write a file so that a crash leaves either the
  old file or the new one, never half of one;
- :func:`parse_value`: a command-line or method-spec string as int, float, bool, ``None`` or str;
- :func:`to_step`: "a fraction of the run (float <= 1) or an absolute step" as one rule;
- :func:`global_topk`: the ``k`` best entries across several tensors at once, as per-tensor masks.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

__all__ = ["atomic_save", "atomic_write_text", "parse_value", "to_step", "is_fraction", "global_topk"]


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def atomic_save(obj: Any, path: Union[str, os.PathLike]) -> Path:
    """``torch.save(obj, path)`` through a temporary file and an atomic rename."""
    path = Path(path)
    tmp = _tmp(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def atomic_write_text(text: str, path: Union[str, os.PathLike]) -> Path:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    tmp = _tmp(path)
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def stable_repr(obj: Any) -> str:
    """``repr(obj)``, except that a default object repr (``<function f at 0x7f...>``, whose address
    changes from one process to the next) becomes the object's qualified name (``<module.f>``), so
    a saved configuration compares equal when a new process loads it."""
    text = repr(obj)
    if re.search(r" at 0x[0-9a-fA-F]+>", text):
        owner = obj if hasattr(obj, "__qualname__") else type(obj)
        return f"<{getattr(owner, '__module__', '?')}.{owner.__qualname__}>"
    return text


def uncompiled(model: Any) -> Any:
    """The module that ``torch.compile`` wrapped (``torch.compile(m)._orig_mod is m``), else ``model``.

    Sparsifiers, selections and FLOP counts work on it: the compiled wrapper shares its parameters
    and modules, but its names carry an ``_orig_mod.`` prefix, which would make masks, reports and
    checkpoints of a compiled and a plain model disagree."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, torch.nn.Module) else model


def parse_value(text: str) -> Any:
    """Read a setting's value from text: int, float, ``true``/``false``, ``none``/``null``, else the string."""
    text = str(text).strip()
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    return text


Bound = Union[int, float]


def is_fraction(x: Bound) -> bool:
    """Whether ``x`` means a fraction of the run (a float in (0, 1]) rather than a step count."""
    return isinstance(x, float) and 0.0 < x <= 1.0


def to_step(x: Optional[Bound], total_steps: Optional[int], what: str) -> Optional[int]:
    """A point in the run as an optimizer step: ``None`` stays ``None``; ``0`` is step 0; a float in
    (0, 1] is that fraction of ``total_steps`` (rounded); an int (or a whole float) > 1 is a step.

    Raises a ``ValueError`` naming ``what`` for a negative or non-finite value, a fractional value
    above 1, a bool, and for a fraction when ``total_steps`` is unknown.
    """
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"{what} must be a fraction of the run (a float <= 1) or a step count, got {x!r}")
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"{what} must be a fraction of the run (a float <= 1) or a step count >= 0, got {x!r}")
    if x == 0:
        return 0
    if is_fraction(x):
        if total_steps is None:
            raise ValueError(
                f"{what}={x} is a fraction of the run, so total_steps is required: pass "
                "total_steps=len(loader) * epochs to the Sparsifier, or give an absolute step"
            )
        return int(round(x * total_steps))
    if x != int(x):
        raise ValueError(f"{what}={x} is neither a fraction of the run (<= 1) nor a whole number of steps")
    return int(x)


def global_topk(scores: Sequence[torch.Tensor], k: int, largest: bool = True) -> list[torch.Tensor]:
    """The ``k`` best entries over all of ``scores`` at once, as one bool mask per tensor.

    Every tensor is ranked in float32 on the CPU; mark entries that must never be picked with
    ``-inf`` (``largest=True``) or ``inf`` (``largest=False``). Ties are broken by ``torch.topk``,
    deterministically. The masks have the tensors' shapes and devices.
    """
    flat = torch.cat([s.detach().float().reshape(-1).cpu() for s in scores]) if scores else torch.empty(0)
    k = int(k)
    if not 0 <= k <= flat.numel():
        raise ValueError(f"cannot pick {k} of {flat.numel()} entries")
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    if k:
        chosen[torch.topk(flat, k, largest=largest, sorted=False).indices] = True
    out, offset = [], 0
    for s in scores:
        n = s.numel()
        out.append(chosen[offset:offset + n].view(s.shape).to(s.device))
        offset += n
    return out
