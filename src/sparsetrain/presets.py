"""Ready-made configurations from the papers (spec §3): ITOP presets, and the base phase that
Sup-tickets needs.

ITOP (Liu et al., 2021, *Do We Actually Need Dense Over-Parameterization? In-Time
Over-Parameterization in Sparse Training*) is a regime rather than a new update rule: keep
exploring until the end of training, with ΔT long enough that grown weights are trained
"reliably" before they can be dropped, so that the exploration rate R_s
(``sp.metrics()["itop_rate"]``, and per update in ``sp.history``) becomes large.
"""

from __future__ import annotations

from .algorithms import SET, RigL
from .registry import PRESETS, register_preset
from .schedules import CosineAnnealing

__all__ = ["set_itop", "rigl_itop", "suptickets_base", "PRESETS"]


def set_itop(density: float, *, update_interval: int = 1500, p0: float = 0.5, eta_min: float = 0.005, **kwargs) -> SET:
    """SET-ITOP: random growth, magnitude drop, ERK, ``cosine_annealing`` from p0 = 0.5, ΔT = 1500
    (CIFAR, batch 128), updates until the end of training. Scale ΔT to your run length."""
    kwargs.setdefault("distribution", "erk")
    return SET(density, update_interval=update_interval, drop_fraction=CosineAnnealing(p0, eta_min), end=None, **kwargs)


def rigl_itop(density: float, *, update_interval: int = 4000, p0: float = 0.5, eta_min: float = 0.005, **kwargs) -> RigL:
    """RigL-ITOP: gradient growth with the same regime as :func:`set_itop`, ΔT = 4000 (CIFAR, batch 128);
    longer training (more epochs) raises R_s further."""
    kwargs.setdefault("distribution", "erk")
    return RigL(density, update_interval=update_interval, drop_fraction=CosineAnnealing(p0, eta_min), end=None, **kwargs)


def suptickets_base(density: float, *, update_interval: int = 1200, drop_fraction: float = 0.5, **kwargs) -> RigL:
    """The base phase of the Sup-tickets reference code: RigL replacing ``drop_fraction`` = 50% of
    each layer every ΔT = 1200 steps (CIFAR, batch 128), constant, until the cycles start (no
    ``end``), so that the 50% drop at each cycle start is routine. In our reference-regime runs
    (``results/fmnist-mlp-suptickets-ref``) Sup-tickets gained +0.12 points over this base alone,
    and nothing over RigL's defaults (whose topology is frozen for the last quarter). Use it as
    ``"suptickets-base+sup-tickets"`` (CLI) or with :class:`~sparsetrain.SupTickets`."""
    kwargs.setdefault("distribution", "erk")
    return RigL(density, update_interval=update_interval, drop_fraction=drop_fraction, drop_schedule="constant",
                end=None, **kwargs)


register_preset("set-itop", set_itop)
register_preset("suptickets-base", suptickets_base)
register_preset("rigl-itop", rigl_itop)
