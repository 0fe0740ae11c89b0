"""The Sparsifier's checkpoint format (``"sparsetrain.sparsifier/1"``).

Masks, usage counters, ever-active masks (on an index-backed layer — a large compressed one — the
sorted active positions ``mask_index``, the packed ever-active bytes ``ever_active_bits`` and the
usage counters as ``counter_index`` / ``counter_values`` instead of dense tensors; either form
loads into either kind of layer), the positions the last update grew, the schedule position, the generator's state, the
update history, a pending forced update and the algorithm's own state; tensors and plain
containers only, so ``torch.load(..., weights_only=True)`` reads it. The weights themselves
are the model's (``model.state_dict()``), the optimizer state the optimizer's.

Loading is all-or-nothing: every check runs before anything is assigned, so a refused state
leaves the sparsifier as it was. The checks: the format tag; each layer's saved tensors have its
saved shape and its mask holds ``n_active`` weights; a ``checksum`` (SHA-256 of every value,
written since this field was added; older states load without the check, with an INFO note)
matches, so a byte-corrupted file is refused; the layers are the sparsifier's, with the same
shapes; the algorithm and its configuration are the sparsifier's (``strict=False`` turns a
different configuration into an :class:`~sparsetrain.errors.InputWarning`). A different
``total_steps`` is a warning: the current one is kept (a run extended on purpose).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import warnings
from typing import TYPE_CHECKING, Any, Mapping

import torch

from .bits import PackedBits, SparseCounts
from .errors import InputError, InputWarning
from .update import ForcedUpdate

if TYPE_CHECKING:  # pragma: no cover
    from .sparsifier import Sparsifier

__all__ = ["STATE_FORMAT", "check_format", "checksum", "state_dict", "load_state_dict", "saved_mask"]

log = logging.getLogger(__name__)

#: Version tag written into :meth:`Sparsifier.state_dict`.
STATE_FORMAT = "sparsetrain.sparsifier/1"


def checksum(obj: Any) -> str:
    """SHA-256 (hex) of a state: every tensor's dtype, shape and bytes, every other value's ``repr``,
    mapping keys in sorted order (so it does not depend on insertion order); a ``"checksum"`` key
    is left out."""
    h = hashlib.sha256()

    def feed(x: Any) -> None:
        if torch.is_tensor(x):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():  # the tensor's bytes, read in place (torch only: no numpy)
                h.update(ctypes.string_at(t.data_ptr(), t.numel() * t.element_size()))
        elif isinstance(x, Mapping):
            h.update(b"{")
            for k in sorted(x, key=repr):
                if k == "checksum":
                    continue
                h.update(repr(k).encode())
                feed(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[" if isinstance(x, list) else b"(")
            for v in x:
                feed(v)
            h.update(b"]")
        else:
            h.update(f"{type(x).__name__}:{x!r};".encode())

    feed(obj)
    return h.hexdigest()


def check_format(state: Any) -> None:
    """Raise an :class:`~sparsetrain.errors.InputError` unless ``state`` is an intact Sparsifier state:
    the format tag, each layer's tensors of its saved shape and its mask's count, and the checksum."""
    if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
        raise InputError(
            "not a sparsetrain Sparsifier state (missing format tag "
            f"{STATE_FORMAT!r}); pass the dict returned by Sparsifier.state_dict()"
        )
    missing = [k for k in ("layers", "step", "updates", "dense_grad_steps", "rng_state", "history", "algorithm")
               if k not in state]
    if missing:
        raise InputError(f"corrupt Sparsifier state: missing {missing}; save it again with Sparsifier.state_dict()")
    for n, s in state["layers"].items():
        shape = list(s["shape"])
        _check_index_form(n, s)
        for key in ("mask", "ever_active", "counter"):
            t = s.get(key)
            if t is not None and (not torch.is_tensor(t) or list(t.shape) != shape):
                got = list(t.shape) if torch.is_tensor(t) else type(t).__name__
                raise InputError(
                    f"corrupt Sparsifier state: the {key} of {n} has shape {got} but the layer's is {shape}; "
                    "this state was edited or damaged: load an intact checkpoint"
                )
        active = int(s["mask_index"].numel()) if "mask_index" in s else int(torch.count_nonzero(s["mask"]))
        if active != int(s["n_active"]):
            raise InputError(
                f"corrupt Sparsifier state: the mask of {n} has {active} active weights, its count says "
                f"{int(s['n_active'])}; load an intact checkpoint"
            )
    saved = state.get("checksum")
    if saved is None:
        log.info("sparsetrain: this Sparsifier state has no checksum (saved by an older version); loading it unchecked")
    elif checksum(state) != saved:
        raise InputError(
            "corrupt Sparsifier state: its checksum does not match its contents (the file was damaged or edited "
            "after saving); load an intact checkpoint, e.g. the previous one (a state edited on purpose: delete "
            "its 'checksum' key, or set it to sparsetrain.checkpoint.checksum(state))"
        )


def _check_index_form(name: str, s: Mapping[str, Any]) -> None:
    """The index form of an index-backed layer: sorted distinct in-range positions and
    ``ceil(numel / 8)`` packed bytes; sparse usage counters: sorted distinct in-range positions
    with one int32 count each."""
    numel = 1
    for d in s["shape"]:
        numel *= int(d)
    bad = None
    c_idx, c_val = s.get("counter_index"), s.get("counter_values")
    if c_idx is not None or c_val is not None:
        if not (torch.is_tensor(c_idx) and torch.is_tensor(c_val) and c_idx.dim() == 1
                and c_val.shape == c_idx.shape and c_val.dtype == torch.int32):
            bad = "has counter_index / counter_values that are not positions with one int32 count each"
        elif c_idx.numel() and (int(c_idx.min()) < 0 or int(c_idx.max()) >= numel
                                or bool((c_idx[1:] <= c_idx[:-1]).any())):
            bad = "has a counter_index that is not sorted distinct positions inside the layer"
    if bad:
        raise InputError(f"corrupt Sparsifier state: {name} {bad}; load an intact checkpoint")
    idx, bits = s.get("mask_index"), s.get("ever_active_bits")
    if idx is None and bits is None:
        return
    if idx is None or bits is None:
        bad = "has only one of mask_index / ever_active_bits"
    elif not torch.is_tensor(idx) or idx.dim() != 1 or (idx.numel() and (
            int(idx.min()) < 0 or int(idx.max()) >= numel or bool((idx[1:] <= idx[:-1]).any()))):
        bad = "has a mask_index that is not sorted distinct positions inside the layer"
    elif not torch.is_tensor(bits) or bits.dtype != torch.uint8 or list(bits.shape) != [(numel + 7) // 8]:
        bad = f"has ever_active_bits that are not {(numel + 7) // 8} uint8 bytes"
    if bad:
        raise InputError(f"corrupt Sparsifier state: {name} {bad}; load an intact checkpoint")


def saved_mask(s: Mapping[str, Any], device=None) -> torch.Tensor:
    """The dense bool mask of one saved layer, from either form (``mask`` or ``mask_index``)."""
    if "mask_index" not in s:
        return s["mask"].to(device, torch.bool).clone()
    shape = torch.Size([int(d) for d in s["shape"]])
    out = torch.zeros(shape.numel(), dtype=torch.bool, device=device)
    out[s["mask_index"].to(device, torch.int64)] = True
    return out.view(shape)


def _active_form(l) -> dict[str, Any]:
    """A layer's mask and ever-active map as saved: dense bools, or on an index-backed layer the
    sorted active positions (int64) and the packed ever-active bytes (no dense-size tensor)."""
    if l.index_backed:
        return {"mask_index": l.active_positions().clone(), "ever_active_bits": l.ever_active.data.clone()}
    return {"mask": l.mask.clone(), "ever_active": l.ever_dense()}


def _counter_form(l) -> dict[str, Any]:
    """A layer's usage counters as saved: the dense int32 ``counter`` (``None`` when not kept), or
    on an index-backed layer ``counter_index`` (sorted int64 positions) and ``counter_values``
    (their int32 counts; every other position counts 0)."""
    c = l.counter
    if isinstance(c, SparseCounts):
        return {"counter": None, "counter_index": c.index.clone(), "counter_values": c.counts.clone()}
    return {"counter": c.clone() if c is not None else None}


def _load_counter(l, s: Mapping[str, Any], dev) -> Any:
    """The usage counters of saved layer ``s`` in the form layer ``l`` keeps (either form loads
    into either kind of layer); zeros when none were saved."""
    numel = l.shape.numel()
    if s.get("counter_index") is not None:
        saved = SparseCounts(numel, s["counter_index"].to(dev).clone(), s["counter_values"].to(dev).clone())
        return saved if l.index_backed else saved.to_dense(l.shape)
    c = s.get("counter")
    if l.index_backed:
        return SparseCounts.from_dense(c.to(dev, torch.int32)) if c is not None else SparseCounts(numel, device=dev)
    return c.to(dev, torch.int32).clone() if c is not None else torch.zeros(l.shape, dtype=torch.int32, device=dev)


def state_dict(sp: "Sparsifier") -> dict[str, Any]:
    """The state of ``sp`` (see the module docstring)."""
    layers = {}
    for n, l in sp.layers.items():
        l.flush(sp.step)
        layers[n] = {
            "shape": list(l.shape),
            "n_active": l.n_active,
            "target_density": l.target_density,
            "pinned": l.pinned,
            **_active_form(l),
            **_counter_form(l),
            "count_step": l.count_step,
            "active_steps": l.active_steps,
            "init_std": l.init_std,
            "last_grown": l.last_grown.clone() if l.last_grown is not None else None,
            # active weights exactly 0 (e.g. just regrown): after a load, more of them mean lost weights
            "zero_active": int(torch.count_nonzero((l.param == 0) & l.mask)) if l.storage.kind == "masked" else None,
        }
    forced = sp.pending_update
    state = {
        "format": STATE_FORMAT,
        "algorithm": sp.algorithm.name,
        "config": _plain_config(sp),
        "step": sp.step,
        "updates": sp.updates,
        "dense_grad_steps": sp.dense_grad_steps,
        "total_steps": sp.total_steps,
        "rng_state": sp.generator.get_state(),
        "history": [dict(h) for h in sp.history],
        "updates_paused": sp.updates_paused,
        "forced_update": forced.as_dict() if forced is not None else None,
        "layers": layers,
        "algorithm_state": sp.algorithm.state_dict(),
    }
    state["checksum"] = checksum(state)
    return state


def _plain_config(sp: "Sparsifier") -> dict[str, Any]:
    return {k: v for k, v in sp.algorithm.config().items() if isinstance(v, (int, float, str, type(None)))}


def check_names(ours: set[str], state: Mapping[str, Any]) -> None:
    """Raise unless ``state`` holds exactly the sparse layers named ``ours``."""
    theirs = set(state["layers"])
    if ours != theirs:
        extra = sorted(ours - theirs)
        hint = ""
        if theirs < ours:  # a subset: the same model, fewer sparse layers (or an older default selection)
            hint = (f" (if the model is the same, its checkpoint has fewer sparse layers — saved with another "
                    f"include=, or before MultiheadAttention and RNN weights were sparse by default: build the "
                    f"Sparsifier with exclude={extra!r} to load it)")
        prefix = "_orig_mod."
        if {n[len(prefix):] if n.startswith(prefix) else n for n in theirs} == ours:
            hint = (" (the same layers under torch.compile's '_orig_mod.' prefix: the checkpoint was saved by a "
                    "Sparsifier built on a compiled model by an earlier sparsetrain, which kept that prefix; "
                    "Sparsifiers now use the uncompiled names whether built on the model or on its compiled "
                    "wrapper, and this version cannot load that state)")
        raise InputError(
            "this checkpoint is from a different model or sparse-layer selection: "
            f"missing here {sorted(theirs - ours)}, not in checkpoint {extra}; "
            f"build the same model with the same include/exclude before loading{hint}"
        )


def check_layers(sp: "Sparsifier", state: Mapping[str, Any]) -> None:
    """Raise unless ``state`` holds exactly ``sp``'s sparse layers with the same shapes."""
    check_names(set(sp.layers), state)
    for n, s in state["layers"].items():
        shape = list(sp.layers[n].shape)
        if list(s["shape"]) != shape:
            raise InputError(
                f"checkpoint shape of {n} is {s['shape']} but the model's is {shape}: this checkpoint "
                "comes from a different model; build the same model before loading"
            )


