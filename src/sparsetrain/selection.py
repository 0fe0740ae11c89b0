"""Which parameters are sparse: ``include`` / ``exclude`` selectors, ``dense`` pins, and the checks.

A selector is a glob on the fully-qualified parameter name (``"features.*.weight"``), a module
type (that module's ``weight``) or a predicate ``f(name, param, module) -> bool``.

By default the weight matrices of Linear, Conv1d/2d/3d, compressed :class:`SparseLinear` layers
and Hugging-Face-style ``Conv1D`` layers (GPT-2's projections) are sparse. ``Conv1D`` is
recognised without importing transformers, by duck typing: a module whose class is named
``Conv1D``, with an ``nf`` attribute (its output size) and a 2-D ``weight``.

What stays dense unless asked for, and why (:meth:`Selection.table` lists it):

- **embeddings** (``nn.Embedding``/``nn.EmbeddingBag`` weights) and parameters **tied** to one
  (an output head sharing the token embedding): sparse only when a selector names them
  explicitly — an exact name (any alias of the tied parameter), a module type
  (``include=[nn.Embedding]``) or a predicate; a wildcard glob does not opt them in;
- **1-D parameters** (biases, norm gains): the same rule;
- frozen parameters (``requires_grad=False``).

A parameter shared by several modules (tied weights) is one sparse parameter under its first
name; ``include``/``exclude``/``dense`` match *every* name (alias) it has. A string or type
selector of ``include``/``exclude``/``dense`` that matches nothing is an error naming it
(nothing a user typed is silently ignored).
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch import nn

from .errors import InputError, InputTypeError
from .sparse.linear import SparseLinear

__all__ = ["DEFAULT_SPARSE_MODULES", "EMBEDDING_MODULES", "Selector", "Selected", "Selection", "as_list",
           "matches", "is_conv1d_like", "weight_layer_kind", "plan", "select", "pinned_names", "check_selected"]

log = logging.getLogger(__name__)

#: Module types whose ``weight`` is sparse by default (spec §1.1); HF-style ``Conv1D`` is
#: recognised by :func:`is_conv1d_like` and compressed :class:`SparseLinear` layers always are.
DEFAULT_SPARSE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: Module types whose ``weight`` (and every parameter tied to it) stays dense by default.
EMBEDDING_MODULES = (nn.Embedding, nn.EmbeddingBag)

Selector = Union[str, type, Callable[[str, nn.Parameter, nn.Module], bool]]

_GLOB = set("*?[")


class Selected(NamedTuple):
    """One sparse parameter: its (dense) name, the parameter, the module holding it, and every
    name it has (a tied parameter has several; the first is ``name``)."""

    name: str
    param: nn.Parameter
    module: nn.Module
    aliases: tuple[str, ...] = ()


@dataclass
class Selection:
    """The outcome of :func:`plan`: what is sparse, what is pinned dense, and what was left dense.

    Attributes:
        selected: the sparse parameters, in model order.
        pinned: names of sparse parameters pinned dense by ``dense=`` (kept in the budget).
        why: for each sparse name, why it is sparse (``"Linear"``, ``"include='x'"``, ...).
        left: ``(name, shape, reason)`` for every parameter left dense.
    """

    selected: list[Selected] = field(default_factory=list)
    pinned: list[str] = field(default_factory=list)
    why: dict[str, str] = field(default_factory=dict)
    left: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)

    def table(self) -> list[str]:
        """Lines saying what was left dense and why; 1-D parameters are counted on one line."""
        one_d = [(n, s) for n, s, r in self.left if r == "1-D"]
        lines = [f"  {n}  {'x'.join(map(str, s))}  {r}" for n, s, r in self.left if r != "1-D"]
        if one_d:
            numel = sum(int(torch.Size(s).numel()) for _, s in one_d)
            lines.append(f"  {len(one_d)} 1-D parameters (biases, norm gains; {numel} values): 1-D, never sparse "
                         "unless named exactly in include=")
        return lines


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
    raise InputTypeError(f"a selector must be a name glob, a module type or a predicate, got {selector!r}")


def _explicit(selector: Selector) -> bool:
    """An exact name, a module type or a predicate (not a wildcard glob)."""
    return not (isinstance(selector, str) and _GLOB & set(selector))


def _show(selector: Selector) -> str:
    if isinstance(selector, str):
        return repr(selector)
    if isinstance(selector, type):
        return selector.__name__
    return getattr(selector, "__name__", "a predicate")


def is_conv1d_like(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2's attention and MLP projections; ``y = x W + b`` with
    ``W`` of shape ``(in, out)``), recognised without importing transformers: the class is named
    ``Conv1D``, it has an ``nf`` attribute and a 2-D ``weight``."""
    w = getattr(module, "weight", None)
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and isinstance(w, torch.Tensor) and w.dim() == 2


