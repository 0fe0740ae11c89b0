"""What defines one run: :class:`RunConfig`, plain values that serialise to JSON and are checked
before any data is loaded or a step is taken."""

from __future__ import annotations

import inspect
import math
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from .. import registry
from ..errors import InputError
from ..tickets import phase_split
from .data import DATASETS, dataset_name
from .models import MODELS
from .paired import SUP_SUFFIX  # a method named "<name>+sup-tickets" is <name> with Sup-tickets on

__all__ = ["RunConfig", "OPTIMIZERS", "SCHEDULES", "AMP_MODES", "AUGMENTS", "accepted_kwargs"]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "multistep", "constant")
AMP_MODES = ("none", "bf16", "fp16")
AUGMENTS = ("none", "crop-flip", "crop", "flip")


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
            raise InputError(f"unknown run setting(s) {unknown}; valid: {', '.join(sorted(names))}")
        v = dict(values)
        for key in ("milestones", "ticket_lr"):
            if key in v and v[key] is not None and not isinstance(v[key], tuple):
                try:
                    v[key] = tuple(float(x) for x in (v[key].split(",") if isinstance(v[key], str) else v[key]))
                except (TypeError, ValueError):
                    raise InputError(f"--{key.replace('_', '-')} takes comma-separated numbers (a list in a config "
                                     f"file), e.g. 0.5,0.75, got {v[key]!r}") from None
        if not isinstance(v.get("algorithm_kwargs", {}), dict):
            raise InputError(f"algorithm hyper-parameters are a table of key = value, got {v['algorithm_kwargs']!r}")
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
        """Reject bad values before any data is loaded or a step is taken: every problem is an
        :class:`~sparsetrain.errors.InputError` naming the setting (as a flag: ``--batch-size``) and the fix."""
        def bad(msg):
            raise InputError(msg)

        def flag(key):  # the field's name and its command-line flag
            return f"--{key}" if "_" not in key else f"{key} (--{key.replace('_', '-')})"

        def whole(key, low, none_ok=False):
            v = getattr(self, key)
            if v is None and none_ok:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                bad(f"{flag(key)} must be an integer >= {low}{' (or left out)' if none_ok else ''}, got {v!r}")

        def number(key, lo, hi, lo_open=False, hi_open=False, hint=""):
            v = getattr(self, key)
            ok = (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
                  and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi))
            if not ok:
                rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
                bad(f"{flag(key)} must be a number in {rng}{hint}, got {v!r}")

        for key in ("model", "dataset", "method", "distribution", "optimizer", "schedule", "amp", "device",
                    "execution", "kernels", "ticket_grow"):
            if not isinstance(getattr(self, key), str):
                bad(f"{flag(key)} must be a name (a string), got {getattr(self, key)!r}")
        if self.model.lower() not in MODELS:
            bad(f"unknown model {self.model!r}; valid: {', '.join(sorted(MODELS))}")
        try:
            dataset_name(self.dataset)
        except ValueError:
            raise InputError(f"unknown dataset {self.dataset!r}; valid: {', '.join(DATASETS)}") from None
        if self.method != "dense":
            name, _ = registry.parse_method(self.method)
            if name.lower() not in registry.names():
                bad(f"unknown method {name!r}{registry._near(name.lower(), ['dense', *registry.names()])}; valid: dense, "
                    f"{', '.join(registry.names())}")
            number("density", 0.0, 1.0, lo_open=True, hint=" (the fraction of weights kept: 0.05 = 95% sparsity)")
        if self.distribution not in ("erk", "er", "uniform"):
            bad(f"unknown distribution {self.distribution!r}; valid: erk, er, uniform")
        for key in ("epochs", "batch_size", "accumulate", "cycle_epochs"):
            whole(key, 1)
        whole("seed", 0)
        whole("checkpoint_every", 0)
        for key in ("threads", "train_subset", "cycles"):
            whole(key, 1, none_ok=True)
        for key in ("nesterov", "channels_last", "sup_tickets"):
            if not isinstance(getattr(self, key), bool):
                bad(f"{flag(key)} must be true or false, got {getattr(self, key)!r}")
        if self.optimizer not in OPTIMIZERS:
            bad(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            bad(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.amp not in AMP_MODES:
            bad(f"unknown amp mode {self.amp!r}; valid: {', '.join(AMP_MODES)}")
        self._check_device()
        if self.amp == "fp16" and not self.device.startswith("cuda"):
            bad("--amp fp16 needs a CUDA device (use --amp bf16 on CPU)")
        number("lr", 0.0, math.inf, lo_open=True, hi_open=True, hint=" (the initial learning rate)")
        number("momentum", 0.0, 1.0, hi_open=True, hint=" (0.9 is usual; >= 1 diverges)")
        number("weight_decay", 0.0, math.inf, hi_open=True)
        number("gamma", 0.0, math.inf, lo_open=True, hi_open=True, hint=" (the multistep lr factor, e.g. 0.1)")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            bad("--nesterov needs --optimizer sgd with a --momentum > 0")
        number("label_smoothing", 0.0, 1.0, hi_open=True)
        number("warmup_epochs", 0.0, self.epochs, hi_open=True, hint=" (at most --epochs)")
        if any(isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m < 1 for m in self.milestones):
            bad(f"--milestones are fractions of training in (0, 1), e.g. 0.5,0.75, got {self.milestones}")
        if self.augment is not None and self.augment not in AUGMENTS:
            bad(f"unknown augment {self.augment!r}; valid: {', '.join(AUGMENTS)}")
        if self.data_root is not None and not os.path.isdir(str(self.data_root)):
            bad(f"--data-root {self.data_root} is not a directory: point it at the directory holding the "
                f"{self.dataset} files, or leave it out to search the default places")
        if self.execution not in ("masked", "sparse", "auto"):
            bad(f"unknown execution {self.execution!r}; valid: masked, sparse, auto")
        if self.kernels not in ("auto", "native", "torch"):
            bad(f"unknown kernels {self.kernels!r}; valid: auto, native, torch")
        if self.execution != "masked" and registry.parse_method(self.method)[0].lower() in ("snip", "grasp"):
            bad("SNIP/GraSP score the mask on dense weights: use --execution masked with them")
        if self.name is not None and not isinstance(self.name, str):
            bad(f"--name must be a string, got {self.name!r}")
        number("cycle_ratio", 0.0, 1.0, lo_open=True, hi_open=True)
        number("ticket_drop", 0.0, 1.0)
        if self.ticket_grow not in ("gradient", "random", "algorithm"):
            bad(f"unknown --ticket-grow {self.ticket_grow!r}; valid: gradient, random, algorithm")
        if self.ticket_beta is not None:
            number("ticket_beta", 0.0, 1.0, lo_open=True, hi_open=True, hint=" (or left out: cumulative average)")
        if len(self.ticket_lr) != 2 or not 0 < self.ticket_lr[0] <= self.ticket_lr[1] or \
                not all(math.isfinite(v) for v in self.ticket_lr):
            bad(f"--ticket-lr is low,high with 0 < low <= high, e.g. 0.001,0.005, got {self.ticket_lr}")
        if self.sup_tickets:
            if self.method == "dense":
                bad("Sup-tickets superposes sparse tickets: choose a sparse method, not dense")
            try:
                phase_split(self.epochs, self.cycle_epochs, self.cycle_ratio, self.cycles)
            except ValueError as e:
                raise InputError(f"{e} (settings --epochs, --cycles, --cycle-epochs, --cycle-ratio)") from None
        if self.method != "dense":
            self.check_algorithm()

    def _check_device(self) -> None:
        import torch

        try:
            dev = torch.device(self.device)
        except (RuntimeError, ValueError):
            raise InputError(f"--device {self.device!r} is not a torch device; use cpu, cuda, cuda:1, mps, ...") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise InputError(f"--device {self.device}: CUDA is not available here (torch {torch.__version__} "
                                 "built without CUDA, or no GPU visible); use --device cpu")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise InputError(f"--device {self.device}: only {torch.cuda.device_count()} CUDA device(s) here; "
                                 "use cuda:0 .. cuda:N-1")
        elif dev.type == "mps" and not torch.backends.mps.is_available():
            raise InputError(f"--device {self.device}: MPS is not available here; use --device cpu")

    def algorithm_kwargs_all(self) -> dict[str, Any]:
        """The algorithm's hyper-parameters: ``algorithm_kwargs`` with the method spec's (``rigl:end=0.5``) on top."""
        return {**self.algorithm_kwargs, **registry.parse_method(self.method)[1]}

    def check_algorithm(self) -> Any:
        """Build the algorithm once without data (a dummy batch for SNIP/GraSP) so that an unknown or
        bad hyper-parameter is an :class:`~sparsetrain.errors.InputError` before the run; returns it."""
        import torch

        name = registry.parse_method(self.method)[0]
        kwargs = self.algorithm_kwargs_all()
        cls = registry.ALGORITHMS.get(name.lower())
        if cls is not None and not cls.dynamic:
            kwargs.pop("update_interval", None)  # as the runner does: a static mask has no schedule
        kwargs.setdefault("distribution", self.distribution)
        if cls is not None and getattr(cls, "needs_batch", False) and "batch" not in kwargs:
            kwargs["batch"] = (torch.zeros(1, 1), torch.zeros(1, dtype=torch.long))
        where = "given by --hp, an [algorithm] table, --grid or the method spec"
        try:
            return registry.make_algorithm(name, density=self.density, seed=self.seed, **kwargs)
        except TypeError as e:
            m = re.search(r"unexpected keyword argument '(\w+)'", str(e))
            if m:
                valid = ", ".join(sorted(accepted_kwargs(registry.lookup(name)) - {"density", "batch"}))
                raise InputError(f"unknown hyper-parameter {m.group(1)!r} for method {name!r} ({where}); "
                                 f"valid: {valid}") from None
            raise InputError(f"method {self.method!r}: {e} ({where})") from None
        except ValueError as e:
            raise InputError(f"method {self.method!r}: {e} ({where})") from None

    def base_steps(self, n_train: int) -> int:
        """The optimizer steps the sparsifier's schedules span for a training set of ``n_train``
        examples (with Sup-tickets: the base phase before the cycles)."""
        n = min(n_train, self.train_subset) if self.train_subset else n_train
        per_epoch = -(-(-(-n // self.batch_size)) // self.accumulate)
        epochs = phase_split(self.epochs, self.cycle_epochs, self.cycle_ratio, self.cycles)[0] \
            if self.sup_tickets else self.epochs
        return per_epoch * epochs

    def check_schedule(self, n_train: int) -> None:
        """Warn (:class:`~sparsetrain.errors.ScheduleWarning`) if no topology update fits in the run;
        the command line turns the warning into an error."""
        if self.method != "dense":
            self.check_algorithm().check_total_steps(self.base_steps(n_train))

    def ignored(self, given: Any) -> list[str]:
        """Why each setting in ``given`` (the names a user typed) has no effect in this run, one sentence each."""
        given = set(given)
        out = []

        def note(keys, why):
            typed = [k for k in keys if k in given]
            if typed:
                flags = ", ".join("--hp" if k == "algorithm_kwargs" else "--" + k.replace("_", "-") for k in typed)
                out.append(f"{flags} {'has' if len(typed) == 1 else 'have'} "
                           f"no effect {why}")

        if self.method == "dense":
            note(["density", "distribution", "algorithm_kwargs", "execution"], "with --method dense (nothing is sparse)")
        if self.optimizer != "sgd":
            note(["momentum", "nesterov"], f"with --optimizer {self.optimizer} (SGD only)")
        if self.schedule != "multistep":
            note(["milestones", "gamma"], f"with --schedule {self.schedule} (multistep only)")
        if self.execution == "masked":
            note(["kernels"], "with --execution masked (no truly sparse layers)")
        if not self.sup_tickets:
            note(["cycles", "cycle_epochs", "cycle_ratio", "ticket_lr", "ticket_drop", "ticket_grow", "ticket_beta"],
                 "without --sup-tickets")
        elif self.cycles is not None:
            note(["cycle_ratio"], "when --cycles is given")
        if self.data_root is not None and dataset_name(self.dataset) in ("synthetic", "digits"):
            note(["data_root"], f"with --dataset {self.dataset} (it reads no files)")
        if self.method != "dense":
            cls = registry.ALGORITHMS.get(registry.parse_method(self.method)[0].lower())
            if cls is not None and not cls.dynamic and "update_interval" in self.algorithm_kwargs_all():
                out.append(f"update_interval has no effect with --method {self.method} (a static mask has no schedule)")
        return out


def accepted_kwargs(factory: Any) -> set[str]:
    """The keyword arguments a class or factory accepts, following ``**kwargs`` up the base classes."""
    names: set[str] = set()
    chain = factory.__mro__ if isinstance(factory, type) else (factory,)
    for c in chain:
        fn = c.__init__ if isinstance(factory, type) else c
        if isinstance(factory, type) and "__init__" not in vars(c):
            continue
        params = inspect.signature(fn).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    if not isinstance(factory, type):  # a preset: its own arguments and those of the class it builds
        ret = inspect.signature(factory).return_annotation
        cls = registry.ALGORITHMS.get(getattr(ret, "name", str(ret)).lower()) if ret is not inspect.Signature.empty \
            else None
        if cls is not None:
            names |= accepted_kwargs(cls)
    return names
