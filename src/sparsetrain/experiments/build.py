"""From a :class:`RunConfig` to the objects a run trains with: data, optimizer, schedule, algorithm.

Each function builds one piece, the way a user of the library would; the order in which
:mod:`sparsetrain.experiments.runner` calls them fixes the order of the random draws.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Optional

import torch
from torch import nn

from ..errors import InputError, InputWarning
from .. import registry
from ..distributions import layer_densities
from .config import RunConfig
from .data import ContextLoader, load_dataset
from .loader import Loader
from .models import model_context

__all__ = ["build_loaders", "build_optimizer", "build_scheduler", "build_algorithm",
           "convert_execution", "kernels_used", "kernel_choices"]

log = logging.getLogger(__name__)

_CIFAR_STYLE = ("resnet", "vgg", "wrn")


def build_loaders(cfg: RunConfig) -> tuple[Loader, Loader, dict[str, Any], Optional[int]]:
    """The training and test loaders, the dataset's ``info``, and the side images are padded to
    (32 for a CIFAR-style model on smaller images, else ``None``). A language model on a text
    dataset gets :class:`ContextLoader` s of its context length; ``train_subset`` is then the
    number of training contexts per epoch."""
    train_set, test_set, info = load_dataset(cfg.dataset, root=cfg.data_root)
    context = model_context(cfg.model)
    if (info.get("kind") == "text") != (context is not None):
        raise InputError(f"model {cfg.model!r} and dataset {cfg.dataset!r} do not fit together: language models "
                         "(gpt-mini, gpt-micro) train on text datasets (text:stdlib), the others on image datasets")
    if context is not None:  # a stream: an epoch is train_subset (default EPOCH_CONTEXTS) random contexts
        train = ContextLoader(train_set, cfg.batch_size, context, cfg.train_subset, shuffle=True, seed=cfg.seed)
        return train, ContextLoader(test_set, 64, context, shuffle=False, seed=cfg.seed), info, None
    if cfg.train_subset and cfg.train_subset > len(train_set):
        warnings.warn(f"--train-subset {cfg.train_subset} has no effect: {cfg.dataset} has only {len(train_set)} "
                      "training examples, all of which are used", InputWarning)
    if cfg.train_subset:
        train_set = train_set.head(int(cfg.train_subset))
    if cfg.batch_size > len(train_set):
        warnings.warn(f"--batch-size {cfg.batch_size} is larger than the {len(train_set)} training examples: every "
                      "epoch is one batch of all of them", InputWarning)
    pad_to = 32 if cfg.model.lower().startswith(_CIFAR_STYLE) and info["image_size"] < 32 else None
    augment = cfg.augment
    if augment is None:
        augment = "crop-flip" if info["name"].startswith("cifar") else "none"
    train = Loader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed, augment=augment, pad_to=pad_to)
    test = Loader(test_set, 1000, shuffle=False, seed=cfg.seed, pad_to=pad_to)
    return train, test, info, pad_to


def build_optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam or AdamW over all of ``model``'s parameters."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(cfg: RunConfig, optimizer: torch.optim.Optimizer, steps: int, steps_per_epoch: int,
                    then=None):
    """The per-step learning-rate schedule over ``steps`` steps, after an optional linear warm-up;
    ``then``: a scheduler to follow from step ``steps`` on (Sup-tickets' cycles), composed into one
    flat ``SequentialLR`` (torch's SequentialLR nested in another loses a step)."""
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    main = max(steps - warm, 1)
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=main)
    elif cfg.schedule == "multistep":
        marks = sorted({max(1, int(round(m * steps)) - warm) for m in cfg.milestones})
        sched = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=marks, gamma=cfg.gamma)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    parts, marks = [sched], []
    if warm:
        ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warm, end_factor=1.0, total_iters=warm)
        parts, marks = [ramp, sched], [warm]
    if then is not None:
        parts, marks = parts + [then(optimizer)], marks + [steps]
    return torch.optim.lr_scheduler.SequentialLR(optimizer, parts, milestones=marks) if marks else sched


