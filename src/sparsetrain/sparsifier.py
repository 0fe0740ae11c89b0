"""The Sparsifier: attaches an algorithm to a model and its optimizer and keeps them sparse.

A thin facade over the engine's parts, each in its own module:

- :mod:`~sparsetrain.selection` (which parameters are sparse) and :mod:`~sparsetrain.initial`
  (densities, exact counts, first masks, one :class:`~sparsetrain.masks.LayerState` per layer);
- :mod:`~sparsetrain.storage`: where each weight lives (masked dense, compressed, streaming),
  behind one interface that installs the layer's hooks, enforces its mask and commits new ones;
- :mod:`~sparsetrain.capture` (the dense gradient growth needs) and
  :mod:`~sparsetrain.distributed` (rank consistency);
- :mod:`~sparsetrain.update` (one topology update by a rule: the algorithm, or a forced update);
- :mod:`~sparsetrain.checkpoint` and :mod:`~sparsetrain.metrics`.

It works through public PyTorch hooks only, so the training loop does not change: the
storages' gradient hooks mask gradients during ``backward()`` and hand over the dense gradient
when the coming step is followed by an update that needs it; an optimizer step pre-hook brings
that gradient to the scale the optimizer sees; a step post-hook counts the step, enforces every
mask (weights and optimizer state) and runs the topology update on schedule. A step skipped by
``torch.amp.GradScaler`` never calls ``optimizer.step()``, so it is not counted.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import operator
import warnings
import weakref
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from . import capture, checkpoint, distributed as dist_mod, metrics as metrics_mod, ownership
from ._util import uncompiled
from .algorithms import Algorithm
from .bits import SparseCounts
from .checkpoint import STATE_FORMAT
from .errors import InputError, InputTypeError, InputWarning, ScheduleWarning
from .initial import build_layers
from .masks import LayerState
from .registry import make_algorithm
from .selection import DEFAULT_SPARSE_MODULES, Selector, check_selected, dead_channels, plan as plan_selection
from .storage import Hooks, Storage
from .update import ForcedUpdate, run_update, streaming_warning

__all__ = ["Sparsifier", "DEFAULT_SPARSE_MODULES", "STATE_FORMAT"]

log = logging.getLogger(__name__)

# optimizer -> the Sparsifier attached to it (two sparsifiers on one optimizer would fight)
_ATTACHED: "weakref.WeakKeyDictionary[torch.optim.Optimizer, Sparsifier]" = weakref.WeakKeyDictionary()
_OWNERS = ownership._OWNERS  # the registry moved to ownership.py (ownership.held_by); kept for old readers


def _whole_steps(total_steps: Any) -> Optional[int]:
    """``total_steps`` as an int: any integer type (``numpy.int64``, a 0-d integer tensor) or a whole,
    finite float; an :class:`InputError` for anything else (bools, NaN, infinity, fractions, <= 0)."""
    if total_steps is None:
        return None
    value: Optional[int] = None
    if not isinstance(total_steps, bool):
        try:
            value = operator.index(total_steps)
        except TypeError:
            if isinstance(total_steps, numbers.Real) and math.isfinite(total_steps) \
                    and float(total_steps) == int(total_steps):
                value = int(total_steps)
    if value is None or value <= 0:
        raise InputError(f"total_steps must be a positive whole number of optimizer steps (len(loader) * epochs), "
                         f"got {total_steps!r}")
    return value


def _first_three(items: list[str]) -> str:
    """The first three of ``items`` and how many layers more, for a note naming layers."""
    return ", ".join(items[:3]) + (f" and {len(items) - 3} more layers" if len(items) > 3 else "")


def _check_not_attached(selected) -> None:
    """Refuse parameters whose hooks belong to another (not removed) Sparsifier."""
    for s in selected:
        holder = ownership.held_by(s.param)
        if holder is not None:
            raise RuntimeError(
                f"{s.name} is already sparsified by another Sparsifier ({holder!r}), whose hooks would keep "
                "acting on it; call .remove() on that Sparsifier first (e.g. sp.remove() before re-running the "
                "cell), or keep using it"
            )


class _Hooks(Hooks):
    """What the storages' hooks call back into (a view of the Sparsifier)."""

    def __init__(self, sp: "Sparsifier"):
        self._sp = sp
        self.nan_safe = sp.nan_safe

    def enabled(self) -> bool:
        return self._sp._enabled

    def capturing(self) -> bool:
        return self._sp._capturing()

    def capture(self, layer: LayerState, grad: Any) -> None:
        capture.accumulate(layer, grad, self._sp.step)

    def stream_growth(self, layer: LayerState) -> Optional[str]:
        rule = self._sp._next_rule()
        return layer.storage.stream_growth(layer, rule) if rule is not None else None


