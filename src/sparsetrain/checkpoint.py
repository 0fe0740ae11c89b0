"""The Sparsifier's checkpoint format (``"sparsetrain.sparsifier/1"``).

Masks, usage counters, ever-active masks, the positions the last update grew, the schedule position, the generator's state, the
update history, a pending forced update and the algorithm's own state; tensors and plain
containers only, so ``torch.load(..., weights_only=True)`` reads it. The weights themselves
are the model's (``model.state_dict()``), the optimizer state the optimizer's.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Mapping

import torch

from .update import ForcedUpdate

if TYPE_CHECKING:  # pragma: no cover
    from .sparsifier import Sparsifier

__all__ = ["STATE_FORMAT", "check_format", "state_dict", "load_state_dict"]

#: Version tag written into :meth:`Sparsifier.state_dict`.
STATE_FORMAT = "sparsetrain.sparsifier/1"


def check_format(state: Any) -> None:
    """Raise a clear error if ``state`` is not a Sparsifier state."""
    if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
        raise ValueError(
            "not a sparsetrain Sparsifier state (missing format tag "
            f"{STATE_FORMAT!r}); pass the dict returned by Sparsifier.state_dict()"
        )


def state_dict(sp: "Sparsifier") -> dict[str, Any]:
    """The state of ``sp`` (see the module docstring)."""
    layers = {}
    for n, l in sp.layers.items():
        l.flush(sp.step)
        layers[n] = {
            "shape": list(l.shape),
            "n_active": l.n_active,
            "target_density": l.target_density,
            "mask": l.mask.clone(),
            "ever_active": l.ever_active.clone(),
            "counter": l.counter.clone() if l.counter is not None else None,
            "count_step": l.count_step,
            "active_steps": l.active_steps,
            "init_std": l.init_std,
            "last_grown": l.last_grown.clone() if l.last_grown is not None else None,
        }
    forced = sp.pending_update
    return {
        "format": STATE_FORMAT,
        "algorithm": sp.algorithm.name,
        "config": {k: v for k, v in sp.algorithm.config().items() if isinstance(v, (int, float, str, type(None)))},
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


def check_layers(sp: "Sparsifier", state: Mapping[str, Any]) -> None:
    """Raise unless ``state`` holds exactly ``sp``'s sparse layers with the same shapes."""
    saved = state["layers"]
    ours, theirs = set(sp.layers), set(saved)
    if ours != theirs:
        raise ValueError(
            "this checkpoint is from a different model or sparse-layer selection: "
            f"missing here {sorted(theirs - ours)}, not in checkpoint {sorted(ours - theirs)}; "
            "build the same model with the same include/exclude before loading"
        )
    for n, s in saved.items():
        shape = list(sp.layers[n].shape)
        if list(s["shape"]) != shape:
            raise ValueError(
                f"checkpoint shape of {n} is {s['shape']} but the model's is {shape}: this checkpoint "
                "comes from a different model"
            )


def load_state_dict(sp: "Sparsifier", state: Mapping[str, Any]) -> None:
    """Restore :func:`state_dict` into ``sp``; checks that it comes from the same model and layers."""
    check_format(state)
    check_layers(sp, state)
    if state["algorithm"] != sp.algorithm.name:
        warnings.warn(
            f"sparsetrain: loading a {state['algorithm']!r} state into a {sp.algorithm.name!r} sparsifier",
            RuntimeWarning,
            stacklevel=3,
        )
    for n, s in state["layers"].items():
        l = sp.layers[n]
        dev = l.param.device
        l.set_mask(s["mask"].to(dev, torch.bool).clone())
        l.n_active = int(s["n_active"])
        l.target_density = float(s["target_density"])
        l.ever_active = s["ever_active"].to(dev, torch.bool).clone()
        if sp.track_usage:
            c = s.get("counter")
            l.counter = c.to(dev, torch.int32).clone() if c is not None else torch.zeros(l.shape, dtype=torch.int32, device=dev)
        l.count_step = int(s["count_step"])
        l.active_steps = int(s["active_steps"])
        l.init_std = float(s["init_std"])
        last = s.get("last_grown")
        l.last_grown = last.to(torch.int64).clone() if last is not None else None
        l.grad_buffer = None
        if int(torch.count_nonzero(l.mask)) != l.n_active:
            raise ValueError(f"corrupt checkpoint: mask of {n} has {int(torch.count_nonzero(l.mask))} active weights, expected {l.n_active}")
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
