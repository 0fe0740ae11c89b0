"""Sup-tickets: superpose cheap sparse tickets from a final cyclic phase (spec §4).

The run's epoch budget ``E`` is split into a base phase of ``E_pre`` epochs, trained by any
sparsifier algorithm (RigL, SET, DST-EE, GraNet, ...), and ``K`` cycles of ``C`` epochs. At the
start of each cycle the live model gets one large drop-and-grow (default: drop 50% of each
layer's active weights by magnitude, regrow by gradient) and the periodic updates stay paused;
the learning rate follows a triangular cycle per iteration. The live model at the end of cycle
``k`` is ticket θ_k, superposed into θ_sup by a cumulative average over *every* state entry
(weights, biases, norm affine parameters and running buffers)::

    θ_avg = θ_sup + (θ_k − θ_sup) / (k + 1)        (or θ_avg = β θ_sup + (1 − β) θ_k)

then pruned back to the exact budget by global magnitude and its norm statistics recomputed
over the training data. θ_sup lives in a separate copy of the model (:attr:`SupTickets.model`);
the live model keeps training untouched.

Usage, on top of an unchanged loop::

    sp = st.Sparsifier(model, opt, st.RigL(density=0.05), total_steps=E * len(loader))
    tk = st.SupTickets(sp, epochs=E, steps_per_epoch=len(loader))
    sched = tk.lr_scheduler(base_scheduler_over(tk.pre_steps))  # base LR, then triangular cycles
    for epoch in range(E):
        for x, y in loader:
            ...; opt.step(); sched.step()
        tk.epoch_end(recalibrate=loader, evaluate=my_eval)    # captures and superposes at cycle ends
    final = tk.model                                           # the superposed sparse model
"""

from __future__ import annotations

import copy
import logging
import math
import operator
import warnings
from typing import Any, Callable, Iterable, Mapping, Optional

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler, SequentialLR

from ._util import global_topk
from .errors import InputError, InputTypeError
from .storage import dense_state, load_dense_state
from .sparsifier import Sparsifier

__all__ = [
    "phase_split",
    "TriangularLR",
    "SupTickets",
    "TicketEnsemble",
    "superpose",
    "prune_to_budget",
    "recalibrate_norms",
    "jaccard",
]

log = logging.getLogger(__name__)

STATE_FORMAT = "sparsetrain.tickets/1"


def _whole(name: str, value: Any) -> int:
    """``value`` as an int if it is a whole number (``10``, ``10.0``, ``numpy.int64``), else an :class:`InputError`."""
    try:
        return operator.index(value)
    except TypeError:
        if isinstance(value, float) and value.is_integer():
            return int(value)
    raise InputError(f"{name} must be a whole number, got {value!r}")


def phase_split(epochs: int, cycle_epochs: int = 8, ratio: float = 0.1,
                cycles: Optional[int] = None) -> tuple[int, int, int]:
    """Split an ``epochs`` budget into ``(E_pre, K, C)`` (spec §4).

    ``E_cyc = epochs · ratio`` rounded down to a multiple of the cycle length ``C``; ``K = E_cyc / C``.
    With ``cycles`` given, ``E_cyc = cycles · C`` instead. At least one base epoch always remains.
    """
    epochs, cycle_epochs = int(epochs), int(cycle_epochs)
    if epochs < 2:
        raise InputError(f"Sup-tickets needs at least 2 epochs (a base phase and one cycle), got {epochs}")
    if cycle_epochs < 1:
        raise InputError(f"cycle_epochs must be >= 1, got {cycle_epochs}")
    if cycles is not None:
        k = int(cycles)
        if k < 1:
            raise InputError(f"cycles must be >= 1, got {cycles}")
    else:
        if not 0.0 < float(ratio) < 1.0:
            raise InputError(f"ratio (the share of epochs spent in cycles) must be in (0, 1), got {ratio}")
        k = int(math.floor(epochs * float(ratio) + 1e-9)) // cycle_epochs
        if k < 1:
            raise InputError(
                f"{epochs} epochs × ratio {ratio} leaves no full cycle of {cycle_epochs} epochs: "
                "use a shorter cycle_epochs, a larger ratio, or pass cycles=K"
            )
    e_pre = epochs - k * cycle_epochs
    if e_pre < 1:
        raise InputError(
            f"{k} cycles of {cycle_epochs} epochs do not fit in {epochs} epochs with a base phase left; "
            "use fewer or shorter cycles"
        )
    return e_pre, k, cycle_epochs


