"""Compressed checkpoints: a file whose size follows the number of nonzeros.

:func:`save_compressed` writes a model's ``state_dict`` with every sparse weight stored as its
nonzero values plus either int32 flat positions or a packed bit mask (whichever is smaller:
positions win below ~3% density). :class:`~sparsetrain.sparse.SparseLinear` layers are already
compressed and are stored as they are. :func:`load_compressed` returns an ordinary
``state_dict`` (dense tensors with zeros for masked weights; SparseLinear entries as CSR, whose
transposed structure the layer rebuilds when loading) ready for ``model.load_state_dict``.
Files are written atomically and read with ``weights_only=True``.
"""

from __future__ import annotations

import io
import os
from typing import Mapping, Optional

import torch
from torch import nn

from .._util import atomic_save
from ..errors import InputError

__all__ = ["save_compressed", "load_compressed", "compressed_size", "pack_bits", "unpack_bits"]

FORMAT = "sparsetrain.compressed/1"
_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8, 8 entries per byte (little-endian bit order), flattened."""
    flat = mask.reshape(-1).to(torch.uint8).cpu()
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, torch.zeros(pad, dtype=torch.uint8)])
    return (flat.view(-1, 8) * _WEIGHTS).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: a flat bool tensor of ``numel`` entries."""
    bits = (packed.view(-1, 1) & _WEIGHTS) != 0
    return bits.reshape(-1)[:numel]


def _entry(w: torch.Tensor, mask: torch.Tensor) -> dict:
    flat_mask = mask.reshape(-1).cpu()
    values = w.detach().reshape(-1).cpu()[flat_mask].clone()
    nnz, numel = values.numel(), flat_mask.numel()
    entry = {"shape": list(w.shape), "dtype": str(w.dtype).replace("torch.", ""), "values": values}
    if 4 * nnz < (numel + 7) // 8:
        entry["index"] = flat_mask.nonzero().reshape(-1).to(torch.int32)
    else:
        entry["bits"] = pack_bits(flat_mask)
    return entry


_TRANSPOSE = ("t_crow_indices", "t_col_indices", "t_perm")


def _compress(model_or_state, masks: Optional[Mapping[str, torch.Tensor]]) -> dict:
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else dict(model_or_state)
    # SparseLinear: values (padding cut) + CSR are stored; the transpose is rebuilt at load. The dense
    # shape is recorded (the CSR alone does not say the number of columns)
    shapes = {}
    if isinstance(model_or_state, nn.Module):  # the layers know their shape, even before any mask
        from .linear import SparseLinear

        shapes = {(f"{n}." if n else ""): list(m.weight_shape) for n, m in model_or_state.named_modules()
                  if isinstance(m, SparseLinear)}
    for key in [k for k in state if k.endswith(".col_indices") or k == "col_indices"]:
        prefix = key[: -len("col_indices")]
        if prefix + "t_perm" in state and prefix + "values" in state:
            rows, cols = state[prefix + "crow_indices"].numel() - 1, state[prefix + "t_crow_indices"].numel() - 1
            if prefix not in shapes and rows >= 0 and cols >= 0:  # (no CSR yet: a layer never given a mask)
                shapes[prefix] = [rows, cols]
            for t in _TRANSPOSE:
                state.pop(prefix + t, None)
            if state[prefix + "crow_indices"].numel():  # (a dense pattern has no CSR: all its values count)
                state[prefix + "values"] = state[prefix + "values"][: state[key].numel()]
    masks = dict(masks or {})
    # a compressed layer's mask (sp.masks names it "<layer>.weight") is its stored pattern already
    for key in [k for k in masks if k.endswith("weight") and k not in state
                and k[: -len("weight")] + "col_indices" in state]:
        del masks[key]
    unknown = sorted(set(masks) - set(state))
    if unknown:
        raise InputError(f"masks for {unknown} are not entries of the model's state_dict (a checkpoint of "
                         "another model, or masks of another model?)")
    entries = {}
    for key, value in state.items():
        if key in masks:
            if tuple(masks[key].shape) != tuple(value.shape):
                raise InputError(f"mask of {key} has shape {tuple(masks[key].shape)}, weight {tuple(value.shape)}")
            entries[key] = _entry(value, masks[key].to(torch.bool))
        else:
            entries[key] = value.detach().cpu().clone() if torch.is_tensor(value) else value
    return {"format": FORMAT, "entries": entries, "sparse_shapes": shapes}


