"""Ready-made configurations from the papers (spec §3): ITOP presets.

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

__all__ = ["set_itop", "rigl_itop", "PRESETS"]


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


register_preset("set-itop", set_itop)
register_preset("rigl-itop", rigl_itop)