class TriangularLR(LRScheduler):
    """Triangular cyclic learning rate, stepped per iteration.

    With ``τ ∈ [0, 1)`` the position inside a cycle of ``cycle_steps`` iterations:
    ``lr(τ) = lr_low + (lr_high − lr_low)(1 − |2τ − 1|)`` — from ``lr_low`` up to ``lr_high`` at
    mid-cycle and back. Compose it after a base schedule with :class:`torch.optim.lr_scheduler.SequentialLR`
    (:meth:`SupTickets.lr_scheduler` does that).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, lr_low: float, lr_high: float, cycle_steps: int,
                 last_epoch: int = -1):
        if not (lr_low >= 0 and lr_high >= 0 and math.isfinite(lr_low) and math.isfinite(lr_high)):
            raise ValueError(f"learning rates must be finite and >= 0, got lr_low={lr_low}, lr_high={lr_high}")
        if int(cycle_steps) < 1:
            raise ValueError(f"cycle_steps must be >= 1, got {cycle_steps}")
        self.lr_low, self.lr_high, self.cycle_steps = float(lr_low), float(lr_high), int(cycle_steps)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step: int) -> float:
        """The learning rate at iteration ``step`` (0-based) of the cyclic phase."""
        tau = (step % self.cycle_steps) / self.cycle_steps
        return self.lr_low + (self.lr_high - self.lr_low) * (1.0 - abs(2.0 * tau - 1.0))

    def get_lr(self) -> list[float]:
        return [self.lr_at(max(self.last_epoch, 0))] * len(self.optimizer.param_groups)

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


def jaccard(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Jaccard overlap |a ∩ b| / |a ∪ b| of two mask dicts, over all their layers."""
    inter = union = 0
    for name, m in a.items():
        o = b[name]
        inter += int((m & o).sum())
        union += int((m | o).sum())
    return inter / union if union else 1.0


@torch.no_grad()
def superpose(sup: dict[str, torch.Tensor], ticket: Mapping[str, torch.Tensor], k: int,
              beta: Optional[float] = None) -> None:
    """Fold ticket ``k`` (1-based) into ``sup`` in place, over every floating-point entry.

    Cumulative average ``sup + (ticket − sup)/(k + 1)`` (θ_sup already holds the average of ``k``
    models: the base model and tickets 1..k−1), or the exponential average
    ``β·sup + (1 − β)·ticket`` when ``beta`` is given. Integer entries (``num_batches_tracked``)
    take the ticket's value.
    """
    if k < 1:
        raise ValueError(f"ticket index k is 1-based, got {k}")
    if set(sup) != set(ticket):
        raise ValueError(f"ticket and superposed states differ in keys: {sorted(set(sup) ^ set(ticket))}")
    for key, s in sup.items():
        t = ticket[key].to(s.device)
        if s.is_floating_point() or s.is_complex():
            if beta is None:
                s.add_((t.to(s.dtype) - s) / (k + 1))
            else:
                s.mul_(beta).add_(t.to(s.dtype), alpha=1.0 - beta)
        else:
            s.copy_(t)


