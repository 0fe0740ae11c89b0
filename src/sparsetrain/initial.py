"""The initial sparse state: per-layer densities, exact counts, the first masks, the layer states.

Densities come from the algorithm's distribution (ERK by default) with ``dense=`` pins, turned
into exact integer counts (:func:`~sparsetrain.distributions.exact_counts`). Masks come from the
algorithm when it scores them (SNIP, GraSP), from a checkpoint when one is given, from the
masks a compressed layer was given when converted (``to_sparse(model, masks=...)``: kept,
not replaced), and are drawn at random otherwise. Each layer's storage then realises its mask; a compressed layer with
deferred initialisation draws its values at the chosen positions only.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Optional, Sequence

import torch

from .errors import InputError, InputWarning

from .distributions import exact_counts
from .checkpoint import saved_mask
from .bits import PackedBits, SparseCounts
from .masks import LayerState, random_mask, random_positions
from .selection import Selected
from .storage import Storage, storage_for

__all__ = ["build_layers"]


def _converted_pattern(storage: Storage) -> Optional[torch.Tensor]:
    """The flat positions of the mask a compressed layer holds (``SparseLinear.given_pattern``: given
    to ``to_sparse(model, masks=...)``, all of them for an all-True mask; loaded from a compressed
    state; left by an earlier Sparsifier), or ``None`` (converted without masks: its zeros are not a
    mask; or an empty pattern)."""
    module = storage.module
    if module is None or module.deferred or not getattr(module, "given_pattern", False) or module.nnz == 0:
        return None
    return module.flat_index().clone()


def build_layers(algorithm, model: torch.nn.Module, selected: Sequence[Selected], pinned: Sequence[str],
                 generator: torch.Generator, optimizer: torch.optim.Optimizer, track_usage: bool,
                 state: Optional[Mapping[str, Any]] = None) -> dict[str, LayerState]:
    """One :class:`LayerState` per selected parameter, with its storage, mask and bookkeeping.

    Generator draws, in order: the algorithm's initial masks (if any), then per layer its random
    mask and, for a deferred compressed layer, its values.
    """
    storages: dict[str, Storage] = {s.name: storage_for(s.param, s.module) for s in selected}
    names = [s.name for s in selected]
    shapes = [storages[n].shape for n in names]
    dens, counts = exact_counts(names, shapes, algorithm.initial_density, algorithm.distribution,
                                dense=pinned, power=algorithm.erk_power)
    compressed = any(st.module is not None for st in storages.values())
    if compressed and getattr(algorithm, "needs_batch", False):
        raise InputError(
            f"{type(algorithm).__name__} scores its initial mask on dense weights; choose the mask on "
            "the dense model first, then convert: masks = sp.masks; sp.remove(); "
            "st.sparse.to_sparse(model, masks=masks); and build the optimizer and a Sparsifier (e.g. st.Static or "
            "st.RigL) on the converted model: it starts from the converted pattern"
        )
    # the algorithms see every weight with its dense shape (no data needed: scored masks are refused)
    seen = [(s.name, s.param if storages[s.name].module is None
             else torch.empty(storages[s.name].shape, device="meta", dtype=s.param.dtype)) for s in selected]
    given = algorithm.initial_masks(model, seen, counts, generator)
    del seen
    layers: dict[str, LayerState] = {}
    kept: list[str] = []  # compressed layers that keep the pattern they were converted with
    for s, shape in zip(selected, shapes):
        name, param, storage = s.name, s.param, storages[s.name]
        pattern = (_converted_pattern(storage) if state is None and (given is None or name not in given)
                   and name not in pinned else None)
        with torch.no_grad():
            dense_w = storage.initial_weight()
            if dense_w is None:  # deferred: no weights yet; drawn below at the chosen positions only
                init_std = storage.deferred_init_std(counts[name])
            elif pattern is not None:  # the spread of the weights it holds, not of its zeros
                init_std = float(param.float().std()) if param.numel() > 1 else 0.0
            else:
                init_std = float(dense_w.float().std()) if dense_w.numel() > 1 else 0.0
            del dense_w
        target = dens[name]
        saved = state["layers"].get(name) if state is not None else None
        # an index-backed layer (large, compressed) gets sorted positions, never a dense bool mask
        positions, mask, indexed = None, None, storage.index_backed
        if saved is not None and list(saved["shape"]) == list(shape):
            if indexed and "mask_index" in saved:
                positions = saved["mask_index"].to(param.device, torch.int64).clone()
            else:
                mask = saved_mask(saved, param.device)  # load_state_dict completes the rest
        elif given is not None and name in given:
            mask = given[name].to(param.device, torch.bool).reshape(shape).clone()
            target = float(torch.count_nonzero(mask)) / shape.numel()
        elif pattern is not None:
            kept.append(name)
            target = pattern.numel() / shape.numel()
            if indexed:
                positions = pattern.to(param.device)
            else:
                mask = torch.zeros(shape.numel(), dtype=torch.bool, device=param.device)
                mask[pattern.to(param.device)] = True
                mask = mask.reshape(shape)
        elif indexed:
            positions = random_positions(shape.numel(), counts[name], generator).to(param.device)
        else:
            mask = random_mask(shape, counts[name], generator, param.device)
        if indexed and positions is None:
            positions = mask.reshape(-1).nonzero().squeeze(1)
            mask = None
        n_active = int(positions.numel()) if indexed else int(torch.count_nonzero(mask))
        values = None
        if storage.module is not None and storage.module.deferred:
            values = (torch.zeros(n_active, dtype=param.dtype) if saved is not None  # load_state_dict brings them
                      else storage.draw_values(n_active, generator))
        layer = LayerState(
            name=name,
            param=param,
            target_density=target,
            pinned=name in pinned,
            n_active=n_active,
            mask=mask,
            ever_active=PackedBits.from_positions(shape.numel(), positions) if indexed else mask.clone(),
            counter=(None if not track_usage else SparseCounts(shape.numel(), device=param.device) if indexed
                     else torch.zeros(shape, dtype=torch.int32, device=param.device)),
            init_std=init_std,
            shape=shape,
            storage=storage,
        )
        if indexed:
            storage.realise_at(positions, values, optimizer)
            layer.set_mask(None)  # the storage now holds the pattern
        else:
            storage.realise(layer, optimizer, values)
            layer.set_mask(mask)
        if storage.module is not None:  # its pattern is a mask now: a Sparsifier attached later starts from it
            storage.module.given_pattern = True
        del mask, positions
        layers[name] = layer
    if kept:
        total = sum(l.shape.numel() for l in layers.values())
        real = sum(l.n_active for l in layers.values()) / total
        planned = sum(counts.values()) / total  # what the algorithm's density and distribution give
        if abs(real - planned) > 0.01 * planned:
            warnings.warn(
                f"sparsetrain: {', '.join(kept[:3])}{' ...' if len(kept) > 3 else ''} start from the masks they hold "
                f"(given to st.sparse.to_sparse(model, masks=...), loaded from a compressed state, or left by an "
                f"earlier Sparsifier), so the model's density is {real:.4g}, not the {planned:.4g} the algorithm's "
                f"density={algorithm.initial_density:g} and distribution give; give masks of that density, or "
                "convert a fresh model without masks= to let the Sparsifier draw them",
                InputWarning, stacklevel=4)
    return layers
