"""One training run, using the library exactly as a user would (three lines added to a loop).

The experiment runner never reaches into the library's internals: it builds a model, an
optimizer and a :class:`sparsetrain.Sparsifier`, trains with an ordinary loop and reads the
public metrics. With an output directory (:class:`~sparsetrain.experiments.rundir.RunDirectory`)
a run writes ``config.json``, ``metrics.jsonl`` (one line per epoch and per topology update),
``summary.json`` and atomic checkpoints (``checkpoint_last.pt``, ``checkpoint_best.pt``), and
``resume=True`` continues a killed run exactly (bit for bit: same batches, same RNG states, same
schedule position).

:func:`run` is the entry point; :class:`Trainer` is the loop, its position in the run held in
a :class:`TrainState`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

import sparsetrain as st

from .build import (
    build_algorithm, build_loaders, build_optimizer, build_scheduler, convert_execution, kernels_used,
    kernel_choices,
)
from .config import RunConfig
from .loader import Loader
from .models import build_model
from .report import loaded_commit
from .rundir import RUN_FILES, RunDirectory, RunExistsError, json_safe
from ..sparse.kernels import cpu_model

__all__ = ["RunConfig", "run", "evaluate", "lm_metrics", "RUN_FILES", "RunExistsError", "Trainer", "TrainState"]

log = logging.getLogger(__name__)
loaded_commit()  # the commit of the code this process loads now, recorded in every run's summary


@torch.no_grad()
def evaluate(model: nn.Module, loader: Loader, device: Optional[torch.device] = None,
             channels_last: bool = False) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` over ``loader`` (for a language model's
    ``(B, T, V)`` logits: per token, and next-token accuracy)."""
    was = model.training
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    for x, y in loader:
        x, y = _to(x, device, channels_last), y.to(device) if device is not None else y
        out, y = _flat(model(x).float(), y)
        loss_sum += float(nn.functional.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        total += y.numel()
    model.train(was)
    return loss_sum / max(total, 1), correct / max(total, 1)


def _flat(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(B, T, V)`` and targets ``(B, T)`` of a language model as ``(B·T, V)`` and ``(B·T,)``."""
    if out.dim() == 3:
        return out.reshape(-1, out.shape[-1]), y.reshape(-1)
    return out, y


def lm_metrics(loss: float) -> dict[str, float]:
    """Bits per byte and perplexity of a byte-level language model from its mean loss per token (nats)."""
    return {"bpb": loss / math.log(2), "ppl": math.exp(min(loss, 700.0))}


def _to(x: torch.Tensor, device, channels_last: bool) -> torch.Tensor:
    if device is not None:
        x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _progress(iterable, enabled: bool, **kw):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the progress extra is optional
        return iterable
    return tqdm(iterable, **kw)


@dataclass
class TrainState:
    """Where a run stands, beside the model/optimizer/scheduler/sparsifier states: what a
    checkpoint carries so that a resumed run continues exactly."""

    epoch: int = 0  #: the epoch being trained (0-based)
    batch: int = 0  #: micro-batches of that epoch already trained
    step: int = 0  #: optimizer steps taken
    loss_sum: float = 0.0  #: training loss summed over this epoch's examples so far
    seen: int = 0  #: this epoch's examples so far
    curve: list[dict[str, Any]] = field(default_factory=list)  #: one record per finished epoch
    best_acc: float = -1.0  #: best test accuracy so far
    wall: float = 0.0  #: seconds trained before this process started


class Trainer:
    """The training loop of one run: builds everything from the config, then :meth:`fit`.

    Construction seeds torch's generator with ``cfg.seed`` and draws the random numbers of a run
    in a fixed order (data, model init, mask). ``out`` (rank 0 only) receives the metrics lines and
    checkpoints; ``world``/``rank`` describe a DistributedDataParallel run.
    """

    def __init__(self, cfg: RunConfig, out: Optional[RunDirectory] = None, *, world: int = 1, rank: int = 0):
        self.cfg, self.out, self.world, self.rank = cfg, out, world, rank
        torch.manual_seed(cfg.seed)
        self.device = device = torch.device(cfg.device)
        self.train, self.test, info, pad_to = build_loaders(cfg)
        self.language_model = info.get("kind") == "text"  # (B, T, V) outputs: bits per byte, perplexity
        self.model = build_model(cfg.model, info["in_channels"], info["num_classes"],
                                 pad_to or info["image_size"]).to(device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        algorithm = None
        if cfg.method != "dense":
            algorithm = build_algorithm(cfg, self.train, device)
            convert_execution(cfg, self.model, algorithm)
        self.optimizer = build_optimizer(cfg, self.model)
        self.micro = len(self.train)  # micro-batches per epoch
        self.steps_per_epoch = -(-self.micro // cfg.accumulate)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        base_steps = self.total_steps
        if cfg.sup_tickets:
            pre_epochs, _, _ = st.tickets.phase_split(cfg.epochs, cfg.cycle_epochs, cfg.cycle_ratio, cfg.cycles)
            base_steps = self.steps_per_epoch * pre_epochs  # the base method is a complete run of E_pre epochs
        self.sparsifier: Optional[st.Sparsifier] = None
        self.tickets: Optional[st.SupTickets] = None
        if algorithm is not None:
            self.sparsifier = st.Sparsifier(self.model, self.optimizer, algorithm, total_steps=base_steps)
            if cfg.sup_tickets:
                self.tickets = st.SupTickets(
                    self.sparsifier, cfg.epochs, self.steps_per_epoch, cycle_epochs=cfg.cycle_epochs,
                    ratio=cfg.cycle_ratio, cycles=cfg.cycles, lr_low=cfg.ticket_lr[0], lr_high=cfg.ticket_lr[1],
                    drop_fraction=cfg.ticket_drop, grow=cfg.ticket_grow, beta=cfg.ticket_beta,
                )
        # the base schedule (warm-up included), then Sup-tickets' cycles if any: one flat SequentialLR
        self.scheduler = build_scheduler(cfg, self.optimizer, base_steps, self.steps_per_epoch,
                                         then=(lambda _opt, tk=self.tickets: tk.cycle_scheduler())
                                         if self.tickets is not None else None)
        # DDP (launched by torchrun / `sparsetrain train --nproc N`): each rank takes every world-th
        # example of the same global batch; gradients are averaged by DDP, the sparsifier averages
        # its dense gradients and checks that all ranks chose the same masks
        self.net: nn.Module = self.model
        if world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.state = TrainState()
        self.logged_updates = 0  # sparsifier.history records already written to the metrics log
        self._start = time.perf_counter()

    # ------------------------------------------------------------------ checkpoints

    def load_checkpoint(self, ckpt: dict[str, Any], extend: bool = False) -> None:
        """Continue from a checkpoint written by :meth:`save_checkpoint` (of the same config; with
        ``extend``, of a shorter run: the learning-rate and sparsifier schedules are those of this
        run's length, taken up at the checkpoint's step)."""
        self.model.load_state_dict(ckpt["model"])
        fresh_lrs = [g["lr"] for g in self.optimizer.param_groups]  # the new schedule's, at step 0
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if extend:
            for g, lr in zip(self.optimizer.param_groups, fresh_lrs):
                g["lr"] = lr
            with warnings.catch_warnings():  # stepping a scheduler without optimizer steps, on purpose
                warnings.simplefilter("ignore")
                for _ in range(int(ckpt["step"])):
                    self.scheduler.step()
        else:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.sparsifier is not None:
            with warnings.catch_warnings():
                if extend:  # the new total_steps is the point of extending
                    warnings.simplefilter("ignore", st.InputWarning)
                self.sparsifier.load_state_dict(ckpt["sparsifier"])
            self.logged_updates = len(self.sparsifier.history)
        if self.tickets is not None:
            self.tickets.load_state_dict(ckpt["tickets"])
        torch.set_rng_state(ckpt["rng"])
        self.state = TrainState(
            epoch=int(ckpt["epoch"]), batch=int(ckpt["batch"]), step=int(ckpt["step"]),
            loss_sum=float(ckpt["loss_sum"]), seen=int(ckpt["seen"]), curve=[dict(r) for r in ckpt["curve"]],
            best_acc=float(ckpt["best_acc"]), wall=float(ckpt["wall"]),
        )

    def wall_time(self) -> float:
        """Seconds of training so far, across resumes."""
        return self.state.wall + time.perf_counter() - self._start

    def save_checkpoint(self) -> None:
        """Write the whole training state to the run directory (nothing without one)."""
        if self.out is None:
            return
        s = self.state
        self.out.save_checkpoint({
            "config": json_safe(asdict(self.cfg)),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "sparsifier": self.sparsifier.state_dict() if self.sparsifier is not None else None,
            "tickets": self.tickets.state_dict() if self.tickets is not None else None,
            "rng": torch.get_rng_state(), "epoch": s.epoch, "batch": s.batch, "step": s.step,
            "loss_sum": s.loss_sum, "seen": s.seen, "curve": s.curve, "best_acc": s.best_acc,
            "wall": self.wall_time(),
        })

    # ------------------------------------------------------------------ the loop

    def fit(self, progress: bool = False, on_epoch: Optional[Callable[[dict[str, Any]], None]] = None) -> None:
        """Train from the current state to the last epoch, checkpointing into the run directory."""
        cfg = self.cfg
        self._start = time.perf_counter()
        self.model.train()
        progress = progress and self.rank == 0
        epochs = _progress(range(self.state.epoch, cfg.epochs), progress, desc=cfg.label, initial=self.state.epoch,
                           total=cfg.epochs)
        for epoch in epochs:
            self.state.epoch = epoch
            self._train_epoch(progress)
            record = self._end_epoch()
            if hasattr(epochs, "set_postfix"):
                epochs.set_postfix(acc=f"{100 * record['test_acc']:.2f}%")
            log.info("%s epoch %d: %s", cfg.label, epoch + 1, record)
            if on_epoch is not None:
                on_epoch(record)
            self._keep_best(record["test_acc"])
            self.save_checkpoint()

    def _train_epoch(self, progress: bool) -> None:
        """The micro-batches of ``state.epoch`` from ``state.batch`` on, one optimizer step per group."""
        cfg, s = self.cfg, self.state
        self.train.set_epoch(s.epoch, s.batch)
        self.model.train()
        group_start = s.batch
        batches = _progress(self.train, progress, desc=f"epoch {s.epoch + 1}", leave=False, total=self.micro,
                            initial=s.batch)
        for i, (x, y) in enumerate(batches, start=s.batch):
            if self.world > 1:
                x, y = x[self.rank::self.world], y[self.rank::self.world]
            x, y = _to(x, self.device, cfg.channels_last), y.to(self.device)
            group = min(cfg.accumulate, self.micro - group_start)
            with self._autocast():
                loss = self.criterion(*_flat(self.net(x).float(), y))
            (self.scaler.scale(loss / group) if self.scaler is not None else loss / group).backward()
            s.loss_sum += loss.item() * y.numel()
            s.seen += y.numel()
            if i + 1 - group_start < group:
                continue
            self._step()
            group_start = i + 1
            if cfg.checkpoint_every and s.step % cfg.checkpoint_every == 0 and i + 1 < self.micro:
                s.batch = i + 1
                self.save_checkpoint()
        s.batch = 0

    def _autocast(self):
        if self.cfg.amp == "none":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16)

    def _step(self) -> None:
        """One optimizer step (through the GradScaler under fp16), the schedule, the update records."""
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state.step += 1
        if self.sparsifier is not None:
            for rec in self.sparsifier.history[self.logged_updates:]:
                self._log({"type": "update", **{k: v for k, v in rec.items() if k != "layers"}})
            self.logged_updates = len(self.sparsifier.history)

    def _evaluate(self, model: nn.Module) -> tuple[float, float]:
        return evaluate(model, self.test, self.device, self.cfg.channels_last)

    def _end_epoch(self) -> dict[str, Any]:
        """Test the model, close the epoch's Sup-tickets cycle, log and return the epoch's record."""
        s = self.state
        test_loss, test_acc = self._evaluate(self.model)
        record = {"type": "epoch", "epoch": s.epoch + 1, "step": s.step, "train_loss": s.loss_sum / max(s.seen, 1),
                  "test_loss": test_loss, "test_acc": test_acc, "lr": self.optimizer.param_groups[0]["lr"]}
        if self.language_model:
            record.update({f"test_{k}": v for k, v in lm_metrics(test_loss).items()})
        if self.sparsifier is not None:
            record.update(itop_rate=self.sparsifier.itop_rate, density=self.sparsifier.density)
        if self.tickets is not None:
            recalibrate = ((_to(a, self.device, self.cfg.channels_last), b) for a, b in self.train)
            cycle = self.tickets.epoch_end(recalibrate=recalibrate, evaluate=lambda m: self._evaluate(m)[1])
            if cycle is not None:
                record.update(ticket_acc=cycle["ticket_acc"], sup_acc=cycle["sup_acc"])
        s.loss_sum, s.seen = 0.0, 0
        s.curve.append({k: v for k, v in record.items() if k != "type"})
        self._log(record)
        s.epoch += 1
        return record

    def _keep_best(self, test_acc: float) -> None:
        best = test_acc > self.state.best_acc
        self.state.best_acc = max(self.state.best_acc, test_acc)
        if self.out is not None and best:
            self.out.save_best(self.model.state_dict(), self.sparsifier.masks if self.sparsifier is not None else None,
                               epoch=self.state.epoch, test_acc=test_acc)

    def _log(self, record: dict[str, Any]) -> None:
        if self.out is not None:
            self.out.log(record)

    # ------------------------------------------------------------------ the result

    def summary(self, wall: float) -> dict[str, Any]:
        """The run's result: final and best accuracy, losses, densities, R_s, FLOPs, curve, versions."""
        cfg, curve, sparsifier, tickets = self.cfg, self.state.curve, self.sparsifier, self.tickets
        x0, _ = next(iter(self.test))
        x0 = _to(x0[:1], self.device, cfg.channels_last)
        report = st.flops(self.model, x0, masks=sparsifier.masks if sparsifier is not None else None)
        final_loss, final_acc = curve[-1]["test_loss"], curve[-1]["test_acc"]
        extra: dict[str, Any] = {}
        if tickets is not None:
            # the method's output is the superposed model; the live model and the ensemble are reported beside it
            final_loss, final_acc = self._evaluate(tickets.model)
            _, ens_acc = self._evaluate(tickets.ensemble())
            extra = {
                "live_test_acc": curve[-1]["test_acc"],
                "pre_test_acc": tickets.pre_acc,  # θ_pre: the base phase's model before the first cycle
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
            "steps": self.total_steps,
            "inference_flops_fraction": report.fraction,
            "dense_flops_per_example": report.dense,
            # what made the run (a sweep resumed over sessions mixes commits: the report lists them)
            "versions": {"sparsetrain": st.__version__, "torch": torch.__version__, "commit": loaded_commit(),
                         "cpu": cpu_model(), "threads": torch.get_num_threads()},
            "sparse_kernels": kernels_used(self.model, cfg.batch_size),
            "kernel_choices": kernel_choices(self.model, cfg.batch_size),  # per layer and operation
        }
        if sparsifier is None:
            result.update(density=1.0, itop_rate=1.0, train_flops_fraction=1.0, updates=0, layer_density={},
                          update_history=[])
        else:
            m = sparsifier.metrics()
            result.update(
                density=m["density"],
                itop_rate=m["itop_rate"],
                survival=m["survival"],
                updates=m["updates"],
                layer_density=m["layer_density"],
                train_flops_fraction=sparsifier.training_flops(report)["fraction"],
                update_history=[{k: h[k] for k in ("step", "turnover", "itop_rate", "exploration", "exploitation", "survival",
                                                   "drop_fraction", "density") if k in h}
                                for h in sparsifier.history],
            )
        if self.language_model:  # validation bits per byte and perplexity of the final model
            result.update({f"test_{k}": v for k, v in lm_metrics(final_loss).items()})
            result["best_test_bpb"] = min(r["test_bpb"] for r in curve)
        result.update(extra)
        return result


def run(cfg: RunConfig, out_dir: Optional[str | os.PathLike] = None, *, resume: bool = False,
        overwrite: bool = False, progress: bool = False, tensorboard: bool = False,
        on_epoch: Optional[Callable[[dict[str, Any]], None]] = None, extend: bool = False) -> dict[str, Any]:
    """Train one configuration and return its summary (accuracy, density, R_s, FLOPs, time).

    With ``out_dir`` the run writes its files there (see the module docstring); an existing run
    there is an error unless ``resume`` (continue it exactly; a finished run returns its summary;
    other settings are refused), ``overwrite`` (start over) or ``extend`` (train the run there,
    finished or not, up to ``cfg.epochs``, more than its own: the learning-rate and sparsifier
    schedules are re-planned for the new length from its last checkpoint on).
    """
    cfg.validate()
    dist = torch.distributed
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    if world > 1 and cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} (the global batch) must be divisible by the {world} processes")
    out = RunDirectory(out_dir) if out_dir is not None else None
    ckpt = None
    if out is not None:
        if extend:
            if world > 1:
                raise st.InputError("--extend runs in one process; drop --nproc")
            ckpt = out.prepare_extend(cfg)
        elif resume and (done := out.finished()) is not None:
            out.check_settings(cfg)  # a finished run with other settings is refused too
            return done
        elif rank == 0:  # one process owns the run directory; the others read the checkpoint
            ckpt = out.prepare(cfg, resume=resume, overwrite=overwrite)
        if world > 1:
            dist.barrier()
            if rank != 0 and resume:
                ckpt = out.checkpoint()
        if rank != 0:
            out = None  # only rank 0 writes files
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    trainer = Trainer(cfg, out, world=world, rank=rank)
    if ckpt is not None:
        trainer.load_checkpoint(ckpt, extend=extend)
        log.info("resuming %s at epoch %d, batch %d (step %d)", out_dir, trainer.state.epoch, trainer.state.batch,
                 trainer.state.step)
    if out is not None:
        out.open(cfg, ckpt, steps_per_epoch=trainer.steps_per_epoch, total_steps=trainer.total_steps,
                 tensorboard=tensorboard)
    try:
        trainer.fit(progress, on_epoch)
    finally:
        if out is not None:
            out.close()
    result = trainer.summary(trainer.wall_time())
    if out is not None:
        out.write_summary(result)
    return result