@torch.no_grad()
def prune_to_budget(weights: Mapping[str, torch.Tensor], budget: int) -> dict[str, torch.Tensor]:
    """Keep exactly the ``budget`` largest-magnitude entries across ``weights`` (global ranking).

    Zeroes the rest in place and returns the masks ``{name: bool}``. Ties are broken
    deterministically by ``torch.topk``.
    """
    names = list(weights)
    total = sum(weights[n].numel() for n in names)
    if not 0 <= budget <= total:
        raise ValueError(f"budget {budget} outside [0, {total}]")
    if not names:
        return {}
    keep = global_topk([weights[n].abs() for n in names], budget, largest=True)
    masks = {}
    for n, m in zip(names, keep):
        weights[n].mul_(m)
        masks[n] = m
    return masks


def _inputs(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def recalibrate_norms(model: nn.Module, data: Iterable, device: Optional[torch.device] = None,
                      max_batches: Optional[int] = None, inputs: Callable[[Any], Any] = _inputs) -> int:
    """Recompute the running statistics of every norm layer that tracks them, by one pass over ``data``.

    The statistics are reset and re-estimated as a plain average over the batches (momentum
    ``None``), in training mode without gradients; the model's modes and momenta are restored.
    Models without such layers are left alone (no pass over the data). Returns the batches used.
    """
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]
    if not norms:
        return 0
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    n = 0
    try:
        for batch in data:
            if max_batches is not None and n >= max_batches:
                break
            x = _inputs(batch) if inputs is None else inputs(batch)
            model(x.to(device) if torch.is_tensor(x) else x)
            n += 1
    finally:
        for m, mom in zip(norms, momenta):
            m.momentum = mom
        for m, mode in modes.items():
            m.training = mode
    if n == 0:
        raise ValueError("recalibrate_norms got no batches: pass the training data loader")
    return n


