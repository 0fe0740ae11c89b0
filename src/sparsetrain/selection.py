"""Which parameters are sparse: ``include`` / ``exclude`` selectors, ``dense`` pins, and the checks.

A selector is

- a glob on the fully-qualified parameter name (``"features.*.weight"``);
- a module type: the weight matrices of modules of that type — the parameters they hold
  directly whose name is ``weight``, ``weight_*`` or ``*_weight`` (``nn.Linear``'s ``weight``,
  ``nn.MultiheadAttention``'s ``in_proj_weight``, ``nn.LSTM``'s ``weight_ih_l0``...; not the
  gain ``weight_g`` of ``torch.nn.utils.weight_norm``) — and those of the modules inside them (``exclude=[nn.MultiheadAttention]`` also keeps its ``out_proj``
  dense; ``include=[MyBlock]`` makes the block's weight matrices sparse);
- a predicate ``f(name, param, module) -> bool``;
- :data:`DEFAULT_LAYERS`: the default selection below, so that ``include=[DEFAULT_LAYERS,
  "head.weight"]`` *adds* a layer to the defaults (``include=["head.weight"]`` alone makes only
  that layer sparse).

By default the weight matrices of Linear, Conv1d/2d/3d, compressed :class:`SparseLinear` layers,
Hugging-Face-style ``Conv1D`` layers (GPT-2's projections), ``nn.MultiheadAttention`` (its
``in_proj_weight``, or ``q/k/v_proj_weight``; ``out_proj`` is a Linear) and the recurrent layers
``nn.RNN``/``nn.LSTM``/``nn.GRU`` (``weight_ih_l*``, ``weight_hh_l*``, ``weight_hr_l*``) and
their cells (``weight_ih``, ``weight_hh``) are sparse. ``Conv1D`` is recognised without importing
transformers, by duck typing: a module whose class is named ``Conv1D``, with an ``nf``
attribute (its output size) and a 2-D ``weight``.

What stays dense unless asked for, and why (:meth:`Selection.table` lists it):

- **embeddings** (``nn.Embedding``/``nn.EmbeddingBag`` weights) and parameters **tied** to one
  (an output head sharing the token embedding): sparse only when a selector names them
  explicitly — an exact name (any alias of the tied parameter), the module type holding them
  (``include=[nn.Embedding]``) or a predicate; a wildcard glob, a container's type or
  :data:`DEFAULT_LAYERS` does not opt them in;
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
import re
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch import nn

from ._util import uncompiled
from .errors import InputError, InputTypeError
from .sparse.linear import SparseLinear

__all__ = ["DEFAULT_SPARSE_MODULES", "EMBEDDING_MODULES", "DEFAULT_LAYERS", "Selector", "Selected", "Selection",
           "as_list", "matches", "is_conv1d_like", "is_weight_name", "weight_layer_kind", "default_kind", "plan",
           "select", "check_selected", "depthwise", "dead_channels"]

log = logging.getLogger(__name__)

#: Module types whose ``weight`` is sparse by default (spec §1.1); HF-style ``Conv1D`` is
#: recognised by :func:`is_conv1d_like` and compressed :class:`SparseLinear` layers always are.
DEFAULT_SPARSE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: Module types whose ``weight`` (and every parameter tied to it) stays dense by default.
EMBEDDING_MODULES = (nn.Embedding, nn.EmbeddingBag)

#: ``nn.MultiheadAttention``'s own weight matrices (packed, or separate when k/v dims differ).
_MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")

#: A recurrent layer's weight matrices (not the ``_g``/``_v`` of ``torch.nn.utils.weight_norm``).
_RNN_WEIGHT = re.compile(r"weight_(ih|hh|hr)_l\d+(_reverse)?")


class _DefaultLayers:
    """The selector standing for the default selection (see :data:`DEFAULT_LAYERS`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "st.DEFAULT_LAYERS"


#: A selector meaning "what is sparse by default" (the weight matrices of Linear, Conv, ``Conv1D``,
#: ``nn.MultiheadAttention`` and recurrent layers): ``include=[DEFAULT_LAYERS, "lm_head.weight"]``
#: keeps the defaults and adds a layer; ``include=["lm_head.weight"]`` alone makes only it sparse.
DEFAULT_LAYERS = _DefaultLayers()

Selector = Union[str, type, _DefaultLayers, Callable[[str, nn.Parameter, nn.Module], bool]]

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
        frozen: the weight matrices left dense only because they were frozen, by name (their
            parameter: a compressed layer's ``values``).
    """

    selected: list[Selected] = field(default_factory=list)
    pinned: list[str] = field(default_factory=list)
    why: dict[str, str] = field(default_factory=dict)
    left: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)
    frozen: dict[str, nn.Parameter] = field(default_factory=dict)

    def table(self) -> list[str]:
        """Lines saying what was left dense and why; 1-D parameters are counted on one line."""
        one_d = [(n, s) for n, s, r in self.left if r == "1-D"]
        rows = [(n, "x".join(map(str, s)), r) for n, s, r in self.left if r != "1-D"]
        wn, ws = max((len(n) for n, _, _ in rows), default=0), max((len(s) for _, s, _ in rows), default=0)
        lines = [f"  {n:{wn}}  {s:{ws}}  {r}" for n, s, r in rows]
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


def is_weight_name(attr: str) -> bool:
    """Whether a parameter's own name (``module.<attr>``) names a weight matrix to a module-type
    selector: ``weight``, ``weight_*`` (an RNN's ``weight_ih_l0``) or ``*_weight`` (``in_proj_weight``)."""
    return attr == "weight" or attr.startswith("weight_") or attr.endswith("_weight")


def _weight_norm_gain(module: Optional[nn.Module], attr: str) -> bool:
    """``weight_g`` of ``torch.nn.utils.weight_norm`` (a gain per output, next to ``weight_v``)."""
    return attr.endswith("_g") and module is not None and isinstance(getattr(module, attr[:-2] + "_v", None), nn.Parameter)


_PARAMETRIZED = "parametrized weight"
_REMOVE_PARAMETRIZATION = "remove the parametrization to train it sparse (torch.nn.utils.parametrize.remove_parametrizations)"


def _parametrized(module: Optional[nn.Module]) -> Optional[str]:
    """For an ``original*`` tensor of ``torch.nn.utils.parametrize`` (weight_norm, spectral_norm,
    orthogonal, ...), the parametrizations' names; else ``None``."""
    if type(module).__name__ != "ParametrizationList" or not isinstance(module, nn.ModuleList):
        return None
    return ", ".join(type(m).__name__.lstrip("_") for m in module) or "parametrization"


def _uninitialized(model: nn.Module) -> list[str]:
    """Parameters of lazy modules (``nn.LazyLinear``, ...) that no forward pass has materialised."""
    lazy = nn.parameter.UninitializedParameter
    return [n for n, p in model.named_parameters() if isinstance(p, lazy)]


def matches(selector: Selector, name: str, param: nn.Parameter, module: nn.Module, attr: str) -> bool:
    """Whether a selector (glob on the parameter name, module type, :data:`DEFAULT_LAYERS` or
    predicate) matches the parameter ``name`` held by ``module`` as ``attr``. A module type matches
    here the weight matrices the module holds directly; :func:`plan` also matches those of the
    modules inside it."""
    if isinstance(selector, str):
        return fnmatch.fnmatchcase(name, selector)
    if isinstance(selector, _DefaultLayers):
        return module is not None and default_kind(module, attr) is not None
    if isinstance(selector, type):
        return isinstance(module, selector) and is_weight_name(attr) and not _weight_norm_gain(module, attr)
    if callable(selector):
        return bool(selector(name, param, module))
    raise InputTypeError(f"a selector must be a name glob, a module type or a predicate, got {selector!r}")


def _explicit(selector: Selector) -> bool:
    """An exact name, a module type or a predicate (not a wildcard glob, not :data:`DEFAULT_LAYERS`)."""
    return not (isinstance(selector, str) and _GLOB & set(selector)) and not isinstance(selector, _DefaultLayers)


def _is_selector(selector) -> bool:
    return isinstance(selector, (str, type, _DefaultLayers)) or callable(selector)


def _show(selector: Selector) -> str:
    if isinstance(selector, _DefaultLayers):
        return repr(selector)
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


def depthwise(name: str, param: Optional[torch.Tensor], module: Optional[nn.Module]) -> bool:
    """Selector predicate (``exclude=[st.depthwise]``, ``dense=[st.depthwise]``): the weight of a
    depthwise convolution, a Conv1d/2d/3d whose every output channel reads a single input channel
    (``groups > 1`` and one input channel per group, as in MobileNet, ConvNeXt or Mamba). Its filter
    is the channel's only path, so at high sparsity whole channels lose every weight."""
    return (isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.groups > 1
            and name.rsplit(".", 1)[-1] == "weight" and module.weight.shape[1] == 1)


def dead_channels(layers, modules: dict[str, nn.Module]) -> list[tuple[str, int, int]]:
    """``(name, empty, channels)`` of every masked depthwise convolution (:func:`depthwise`) with
    output channels that have no active weight (the channel outputs its bias alone: its filter is
    its only path). ``modules``: each layer's module by name; index-backed layers are skipped."""
    out = []
    for name, layer in layers.items():
        module = modules.get(name)
        if module is None or layer.index_backed or layer.pinned or not depthwise(name, None, module):
            continue
        empty = int((~layer.mask.reshape(layer.shape[0], -1).any(dim=1)).sum())
        if empty:
            out.append((name, empty, int(layer.shape[0])))
    return out


def weight_layer_kind(module: nn.Module) -> Optional[str]:
    """The kind of weight layer ``module`` is (``"Linear"``, ``"Conv2d"``, ``"Conv1D"``,
    ``"SparseLinear"``, ...; its ``weight`` is sparse by default), else ``None``."""
    for cls in (SparseLinear,) + DEFAULT_SPARSE_MODULES:
        if isinstance(module, cls):
            return cls.__name__
    return "Conv1D" if is_conv1d_like(module) else None


def default_kind(module: nn.Module, attr: str) -> Optional[str]:
    """Why ``module.<attr>`` is sparse by default (``"Linear"``, ``"MultiheadAttention"``,
    ``"LSTM"``, ...), or ``None`` if it is not: the ``weight`` of a weight layer
    (:func:`weight_layer_kind`), ``nn.MultiheadAttention``'s input projections and the weight
    matrices of ``nn.RNN``/``nn.LSTM``/``nn.GRU``."""
    if attr == "weight":
        return weight_layer_kind(module)
    if isinstance(module, nn.MultiheadAttention) and attr in _MHA_WEIGHTS:
        return "MultiheadAttention"
    if isinstance(module, nn.RNNBase) and _RNN_WEIGHT.fullmatch(attr):
        return next(c.__name__ for c in (nn.LSTM, nn.GRU, nn.RNN, nn.RNNBase) if isinstance(module, c))
    if isinstance(module, nn.RNNCellBase) and attr in ("weight_ih", "weight_hh"):
        return next(c.__name__ for c in (nn.LSTMCell, nn.GRUCell, nn.RNNCell, nn.RNNCellBase) if isinstance(module, c))
    return None


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


def _unmatched(kind: str, selector: Selector, names: Sequence[str], model: nn.Module) -> InputError:
    if isinstance(selector, type):
        if any(isinstance(m, selector) for m in model.modules()):
            return InputError(f"{kind}={selector.__name__}: the model's {selector.__name__} modules hold no weight "
                              "matrix (a type selects parameters named weight, weight_* or *_weight, its own and "
                              "those of the modules inside it); remove it, or name the parameters by name glob (the "
                              f"model's parameters include {list(names[:4])})")
        return InputError(f"{kind}={selector.__name__} matches no module of the model: remove it, or name the "
                          f"parameters by name glob (the model's parameters include {list(names[:4])})")
    hint = " (the default selection is the object st.DEFAULT_LAYERS, not a string)" \
        if str(selector).lower() in ("default_layers", "default", "st.default_layers") else ""
    return InputError(f"{kind}={selector!r} matches no parameter of the model: check the spelling (names are "
                      f"fully qualified, like {list(names[:4])}; '*' in a glob also matches dots), or remove it{hint}")


def _module_name(alias: _Alias) -> str:
    return alias.name[: -len(alias.attr) - 1] if len(alias.name) > len(alias.attr) else ""


def plan(model: nn.Module, include=None, exclude=None, dense=None) -> Selection:
    """Decide which parameters of ``model`` are sparse (see the module docstring).

    Raises ``ValueError`` when a string or type selector matches nothing, when ``dense=`` names
    no sparse parameter, and when nothing is sparse (naming ``include=`` when the model's only
    weight matrices are embeddings).
    """
    model = uncompiled(model)  # torch.compile(m): m's names
    include, exclude, dense = as_list(include), as_list(exclude), as_list(dense)
    for s in include + exclude + dense:
        if isinstance(s, nn.Module):
            raise InputTypeError(f"a selector is a module type, not a module: got an instance of {type(s).__name__}; "
                                 f"pass {type(s).__name__} (the class), or the parameter's name")
        if not _is_selector(s):
            raise InputTypeError(f"a selector must be a name glob, a module type, st.DEFAULT_LAYERS or a predicate, "
                                 f"got {s!r}")
    lazy = _uninitialized(model)
    if lazy:
        raise InputError(
            f"parameter(s) {lazy[:3]}{'...' if len(lazy) > 3 else ''} belong to lazy modules (nn.LazyLinear, "
            "nn.LazyConv2d, ...) that no forward pass has initialised yet, so their shapes are unknown: run one "
            "forward pass with an example batch (model(x)) before building the optimizer and the Sparsifier")
    params = _aliases(model)
    embedded = {id(p) for _, module in model.named_modules() if isinstance(module, EMBEDDING_MODULES)
                for attr, p in module.named_parameters(recurse=False) if attr == "weight"}
    all_names = [a.name for _, aliases in params.values() for a in aliases]
    used: set[tuple[str, int]] = set()
    lists = {"include": include, "exclude": exclude, "dense": dense}
    # for each type selector, the names of the modules of that type (whose insides it also matches)
    holders = {s: [n for n, m in model.named_modules() if isinstance(m, s)]
               for s in include + exclude + dense if isinstance(s, type)}

    def match(s: Selector, a: _Alias, param) -> Optional[bool]:
        """None: no match; else whether the match is explicit (opts in embeddings and 1-D parameters)."""
        if matches(s, a.name, param, a.module, a.attr):
            return _explicit(s)
        if isinstance(s, type) and is_weight_name(a.attr) and not _weight_norm_gain(a.module, a.attr):
            mod = _module_name(a)
            if any(not h or mod.startswith(h + ".") for h in holders[s]):
                return False  # inside a module of that type: like a glob, it does not opt in embeddings or 1-D
        return None

    def hits(kind: str, param, aliases) -> list[tuple[Selector, bool]]:
        found = []
        for i, s in enumerate(lists[kind]):
            how = [e for a in aliases for e in [match(s, a, param)] if e is not None]
            if how:
                used.add((kind, i))
                found.append((s, any(how)))
        return found

    out = Selection()
    for pid, (param, aliases) in params.items():
        name, shape = aliases[0].name, _shape(param, aliases)
        excluded = hits("exclude", param, aliases)
        if include:
            found = hits("include", param, aliases)
            explicit = any(e for _, e in found)
            reason_in = ""
            if found:
                s0 = next((s for s, e in found if e), found[0][0])  # the selector that opted it in
                reason_in = next((k for a in aliases for k in [default_kind(a.module, a.attr)] if k), "default") \
                    if isinstance(s0, _DefaultLayers) else f"include={_show(s0)}"
            opt_in = f"add {name!r} to include="
        else:
            found = [k for a in aliases for k in [default_kind(a.module, a.attr)] if k]
            explicit, reason_in = False, (found[0] if found else "")
            opt_in = f"include=[st.DEFAULT_LAYERS, {name!r}]"
        if not found:
            # a (1, 1, E) tensor (MultiheadAttention's bias_k/bias_v) is a vector too: not offered as a layer
            kinds = _parametrized(aliases[0].module)
            why = ("1-D" if _dims(param, aliases) < 2 or (_dims(param, aliases) > 2 and
                                                         sum(d > 1 for d in _shape(param, aliases)) < 2) else
                   f"embedding (opt in: {opt_in})" if pid in embedded else
                   f"{_PARAMETRIZED} ({kinds}): {_REMOVE_PARAMETRIZATION}" if kinds and not include else
                   f"{type(aliases[0].module).__name__} {aliases[0].attr}, not sparse by default (opt in: {opt_in})"
                   if not include else "not matched by include=")
            out.left.append((name, shape, why))
            continue
        if pid in embedded and not explicit:
            emb = next(a.name for a in aliases if isinstance(a.module, EMBEDDING_MODULES))
            others = [a.name for a in aliases if a.name != emb]
            why = (f"tied to embedding {emb}" if emb != name else
                   f"embedding, tied to {', '.join(others)}" if others else "embedding")
            out.left.append((name, shape, f"{why} (opt in: {opt_in})"))
            continue
        if _dims(param, aliases) < 2 and not explicit:
            out.left.append((name, shape, "1-D"))
            continue
        if excluded:
            out.left.append((name, shape, f"excluded by {_show(excluded[0][0])}"))
            continue
        if not param.requires_grad:
            log.info("sparsetrain: %s is frozen (requires_grad=False); left dense", name)
            out.left.append((name, shape, "frozen (requires_grad=False)"))
            out.frozen[name] = param
            continue
        if any(isinstance(a.module, EMBEDDING_MODULES) and a.module.sparse for a in aliases):
            raise InputError(f"{name} is the weight of an embedding built with sparse=True: its gradients are sparse "
                             "tensors, which the Sparsifier cannot mask or rank; build it with sparse=False to make "
                             f"it sparse, or leave it dense (remove it from include=)")
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
                raise _unmatched(kind, s, all_names, model)
    for i, s in enumerate(dense):
        if ("dense", i) not in used and isinstance(s, (str, type)):
            left = [(n, r) for n, _, r in out.left if (matches(s, n, None, None, "") if isinstance(s, str) else False)]
            if left:
                raise InputError(f"dense={_show(s)} names no sparse parameter: {left[0][0]} is left dense already "
                                 f"({left[0][1]}); remove it from dense=")
            if isinstance(s, type) and any(isinstance(m, s) for m in model.modules()):
                raise InputError(f"dense={s.__name__} names no sparse parameter (its modules are left dense "
                                 "already); remove it from dense=")
            raise _unmatched("dense", s, all_names, model)
    if not out.selected:
        emb = [n for n, _, r in out.left if r.startswith(("embedding", "tied to embedding"))]
        if emb and not any(r.startswith("excluded by") for _, _, r in out.left):
            raise InputError(
                f"no prunable parameter: the model's only weight matrices are embeddings or tied to one ({', '.join(emb)}), "
                f"which stay dense by default; to make them sparse name them: include=[{emb[0]!r}] or "
                "include=[nn.Embedding]")
        para = [n for n, _, r in out.left if r.startswith(_PARAMETRIZED)]
        if para:
            raise InputError(
                f"no prunable parameter: the model's weight matrices are parametrized ({', '.join(para[:3])}"
                f"{', ...' if len(para) > 3 else ''}), and parametrized weights stay dense: the optimizer holds "
                "their originals, from which the weight is recomputed at every access. To train them sparse, remove "
                "the parametrizations first (torch.nn.utils.parametrize.remove_parametrizations(module, 'weight')); "
                "naming an original in include= works for spectral_norm's but not for weight_norm's (it divides by "
                "each row's norm, so a row with no active weight gives NaN)")
        raise InputError(
            "no prunable parameter matched: by default the weight matrices of Linear, Conv1d/2d/3d, Conv1D, "
            "MultiheadAttention and RNN/LSTM/GRU modules are sparse; pass include=[...] with parameter-name globs "
            "(e.g. 'encoder.*.weight'), module types or a predicate, and check that exclude=[...] does not remove "
            "everything"
        )
    return out


def select(model: nn.Module, include=None, exclude=None) -> list[Selected]:
    """The sparse parameters of ``model`` by ``include``/``exclude`` (see :func:`plan`)."""
    return plan(model, include, exclude).selected


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
        converted = any(isinstance(s.module, SparseLinear) for s in selected if s.name in missing)
        raise InputError(
            f"parameter(s) {', '.join(missing)} are sparse but not held by the optimizer, so their "
            "masks could not be enforced; create the optimizer over model.parameters() (or add them "
            f"with optimizer.add_param_group), or leave them dense with exclude={missing!r}"
            + (" (they belong to layers st.sparse.to_sparse converted: an optimizer built before the conversion "
               "holds the replaced dense weights; build it after to_sparse)" if converted else "")
        )
