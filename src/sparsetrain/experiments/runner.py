"""One training run, using the library exactly as a user would (three lines added to a loop).

The experiment runner never reaches into the library's internals: it builds a model, an
optimizer and a :class:`sparsetrain.Sparsifier`, trains with an ordinary loop and reads the
public metrics. With an output directory a run writes ``config.json``, ``metrics.jsonl`` (one
line per epoch and per topology update), ``summary.json`` and atomic checkpoints
(``checkpoint_last.pt``, ``checkpoint_best.pt``), and ``resume=True`` continues a killed run
exactly (bit for bit: same batches, same RNG states, same schedule position).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

import sparsetrain as st

from .data import _ALIASES, DATASETS, InMemoryDataset, Loader, load_dataset
from .models import MODELS, build_model

__all__ = ["RunConfig", "run", "evaluate", "RUN_FILES", "RunExistsError"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "sparsetrain.run/1"
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoint_last.pt", "checkpoint_best.pt")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "multistep", "constant")
AMP_MODES = ("none", "bf16", "fp16")
_CIFAR_STYLE = ("resnet", "vgg", "wrn")


class RunExistsError(FileExistsError):
    """The output directory already holds a run and neither resume nor overwrite was asked for."""


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
        return f"{self.method}+sup-tickets" if self.sup_tickets else self.method

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

    def validate(self) -> None:
        """Reject bad values before any data is loaded or a step is taken."""
        def bad(msg):
            raise ValueError(msg)

        if self.model.lower() not in MODELS:
            bad(f"unknown model {self.model!r}; valid: {', '.join(sorted(MODELS))}")
        if str(self.dataset).strip().lower() not in _ALIASES:
            bad(f"unknown dataset {self.dataset!r}; valid: {', '.join(DATASETS)}")
        if self.method != "dense":
            name, kw = st.algorithms.parse_method(self.method)
            if name.lower() not in st.ALGORITHMS and name.lower() not in st.presets.PRESETS:
                bad(f"unknown method {name!r}; valid: dense, {', '.join(sorted(st.ALGORITHMS) + sorted(st.presets.PRESETS))}")
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
        if self.execution != "masked" and st.algorithms.parse_method(self.method)[0].lower() in ("snip", "grasp"):
            bad("SNIP/GraSP score the mask on dense weights: use execution='masked' with them")
        if self.checkpoint_every < 0:
            bad("checkpoint_every must be >= 0 (0: at the end of each epoch only)")
        if self.sup_tickets:
            if self.method == "dense":
                bad("Sup-tickets superposes sparse tickets: choose a sparse method, not dense")
            st.tickets.phase_split(self.epochs, self.cycle_epochs, self.cycle_ratio, self.cycles)
            if len(self.ticket_lr) != 2:
                bad(f"ticket_lr is (low, high), got {self.ticket_lr}")


@torch.no_grad()
def evaluate(model: nn.Module, loader: Loader, device: Optional[torch.device] = None,
             channels_last: bool = False) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` over ``loader``."""
    was = model.training
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    for x, y in loader:
        x, y = _to(x, device, channels_last), y.to(device) if device is not None else y
        out = model(x).float()
        loss_sum += float(nn.functional.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        total += y.numel()
    model.train(was)
    return loss_sum / max(total, 1), correct / max(total, 1)


def _to(x: torch.Tensor, device, channels_last: bool) -> torch.Tensor:
    if device is not None:
        x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if torch.is_tensor(o) else str(o)))


def _build_scheduler(cfg: RunConfig, optimizer, steps: int, steps_per_epoch: int):
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    main = max(steps - warm, 1)
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=main)
    elif cfg.schedule == "multistep":
        marks = sorted({max(1, int(round(m * steps)) - warm) for m in cfg.milestones})
        sched = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=marks, gamma=cfg.gamma)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    if warm:
        ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warm, end_factor=1.0, total_iters=warm)
        sched = torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, sched], milestones=[warm])
    return sched


def _build_optimizer(cfg: RunConfig, model: nn.Module):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


#: Below this layer density the truly sparse Linear path is faster on CPU (measured by
#: benchmarks/truly_sparse.py: 1.4× per training step at 20%, 0.2× at 100%; see docs/sparse.md).
AUTO_BREAK_EVEN = 0.2


