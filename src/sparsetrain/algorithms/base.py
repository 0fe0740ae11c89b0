"""The algorithm interface: an algorithm is a choice of scores and schedules.

An :class:`Algorithm` never touches the optimizer or the weights: the
:class:`~sparsetrain.Sparsifier` owns all mutation. An algorithm answers

- which per-layer densities to start from (``density``, ``distribution``);
- when to update (:class:`~sparsetrain.schedules.UpdateSchedule`) and by how much
  (:class:`~sparsetrain.schedules.DropSchedule`);
- which active weights to drop (:meth:`Algorithm.select_drop`, by default the lowest
  :meth:`Algorithm.drop_score`) and which inactive positions to grow
  (:meth:`Algorithm.select_grow`, by default the highest :meth:`Algorithm.grow_score`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from .. import scores
from .._util import stable_repr
from ..distributions import DISTRIBUTIONS, DistributionSpec
from ..errors import InputError, InputTypeError, InputWarning, ScheduleWarning
from ..masks import LayerState
from ..schedules import DropSchedule, UpdateSchedule, make_drop_schedule

__all__ = ["Algorithm", "UpdateContext", "GROW_INITS"]


def _number(what: str, value: Any, expect: str) -> float:
    """``value`` as a float, refusing bools, strings and non-numbers with a message naming ``what``."""
    if isinstance(value, (bool, str)):
        raise InputTypeError(f"{what} must be {expect}, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputTypeError(f"{what} must be {expect}, got {value!r}") from None


def _whole(what: str, value: Any, low: Optional[int], expect: str) -> int:
    """``value`` as an int (a whole float is accepted), at least ``low``; a clear error otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value) or (low is not None and value < low):
        raise InputError(f"{what} must be {expect}, got {value!r}")
    return int(value)

#: How regrown weights start: exactly zero, or a draw from N(0, std of the layer's initial weights).
GROW_INITS = ("zero", "init")


@dataclass
class UpdateContext:
    """What an algorithm may read during one topology update."""

    step: int
    total_steps: Optional[int]
    drop_fraction: float
    generator: torch.Generator
    #: 1 for the first topology update, 2 for the second, ...
    update_index: int = 1


