"""Which parameters are sparse: ``include`` / ``exclude`` selectors, ``dense`` pins, and the checks.

A selector is a glob on the fully-qualified parameter name (``"features.*.weight"``), a module
type (that module's ``weight``) or a predicate ``f(name, param, module) -> bool``. By default
the weights of Linear and Conv1d/2d/3d modules (and compressed SparseLinear layers) are sparse.
A parameter shared by several modules (tied weights) is one sparse parameter under its first name.
"""

from __future__ import annotations

import fnmatch
import logging
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch import nn

from .sparse.linear import SparseLinear

__all__ = ["DEFAULT_SPARSE_MODULES", "Selector", "Selected", "as_list", "matches", "select", "pinned_names",
           "check_selected"]

log = logging.getLogger(__name__)

#: Module types whose ``weight`` is sparse by default (spec §1.1).
DEFAULT_SPARSE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

Selector = Union[str, type, Callable[[str, nn.Parameter, nn.Module], bool]]


class Selected(NamedTuple):
    """One sparse parameter: its (dense) name, the parameter, and the module holding it."""

    name: str
    param: nn.Parameter
    module: nn.Module


def as_list(x) -> list:
    """``None`` -> ``[]``, a single selector -> ``[it]``, a sequence -> a list."""
    if x is None:
        return []
    if isinstance(x, (list, tuple, set)):
        return list(x)
    return [x]


def matches(selector: Selector, name: str, param: nn.Parameter, module: nn.Module, attr: str) -> bool:
    """Whether a selector (glob on the parameter name, module type, or predicate) matches."""
    if isinstance(selector, str):
        return fnmatch.fnmatchcase(name, selector)
    if isinstance(selector, type):
        return isinstance(module, selector) and attr == "weight"
    if callable(selector):
        return bool(selector(name, param, module))
    raise TypeError(f"a selector must be a name glob, a module type or a predicate, got {selector!r}")


def select(model: nn.Module, include=None, exclude=None) -> list[Selected]:
    """The sparse parameters of ``model`` by ``include``/``exclude`` (see the module docstring)."""
    include, exclude = as_list(include), as_list(exclude)
    chosen: list[Selected] = []
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        for attr, param in module.named_parameters(recurse=False):
            if isinstance(module, SparseLinear) and attr == "values":
                attr = "weight"  # a compressed weight is selected and reported under its dense name
            name = f"{mod_name}.{attr}" if mod_name else attr
            if id(param) in seen:
                continue  # a tied / shared weight is one sparse parameter, under its first name
            if include:
                hit = any(matches(s, name, param, module, attr) for s in include)
            else:
                hit = isinstance(module, DEFAULT_SPARSE_MODULES + (SparseLinear,)) and attr == "weight"
            if not hit or any(matches(s, name, param, module, attr) for s in exclude):
                continue
            seen.add(id(param))
            if not param.requires_grad:
                log.info("sparsetrain: %s is frozen (requires_grad=False); left dense", name)
                continue
            chosen.append(Selected(name, param, module))
    if not chosen:
        raise ValueError(
            "no prunable parameter matched: by default the weights of Linear and Conv1d/2d/3d modules "
            "are sparse; pass include=[...] with parameter-name globs (e.g. 'encoder.*.weight'), module "
            "types or a predicate, and check that exclude=[...] does not remove everything"
        )
    return chosen


def pinned_names(selected: Sequence[Selected], dense: Union[str, Sequence[str], None]) -> list[str]:
    """The selected names matched by the ``dense=`` globs (sparse layers pinned dense)."""
    globs = as_list(dense)
    return [s.name for s in selected if any(fnmatch.fnmatchcase(s.name, g) for g in globs)]


def _is_dtensor(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - builds without distributed
        return False
    return isinstance(t, DTensor)


def check_selected(selected: Sequence[Selected], optimizer: Optional[torch.optim.Optimizer]) -> None:
    """Raise a clear error for parameters the Sparsifier cannot hold: on the meta device, sharded
    DTensors, or not in ``optimizer``."""
    meta = [s.name for s in selected if s.param.is_meta]
    if meta:
        raise ValueError(
            f"parameter(s) {meta[:3]}{'...' if len(meta) > 3 else ''} are on the meta device (no data): "
            "materialise the model first (model.to_empty(device=...) and initialise it, or load its weights), "
            "then attach the Sparsifier"
        )
    sharded = [s.name for s in selected if _is_dtensor(s.param)]
    if sharded:
        raise ValueError(
            f"parameter(s) {sharded[:3]} are sharded DTensors (FSDP / tensor parallelism), which the sparsifier "
            "does not support yet: masks and topology updates need the full tensors. Use DistributedDataParallel "
            "(see docs/distributed.md, which also says what FSDP support would take)"
        )
    if optimizer is None:
        return
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [s.name for s in selected if id(s.param) not in held]
    if missing:
        raise ValueError(
            f"parameter(s) {', '.join(missing)} are sparse but not held by the optimizer, so their "
            "masks could not be enforced; create the optimizer over model.parameters() (or add them "
            f"with optimizer.add_param_group), or leave them dense with exclude={missing!r}"
        )
