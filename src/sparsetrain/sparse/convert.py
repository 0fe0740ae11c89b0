"""Converting a model's ``nn.Linear`` layers to :class:`~sparsetrain.sparse.SparseLinear` and back."""

from __future__ import annotations

import logging
import warnings
from typing import Callable, Optional

import torch
from torch import nn

from .. import ownership
from ..errors import InputError, InputWarning
from .linear import SparseLinear

log = logging.getLogger(__name__)

__all__ = ["to_sparse", "to_dense"]


def _replace(model: nn.Module, pick, make) -> nn.Module:
    if pick(model):
        return make(model)
    # every slot, also a module's second place (named_children() lists a module once)
    for name, child in list(model._modules.items()):
        if child is not None:
            setattr(model, name, _replace(child, pick, make))
    return model


def to_sparse(model: nn.Module, masks: Optional[dict[str, torch.Tensor]] = None,
              index_dtype: torch.dtype = torch.int32,
              include: Optional[Callable[[str, nn.Linear], bool]] = None, device=None,
              init: str = "dense") -> nn.Module:
    """Replace ``nn.Linear`` layers by :class:`SparseLinear` (in place; returns the model).

    Call it *before* creating the optimizer: the new layers' parameters are ``values`` and
    ``bias``. ``masks`` maps ``"<module>.weight"`` to bool masks (e.g. ``sp.masks`` of a
    masked-dense run): a Sparsifier attached next starts from those masks. Without one a layer
    keeps its nonzeros (all of them for a fresh layer) and a Sparsifier attached next chooses the mask. ``include(name, module)`` limits the conversion.
    A Linear whose weight is shared with another module (a language model's head tied to the token
    embedding) is left as it is: the compressed layer would untie it; so are the feed-forward
    Linears of ``nn.TransformerEncoderLayer``, whose forward reads their ``weight`` (a Sparsifier
    keeps them masked, like ``nn.MultiheadAttention``'s projections). Inputs may have any leading
    shape (``(B, T, D)`` in a transformer).

    Layers of a model built on the meta device (``with torch.device("meta"): model = ...``)
    become ``deferred`` SparseLinear layers on ``device`` (default CPU): no dense weight is ever
    allocated, and the Sparsifier attached next draws the weights at the positions it picks. This
    is how a model too large to hold densely is trained (``docs/sparse.md``). ``init`` sets their
    scale: ``"dense"`` (``nn.Linear``'s) or ``"sparse"`` (divided by √density, for very sparse
    deep models; see :class:`SparseLinear`).
    """
    masks = dict(masks or {})
    names = {id(m): n for n, m in model.named_modules()}
    known = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    unknown = sorted(k for k in masks if k not in known)
    if unknown:
        linears = [f"{n}.weight" if n else "weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise InputError(f"masks for {', '.join(map(repr, unknown))}: not a parameter of the model; the keys are "
                         f"'<module>.weight' names, e.g. {', '.join(linears[:4]) or '(the model has no nn.Linear)'}")
    holders: dict[int, int] = {}  # id(parameter) -> number of modules holding it
    for m in model.modules():
        for p in m.parameters(recurse=False):
            holders[id(p)] = holders.get(id(p), 0) + 1

    # nn.TransformerEncoderLayer's forward reads linear1.weight and linear2.weight (its fast-path
    # checks, and the fused kernel in eval): a SparseLinear there would break it
    read_as_weight = {id(c) for m in model.modules() if isinstance(m, nn.TransformerEncoderLayer)
                      for c in (m.linear1, m.linear2)}

    said: set[int] = set()

    def pick(m):
        if type(m) is not nn.Linear:
            return False
        if holders.get(id(m.weight), 0) > 1:  # a tied weight (e.g. an LM head sharing the embedding) stays
            return False
        if id(m) in read_as_weight:
            if id(m) not in said:
                said.add(id(m))
                log.info("sparsetrain: %s stays an nn.Linear (nn.TransformerEncoderLayer reads its weight); a "
                         "Sparsifier keeps it masked", names.get(id(m), ""))
            return False
        name = names.get(id(m), "")
        return include is None or include(name, m)

    _refuse_held([(names.get(id(m), ""), m) for m in model.modules() if pick(m)])
    made: dict[int, SparseLinear] = {}  # a Linear used at several places becomes one SparseLinear

    def make(m):
        if id(m) in made:
            return made[id(m)]
        name = names.get(id(m), "")
        key = f"{name}.weight" if name else "weight"
        mask = masks.get(key)
        if mask is None and not m.weight.is_meta and bool((m.weight == 0).any()):
            mask = m.weight != 0
        made[id(m)] = SparseLinear.from_linear(m, mask=mask, index_dtype=index_dtype, device=device, init=init)
        # a mask given in masks= is the pattern a Sparsifier attached next starts from (its zeros alone are not)
        made[id(m)].given_pattern = key in masks
        return made[id(m)]

    out = _replace(model, pick, make)
    if not made:
        why = ("include= selected none of them" if include is not None and any(type(m) is nn.Linear for m in
                                                                               model.modules()) else
               "it has no plain nn.Linear left to convert (subclasses, convolutions, tied and "
               "TransformerEncoderLayer feed-forward Linears stay as they are)")
        warnings.warn(f"sparsetrain: to_sparse converted no layer of this model: {why}; a Sparsifier keeps its "
                      "layers masked-dense", InputWarning, stacklevel=2)
    return out


def _refuse_held(layers) -> None:
    """Refuse to convert the ``(name, Linear)`` layers if a live Sparsifier holds one's weight: it (and
    the optimizer) would keep training the replaced weight while the new layer never changes."""
    for name, m in layers:
        if not m.weight.is_meta:
            holder = ownership.held_by(m.weight)
            if holder is not None:
                raise InputError(f"{name + '.' if name else ''}weight is held by a Sparsifier ({holder!r}): convert with "
                                 "st.sparse.to_sparse(model) before creating the optimizer and the Sparsifier (or "
                                 "call .remove() on that Sparsifier first); converted layers have new parameters "
                                 "that neither of them would train")


def to_dense(model: nn.Module) -> nn.Module:
    """Replace every :class:`SparseLinear` by an equivalent ``nn.Linear`` (in place; returns the model)."""
    made: dict[int, nn.Linear] = {}  # a layer used at several places stays one layer

    def make(m: SparseLinear) -> nn.Linear:
        if id(m) not in made:
            made[id(m)] = m.to_linear()
        return made[id(m)]

    for name, m in model.named_modules():
        holder = ownership.held_by(m.values) if isinstance(m, SparseLinear) else None
        if holder is not None:
            raise InputError(f"{name + '.' if name else ''}values are held by a Sparsifier ({holder!r}): call .remove() "
                             "on it before st.sparse.to_dense(model); the Sparsifier and the optimizer would keep "
                             "training the compressed values while the new nn.Linear never changes")
    return _replace(model, lambda m: isinstance(m, SparseLinear), make)