class Algorithm:
    """Base class of every sparse-training method.

    Args:
        density: global fraction of prunable weights that are active, in (0, 1].
        distribution: ``"uniform"``, ``"er"``, ``"erk"`` (default), a dict name -> density or a
            callable ``f(names, shapes, density)``.
        update_interval: ΔT, optimizer steps between topology updates.
        drop_fraction: initial drop fraction (α for RigL's cosine), or a
            :class:`~sparsetrain.schedules.DropSchedule` object.
        drop_schedule: name of the drop-fraction schedule when ``drop_fraction`` is a float:
            ``"cosine"``, ``"cosine_annealing"``, ``"constant"`` or ``"linear"``.
        end: last update as a fraction of ``total_steps`` (or an absolute step if an int > 1);
            ``None``: updates until the end of training.
        start: no update before this step.
        seed: seed of the sparsifier's own generator (mask sampling, random growth).
        grow_init: ``"zero"`` (default) or ``"init"`` (draw from N(0, σ²) with σ the std of the
            layer's weights at attach time).
        erk_power: exponent of the ERK scores (0 gives uniform).
    """

    #: registry name
    name: str = "base"
    #: whether growth needs the dense gradient at update steps
    needs_dense_grad: bool = False
    #: whether topology updates happen at all
    dynamic: bool = True
    #: whether the dense gradient is needed at *every* step (then :meth:`on_step` receives it)
    dense_grad_every_step: bool = False
    #: whether updates read the per-weight usage counters (``Sparsifier(track_usage=True)``)
    needs_usage_counters: bool = False

    def __init__(
        self,
        density: float,
        *,
        distribution: DistributionSpec = "erk",
        update_interval: int = 100,
        drop_fraction: Union[float, DropSchedule] = 0.3,
        drop_schedule: str = "cosine",
        end: Union[float, int, None] = 0.75,
        start: int = 0,
        seed: int = 0,
        grow_init: str = "zero",
        erk_power: float = 1.0,
    ):
        density = _number("density", density, "a number in (0, 1], e.g. density=0.1 for 90% sparsity")
        if not 0.0 < density <= 1.0 or density != density:
            raise InputError(
                f"density must lie in (0, 1] (the fraction of weights kept), got {density}; "
                f"for 90% sparsity pass density=0.1"
            )
        if grow_init not in GROW_INITS:
            raise InputError(f"unknown grow_init {grow_init!r}; valid values are {', '.join(GROW_INITS)}")
        update_interval = _whole("update_interval", update_interval, 1, "a number of optimizer steps >= 1, e.g. 100")
        start = _whole("start", start, 0, "the first optimizer step at which updates may happen (>= 0)")
        seed = _whole("seed", seed, None, "an integer")
        if not -2**63 <= seed < 2**64:
            raise InputError(f"seed must fit in 64 bits (torch.Generator's range), got {seed}")
        if not isinstance(drop_fraction, DropSchedule):
            drop_fraction = _number("drop_fraction", drop_fraction, "a fraction in [0, 1] or a DropSchedule")
        erk_power = _number("erk_power", erk_power, "a number >= 0 (0 gives uniform densities)")
        if not erk_power >= 0 or erk_power == float("inf"):
            raise InputError(f"erk_power must be a finite number >= 0 (0 gives uniform densities), got {erk_power}")
        if isinstance(distribution, str) and distribution.lower() not in DISTRIBUTIONS:
            raise InputError(
                f"unknown distribution {distribution!r}; valid names are {', '.join(DISTRIBUTIONS)}, "
                "or pass a dict of parameter name -> density, or a callable f(names, shapes, density)"
            )
        if end is not None and (isinstance(end, bool) or not isinstance(end, (int, float))):
            raise InputTypeError(f"end must be a fraction of the run (a float in (0, 1]), a step count or None, got {end!r}")
        if isinstance(end, float) and end > 1.0 and end != int(end):
            raise InputError(
                f"end={end} is neither a fraction of the run (a float in (0, 1]) nor a whole number of steps: "
                "pass e.g. end=0.75 to stop updating at 75% of training, or end=3000 for step 3000"
            )
        self.density = density
        self.distribution = distribution
        self.update_schedule = UpdateSchedule(int(update_interval), int(start), end)
        self.drop_schedule = make_drop_schedule(drop_fraction, drop_schedule)
        self.seed = int(seed)
        self.grow_init = grow_init
        self.erk_power = float(erk_power)

    # -- configuration -----------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The hyper-parameters as plain containers (for logs, summaries and checkpoints)."""
        dist = self.distribution if isinstance(self.distribution, (str, dict)) else stable_repr(self.distribution)
        return {
            "name": self.name,
            "density": self.density,
            "distribution": dist,
            "update_interval": self.update_schedule.interval,
            "start": self.update_schedule.start,
            "end": self.update_schedule.end,
            "drop_schedule": stable_repr(self.drop_schedule),
            "seed": self.seed,
            "grow_init": self.grow_init,
            "erk_power": self.erk_power,
        }

    def check_total_steps(self, total_steps: Optional[int], warn: bool = True) -> None:
        """Raise a clear error if the schedules need the run length and it is missing; with
        ``warn``, also warn about :meth:`schedule_problems` (:class:`ScheduleWarning`) and
        :meth:`schedule_notes` (:class:`InputWarning`)."""
        if not self.dynamic:
            return
        try:
            self.update_schedule.end_step(total_steps)
            self.drop_fraction(self.update_schedule.interval, total_steps)
        except ValueError as exc:
            fix = "" if "len(loader)" in str(exc) else ". Pass total_steps=len(loader) * epochs to the Sparsifier."
            raise InputError(f"{type(self).__name__}: {exc}{fix}") from None
        if warn:
            for problem in self.schedule_problems(total_steps):
                warnings.warn(problem, ScheduleWarning, stacklevel=3)
            for note in self.schedule_notes(total_steps):
                warnings.warn(note, InputWarning, stacklevel=3)

    def schedule_problems(self, total_steps: Optional[int]) -> list[str]:
        """Why this update schedule cannot do what it is for in a run of ``total_steps`` (empty if
        nothing is wrong): no topology update fits, so the mask would stay static."""
        if not self.dynamic:
            return []
        out = []
        sched = self.update_schedule
        end = sched.end_step(total_steps)
        if self.first_update_step(total_steps) is None:
            where = (f"ending at end={sched.end!r}" + (f" (step {end})" if end != sched.end else "")
                     if end is not None else "with no end")
            run = f"total_steps={total_steps}" if total_steps is not None else "an unknown run length"
            hint = ""
            if total_steps is not None:  # an interval that fits about 5 updates
                last = min(total_steps, end) - 1 if end is not None else total_steps - 1  # updates stop before the last step
                k = max(1, (last - max(sched.start, 1)) // 5)
                fits = sum(1 for t in range(k, last + 1, k) if t >= sched.start)
                if fits:
                    hint = f" (update_interval={k} fits {fits} update{'s' if fits > 1 else ''} by step {last})"
            out.append(
                f"{type(self).__name__}: no topology update fits in this run (updates every update_interval="
                f"{sched.interval} steps from start={sched.start}, {where}, in {run}), so it would train a "
                f"static mask; lower update_interval{hint}, "
                + ("move end later (end=None: until the end), " if end is not None else "") + "or train longer")
        return out

    def schedule_notes(self, total_steps: Optional[int]) -> list[str]:
        """Settings that probably mean something else than they do in a run of ``total_steps``
        (warned as :class:`InputWarning`; the run is valid): ``end`` past the run's end by more
        than one update interval (a step count of a longer run, or epochs mixed with steps)."""
        if not self.dynamic:
            return []
        out = []
        sched = self.update_schedule
        end = sched.end_step(total_steps)
        if end is not None and total_steps is not None and end > total_steps + sched.interval \
                and self.first_update_step(total_steps) is not None:
            p_last = self.drop_fraction(total_steps, total_steps)
            out.append(
                f"{type(self).__name__}: end={sched.end!r}" + (f" (step {end})" if end != sched.end else "") +
                f" is past the end of the run (total_steps="
                f"{total_steps}), so updates run to the last step and a drop schedule annealed until step {end} "
                f"is cut off at p={p_last:.3g}; pass end as a fraction of the run (end=0.75) or a step <= "
                f"{total_steps}, or end=None to update until the end")
        return out

    def first_update_step(self, total_steps: Optional[int]) -> Optional[int]:
        """The first optimizer step followed by a topology update in a run of ``total_steps``
        (``None``: no update fits; a static algorithm has none)."""
        if not self.dynamic:
            return None
        sched = self.update_schedule
        end = sched.end_step(total_steps)
        limit = min(x for x in (end - 1 if end is not None else None, total_steps, sched.start + 10_000 * sched.interval)
                    if x is not None)
        t = max(1, -(-sched.start // sched.interval)) * sched.interval
        while t <= limit:
            if self.is_update_step(t, total_steps):
                return t
            t += sched.interval
        return None if t <= sched.start + 10_000 * sched.interval else t

    def __repr__(self) -> str:
        return f"{type(self).__name__}(density={self.density}, distribution={self.distribution!r})"

    # -- schedule ----------------------------------------------------------------------
    def is_update_step(self, step: int, total_steps: Optional[int]) -> bool:
        """Whether a topology update follows optimizer step ``step``."""
        return self.dynamic and self.update_schedule.is_update_step(step, total_steps)

    def drop_fraction(self, step: int, total_steps: Optional[int]) -> float:
        """The drop fraction p_t at ``step``."""
        end = self.update_schedule.end_step(total_steps)
        return float(self.drop_schedule.fraction(step, end, total_steps))

    @property
    def initial_density(self) -> float:
        """Global density of the initial mask (GraNet starts denser than it ends)."""
        return self.density

    def initial_masks(self, model, named_params, counts, generator) -> Optional[dict[str, torch.Tensor]]:
        """Scored initial masks ``{name: bool mask}``; ``None`` (default) for random masks with ``counts``.

        Called once when the Sparsifier is built, with its gradient hooks disabled. Masks may
        have other counts than ``counts`` (SNIP's global ranking sets its own per-layer counts).
        """
        return None

    def on_step(self, layers: Mapping[str, LayerState], step: int) -> None:
        """Called after every optimizer step when :attr:`dense_grad_every_step` is set; each
        ``layer.grad_buffer`` then holds that step's dense gradient."""

    # -- one update ----------------------------------------------------------------------
    def plan(self, layers: Sequence[LayerState], ctx: UpdateContext) -> dict[str, tuple[int, int]]:
        """How many weights each layer drops and grows: ``{name: (k_drop, k_grow)}``.

        Default: ``k = round(p_t · n_active)`` for both, so every layer keeps its count exactly.
        Methods that move the budget across layers (SNFS) or change the density (GraNet)
        return different numbers; layers left out are not touched.
        """
        out = {}
        for layer in layers:
            if layer.is_dense:
                continue
            k = min(int(round(ctx.drop_fraction * layer.n_active)), layer.n_active)
            if k > 0:
                out[layer.name] = (k, k)
        return out

    def on_update_start(self, layers: Mapping[str, LayerState], ctx: UpdateContext) -> None:
        """Called once per update with every layer, after the counters are brought up to date and
        before :meth:`plan` and any selection."""

    # -- scores --------------------------------------------------------------------------
    #: ``"random"`` or ``"gradient"`` if compressed layers above ``masks.LARGE_LAYER`` positions
    #: may take the streaming update (magnitude drop, uniform random or gradient-magnitude
    #: growth, zero regrowth, no dense temporaries; optional hooks ``stream_pruned``,
    #: ``stream_drop_score``, ``stream_grow_score`` refine it, see
    #: :mod:`sparsetrain.storage.streaming`); ``None``: the dense path
    stream_growth: Optional[str] = None

    def drop_score(self, layer: LayerState, ctx: UpdateContext) -> torch.Tensor:
        """Importance of active weights; the lowest are dropped. Default: ``|w|``."""
        return scores.magnitude(layer.weight)

    def grow_score(self, layer: LayerState, ctx: UpdateContext) -> torch.Tensor:  # pragma: no cover
        """Promise of inactive positions; the highest are grown."""
        raise NotImplementedError

    def select_drop(self, layer: LayerState, k: int, ctx: UpdateContext) -> torch.Tensor:
        """Bool tensor of the ``k`` active weights to drop."""
        return scores.select_lowest(self.drop_score(layer, ctx), layer.mask, k)

    def select_grow(self, layer: LayerState, k: int, available: torch.Tensor, ctx: UpdateContext) -> torch.Tensor:
        """Bool tensor of ``k`` positions among ``available`` (inactive after the drop) to grow."""
        return scores.select_highest(self.grow_score(layer, ctx), available, k)

    # -- extra state (for algorithms that keep some) -----------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Algorithm-specific state to checkpoint (plain containers and tensors)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

