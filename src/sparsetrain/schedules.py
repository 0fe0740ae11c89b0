"""Schedules: when topology updates happen and what fraction of weights each one moves.

All schedules are small frozen dataclasses: pure functions of the step ``t`` (optimizer
steps completed) and the run length, so they hold no state of their own and resume exactly.

Drop-fraction schedules (spec §1.3):

- :class:`Cosine` (RigL): ``p_t = alpha/2 * (1 + cos(pi * t / t_end))``.
- :class:`CosineAnnealing` (ITOP/SNFS/GraNet): ``p_t = eta_min + (p0 - eta_min) * (1 + cos(pi * t / T)) / 2``.
- :class:`Constant`: ``p_t = p0``.
- :class:`Linear`: from ``p0`` at ``t = 0`` to ``p_end`` at ``t_end``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

from .errors import InputError
from ._util import is_fraction, to_step

__all__ = [
    "DROP_SCHEDULES",
    "DropSchedule",
    "Cosine",
    "CosineAnnealing",
    "Constant",
    "Linear",
    "UpdateSchedule",
    "make_drop_schedule",
]


class DropSchedule:
    """Base class: ``fraction(t, t_end, total)`` gives the drop fraction at step ``t``."""

    #: whether :meth:`fraction` needs the run length ``total`` (else only ``t_end``)
    needs_total: bool = False

    def fraction(self, t: int, t_end: Optional[int], total: Optional[int]) -> float:  # pragma: no cover
        """Drop fraction at step ``t``; ``t_end`` is the last update step, ``total`` the run length."""
        raise NotImplementedError


@dataclass(frozen=True)
class Cosine(DropSchedule):
    """RigL's cosine decay: ``alpha/2 * (1 + cos(pi * t / t_end))`` (zero at ``t_end``)."""

    alpha: float = 0.3

    def fraction(self, t, t_end, total):
        horizon = t_end if t_end is not None else total
        if horizon is None:
            raise InputError("the 'cosine' drop schedule needs total_steps (or an end) to know its horizon")
        return self.alpha / 2.0 * (1.0 + math.cos(math.pi * min(t, horizon) / horizon))


@dataclass(frozen=True)
class CosineAnnealing(DropSchedule):
    """ITOP/SNFS/GraNet: ``eta_min + (p0 - eta_min) * (1 + cos(pi * t / T)) / 2`` over the run."""

    p0: float = 0.5
    eta_min: float = 0.005
    needs_total = True

    def fraction(self, t, t_end, total):
        if total is None:
            raise InputError("the 'cosine_annealing' drop schedule needs total_steps")
        return self.eta_min + (self.p0 - self.eta_min) * (1.0 + math.cos(math.pi * min(t, total) / total)) / 2.0


@dataclass(frozen=True)
class Constant(DropSchedule):
    """A constant drop fraction ``p0``."""

    p0: float = 0.3

    def fraction(self, t, t_end, total):
        return self.p0


@dataclass(frozen=True)
class Linear(DropSchedule):
    """Linear decay from ``p0`` at step 0 to ``p_end`` at the last update step."""

    p0: float = 0.3
    p_end: float = 0.0

    def fraction(self, t, t_end, total):
        horizon = t_end if t_end is not None else total
        if horizon is None:
            raise InputError("the 'linear' drop schedule needs total_steps (or an end) to know its horizon")
        s = min(t, horizon) / horizon
        return self.p0 + (self.p_end - self.p0) * s


#: Drop-schedule names accepted by ``drop_schedule=``; each maps to its class, built with the
#: fraction given as its first argument.
DROP_SCHEDULES = {"cosine": Cosine, "cosine_annealing": CosineAnnealing, "constant": Constant, "linear": Linear}


def make_drop_schedule(drop_fraction: Union[float, DropSchedule], name: str) -> DropSchedule:
    """A :class:`DropSchedule` from a float and a schedule name, or a ready schedule object."""
    if isinstance(drop_fraction, DropSchedule):
        return drop_fraction
    key = name.lower()
    if key not in DROP_SCHEDULES:
        raise InputError(f"unknown drop schedule {name!r}; valid names are {', '.join(DROP_SCHEDULES)}")
    p = float(drop_fraction)
    if not 0.0 <= p <= 1.0:
        raise InputError(f"drop_fraction must lie in [0, 1], got {drop_fraction}")
    return DROP_SCHEDULES[key](p)


@dataclass(frozen=True)
class UpdateSchedule:
    """Topology updates every ``interval`` steps, from ``start`` until ``end``.

    ``end`` is a fraction of ``total`` steps (``0.75`` for RigL), an absolute step count when
    it is an int > 1, or ``None`` for no end. An update happens after optimizer step ``t``
    (counted from 1) when ``t % interval == 0`` and ``start <= t < t_end``.
    """

    interval: int = 100
    start: int = 0
    end: Union[float, int, None] = 0.75

    def __post_init__(self):
        if int(self.interval) < 1:
            raise InputError(f"update_interval must be a positive number of steps, got {self.interval}")
        if self.end is not None and (isinstance(self.end, bool) or not isinstance(self.end, (int, float))
                                     or not self.end > 0):
            raise InputError(f"end must be positive (a fraction of total_steps or a step count), got {self.end!r}")
        if self.end is not None and not is_fraction(self.end):
            to_step(self.end, None, "end")  # a fractional value above 1 is refused here

    @property
    def needs_total(self) -> bool:
        """Whether ``end`` is a fraction, so the run length must be known."""
        return self.end is not None and is_fraction(self.end)

    def end_step(self, total: Optional[int]) -> Optional[int]:
        """The first step at which no more updates happen (``None``: never ends); ``end`` read by
        :func:`sparsetrain._util.to_step` (a float <= 1 is a fraction of ``total``, else a step)."""
        return to_step(self.end, total, "end")

    def is_update_step(self, t: int, total: Optional[int]) -> bool:
        """Whether a topology update follows optimizer step ``t`` (1-based). Never after the last
        step of the run (``t >= total``): weights grown there would never be trained, and the
        returned model would hold them at their initial value (0) in place of trained ones."""
        if t <= 0 or t < self.start or t % self.interval != 0 or (total is not None and t >= total):
            return False
        end = self.end_step(total)
        return end is None or t < end