def _build_algorithm(cfg: RunConfig, train: Loader, device):
    name, spec_kwargs = st.algorithms.parse_method(cfg.method)
    kwargs = {**cfg.algorithm_kwargs, **spec_kwargs}
    cls = st.ALGORITHMS.get(name.lower())
    if cls is not None and not cls.dynamic:  # a static mask has no schedule
        kwargs.pop("update_interval", None)
    kwargs.setdefault("distribution", cfg.distribution)
    if cls is not None and getattr(cls, "needs_batch", False) and "batch" not in kwargs:
        # scored static masks (SNIP, GraSP): a few training batches, in the run's own order
        train.set_epoch(0)
        it = iter(train)
        kwargs["batch"] = [tuple(t.to(device) for t in next(it)) for _ in range(min(4, len(train)))]
    return st.make_algorithm(name, density=cfg.density, seed=cfg.seed, **kwargs)


def _convert_execution(cfg: RunConfig, model: nn.Module, algorithm) -> list[str]:
    """``execution``: keep Linear layers masked-dense, make them truly sparse, or choose per layer."""
    if cfg.execution == "masked":
        return []
    linears = {f"{n}.weight": m for n, m in model.named_modules() if type(m) is nn.Linear}
    if cfg.execution == "sparse":
        chosen = set(linears)
    else:  # auto: the layers whose target density is below the measured break-even
        prunable = [(f"{n}.weight", m.weight.shape) for n, m in model.named_modules()
                    if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
        dens = st.distributions.layer_densities([n for n, _ in prunable], [s for _, s in prunable],
                                                algorithm.initial_density, algorithm.distribution,
                                                power=algorithm.erk_power)
        chosen = {n for n in linears if dens.get(n, 1.0) < AUTO_BREAK_EVEN}
    if chosen:
        from sparsetrain.sparse import kernels, to_sparse

        kernels.set_backend(cfg.kernels)  # "native" raises here if the kernels cannot be built
        to_sparse(model, include=lambda name, m: f"{name}.weight" in chosen)
    log.info("truly sparse execution for %s", sorted(chosen))
    return sorted(chosen)


def _kernels_used(model: nn.Module) -> Optional[str]:
    """Which kernels the model's SparseLinear layers ran on ("native" or "torch"), or None."""
    from sparsetrain.sparse import SparseLinear, kernels

    layers = [m for m in model.modules() if isinstance(m, SparseLinear)]
    if not layers:
        return None
    return "native" if kernels.use_native(layers[0].values, layers[0].values) else "torch"


def _prepare_out(out: Path, cfg: RunConfig, resume: bool, overwrite: bool) -> Optional[dict]:
    """Create/validate the run directory; returns the checkpoint to resume from, if any."""
    existing = [f for f in RUN_FILES if (out / f).exists()]
    if existing and not (resume or overwrite):
        raise RunExistsError(
            f"{out} already holds a run ({', '.join(existing)}): pass --resume to continue it, "
            "--overwrite to start over, or choose another --out"
        )
    if overwrite and not resume:
        for f in RUN_FILES:
            (out / f).unlink(missing_ok=True)
        existing = []
    out.mkdir(parents=True, exist_ok=True)
    if resume and (out / "config.json").exists():
        saved = json.loads((out / "config.json").read_text())["config"]
        ours = _json_safe(asdict(cfg))
        diff = sorted(k for k in set(saved) | set(ours) if k != "threads" and saved.get(k) != ours.get(k))
        if diff:
            raise ValueError(
                f"cannot resume {out}: its run used different settings for {diff} "
                f"(saved {[saved.get(k) for k in diff]}, now {[ours.get(k) for k in diff]}); "
                "resume with the same settings or use --overwrite"
            )
    if resume and (out / "checkpoint_last.pt").exists():
        ckpt = torch.load(out / "checkpoint_last.pt", weights_only=True, map_location="cpu")
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{out / 'checkpoint_last.pt'} is not a sparsetrain run checkpoint")
        return ckpt
    return None


def _progress(iterable, enabled: bool, **kw):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the progress extra is optional
        return iterable
    return tqdm(iterable, **kw)


def run(cfg: RunConfig, out_dir: Optional[str | os.PathLike] = None, *, resume: bool = False,
        overwrite: bool = False, progress: bool = False, tensorboard: bool = False,
        on_epoch: Optional[Callable[[dict[str, Any]], None]] = None) -> dict[str, Any]:
    """Train one configuration and return its summary (accuracy, density, R_s, FLOPs, time).

    With ``out_dir`` the run writes its files there (see the module docstring); an existing run
    there is an error unless ``resume`` (continue it exactly; a finished run returns its summary)
    or ``overwrite`` (start over).
    """
    cfg.validate()
    dist = torch.distributed
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    if world > 1 and cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} (the global batch) must be divisible by the {world} processes")
    out = Path(out_dir) if out_dir is not None else None
    ckpt = None
    if out is not None:
        if resume and (out / "summary.json").exists():
            return json.loads((out / "summary.json").read_text())
        if rank == 0:  # one process owns the run directory; the others read the checkpoint
            ckpt = _prepare_out(out, cfg, resume, overwrite)
        if world > 1:
            dist.barrier()
            if rank != 0 and resume and (out / "checkpoint_last.pt").exists():
                ckpt = torch.load(out / "checkpoint_last.pt", weights_only=True, map_location="cpu")
        if rank != 0:
            out = None  # only rank 0 writes files
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)

    train_set, test_set, info = load_dataset(cfg.dataset, root=cfg.data_root)
    if cfg.train_subset:
        n = int(cfg.train_subset)
        train_set = InMemoryDataset(train_set.x[:n], train_set.y[:n], train_set.mean, train_set.std, train_set.name)
    image = info["image_size"]
    pad_to = 32 if cfg.model.lower().startswith(_CIFAR_STYLE) and image < 32 else None
    augment = cfg.augment
    if augment is None:
        augment = "crop-flip" if info["name"].startswith("cifar") else "none"
    train = Loader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed, augment=augment, pad_to=pad_to)
    test = Loader(test_set, 1000, shuffle=False, seed=cfg.seed, pad_to=pad_to)
    model = build_model(cfg.model, info["in_channels"], info["num_classes"], pad_to or image).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    algorithm = None
    if cfg.method != "dense":
        algorithm = _build_algorithm(cfg, train, device)
        _convert_execution(cfg, model, algorithm)
    optimizer = _build_optimizer(cfg, model)
    micro = len(train)
    steps_per_epoch = -(-micro // cfg.accumulate)
    total_steps = steps_per_epoch * cfg.epochs
    base_steps = total_steps
    if cfg.sup_tickets:
        pre_epochs, _, _ = st.tickets.phase_split(cfg.epochs, cfg.cycle_epochs, cfg.cycle_ratio, cfg.cycles)
        base_steps = steps_per_epoch * pre_epochs  # the base method is a complete run of E_pre epochs
    scheduler = _build_scheduler(cfg, optimizer, base_steps, steps_per_epoch)

    sparsifier = None
    tickets = None
    if algorithm is not None:
        sparsifier = st.Sparsifier(model, optimizer, algorithm, total_steps=base_steps)
        if cfg.sup_tickets:
            tickets = st.SupTickets(
                sparsifier, cfg.epochs, steps_per_epoch, cycle_epochs=cfg.cycle_epochs, ratio=cfg.cycle_ratio,
                cycles=cfg.cycles, lr_low=cfg.ticket_lr[0], lr_high=cfg.ticket_lr[1], drop_fraction=cfg.ticket_drop,
                grow=cfg.ticket_grow, beta=cfg.ticket_beta,
            )
            scheduler = tickets.lr_scheduler(scheduler)
    # DDP (launched by torchrun / `sparsetrain train --nproc N`): each rank takes every world-th
    # example of the same global batch; gradients are averaged by DDP, the sparsifier averages
    # its dense gradients and checks that all ranks chose the same masks
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if cfg.amp == "bf16" else (
        (lambda: torch.autocast(device.type, dtype=torch.float16)) if cfg.amp == "fp16" else contextlib.nullcontext)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    # ---- state that a checkpoint carries
    epoch, batch, step = 0, 0, 0
    loss_sum, seen = 0.0, 0
    curve: list[dict[str, Any]] = []
    best_acc = -1.0
    metric_lines = 0
    wall_before = 0.0
    logged_updates = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if sparsifier is not None:
            sparsifier.load_state_dict(ckpt["sparsifier"])
            logged_updates = len(sparsifier.history)
        if tickets is not None:
            tickets.load_state_dict(ckpt["tickets"])
        torch.set_rng_state(ckpt["rng"])
        epoch, batch, step = int(ckpt["epoch"]), int(ckpt["batch"]), int(ckpt["step"])
        loss_sum, seen = float(ckpt["loss_sum"]), int(ckpt["seen"])
        curve = [dict(r) for r in ckpt["curve"]]
        best_acc = float(ckpt["best_acc"])
        metric_lines = int(ckpt["metric_lines"])
        wall_before = float(ckpt["wall"])
        log.info("resuming %s at epoch %d, batch %d (step %d)", out, epoch, batch, step)

    metrics_f = None
    writer = None
    if out is not None:
        if ckpt is None:
            meta = {"config": _json_safe(asdict(cfg)), "label": cfg.label, "sparsetrain": st.__version__,
                    "torch": torch.__version__, "machine": platform.machine(), "python": platform.python_version(),
                    "steps_per_epoch": steps_per_epoch, "total_steps": total_steps}
            _atomic_write_text(json.dumps(meta, indent=1), out / "config.json")
        path = out / "metrics.jsonl"
        lines = path.read_text().splitlines(keepends=True)[:metric_lines] if path.exists() else []
        _atomic_write_text("".join(lines), path)  # drop lines written after the checkpoint
        metrics_f = open(path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard") from e
            writer = SummaryWriter(str(out / "tensorboard"))

    def emit(record: dict[str, Any]) -> None:
        nonlocal metric_lines
        if metrics_f is not None:
            metrics_f.write(json.dumps(_json_safe(record)) + "\n")
            metrics_f.flush()
            metric_lines += 1
        if writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    writer.add_scalar(f"{record['type']}/{k}", v, record.get("step", 0))

    def save() -> None:
        if out is None:
            return
        state = {
            "format": CHECKPOINT_FORMAT, "config": _json_safe(asdict(cfg)),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "sparsifier": sparsifier.state_dict() if sparsifier is not None else None,
            "tickets": tickets.state_dict() if tickets is not None else None,
            "rng": torch.get_rng_state(), "epoch": epoch, "batch": batch, "step": step,
            "loss_sum": loss_sum, "seen": seen, "curve": curve, "best_acc": best_acc,
            "metric_lines": metric_lines, "wall": wall_before + time.perf_counter() - start,
        }
        _atomic_save(state, out / "checkpoint_last.pt")

    def log_updates() -> None:
        nonlocal logged_updates
        if sparsifier is None:
            return
        for rec in sparsifier.history[logged_updates:]:
            emit({"type": "update", **{k: v for k, v in rec.items() if k != "layers"}})
        logged_updates = len(sparsifier.history)

    start = time.perf_counter()
    model.train()
    progress = progress and rank == 0
    epochs_bar = _progress(range(epoch, cfg.epochs), progress, desc=cfg.label, initial=epoch, total=cfg.epochs)
    try:
        for epoch in epochs_bar:
            train.set_epoch(epoch, batch)
            model.train()
            group_start = batch
            batches = _progress(train, progress, desc=f"epoch {epoch + 1}", leave=False, total=micro, initial=batch)
            for i, (x, y) in enumerate(batches, start=batch):
                if world > 1:
                    x, y = x[rank::world], y[rank::world]
                x, y = _to(x, device, cfg.channels_last), y.to(device)
                group = min(cfg.accumulate, micro - group_start)
                with autocast():
                    loss = criterion(net(x).float(), y)
                (scaler.scale(loss / group) if scaler is not None else loss / group).backward()
                loss_sum += loss.item() * y.numel()
                seen += y.numel()
                if i + 1 - group_start < group:
                    continue
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                group_start = i + 1
                log_updates()
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and i + 1 < micro:
                    batch = i + 1
                    save()
            batch = 0
            test_loss, test_acc = evaluate(model, test, device, cfg.channels_last)
            record = {"type": "epoch", "epoch": epoch + 1, "step": step, "train_loss": loss_sum / max(seen, 1),
                      "test_loss": test_loss, "test_acc": test_acc, "lr": optimizer.param_groups[0]["lr"]}
            if sparsifier is not None:
                record.update(itop_rate=sparsifier.itop_rate, density=sparsifier.density)
            if tickets is not None:
                cycle = tickets.epoch_end(recalibrate=((_to(a, device, cfg.channels_last), b) for a, b in train),
                                          evaluate=lambda m: evaluate(m, test, device, cfg.channels_last)[1])
                if cycle is not None:
                    record.update(ticket_acc=cycle["ticket_acc"], sup_acc=cycle["sup_acc"])
            loss_sum, seen = 0.0, 0
            curve.append({k: v for k, v in record.items() if k != "type"})
            emit(record)
            if hasattr(epochs_bar, "set_postfix"):
                epochs_bar.set_postfix(acc=f"{100 * test_acc:.2f}%")
            log.info("%s epoch %d: %s", cfg.label, epoch + 1, record)
            if on_epoch is not None:
                on_epoch(record)
            best = test_acc > best_acc
            best_acc = max(best_acc, test_acc)
            epoch += 1
            if out is not None and best:
                _atomic_save({"format": "sparsetrain.model/1", "epoch": epoch, "test_acc": test_acc,
                              "model": model.state_dict(),
                              "masks": sparsifier.masks if sparsifier is not None else None},
                             out / "checkpoint_best.pt")
            save()
    finally:
        if metrics_f is not None:
            metrics_f.close()
        if writer is not None:
            writer.close()
    wall = wall_before + time.perf_counter() - start
    result = _summarise(cfg, model, test, device, sparsifier, tickets, curve, wall, total_steps)
    if out is not None:
        _atomic_write_text(json.dumps(_json_safe(result), indent=1), out / "summary.json")
    return result


def _summarise(cfg, model, test, device, sparsifier, tickets, curve, wall, total_steps) -> dict[str, Any]:
    x0, _ = next(iter(test))
    x0 = _to(x0[:1], device, cfg.channels_last)
    masks = sparsifier.masks if sparsifier is not None else None
    report = st.flops(model, x0, masks=masks)
    final_loss, final_acc = curve[-1]["test_loss"], curve[-1]["test_acc"]
    extra: dict[str, Any] = {}
    if tickets is not None:
        # the method's output is the superposed model; the live model and the ensemble are reported beside it
        final_loss, final_acc = evaluate(tickets.model, test, device, cfg.channels_last)
        _, ens_acc = evaluate(tickets.ensemble(), test, device, cfg.channels_last)
        extra = {
            "live_test_acc": curve[-1]["test_acc"],
            "ensemble_test_acc": ens_acc,
            "tickets": tickets.history,
            # the output's per-layer densities (global pruning of the average moves them)
            "layer_density": {n: float(m.float().mean()) for n, m in tickets.masks.items()},
            "live_layer_density": sparsifier.metrics()["layer_density"],
            "sup_density": sum(int(m.sum()) for m in tickets.masks.values())
            / sum(m.numel() for m in tickets.masks.values()),
        }
    result: dict[str, Any] = {
        "config": asdict(cfg),
        "label": cfg.label,
        "test_acc": final_acc,
        "best_test_acc": max(r["test_acc"] for r in curve),
        "test_loss": final_loss,
        "curve": curve,
        "wall_time_s": wall,
        "steps": total_steps,
        "inference_flops_fraction": report.fraction,
        "dense_flops_per_example": report.dense,
        "versions": {"sparsetrain": st.__version__, "torch": torch.__version__},
        "sparse_kernels": _kernels_used(model),
    }
    if sparsifier is None:
        result.update(density=1.0, itop_rate=1.0, train_flops_fraction=1.0, updates=0, layer_density={},
                      update_history=[])
    else:
        m = sparsifier.metrics()
        result.update(
            density=m["density"],
            itop_rate=m["itop_rate"],
            updates=m["updates"],
            layer_density=m["layer_density"],
            train_flops_fraction=sparsifier.training_flops(report)["fraction"],
            update_history=[{k: h[k] for k in ("step", "turnover", "itop_rate", "exploration", "exploitation",
                                               "drop_fraction", "density") if k in h}
                            for h in sparsifier.history],
        )
    result.update(extra)
    return result