def check_config(sp: "Sparsifier", state: Mapping[str, Any], strict: bool = True) -> None:
    """Refuse (``strict``) or warn about a state saved by another algorithm or configuration, and
    warn about another ``total_steps``."""
    problems = []
    if state["algorithm"] != sp.algorithm.name:
        problems.append(f"algorithm {state['algorithm']!r} (this sparsifier: {sp.algorithm.name!r})")
    saved, ours = state.get("config"), _plain_config(sp)
    if saved is not None and not problems:  # another algorithm: its settings differ in kind, not worth listing
        diff = sorted(k for k in set(saved) | set(ours) if k != "name" and saved.get(k) != ours.get(k))
        problems += [f"{k}={saved.get(k)!r} (this sparsifier: {ours.get(k)!r})" for k in diff]
    # layers pinned with dense=: saved since format 'pinned' exists (older states carry no flag)
    theirs_pinned = sorted(n for n, s in state["layers"].items() if s.get("pinned"))
    if all("pinned" in s for s in state["layers"].values()):
        ours_pinned = sorted(n for n, l in sp.layers.items() if l.pinned)
        if theirs_pinned != ours_pinned:
            problems.append(f"layers pinned dense {theirs_pinned} (this sparsifier: {ours_pinned}, "
                            "set by dense=)")
    if problems:
        msg = (f"this Sparsifier state was saved with {', '.join(problems)}; build the sparsifier with the "
               "saved settings, or pass strict=False to load it into this configuration on purpose")
        if strict:
            raise InputError(msg)
        warnings.warn("sparsetrain: " + msg.split("; build")[0] + "; loading it anyway (strict=False)",
                      InputWarning, stacklevel=4)
    total = state.get("total_steps")
    if total is not None and sp.total_steps is not None and int(total) != sp.total_steps:
        warnings.warn(
            f"sparsetrain: this Sparsifier state was saved with total_steps={total}, this sparsifier has "
            f"total_steps={sp.total_steps}; its schedules follow the new length from here on "
            "(build it with the saved total_steps to continue the same run)", InputWarning, stacklevel=4)