def build_algorithm(cfg: RunConfig, train: Loader, device: torch.device):
    """The sparse-training algorithm of ``cfg.method`` (a registered class or preset).

    A static algorithm ignores ``update_interval``; one that scores its mask on data (SNIP,
    GraSP) gets the first training batches of the run's own order.
    """
    name, spec_kwargs = registry.parse_method(cfg.method)
    kwargs = {**cfg.algorithm_kwargs, **spec_kwargs}
    cls = registry.ALGORITHMS.get(name.lower())  # None for a preset
    if cls is not None and not cls.dynamic:  # a static mask has no schedule
        kwargs.pop("update_interval", None)
    kwargs.setdefault("distribution", cfg.distribution)
    if cls is not None and getattr(cls, "needs_batch", False) and "batch" not in kwargs:
        train.set_epoch(0)
        it = iter(train)
        kwargs["batch"] = [tuple(t.to(device) for t in next(it)) for _ in range(min(4, len(train)))]
    return registry.make_algorithm(name, density=cfg.density, seed=cfg.seed, **kwargs)


def convert_execution(cfg: RunConfig, model: nn.Module, algorithm) -> list[str]:
    """``execution``: keep Linear layers masked-dense, make them truly sparse, or choose per layer.

    Returns the names of the weights made truly sparse.
    """
    if cfg.execution == "masked":
        return []
    linears = {f"{n}.weight": m for n, m in model.named_modules() if type(m) is nn.Linear}
    if cfg.execution == "sparse":
        chosen = set(linears)
    else:  # auto: the layers measured to train faster truly sparse at their density, batch and shape
        from ..sparse.execution import sparse_layer_faster

        prunable = [(f"{n}.weight", m.weight.shape) for n, m in model.named_modules()
                    if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
        dens = layer_densities([n for n, _ in prunable], [s for _, s in prunable], algorithm.initial_density,
                               algorithm.distribution, power=algorithm.erk_power)
        if cfg.kernels != "auto":
            from ..sparse import kernels

            kernels.set_backend(cfg.kernels)  # measure the kernels the run will use
        seq = getattr(model, "context", None)  # a language model's layers see (batch, context, width)
        chosen = {n for n, m in linears.items() if dens.get(n, 1.0) < 1.0
                  and sparse_layer_faster(m.in_features, m.out_features, cfg.batch_size, dens[n],
                                          seq=seq if isinstance(seq, int) else None)}
    if chosen:
        from ..sparse import kernels, to_sparse

        kernels.set_backend(cfg.kernels)  # "native" raises here if the kernels cannot be built
        to_sparse(model, include=lambda name, m: f"{name}.weight" in chosen)
    log.info("truly sparse execution for %s", sorted(chosen))
    return sorted(chosen)


def kernels_used(model: nn.Module, batch: Optional[int] = None) -> Optional[str]:
    """Which kernels the model's SparseLinear layers ran on: ``"native"``, ``"torch"``, or with the
    ``auto`` backend and a ``batch``, ``"native"``/``"torch"`` if every measured operation chose it,
    else ``"mixed"``; ``None`` without SparseLinear layers. :func:`kernel_choices` gives the detail."""
    from ..sparse import SparseLinear, autotune, kernels

    layers = [m for m in model.modules() if isinstance(m, SparseLinear)]
    if not layers:
        return None
    if not kernels.use_native(layers[0].values, layers[0].values):
        return "torch"
    if kernels.backend() != "auto" or batch is None or not autotune.enabled():
        return "native"
    seen = {c for m in layers for c in autotune.layer_kernels(m, batch).values() if c is not None}
    return seen.pop() if len(seen) == 1 else ("mixed" if seen else "native")


def kernel_choices(model: nn.Module, batch: int) -> dict[str, dict[str, Optional[str]]]:
    """Per SparseLinear module name, the kernels recorded for each operation at this batch
    (``{"spmm": "native", "spmm_t": "torch", "sddmm": "native"}``; ``None``: not measured)."""
    from ..sparse import SparseLinear, autotune, kernels

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, SparseLinear):
            if not kernels.use_native(m.values, m.values):
                out[name] = dict.fromkeys(("spmm", "spmm_t", "sddmm"), "torch")
            elif kernels.backend() != "auto" or not autotune.enabled():
                out[name] = dict.fromkeys(("spmm", "spmm_t", "sddmm"), "native")
            else:
                out[name] = autotune.layer_kernels(m, batch)
    return out