def save_compressed(model_or_state, path: str | os.PathLike,
                    masks: Optional[Mapping[str, torch.Tensor]] = None) -> int:
    """Write a compressed checkpoint of a model (or a ``state_dict``); returns its size in bytes.

    ``masks`` (e.g. ``sp.masks``) names the sparse weights of masked-dense layers; compressed
    layers (SparseLinear) need none.
    """
    path = atomic_save(_compress(model_or_state, masks), path)
    return path.stat().st_size


def compressed_size(model_or_state, masks: Optional[Mapping[str, torch.Tensor]] = None) -> int:
    """Bytes a :func:`save_compressed` file of this model would take (serialised in memory)."""
    buf = io.BytesIO()
    torch.save(_compress(model_or_state, masks), buf)
    return buf.getbuffer().nbytes


def load_compressed(path: str | os.PathLike, map_location=None, dense: bool = False) -> dict[str, torch.Tensor]:
    """Read a :func:`save_compressed` file back into an ordinary ``state_dict``.

    SparseLinear layers come back as their CSR entries (``values``, ``crow_indices``,
    ``col_indices``), which load into a truly sparse model; with ``dense=True`` as a dense
    ``weight`` (zeros off the pattern), which loads into the same model built of ``nn.Linear``
    layers (and, the pattern then being the nonzeros, into a truly sparse one too)."""
    payload = torch.load(path, weights_only=True, map_location=map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a sparsetrain compressed checkpoint (format {FORMAT!r})")
    out = {}
    for key, e in payload["entries"].items():
        if isinstance(e, dict) and "values" in e and "shape" in e:
            shape = torch.Size(e["shape"])
            full = torch.zeros(shape.numel(), dtype=getattr(torch, e["dtype"]))
            if "index" in e:
                full[e["index"].to(torch.int64)] = e["values"]
            else:
                full[unpack_bits(e["bits"], shape.numel())] = e["values"]
            out[key] = full.view(shape)
        else:
            out[key] = e
    if dense:
        _csr_to_dense(out, payload.get("sparse_shapes", {}), path)
    return out


def _csr_to_dense(state: dict, shapes: dict, path) -> None:
    """Replace each SparseLinear's CSR entries in ``state`` by its dense ``weight`` (in place)."""
    for key in [k for k in state if k.endswith("col_indices") and not k.endswith("t_col_indices")]:
        prefix = key[: -len("col_indices")]
        if prefix + "values" not in state or prefix + "crow_indices" not in state:
            continue
        rows = state[prefix + "crow_indices"].numel() - 1
        values, col = state[prefix + "values"], state[key].to(torch.int64)
        if rows < 0 and prefix + "bias" in state:  # no CSR (a dense pattern): the bias gives the rows
            rows = state[prefix + "bias"].numel()
        if prefix in shapes and int(shapes[prefix][0]) >= 0 and int(shapes[prefix][1]) >= 0:
            rows, cols = int(shapes[prefix][0]), int(shapes[prefix][1])
        elif col.numel() == 0 and rows > 0 and values.numel() % rows == 0:  # a dense pattern: values are the weight
            cols = values.numel() // rows
        else:
            raise ValueError(f"{path} does not record the input width of {prefix[:-1] or 'the layer'} (written by an "
                             "older save_compressed): load it with dense=False into a truly sparse model, then "
                             "st.sparse.to_dense(model)")
        crow = state.pop(prefix + "crow_indices").to(torch.int64)
        state.pop(key), state.pop(prefix + "values")
        for t in _TRANSPOSE:
            state.pop(prefix + t, None)
        if col.numel() == 0 and values.numel() == rows * cols:
            state[prefix + "weight"] = values.reshape(rows, cols).clone()
            continue
        weight = torch.zeros(rows, cols, dtype=values.dtype, device=values.device)
        row_of = torch.repeat_interleave(torch.arange(rows, device=crow.device), crow[1:] - crow[:-1])
        weight[row_of, col] = values[: col.numel()]
        state[prefix + "weight"] = weight
