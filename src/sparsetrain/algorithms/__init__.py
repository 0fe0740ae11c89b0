"""Sparse-training algorithms (``st.RigL(...)``); by name through :mod:`sparsetrain.registry` (``algorithm="rigl"``)."""

from __future__ import annotations

from ..registry import ALGORITHMS, make_algorithm, parse_method, register
from .base import Algorithm, UpdateContext
from .dstee import DSTEE
from .global_ranking import GlobalDSTEE, GlobalRigL, GlobalSET
from .granet import GraNet
from .mest import MEST
from .snfs import SNFS
from .snip import SNIP, GraSP
from .rigl import RigL
from .set import SET
from .static import Static

__all__ = ["Algorithm", "UpdateContext", "Static", "SET", "RigL", "DSTEE", "SNFS", "MEST", "GraNet", "SNIP", "GraSP",
    "GlobalRigL", "GlobalSET", "GlobalDSTEE", "ALGORITHMS", "register", "make_algorithm", "parse_method"]

for _cls in (Static, SET, RigL, DSTEE, SNFS, MEST, GraNet, SNIP, GraSP):
    register(_cls)
