"""sparsetrain: dynamic sparse training for PyTorch.

Three lines on top of an unchanged training loop::

    import sparsetrain as st
    sp = st.Sparsifier(model, optimizer, st.RigL(density=0.1), total_steps=len(loader) * epochs)
    ...  # loss.backward(); optimizer.step(); optimizer.zero_grad()
    print(sp.summary())
"""

from . import algorithms, distributions, errors, presets, registry, schedules, scores, testing, tickets
from .algorithms import (
    ALGORITHMS, DSTEE, MEST, SET, SNFS, SNIP, Algorithm, GraNet, GraSP, RigL, Static, make_algorithm, register,
)
from .errors import InputError, InputTypeError, InputWarning, ScheduleWarning
from .flops import FlopsReport, flops, training_flops_per_step
from .selection import DEFAULT_LAYERS, depthwise
from .sparsifier import Sparsifier
from .tickets import SupTickets, TicketEnsemble

__version__ = "0.1.0"

__all__ = [
    "Sparsifier",
    "DEFAULT_LAYERS",
    "depthwise",
    "SupTickets",
    "TicketEnsemble",
    "tickets",
    "testing",
    "registry",
    "Algorithm",
    "Static",
    "SET",
    "RigL",
    "DSTEE",
    "SNFS",
    "MEST",
    "GraNet",
    "SNIP",
    "GraSP",
    "presets",
    "ALGORITHMS",
    "register",
    "make_algorithm",
    "flops",
    "FlopsReport",
    "training_flops_per_step",
    "distributions",
    "schedules",
    "scores",
    "errors",
    "InputError",
    "InputTypeError",
    "InputWarning",
    "ScheduleWarning",
    "__version__",
]