def weight_layer_kind(module: nn.Module) -> Optional[str]:
    """The kind of weight layer ``module`` is (``"Linear"``, ``"Conv2d"``, ``"Conv1D"``,
    ``"SparseLinear"``, ...; its ``weight`` is sparse by default), else ``None``."""
    for cls in (SparseLinear,) + DEFAULT_SPARSE_MODULES:
        if isinstance(module, cls):
            return cls.__name__
    return "Conv1D" if is_conv1d_like(module) else None


class _Alias(NamedTuple):
    name: str
    module: nn.Module
    attr: str


def _aliases(model: nn.Module) -> dict[int, tuple[nn.Parameter, list[_Alias]]]:
    """Every parameter of ``model`` (by identity, in model order) with all the names it has."""
    out: dict[int, tuple[nn.Parameter, list[_Alias]]] = {}
    for mod_name, module in model.named_modules():
        for attr, param in module.named_parameters(recurse=False):
            if isinstance(module, SparseLinear) and attr == "values":
                attr = "weight"  # a compressed weight is selected and reported under its dense name
            name = f"{mod_name}.{attr}" if mod_name else attr
            out.setdefault(id(param), (param, []))[1].append(_Alias(name, module, attr))
    return out


def _dims(param: nn.Parameter, aliases: Sequence[_Alias]) -> int:
    for a in aliases:
        if isinstance(a.module, SparseLinear) and a.attr == "weight":
            return len(a.module.weight_shape)
    return param.dim()


def _shape(param: nn.Parameter, aliases: Sequence[_Alias]) -> tuple[int, ...]:
    for a in aliases:
        if isinstance(a.module, SparseLinear) and a.attr == "weight":
            return tuple(a.module.weight_shape)
    return tuple(param.shape)


def _unmatched(kind: str, selector: Selector, names: Sequence[str]) -> InputError:
    if isinstance(selector, type):
        return InputError(f"{kind}={selector.__name__} matches no module of the model: remove it, or name the "
                          f"parameters by name glob (the model's parameters include {list(names[:4])})")
    return InputError(f"{kind}={selector!r} matches no parameter of the model: check the spelling (names are "
                      f"fully qualified, like {list(names[:4])}; '*' in a glob also matches dots), or remove it")