class Sparsifier:
    """Keep ``model`` sparse while ``optimizer`` trains it, moving connections per ``algorithm``.

    Args:
        model: any ``nn.Module``.
        optimizer: any ``torch.optim.Optimizer`` holding the sparse parameters.
        algorithm: an :class:`~sparsetrain.algorithms.Algorithm` (``st.RigL(density=0.1)``) or a
            registered name (``"rigl"``), in which case ``algorithm_kwargs`` build it.
        total_steps: the number of optimizer steps of the run (needed by schedules that end at a
            fraction of training or anneal over it): ``len(loader) * epochs``, or
            ``len(loader) // k * epochs`` when gradients accumulate over ``k`` batches.
        include: which parameters are sparse: name globs (``"features.*.weight"``), module types
            (the weight matrices of those modules and of the modules inside them), predicates
            ``f(name, param, module) -> bool`` and :data:`~sparsetrain.DEFAULT_LAYERS`. Default:
            the weight matrices of Linear, Conv1d/2d/3d, HF-style Conv1D, MultiheadAttention and
            RNN/LSTM/GRU modules; embeddings, weights tied to one and 1-D parameters stay dense
            unless named exactly. ``include=`` replaces the default; ``include=[st.DEFAULT_LAYERS,
            "tok.weight"]`` adds to it (see :mod:`~sparsetrain.selection`; ``summary()`` says
            what was left dense and why).
        exclude: the same kinds of selectors, removed from the sparse set.
        dense: selectors (name globs, module types) of sparse layers pinned dense (kept in the
            density budget). Selectors match every name of a tied parameter; one that matches
            nothing is an error.
        track_usage: keep per-weight usage counters (steps active); costs 4 bytes per weight
            (on a large compressed layer 12 bytes per position ever active, none for the others),
            nothing per step.
        nan_safe: mask gradients by selection (``torch.where``) so that a NaN/inf gradient at a
            masked position can never reach a masked weight. The default multiplies by the mask
            (3–10× cheaper on CPU), where NaN·0 = NaN: a non-finite gradient confined to masked
            positions would then reach those weights (see ``docs/correctness.md``). The masking
            of weights and optimizer state after each step then selects too.
        distributed: with ``torch.distributed`` initialised and more than one rank (``"auto"``) or
            ``True``: the captured dense gradients are averaged across ranks (as DDP averages
            ``.grad``) before growth, and every update verifies with a checksum that all ranks
            chose the same masks (a divergence raises, naming the layer). ``False``: ranks are
            independent runs.
        process_group: the ``torch.distributed`` group (default: the world).
        state: a :meth:`state_dict` to attach with, for a model (and optimizer) whose trained state
            was already restored — as trainers restore checkpoints before callbacks run: the saved
            masks are used from the start, so no fresh mask is drawn or enforced on the restored
            weights. Equivalent to ``load_state_dict(state)`` right after construction otherwise.

    Attributes:
        masks: dict of fully-qualified parameter name -> bool mask.
        history: list of per-update records (plain dicts).
        step: optimizer steps counted so far.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        algorithm: Union[Algorithm, str] = "rigl",
        *,
        total_steps: Optional[int] = None,
        include: Union[Selector, Sequence[Selector], None] = None,
        exclude: Union[Selector, Sequence[Selector], None] = None,
        dense: Union[str, Sequence[str], None] = None,
        track_usage: bool = True,
        nan_safe: bool = False,
        distributed: Union[bool, str] = "auto",
        process_group: Any = None,
        state: Optional[Mapping[str, Any]] = None,
        **algorithm_kwargs: Any,
    ):
        order = "the arguments are Sparsifier(model, optimizer, algorithm, ...)"
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"model must be an nn.Module, got {type(model).__name__} ({order})")
        model = uncompiled(model)  # torch.compile(m): attach to m (same parameters, names without _orig_mod.)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise InputTypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__} ({order})")
        if isinstance(algorithm, type) and issubclass(algorithm, Algorithm):
            raise InputTypeError(
                f"algorithm={algorithm.__name__} is a class, not an algorithm: pass an instance, "
                f"st.{algorithm.__name__}(density=0.1, ...), or its name, {algorithm.name!r}, with density=0.1")
        if isinstance(algorithm, str):
            algorithm = make_algorithm(algorithm, **algorithm_kwargs)
        elif algorithm_kwargs:
            raise InputTypeError(
                f"unexpected arguments {sorted(algorithm_kwargs)}: pass them to the algorithm, "
                f"e.g. st.{type(algorithm).__name__}(..., {next(iter(algorithm_kwargs))}=...)"
            )
        if not isinstance(algorithm, Algorithm):
            raise InputTypeError(f"algorithm must be an Algorithm (st.RigL(density=0.1)) or a registered name "
                                 f"('rigl'), got {type(algorithm).__name__}")
        if optimizer in _ATTACHED:
            raise RuntimeError(
                "a Sparsifier is already attached to this optimizer; call .remove() on it first "
                "(or load its state with load_state_dict instead of building a second one)"
            )
        total_steps = _whole_steps(total_steps)
        if distributed not in (True, False, "auto"):
            raise InputError(f"distributed must be True, False or 'auto', got {distributed!r}")
        for what, flag in (("track_usage", track_usage), ("nan_safe", nan_safe)):
            if not isinstance(flag, bool):
                raise InputTypeError(f"{what} must be True or False, got {flag!r}")
        self.model = model
        self.optimizer = optimizer
        self.algorithm = algorithm
        self.total_steps = int(total_steps) if total_steps is not None else None
        self.algorithm.check_total_steps(self.total_steps, warn=False)  # warned at the end, once nothing failed
        self.track_usage = bool(track_usage)
        if not self.track_usage and algorithm.needs_usage_counters:
            raise InputError(f"{type(algorithm).__name__} with count='steps' ranks growth by how long each weight was "
                             "active, which the usage counters record: keep track_usage=True, or use count='updates' "
                             "(its own per-update counts, no counters needed)")
        self.nan_safe = bool(nan_safe)
        self.distributed = distributed
        self.process_group = process_group
        self.step = 0
        self.updates = 0
        self.dense_grad_steps = 0
        self.history: list[dict[str, Any]] = []
        self.updates_paused = False
        #: a one-off update asked for with :meth:`request_update`, run after the next step
        self.pending_update: Optional[ForcedUpdate] = None
        self._reduced_at = -1
        self.generator = torch.Generator().manual_seed(self.algorithm.seed)
        self._enabled = True
        self._warned_past_end = False
        self._in_step = False  # inside this optimizer's step(): an inner optimizer stepping is not foreign
        self._state_checked = False  # optimizer state masks cannot reach: looked for after the first step
        self._handles: list[Any] = []

        #: what is sparse, what is left dense and why (:class:`~sparsetrain.selection.Selection`)
        self.selection = plan_selection(model, include, exclude, dense)
        selected = self.selection.selected
        check_selected(selected, optimizer)
        _check_not_attached(selected)
        if state is not None:  # before anything is built or attached: a refused state changes nothing
            checkpoint.check_format(state)
            checkpoint.check_names({s.name for s in selected}, state)
        with self.hooks_disabled():
            self.layers: dict[str, LayerState] = build_layers(
                algorithm, model, selected, self.selection.pinned, self.generator, optimizer,
                self.track_usage, state)
        heavy = streaming_warning(self.layers.values(), algorithm, self.track_usage)
        if heavy is not None:
            warnings.warn(heavy, stacklevel=2)
        self._claimed: list = []
        self._check_loaded = False
        # weight matrices left dense only because they were frozen: warned about if they train later
        self._frozen_left = list(self.selection.frozen.items())
        #: per layer, the active weights that were exactly 0 in the last loaded state
        self.loaded_zeros: dict[str, int] = {}
        self._attach()
        try:
            self._claimed = ownership.claim((s.param for s in selected), self)
            if state is not None:
                self.load_state_dict(state)  # ends by enforcing the saved masks
            else:
                self.apply_masks()
        except BaseException:  # a failed constructor leaves no hook on the model or the optimizer
            self.remove()
            raise
        if state is None:
            for note in self._start_notes():
                warnings.warn(note, InputWarning, stacklevel=2)
        for problem in self.algorithm.schedule_problems(self.total_steps):
            warnings.warn(problem, ScheduleWarning, stacklevel=2)
        for note in self.algorithm.schedule_notes(self.total_steps):
            warnings.warn(note, InputWarning, stacklevel=2)
        log.info("sparsetrain: %s on %d layers, density %.4f", algorithm, len(self.layers), self.density)

    # ------------------------------------------------------------------ hooks
    def _attach(self) -> None:
        hooks = _Hooks(self)
        for layer in self.layers.values():
            layer.storage.attach(layer, hooks)
            self._handles.append(layer.param.register_post_accumulate_grad_hook(self._make_accumulated_hook(layer)))
        self._handles.append(self.optimizer.register_step_pre_hook(self._pre_step))
        self._handles.append(self.optimizer.register_step_post_hook(self._post_step))
        _ATTACHED[self.optimizer] = self

    def _make_accumulated_hook(self, layer: LayerState):
        def hook(param: torch.Tensor):
            if self._enabled:
                capture.record_signature(layer, param, self.step)

        return hook

    def remove(self) -> None:
        """Detach every hook; the model keeps its current (sparse) weights."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for layer in self.layers.values():
            layer.storage.detach()
        if _ATTACHED.get(self.optimizer) is self:
            del _ATTACHED[self.optimizer]
        ownership.release(self._claimed, self)
        self._claimed = []

    @contextlib.contextmanager
    def hooks_disabled(self):
        """Context in which gradients are neither masked nor captured (e.g. for saliency passes)."""
        prev, self._enabled = self._enabled, False
        try:
            yield
        finally:
            self._enabled = prev

    def _scheduled(self, step: int) -> bool:
        return not self.updates_paused and self.algorithm.is_update_step(step, self.total_steps)

    def _next_rule(self):
        """The rule of the update that follows the coming optimizer step, or ``None``."""
        if self.pending_update is not None:
            return self.pending_update
        return self.algorithm if self._scheduled(self.step + 1) else None

    def _capturing(self) -> bool:
        """Whether this backward's dense gradient is wanted."""
        if self.algorithm.dense_grad_every_step:
            return True
        rule = self._next_rule()
        return rule is not None and rule.needs_dense_grad

    def _group(self):
        return dist_mod.process_group(self.distributed, self.process_group)

    def _reduce_once(self, group) -> None:
        """All-reduce this step's dense gradients once, where they exist (see :meth:`_post_step`)."""
        if self._reduced_at == self.step:
            return
        if any(l.grad_buffer is not None and l.grad_buffer_step == self.step for l in self.layers.values()):
            dist_mod.all_reduce_dense_grads(list(self.layers.values()), self.step, group)
            self._reduced_at = self.step

    def _pre_step(self, optimizer, args, kwargs):
        self._in_step = True
        if self._check_loaded and self._enabled:
            self._check_loaded = False
            self._warn_if_weights_lost()
        if self._frozen_left and self._enabled:
            self._warn_if_unfrozen()
        if not self._enabled:
            return
        capturing = self._capturing()
        for layer in self.layers.values():  # a .grad assigned instead of accumulated: masked, and captured
            capture.adopt_assigned(layer, self.step, capturing)
        if not capturing:
            return
        group = self._group()
        if group is not None:
            self._reduce_once(group)
        capture.match_optimizer_scale(self.layers.values(), self.step)

    def _start_notes(self) -> list[str]:
        """What a fresh Sparsifier's first masks say about its input: a density below what the layers
        can realise (each keeps at least one weight), and active weights that are exactly 0 because a
        removed Sparsifier had masked them (its masks are not this one's)."""
        notes = []
        target = self.algorithm.initial_density
        floored = [l for l in self.layers.values() if l.n_active == 1]
        if isinstance(self.algorithm.distribution, str) and floored and self.density > 1.5 * target and \
                self.density - target > 1e-4:
            what = "initial density" if target != self.algorithm.density else "density"
            notes.append(f"sparsetrain: {what} {target:g} realises {self.density:.4g}: every sparse layer keeps at "
                         f"least one weight ({len(self.layers)} layers, {sum(l.numel for l in self.layers.values())} "
                         "weights); a smaller density cannot be reached with this selection")
        final = self.algorithm.density
        if final < target:  # a pruning schedule (GraNet): can its end be reached, one weight per layer kept?
            total = sum(l.numel for l in self.layers.values())
            floor = sum(l.numel if l.pinned else 1 for l in self.layers.values())
            if floor > round(final * total) and floor / total - final > 1e-4:
                pinned = " (pinned layers all of theirs)" if any(l.pinned for l in self.layers.values()) else ""
                notes.append(f"sparsetrain: final density {final:g} cannot be reached: every sparse layer keeps at "
                             f"least one weight{pinned}, so pruning stops at {floor / total:.4g} "
                             f"({floor} of {total} weights); a higher final density or fewer layers reach it")
        dead = dead_channels(self.layers, {x.name: x.module for x in self.selection.selected})
        if dead:
            shown = _first_three([f"{n}: {k} of {m}" for n, k, m in dead])
            notes.append(f"sparsetrain: depthwise convolutions have output channels with no active weight at the "
                         f"start ({shown}): a depthwise filter is its channel's only path, so these channels output "
                         "their bias alone until an update grows weights there (with static masks: never). To keep "
                         "depthwise convolutions dense (a small share of the weights, as is usual): "
                         "exclude=[st.depthwise], or dense=[st.depthwise] to count them in the density budget")
        zeros = {}
        with torch.no_grad():
            for name, layer in self.layers.items():
                if layer.storage.kind != "masked" or not ownership.was_released(layer.param):
                    continue  # zeros in weights no Sparsifier masked are the model's own (eye_, dirac_ inits)
                k = int(torch.count_nonzero((layer.param == 0) & layer.mask))
                if k > max(1, layer.n_active // 100):
                    zeros[name] = k
        if zeros:
            shown = _first_three([f"{n}: {k} of {self.layers[n].n_active}" for n, k in zeros.items()])
            notes.append(f"sparsetrain: these weights were sparse under a Sparsifier that was removed, and this one's "
                         f"new masks make some of its zeros active: they start at 0 ({shown} active weights "
                         "are 0). To continue that sparse run instead, build the Sparsifier with its state "
                         "(state=sp.state_dict()) rather than drawing new masks")
        return notes

    def _warn_if_unfrozen(self) -> None:
        """Warn once if a weight matrix left dense because it was frozen now trains (dense)."""
        training = [n for n, p in self._frozen_left if p.requires_grad and p.grad is not None]
        if training:  # the optimizer's parameters are read only then: a frozen backbone costs nothing per step
            held = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
            training = [n for n, p in self._frozen_left if n in training and id(p) in held]
        if training:
            self._frozen_left = [(n, p) for n, p in self._frozen_left if n not in training]
            warnings.warn(
                f"sparsetrain: {', '.join(training)} {'was' if len(training) == 1 else 'were'} frozen "
                "(requires_grad=False) when the Sparsifier was built, so left dense, and now train"
                f"{'s' if len(training) == 1 else ''} dense: the model's real density is above sp.density. To train "
                "it sparse, unfreeze it before building the Sparsifier (or sp.remove() and build a new one after "
                "unfreezing: it draws new masks); to keep it frozen, set requires_grad=False again", InputWarning,
                stacklevel=3)

    def _warn_if_weights_lost(self) -> None:
        """After a load, at the first step: warn if more active weights are exactly 0 than when the
        state was saved — the model's weights were loaded *before* this Sparsifier was built, which
        zeroed those off its fresh random mask."""
        lost = {}
        with torch.no_grad():
            for name, saved in self.loaded_zeros.items():
                layer = self.layers[name]
                if layer.storage.kind != "masked":
                    continue
                now = int(torch.count_nonzero((layer.param == 0) & layer.mask))
                if now > saved + max(1, layer.n_active // 100):
                    lost[name] = now - saved
        if lost:
            shown = _first_three([f"{n}: {k}" for n, k in lost.items()])
            warnings.warn(
                f"sparsetrain: after loading, {sum(lost.values())} weights the saved masks keep active are 0 that were "
                f"not when the state was saved ({shown}): the "
                "model's weights were probably loaded before this Sparsifier was built (building it zeroes the "
                "weights off its fresh random mask), or not loaded at all (model.load_state_dict). Build the "
                "Sparsifier first (or pass state=), then load the model, the optimizer and the Sparsifier "
                "(docs/correctness.md, resume recipe)", InputWarning,
                stacklevel=3)

    def _warn_if_state_unmasked(self) -> None:
        """After the first step: warn once about optimizer state that no mask can reach."""
        found = {n: keys for n, l in self.layers.items() if (keys := l.storage.unmasked_state(self.optimizer, l.param))}
        if isinstance(self.optimizer, torch.optim.LBFGS) and not found:  # its state sits under its first parameter
            first = self.optimizer.param_groups[0]["params"][0]
            found = {"the first parameter": Storage.unmasked_state(self.optimizer, first) or ["its history"]}
        if not found:
            return
        name, keys = next(iter(found.items()))
        lbfgs = isinstance(self.optimizer, torch.optim.LBFGS)
        warnings.warn(
            f"sparsetrain: {type(self.optimizer).__name__} keeps state not shaped like the weights ({', '.join(keys)} of "
            f"{name}{' and others' if len(found) > 1 else ''}), which masks cannot reach: it is not zero at masked "
            "weights, and regrown weights inherit it instead of starting from fresh state. " + (
                "LBFGS's flat direction history also moves dropped weights inside step() after a topology update "
                "(they are zeroed after it); clear its state after each update (optimizer.state.clear()) to restart "
                "the curvature estimate" if lbfgs else
                "Their own weights still stay exactly 0 (zero gradient, zeroed after every step)"),
            InputWarning, stacklevel=4)

    def _post_step(self, optimizer, args, kwargs):
        self._in_step = False
        if not self._enabled:
            return
        if callable(kwargs.get("closure")) or any(callable(a) for a in args):  # it may assign .grad inside step()
            capturing = self._capturing()
            for layer in self.layers.values():
                capture.adopt_assigned(layer, self.step, capturing)
        if self._capturing():
            # optimizers stepped with a closure (Lightning) run backward inside step(), after
            # the pre-step hook: the dense gradients are averaged across ranks here instead
            group = self._group()
            if group is not None:
                self._reduce_once(group)
        self.step += 1
        if self.total_steps is not None and self.step > self.total_steps and not self.updates_paused \
                and not self._warned_past_end:
            self._warned_past_end = True
            warnings.warn(
                f"sparsetrain: optimizer step {self.step} is past total_steps={self.total_steps}: the schedules "
                "(end, drop fraction, pruning) have run their course, so no further update follows their plan; "
                "pass the real run length as total_steps (len(loader) * epochs optimizer steps, divided by the "
                "gradient-accumulation steps if you accumulate)", InputWarning, stacklevel=3)
        self.apply_masks()
        if not self._state_checked:
            self._state_checked = True
            self._warn_if_state_unmasked()
        if self.algorithm.dense_grad_every_step:
            # e.g. SNFS's momentum of dense gradients; every such step costs a dense weight gradient
            self.dense_grad_steps += 1
            self.algorithm.on_step(self.layers, self.step)
        forced, self.pending_update = self.pending_update, None
        updated = forced is not None or self._scheduled(self.step)
        if forced is not None:
            self._update(**forced.as_dict(), manual=False)
        elif updated:
            self._update(manual=False)
        if updated:
            group = self._group()
            if group is not None:
                dist_mod.verify_masks(self.layers, self.step, group)
        capture.clear(self.layers.values())

    # ------------------------------------------------------------------ manual control
    def pause_updates(self, paused: bool = True) -> None:
        """Stop (or, with ``paused=False``, resume) the algorithm's scheduled topology updates.

        Masks, weights and counters keep being maintained; only the periodic drop-and-grow stops.
        Sup-tickets' cyclic phase uses this. Saved in :meth:`state_dict`.
        """
        self.updates_paused = bool(paused)

    def request_update(self, drop_fraction: float, grow: str = "gradient", drop: str = "magnitude") -> None:
        """Run one drop-and-grow of ``drop_fraction`` of every layer's active weights after the next step.

        The update happens in the hook of the next ``optimizer.step()``, so gradient growth sees that
        step's dense gradient (captured only for that step). ``grow`` is ``"gradient"`` (top |g|),
        ``"random"`` or ``"algorithm"`` (the attached algorithm's own growth rule, e.g. DST-EE's
        acquisition); ``drop`` is ``"magnitude"`` (the lowest |w|). Per-layer counts stay exact.
        The request is saved in :meth:`state_dict` (see :class:`~sparsetrain.update.ForcedUpdate`).
        """
        self.pending_update = ForcedUpdate(self.algorithm, drop_fraction, grow, drop)

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero every masked weight and every optimizer-state tensor shaped like a sparse weight."""
        for layer in self.layers.values():
            layer.storage.enforce(layer, self.optimizer)

    def update(self, drop_fraction: Optional[float] = None, grow: Optional[str] = None,
               drop: str = "magnitude") -> dict[str, Any]:
        """Run one drop-and-grow topology update now (normally called on schedule by the hooks).

        With no arguments this is the algorithm's own update. With ``drop_fraction`` (see
        :meth:`request_update`, which is how to get a dense gradient for it) every sparse layer
        drops that fraction of its active weights by ``drop`` and regrows as many by ``grow``.
        """
        return self._update(drop_fraction, grow, drop, manual=True)

    def _update(self, drop_fraction: Optional[float] = None, grow: Optional[str] = None, drop: str = "magnitude",
                manual: bool = True) -> dict[str, Any]:
        self._check_parameters_current()
        if drop_fraction is None:
            return run_update(self, self.algorithm, manual)
        return run_update(self, ForcedUpdate(self.algorithm, drop_fraction, grow or "gradient", drop), manual)

    def _check_parameters_current(self) -> None:
        """Refuse to go on if a sparse weight was replaced in the model after attaching
        (``model.fc.weight = nn.Parameter(...)``): the new one would train dense, unseen."""
        for layer in self.layers.values():
            module_name, _, attr = layer.name.rpartition(".")
            try:
                module = self.model.get_submodule(module_name)
            except AttributeError:
                module = None
            held = layer.sparse_module if layer.sparse_module is not None else layer.param
            now = module if layer.sparse_module is not None else getattr(module, attr, None)
            if now is not held:
                raise InputError(
                    f"{layer.name} is no longer the {'layer' if layer.sparse_module is not None else 'parameter'} "
                    "this Sparsifier was built on: it was replaced in the model after attaching, so the new one "
                    "would train dense and unseen; replace weights before creating the optimizer and the Sparsifier "
                    "(or call .remove() and build a new Sparsifier and optimizer)")

    # ------------------------------------------------------------------ metrics
    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Fully-qualified parameter name -> bool mask (``True`` = active)."""
        return {n: layer.mask for n, layer in self.layers.items()}

    @property
    def density(self) -> float:
        """Realised global density over the sparse parameters."""
        return metrics_mod.density(self)

    @property
    def itop_rate(self) -> float:
        """R_s: fraction of sparse-parameter weights active at least once (initial mask included)."""
        return metrics_mod.itop_rate(self)

    def usage_counters(self) -> dict[str, torch.Tensor]:
        """Per-weight number of optimizer steps active so far (``track_usage=True``), as int32 tensors
        of the weights' dense shapes (a large compressed layer keeps its counts for its ever-active
        positions only, :class:`~sparsetrain.bits.SparseCounts`: its dense tensor is made here, on request)."""
        if not self.track_usage:
            raise RuntimeError("usage counters are not tracked: construct the Sparsifier with track_usage=True")
        for layer in self.layers.values():
            layer.flush(self.step)
        return {n: l.counter.to_dense(l.shape) if isinstance(l.counter, SparseCounts) else l.counter
                for n, l in self.layers.items()}

    def metrics(self) -> dict[str, Any]:
        """Global and per-layer metrics as plain numbers (see ``docs/metrics.md``)."""
        return metrics_mod.metrics(self)

    def training_flops(self, report) -> dict[str, float]:
        """Training FLOPs of the steps so far, from a :func:`sparsetrain.flops` report.

        Counts forward+backward as 3 forward passes of the *actual* per-layer active counts
        over time, plus at each dense-gradient step the extra dense weight-gradient cost
        (``f_D - f_S``), as in spec §1.7. Returns ``{"sparse", "dense", "fraction"}`` in FLOPs
        per training example. Before the first step both totals are 0 and ``fraction`` is that of
        one step at the current masks.
        """
        return metrics_mod.training_flops(self, report)

    def summary(self, file=None) -> str:
        """A readable per-layer table (shape, storage, target and realised density, R_s); also written to ``file``."""
        text = metrics_mod.summary(self)
        if file is not None:
            file.write(text + "\n")
        return text

    def __repr__(self) -> str:
        return f"Sparsifier({self.algorithm!r}, layers={len(self.layers)}, step={self.step}, density={self.density:.4f})"

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Masks, usage counters, ever-active masks, schedule position, RNG state and history.

        Only tensors and plain containers, so ``torch.load(..., weights_only=True)`` reads it
        (format: :mod:`sparsetrain.checkpoint`).
        """
        return checkpoint.state_dict(self)

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Restore :meth:`state_dict`, all or nothing: a state that is damaged (checksum), from another
        model or layer selection, or from another algorithm configuration is refused with an
        :class:`~sparsetrain.errors.InputError` before anything changes; ``strict=False`` loads a
        state of another configuration on purpose, with a warning (see :mod:`~sparsetrain.checkpoint`)."""
        checkpoint.load_state_dict(self, state, strict)
        self._check_loaded = bool(self.loaded_zeros)  # the active weights are checked at the next step