class TicketEnsemble(nn.Module):
    """The tickets as an ensemble (as in FreeTickets): the mean of their softmax outputs.

    ``forward`` returns the log of the averaged probabilities, so ``argmax`` gives the ensemble's
    prediction and ``nll_loss`` its loss.
    """

    def __init__(self, members: Iterable[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)
        if not len(self.members):
            raise ValueError("an ensemble needs at least one ticket (keep_tickets=True, after one cycle)")

    def forward(self, x):
        probs = torch.stack([m(x).softmax(dim=-1) for m in self.members]).mean(0)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


class SupTickets:
    """Sup-tickets on top of an attached :class:`~sparsetrain.Sparsifier` (any algorithm).

    Args:
        sparsifier: the sparsifier training the live model.
        epochs: the whole run's epoch budget ``E`` (base phase + cycles).
        steps_per_epoch: optimizer steps per epoch (``len(loader)`` without accumulation).
        cycle_epochs: cycle length ``C`` in epochs.
        ratio: share of the budget spent in cycles (``E_cyc = ⌊E·ratio⌋`` rounded down to ``C``).
        cycles: number of tickets ``K`` (overrides ``ratio``).
        lr_low, lr_high: the triangular cycle's bounds (spec defaults for CIFAR: 0.001, 0.005).
        drop_fraction: share of each layer's active weights replaced at each cycle's start.
        grow: growth rule of that replacement: ``"gradient"``, ``"random"`` or ``"algorithm"``.
        beta: ``None`` for the cumulative average, else the exponential-average factor β.
        keep_tickets: keep a copy of every ticket's state (for :meth:`ensemble`); costs K models.

    Attributes:
        model: the superposed model θ_sup (``None`` before the base phase ends).
        masks: θ_sup's masks after pruning.
        history: one record per cycle (ticket accuracy, superposed accuracy, densities, overlap).
    """

    def __init__(self, sparsifier: Sparsifier, epochs: int, steps_per_epoch: int, *, cycle_epochs: int = 8,
                 ratio: float = 0.1, cycles: Optional[int] = None, lr_low: float = 0.001, lr_high: float = 0.005,
                 drop_fraction: float = 0.5, grow: str = "gradient", beta: Optional[float] = None,
                 keep_tickets: bool = True):
        if not isinstance(sparsifier, Sparsifier):
            raise InputTypeError(f"SupTickets needs an attached sparsetrain.Sparsifier, got {type(sparsifier).__name__}")
        epochs, steps_per_epoch, cycle_epochs = (_whole(n, v) for n, v in (
            ("epochs", epochs), ("steps_per_epoch", steps_per_epoch), ("cycle_epochs", cycle_epochs)))
        cycles = None if cycles is None else _whole("cycles", cycles)
        if steps_per_epoch < 1:
            raise InputError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        if not 0.0 <= float(drop_fraction) <= 1.0:
            raise InputError(f"drop_fraction must be in [0, 1], got {drop_fraction}")
        if grow not in ("gradient", "random", "algorithm"):
            raise InputError(f"unknown grow rule {grow!r}; valid: gradient, random, algorithm")
        if beta is not None and not 0.0 <= float(beta) < 1.0:
            raise InputError(f"beta (exponential average factor) must be in [0, 1), got {beta}")
        if not (0 <= lr_low <= lr_high and math.isfinite(lr_high)):
            raise InputError(f"the cycle's learning rates must satisfy 0 <= lr_low <= lr_high (finite), got "
                             f"lr_low={lr_low}, lr_high={lr_high}")
        self.sparsifier = sparsifier
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.pre_epochs, self.cycles, self.cycle_epochs = phase_split(epochs, cycle_epochs, ratio, cycles)
        self.lr_low, self.lr_high = float(lr_low), float(lr_high)
        self.drop_fraction = float(drop_fraction)
        self.grow = grow
        self.beta = None if beta is None else float(beta)
        self.keep_tickets = bool(keep_tickets)
        self.epoch = 0          # epoch_end calls so far
        self.tickets_done = 0   # K so far
        self.model: Optional[nn.Module] = None
        self.masks: dict[str, torch.Tensor] = {}
        self.history: list[dict[str, Any]] = []
        #: accuracy of θ_pre, the live model at the end of the base phase (when ``evaluate`` is given)
        self.pre_acc: Optional[float] = None
        self.ticket_states: list[dict[str, torch.Tensor]] = []
        self._prev_ticket_masks: Optional[dict[str, torch.Tensor]] = None

    # ------------------------------------------------------------------ schedule
    @property
    def pre_steps(self) -> int:
        """Optimizer steps of the base phase."""
        return self.pre_epochs * self.steps_per_epoch

    @property
    def cycle_steps(self) -> int:
        """Optimizer steps of one cycle."""
        return self.cycle_epochs * self.steps_per_epoch

    @property
    def in_cycles(self) -> bool:
        """Whether the base phase is over."""
        return self.epoch >= self.pre_epochs

    @property
    def budget(self) -> int:
        """Active weights allowed in the sparse (non-pinned) layers: the live model's count."""
        return sum(l.n_active for l in self.sparsifier.layers.values() if not l.is_dense)

    def lr_scheduler(self, base: Optional[LRScheduler] = None) -> LRScheduler:
        """The per-iteration schedule: ``base`` for :attr:`pre_steps` steps, then triangular cycles.

        ``base`` must be built on the same optimizer and should span :attr:`pre_steps` iterations
        (e.g. ``CosineAnnealingLR(opt, T_max=tk.pre_steps)``); without it the base phase keeps
        the optimizer's learning rate. Step the returned scheduler once per optimizer step.
        """
        opt = self.sparsifier.optimizer
        if base is not None and base.optimizer is not opt:
            raise ValueError("the base scheduler must be built on the sparsifier's optimizer")
        if isinstance(base, SequentialLR):
            # torch's SequentialLR nested in another skips one step of the inner one (a warm-up
            # step, the cosine shifted by one) and warns "lr_scheduler.step() before optimizer.step()"
            warnings.warn("SupTickets.lr_scheduler: a SequentialLR base (e.g. warm-up + cosine) nested in the "
                          "cycles' SequentialLR loses one step of its schedule in torch; build one flat "
                          "SequentialLR(opt, [warmup, main, tk.cycle_scheduler()], milestones=[w, tk.pre_steps]) "
                          "instead", UserWarning, stacklevel=2)
        tri = self.cycle_scheduler()
        if base is None:
            base = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        return SequentialLR(opt, [base, tri], milestones=[self.pre_steps])

    def cycle_scheduler(self) -> "TriangularLR":
        """The cycles' triangular schedule alone (``lr_low`` → ``lr_high`` → ``lr_low`` per cycle), to
        follow a base schedule in one flat ``SequentialLR`` at milestone :attr:`pre_steps`."""
        return TriangularLR(self.sparsifier.optimizer, self.lr_low, self.lr_high, self.cycle_steps)

    # ------------------------------------------------------------------ the loop hook
    def epoch_end(self, recalibrate: Optional[Iterable] = None,
                  evaluate: Optional[Callable[[nn.Module], float]] = None,
                  device: Optional[torch.device] = None) -> Optional[dict[str, Any]]:
        """Call once after every training epoch. Starts the cycles and handles each cycle's end.

        ``recalibrate``: the training data (an iterable of batches) for the norm-statistics pass;
        needed when the model has norm layers with running statistics. ``evaluate``: optional
        ``f(model) -> accuracy`` reported for every ticket and superposed model. Returns the
        cycle's record at a cycle's end, else ``None``.
        """
        if self.epoch >= self.epochs:
            raise InputError(f"SupTickets.epoch_end called for epoch {self.epoch + 1} of a {self.epochs}-epoch run: its "
                             f"{self.cycles} cycles are done and θ_sup is final; call it once per epoch, and give "
                             "SupTickets(epochs=) the number of epochs the loop trains")
        self.epoch += 1
        record = None
        if self.epoch == self.pre_epochs:
            self._start_superposition()
            if evaluate is not None:  # θ_pre: what the base phase produced, before the first cycle's drop
                self.pre_acc = float(evaluate(self.sparsifier.model))
        elif self.epoch > self.pre_epochs and (self.epoch - self.pre_epochs) % self.cycle_epochs == 0:
            record = self._cycle_end(recalibrate, evaluate, device)
        if self.pre_epochs <= self.epoch < self.epochs and (self.epoch - self.pre_epochs) % self.cycle_epochs == 0:
            # a cycle starts: one large drop-and-grow after the next step, with that batch's gradient
            self.sparsifier.pause_updates(True)
            if self.drop_fraction > 0:
                self.sparsifier.request_update(self.drop_fraction, grow=self.grow)
        return record

    def _live_state(self) -> dict[str, torch.Tensor]:
        # every sparse weight under its dense name and shape, whatever its storage
        return dense_state(self.sparsifier.model)

    def _start_superposition(self) -> None:
        self.model = copy.deepcopy(self.sparsifier.model)
        self.masks = {n: m.clone() for n, m in self.sparsifier.masks.items()}
        log.info("sup-tickets: base phase done after %d epochs; %d cycles of %d epochs follow",
                 self.pre_epochs, self.cycles, self.cycle_epochs)

    @torch.no_grad()
    def _cycle_end(self, recalibrate, evaluate, device) -> dict[str, Any]:
        sp = self.sparsifier
        k = self.tickets_done + 1
        ticket = self._live_state()
        ticket_masks = {n: m.clone() for n, m in sp.masks.items()}
        record: dict[str, Any] = {"ticket": k, "epoch": self.epoch, "step": sp.step}
        if self._prev_ticket_masks is not None:
            record["overlap_prev"] = jaccard(ticket_masks, self._prev_ticket_masks)
        record["overlap_sup"] = jaccard(ticket_masks, self.masks)
        if evaluate is not None:
            record["ticket_acc"] = float(evaluate(sp.model))
        if self.keep_tickets:
            self.ticket_states.append(ticket)
        sup = dense_state(self.model)
        superpose(sup, ticket, k, self.beta)
        sparse = {n: sup[n] for n, l in sp.layers.items() if not l.is_dense}
        # over every layer of the sparsifier, dense ones included: the same measure as sp.density
        total = sum(l.shape.numel() for l in sp.layers.values())
        held_dense = sum(l.shape.numel() for l in sp.layers.values() if l.is_dense)
        record["density_before"] = (sum(int((w != 0).sum()) for w in sparse.values()) + held_dense) / max(total, 1)
        masks = prune_to_budget(sparse, self.budget)
        for n, l in sp.layers.items():
            if l.is_dense:
                masks[n] = torch.ones_like(l.mask)
        self.masks = masks
        load_dense_state(self.model, sup, masks)
        record["density_after"] = sum(int(masks[n].sum()) for n in sp.layers) / max(total, 1)
        record["layer_density"] = {n: int(torch.count_nonzero(m)) / max(m.numel(), 1) for n, m in masks.items()}
        if recalibrate is not None:
            record["recalibration_batches"] = recalibrate_norms(self.model, recalibrate, device)
        elif any(isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats for m in self.model.modules()):
            log.warning("sup-tickets: the model has norm layers but no data was given to recalibrate them")
        if evaluate is not None:
            record["sup_acc"] = float(evaluate(self.model))
        self._prev_ticket_masks = ticket_masks
        self.tickets_done = k
        self.history.append(record)
        log.info("sup-tickets: ticket %d/%d: %s", k, self.cycles, record)
        return record

    # ------------------------------------------------------------------ results
    def ensemble(self) -> TicketEnsemble:
        """The kept tickets as a :class:`TicketEnsemble` (separate copies of the model)."""
        if not self.ticket_states:
            raise RuntimeError("no tickets kept: construct SupTickets(keep_tickets=True) and finish a cycle")
        members = []
        for state in self.ticket_states:
            m = copy.deepcopy(self.model if self.model is not None else self.sparsifier.model)
            load_dense_state(m, state)
            m.eval()
            members.append(m)
        return TicketEnsemble(members)

    # ------------------------------------------------------------------ checkpoints
    def _split(self) -> dict[str, int]:
        return {"epochs": self.epochs, "steps_per_epoch": self.steps_per_epoch, "pre_epochs": self.pre_epochs,
                "cycles": self.cycles, "cycle_epochs": self.cycle_epochs}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume mid-cycle (tensors and plain containers only)."""
        return {
            "format": STATE_FORMAT,
            "config": self._split(),
            "epoch": self.epoch,
            "tickets_done": self.tickets_done,
            "sup_state": ({k: v.detach().clone() for k, v in self.model.state_dict().items()}
                          if self.model is not None else None),
            "masks": {n: m.clone() for n, m in self.masks.items()},
            "prev_ticket_masks": ({n: m.clone() for n, m in self._prev_ticket_masks.items()}
                                  if self._prev_ticket_masks is not None else None),
            "ticket_states": [dict(s) for s in self.ticket_states],
            "history": [dict(h) for h in self.history],
            "pre_acc": self.pre_acc,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the phase split must match this object's."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a SupTickets state (missing format tag {STATE_FORMAT!r})")
        cfg, ours = state["config"], self._split()
        if dict(cfg) != ours:
            raise ValueError(f"checkpoint's Sup-tickets phase split {dict(cfg)} differs from this run's {ours}")
        self.epoch = int(state["epoch"])
        self.tickets_done = int(state["tickets_done"])
        if state["sup_state"] is not None:
            self.model = copy.deepcopy(self.sparsifier.model)
            self.model.load_state_dict(state["sup_state"])
        else:
            self.model = None
        self.masks = {n: m.clone() for n, m in state["masks"].items()}
        prev = state["prev_ticket_masks"]
        self._prev_ticket_masks = {n: m.clone() for n, m in prev.items()} if prev is not None else None
        self.ticket_states = [dict(s) for s in state["ticket_states"]]
        self.history = [dict(h) for h in state["history"]]
        self.pre_acc = state.get("pre_acc")