def load_state_dict(sp: "Sparsifier", state: Mapping[str, Any], strict: bool = True) -> None:
    """Restore :func:`state_dict` into ``sp``, all or nothing (see the module docstring)."""
    check_format(state)
    check_layers(sp, state)
    check_config(sp, state, strict)
    for n, s in state["layers"].items():
        l = sp.layers[n]
        dev = l.param.device
        if l.index_backed:  # the storage's pattern is the mask: adopt the saved one
            idx = s["mask_index"] if "mask_index" in s else s["mask"].reshape(-1).nonzero().squeeze(1)
            l.storage.adopt(l, idx.to(dev, torch.int64), sp.optimizer)
            l.set_mask(None)
        else:
            l.set_mask(saved_mask(s, dev))
        l.n_active = int(s["n_active"])
        l.target_density = float(s["target_density"])
        if "ever_active_bits" in s:
            numel = l.shape.numel()
            l.ever_active = PackedBits(numel, s["ever_active_bits"].to(dev).clone())
        else:
            l.ever_active = s["ever_active"].to(dev, torch.bool).clone()
        if sp.track_usage:
            l.counter = _load_counter(l, s, dev)
        l.count_step = int(s["count_step"])
        l.active_steps = int(s["active_steps"])
        l.init_std = float(s["init_std"])
        last = s.get("last_grown")
        l.last_grown = last.to(torch.int64).clone() if last is not None else None
        l.grad_buffer = None
    sp.step = int(state["step"])
    sp.updates = int(state["updates"])
    sp.dense_grad_steps = int(state["dense_grad_steps"])
    if state.get("total_steps") is not None and sp.total_steps is None:
        sp.total_steps = int(state["total_steps"])
    sp.generator.set_state(state["rng_state"])
    sp.history = [dict(h) for h in state["history"]]
    sp.updates_paused = bool(state.get("updates_paused", False))
    forced = state.get("forced_update")
    sp.pending_update = ForcedUpdate(sp.algorithm, **forced) if forced is not None else None
    sp.algorithm.load_state_dict(state.get("algorithm_state", {}))
    sp.apply_masks()
    sp.loaded_zeros = {n: int(s["zero_active"]) for n, s in state["layers"].items() if s.get("zero_active") is not None}
