"""What defines one run: :class:`RunConfig`, plain values that serialise to JSON and are checked
before any data is loaded or a step is taken."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from .. import registry
from ..tickets import phase_split
from .data import DATASETS, dataset_name
from .models import MODELS
from .report import SUP_SUFFIX  # a method named "<name>+sup-tickets" is <name> with Sup-tickets on

__all__ = ["RunConfig", "OPTIMIZERS", "SCHEDULES", "AMP_MODES"]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "multistep", "constant")
AMP_MODES = ("none", "bf16", "fp16")


@dataclass
class RunConfig:
    """Everything that defines one run (plain values, so it serialises to JSON).

    ``method`` is ``"dense"`` or a registered algorithm name, optionally with arguments
    (``"dstee:c=0.01"``); ``algorithm_kwargs`` are passed to the algorithm as well.
    ``batch_size`` is the micro-batch; with ``accumulate = k`` an optimizer step sums the
    gradients of ``k`` micro-batches. ``train_subset`` keeps the first N training examples.
    """

    model: str = "lenet300-100"
    dataset: str = "fashion-mnist"
    method: str = "rigl"
    density: float = 0.1
    distribution: str = "erk"
    epochs: int = 5
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    accumulate: int = 1
    amp: str = "none"
    channels_last: bool = False
    device: str = "cpu"
    augment: Optional[str] = None
    seed: int = 0
    threads: Optional[int] = None
    data_root: Optional[str] = None
    train_subset: Optional[int] = None
    algorithm_kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int = 0
    execution: str = "masked"
    kernels: str = "auto"
    # Sup-tickets (spec §4): the last cycles of the same epoch budget collect tickets
    sup_tickets: bool = False
    cycles: Optional[int] = None
    cycle_epochs: int = 8
    cycle_ratio: float = 0.1
    ticket_lr: tuple[float, float] = (0.001, 0.005)
    ticket_drop: float = 0.5
    ticket_grow: str = "gradient"
    ticket_beta: Optional[float] = None
    name: Optional[str] = None

    @property
    def label(self) -> str:
        """The method's name in tables: ``name`` if given, else ``rigl``, ``rigl+sup-tickets``, ..."""
        if self.name:
            return self.name
        return self.method + SUP_SUFFIX if self.sup_tickets else self.method

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        """Build from a plain dict (a config file, a JSON summary); unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown run setting(s) {unknown}; valid: {', '.join(sorted(names))}")
        v = dict(values)
        for key in ("milestones", "ticket_lr"):
            if key in v and v[key] is not None and not isinstance(v[key], tuple):
                v[key] = tuple(float(x) for x in (v[key].split(",") if isinstance(v[key], str) else v[key]))
        return cls(**v)

    @classmethod
    def from_settings(cls, values: dict[str, Any]) -> "RunConfig":
        """Like :meth:`from_dict`, and a method named ``"<name>+sup-tickets"`` (:data:`SUP_SUFFIX`)
        means ``method=<name>, sup_tickets=True`` (how the command line and grids name such runs)."""
        values = dict(values)
        method = str(values.get("method", "rigl"))
        if method.endswith(SUP_SUFFIX):
            values["method"], values["sup_tickets"] = method[: -len(SUP_SUFFIX)], True
        return cls.from_dict(values)

    def validate(self) -> None:
        """Reject bad values before any data is loaded or a step is taken."""
        def bad(msg):
            raise ValueError(msg)

        if self.model.lower() not in MODELS:
            bad(f"unknown model {self.model!r}; valid: {', '.join(sorted(MODELS))}")
        try:
            dataset_name(self.dataset)
        except ValueError:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid: {', '.join(DATASETS)}") from None
        if self.method != "dense":
            name, _ = registry.parse_method(self.method)
            if name.lower() not in registry.names():
                bad(f"unknown method {name!r}; valid: dense, {', '.join(registry.names())}")
            if not (0.0 < float(self.density) <= 1.0):
                bad(f"density must be in (0, 1] (the fraction of weights kept), got {self.density}")
        for key in ("epochs", "batch_size", "accumulate"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                bad(f"{key} must be a positive integer, got {getattr(self, key)!r}")
        if self.optimizer not in OPTIMIZERS:
            bad(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            bad(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.amp not in AMP_MODES:
            bad(f"unknown amp mode {self.amp!r}; valid: {', '.join(AMP_MODES)}")
        if self.amp == "fp16" and not str(self.device).startswith("cuda"):
            bad("amp='fp16' needs a CUDA device (use amp='bf16' on CPU)")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            bad(f"lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0 or self.momentum < 0 or self.gamma <= 0:
            bad("weight_decay and momentum must be >= 0 and gamma > 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            bad(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            bad(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        if any(not 0 < m < 1 for m in self.milestones):
            bad(f"milestones are fractions of training in (0, 1), got {self.milestones}")
        if self.execution not in ("masked", "sparse", "auto"):
            bad(f"unknown execution {self.execution!r}; valid: masked, sparse, auto")
        if self.kernels not in ("auto", "native", "torch"):
            bad(f"unknown kernels {self.kernels!r}; valid: auto, native, torch")
        if self.execution != "masked" and registry.parse_method(self.method)[0].lower() in ("snip", "grasp"):
            bad("SNIP/GraSP score the mask on dense weights: use execution='masked' with them")
        if self.checkpoint_every < 0:
            bad("checkpoint_every must be >= 0 (0: at the end of each epoch only)")
        if self.sup_tickets:
            if self.method == "dense":
                bad("Sup-tickets superposes sparse tickets: choose a sparse method, not dense")
            phase_split(self.epochs, self.cycle_epochs, self.cycle_ratio, self.cycles)
            if len(self.ticket_lr) != 2:
                bad(f"ticket_lr is (low, high), got {self.ticket_lr}")
