"""One training run, using the library exactly as a user would (three lines added to a loop).

The experiment runner never reaches into the library's internals: it builds a model, an
optimizer and a :class:`sparsetrain.Sparsifier`, trains with an ordinary loop and reads the
public metrics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

import sparsetrain as st

from .data import InMemoryDataset, Loader, load_dataset
from .models import build_model

__all__ = ["RunConfig", "run", "evaluate"]

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    """Everything that defines one run (plain values, so it serialises to JSON).

    ``method`` is ``"dense"`` or a registered algorithm name; ``algorithm_kwargs`` are passed to
    the algorithm (e.g. ``{"update_interval": 100}``). ``train_subset`` limits the training set
    to its first N examples (quick runs and tests).
    """

    model: str = "lenet300-100"
    dataset: str = "fashion-mnist"
    method: str = "rigl"
    density: float = 0.1
    distribution: str = "erk"
    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    seed: int = 0
    threads: Optional[int] = None
    data_root: Optional[str] = None
    train_subset: Optional[int] = None
    algorithm_kwargs: dict[str, Any] = field(default_factory=dict)
    # Sup-tickets (spec §4): the last cycles of the same epoch budget collect tickets
    sup_tickets: bool = False
    cycles: Optional[int] = None
    cycle_epochs: int = 8
    cycle_ratio: float = 0.1
    ticket_lr: tuple[float, float] = (0.001, 0.005)
    ticket_drop: float = 0.5
    ticket_grow: str = "gradient"
    ticket_beta: Optional[float] = None

    @property
    def label(self) -> str:
        """The method's name in tables: ``rigl``, ``rigl+sup-tickets``, ..."""
        return f"{self.method}+sup-tickets" if self.sup_tickets else self.method


@torch.no_grad()
def evaluate(model: nn.Module, loader: Loader) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` over ``loader``."""
    was = model.training
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    for x, y in loader:
        out = model(x)
        loss_sum += float(nn.functional.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        total += y.numel()
    model.train(was)
    return loss_sum / max(total, 1), correct / max(total, 1)


def run(cfg: RunConfig, on_epoch: Optional[Callable[[dict[str, Any]], None]] = None) -> dict[str, Any]:
    """Train one configuration and return its summary (accuracy, density, R_s, FLOPs, time)."""
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(cfg.seed)
    train_set, test_set, info = load_dataset(cfg.dataset, root=cfg.data_root)
    if cfg.train_subset:
        n = int(cfg.train_subset)
        train_set = InMemoryDataset(train_set.x[:n], train_set.y[:n], train_set.mean, train_set.std, train_set.name)
    train = Loader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed)
    test = Loader(test_set, 1000, shuffle=False, seed=cfg.seed)
    model = build_model(cfg.model, info["in_channels"], info["num_classes"], info["image_size"])
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
    )
    total_steps = len(train) * cfg.epochs
    base_steps = total_steps
    if cfg.sup_tickets:
        if cfg.method == "dense":
            raise ValueError("Sup-tickets superposes sparse tickets: choose a sparse method, not dense")
        pre_epochs, _, _ = st.tickets.phase_split(cfg.epochs, cfg.cycle_epochs, cfg.cycle_ratio, cfg.cycles)
        base_steps = len(train) * pre_epochs  # the base method is a complete run of E_pre epochs
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=base_steps)

    sparsifier = None
    tickets = None
    if cfg.method != "dense":
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
            kwargs["batch"] = [next(it) for _ in range(min(4, len(train)))]
        algorithm = st.make_algorithm(name, density=cfg.density, seed=cfg.seed, **kwargs)
        sparsifier = st.Sparsifier(model, optimizer, algorithm, total_steps=base_steps)
        if cfg.sup_tickets:
            tickets = st.SupTickets(
                sparsifier, cfg.epochs, len(train), cycle_epochs=cfg.cycle_epochs, ratio=cfg.cycle_ratio,
                cycles=cfg.cycles, lr_low=cfg.ticket_lr[0], lr_high=cfg.ticket_lr[1], drop_fraction=cfg.ticket_drop,
                grow=cfg.ticket_grow, beta=cfg.ticket_beta,
            )
            scheduler = tickets.lr_scheduler(scheduler)

    start = time.perf_counter()
    curve = []
    for epoch in range(cfg.epochs):
        train.set_epoch(epoch)
        model.train()
        loss_sum, seen = 0.0, 0
        for x, y in train:
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            loss_sum += loss.item() * y.numel()
            seen += y.numel()
        test_loss, test_acc = evaluate(model, test)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "test_loss": test_loss, "test_acc": test_acc}
        if sparsifier is not None:
            record["itop_rate"] = sparsifier.itop_rate
        if tickets is not None:
            cycle = tickets.epoch_end(recalibrate=train, evaluate=lambda m: evaluate(m, test)[1])
            if cycle is not None:
                record["ticket_acc"], record["sup_acc"] = cycle["ticket_acc"], cycle["sup_acc"]
        curve.append(record)
        log.info("%s epoch %d: %s", cfg.method, epoch + 1, record)
        if on_epoch is not None:
            on_epoch(record)
    wall = time.perf_counter() - start

    x0, _ = next(iter(test))
    masks = sparsifier.masks if sparsifier is not None else None
    report = st.flops(model, x0[:1], masks=masks)
    final_loss, final_acc = curve[-1]["test_loss"], curve[-1]["test_acc"]
    extra: dict[str, Any] = {}
    if tickets is not None:
        # the method's output is the superposed model; the live model and the ensemble are reported beside it
        final_loss, final_acc = evaluate(tickets.model, test)
        ens_loss, ens_acc = evaluate(tickets.ensemble(), test)
        extra = {
            "live_test_acc": curve[-1]["test_acc"],
            "ensemble_test_acc": ens_acc,
            "tickets": tickets.history,
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
    }
    if sparsifier is None:
        result.update(density=1.0, itop_rate=1.0, train_flops_fraction=1.0, updates=0, layer_density={})
    else:
        m = sparsifier.metrics()
        result.update(
            density=m["density"],
            itop_rate=m["itop_rate"],
            updates=m["updates"],
            layer_density=m["layer_density"],
            train_flops_fraction=sparsifier.training_flops(report)["fraction"],
        )
    result.update(extra)
    return result