def plan(model: nn.Module, include=None, exclude=None, dense=None) -> Selection:
    """Decide which parameters of ``model`` are sparse (see the module docstring).

    Raises ``ValueError`` when a string or type selector matches nothing, when ``dense=`` names
    no sparse parameter, and when nothing is sparse (naming ``include=`` when the model's only
    weight matrices are embeddings).
    """
    include, exclude, dense = as_list(include), as_list(exclude), as_list(dense)
    for s in include + exclude + dense:
        if not isinstance(s, (str, type)) and not callable(s):
            raise InputTypeError(f"a selector must be a name glob, a module type or a predicate, got {s!r}")
    params = _aliases(model)
    embedded = {id(p) for _, module in model.named_modules() if isinstance(module, EMBEDDING_MODULES)
                for attr, p in module.named_parameters(recurse=False) if attr == "weight"}
    all_names = [a.name for _, aliases in params.values() for a in aliases]
    used: set[tuple[str, int]] = set()
    lists = {"include": include, "exclude": exclude, "dense": dense}

    def hits(kind: str, param, aliases) -> list:
        found = [(i, s) for i, s in enumerate(lists[kind])
                 if any(matches(s, a.name, param, a.module, a.attr) for a in aliases)]
        used.update((kind, i) for i, _ in found)
        return [s for _, s in found]

    out = Selection()
    for pid, (param, aliases) in params.items():
        name, shape = aliases[0].name, _shape(param, aliases)
        excluded = hits("exclude", param, aliases)
        if include:
            found = hits("include", param, aliases)
            explicit = any(_explicit(s) for s in found)
            reason_in = f"include={_show(found[0])}" if found else ""
        else:
            kinds = [k for a in aliases if a.attr == "weight" for k in [weight_layer_kind(a.module)] if k]
            found, explicit, reason_in = kinds, False, (kinds[0] if kinds else "")
        if not found:
            why = ("1-D" if _dims(param, aliases) < 2 else
                   "embedding (opt in with include=)" if pid in embedded else
                   f"{type(aliases[0].module).__name__} weight, not sparse by default (opt in: include=[{name!r}])"
                   if not include else "not matched by include=")
            out.left.append((name, shape, why))
            continue
        if pid in embedded and not explicit:
            emb = next(a.name for a in aliases if isinstance(a.module, EMBEDDING_MODULES))
            others = [a.name for a in aliases if a.name != emb]
            why = (f"tied to embedding {emb}" if emb != name else
                   f"embedding, tied to {', '.join(others)}" if others else "embedding")
            out.left.append((name, shape, f"{why} (opt in: include=[{name!r}] or include=[nn.Embedding])"))
            continue
        if _dims(param, aliases) < 2 and not explicit:
            out.left.append((name, shape, "1-D"))
            continue
        if excluded:
            out.left.append((name, shape, f"excluded by {_show(excluded[0])}"))
            continue
        if not param.requires_grad:
            log.info("sparsetrain: %s is frozen (requires_grad=False); left dense", name)
            out.left.append((name, shape, "frozen (requires_grad=False)"))
            continue
        module = next((a.module for a in aliases if a.attr == "weight" and weight_layer_kind(a.module)),
                      aliases[0].module)
        names = tuple(a.name for a in aliases)
        out.selected.append(Selected(name, param, module, names))
        notes = [reason_in] + (["embedding"] if pid in embedded else []) + \
            ([f"tied: {', '.join(names[1:])}"] if len(names) > 1 else [])
        out.why[name] = ", ".join(notes)
        if hits("dense", param, aliases):
            out.pinned.append(name)
            out.why[name] += ", pinned by dense="
    for kind in ("include", "exclude"):
        for i, s in enumerate(lists[kind]):
            if (kind, i) not in used and isinstance(s, (str, type)):
                raise _unmatched(kind, s, all_names)
    for i, s in enumerate(dense):
        if ("dense", i) not in used and isinstance(s, (str, type)):
            left = [(n, r) for n, _, r in out.left if (matches(s, n, None, None, "") if isinstance(s, str) else False)]
            if left:
                raise InputError(f"dense={_show(s)} names no sparse parameter: {left[0][0]} is left dense already "
                                 f"({left[0][1]}); remove it from dense=")
            if isinstance(s, type) and any(isinstance(m, s) for m in model.modules()):
                raise InputError(f"dense={s.__name__} names no sparse parameter (its modules are left dense "
                                 "already); remove it from dense=")
            raise _unmatched("dense", s, all_names)
    if not out.selected:
        emb = [n for n, _, r in out.left if r.startswith(("embedding", "tied to embedding"))]
        if emb:
            raise InputError(
                f"no prunable parameter: the model's only weight matrices are embeddings or tied to one ({', '.join(emb)}), "
                f"which stay dense by default; to make them sparse name them: include=[{emb[0]!r}] or "
                "include=[nn.Embedding]")
        raise InputError(
            "no prunable parameter matched: by default the weights of Linear, Conv1d/2d/3d and Conv1D modules "
            "are sparse; pass include=[...] with parameter-name globs (e.g. 'encoder.*.weight'), module "
            "types or a predicate, and check that exclude=[...] does not remove everything"
        )
    return out


def select(model: nn.Module, include=None, exclude=None) -> list[Selected]:
    """The sparse parameters of ``model`` by ``include``/``exclude`` (see :func:`plan`)."""
    return plan(model, include, exclude).selected


def pinned_names(selected: Sequence[Selected], dense: Union[Selector, Sequence[Selector], None]) -> list[str]:
    """The selected names matched by the ``dense=`` selectors (on any alias; sparse layers pinned dense)."""
    sel = as_list(dense)
    return [s.name for s in selected
            if any(matches(g, a, s.param, s.module, "weight") for g in sel for a in (s.aliases or (s.name,)))]


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
        raise InputError(
            f"parameter(s) {meta[:3]}{'...' if len(meta) > 3 else ''} are on the meta device (no data): "
            "materialise the model first (model.to_empty(device=...) and initialise it, or load its weights), "
            "then attach the Sparsifier"
        )
    sharded = [s.name for s in selected if _is_dtensor(s.param)]
    if sharded:
        raise InputError(
            f"parameter(s) {sharded[:3]} are sharded DTensors (FSDP / tensor parallelism), which the sparsifier "
            "does not support yet: masks and topology updates need the full tensors. Use DistributedDataParallel "
            "(see docs/distributed.md, which also says what FSDP support would take)"
        )
    if optimizer is None:
        return
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [s.name for s in selected if id(s.param) not in held]
    if missing:
        raise InputError(
            f"parameter(s) {', '.join(missing)} are sparse but not held by the optimizer, so their "
            "masks could not be enforced; create the optimizer over model.parameters() (or add them "
            f"with optimizer.add_param_group), or leave them dense with exclude={missing!r}"
        )
