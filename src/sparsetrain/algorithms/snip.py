"""SNIP (Lee et al., 2019) and GraSP (Wang et al., 2020): static masks scored on a batch before training."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from ..errors import InputError, InputTypeError
from .._util import global_topk
from ..masks import random_mask
from .static import Static

__all__ = ["SNIP", "GraSP", "POSITIONS"]

#: ``"scored"``: the exact mask of the scores; ``"random"``: only the per-layer counts it gives.
POSITIONS = ("scored", "random")


def _is_single_batch(batch) -> bool:
    # (mapping, y) is one batch of keyword inputs, and so is a mapping alone (targets inside it, as a
    # Hugging Face batch's labels); (mapping, mapping) is two batches of them
    if isinstance(batch, Mapping):
        return True
    return isinstance(batch, (tuple, list)) and len(batch) == 2 and (
        torch.is_tensor(batch[0]) or (isinstance(batch[0], Mapping) and not isinstance(batch[1], Mapping)))


def _to(x: Any, device) -> Any:
    """A tensor, or a mapping of a model's keyword inputs (a Hugging Face batch), on ``device``."""
    if isinstance(x, Mapping):
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in x.items()}
    return x.to(device) if torch.is_tensor(x) else x


def _forward(model: nn.Module, x: Any) -> Any:
    """``model(**x)`` for a mapping of keyword inputs, else ``model(x)``."""
    return model(**x) if isinstance(x, Mapping) else model(x)


class _Saliency(Static):
    """Shared machinery: batches, a clean forward/backward, global selection, model restore."""

    #: score the *lowest* (GraSP) instead of the highest (SNIP)
    keep_lowest = False
    #: the constructor needs ``batch=`` (for runners that build algorithms by name)
    needs_batch = True

    def __init__(
        self,
        density: float,
        *,
        batch=None,
        loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
        positions: str = "scored",
        num_batches: Optional[int] = None,
        train_mode: bool = True,
        distribution="uniform",
        seed: int = 0,
        erk_power: float = 1.0,
    ):
        super().__init__(density, distribution=distribution, seed=seed, erk_power=erk_power)
        cls = type(self).__name__
        if batch is None:
            raise InputError(
                f"{cls} needs a batch: {cls}(density, batch=(x, y)), or an iterable of (x, y) batches "
                "(a list, or a DataLoader with num_batches=)"
            )
        if not _is_single_batch(batch) and not isinstance(batch, Iterable):
            raise InputTypeError(f"{cls}: batch must be (x, y) or an iterable of (x, y) batches, got {type(batch).__name__}")
        if loss_fn is not None and not callable(loss_fn):
            raise InputTypeError(f"{cls}: loss_fn must be callable as loss_fn(output, target), got {loss_fn!r}")
        if positions not in POSITIONS:
            raise InputError(f"unknown positions {positions!r}; valid values are {', '.join(POSITIONS)}")
        if num_batches is not None and (isinstance(num_batches, bool) or int(num_batches) < 1):
            raise InputError(f"num_batches must be a positive number of batches (or None for all), got {num_batches!r}")
        self.batch = batch
        self.loss_fn = loss_fn if loss_fn is not None else nn.functional.cross_entropy
        self.positions = positions
        self.num_batches = int(num_batches) if num_batches is not None else None
        self.train_mode = bool(train_mode)

    def config(self):
        name = getattr(self.loss_fn, "__name__", type(self.loss_fn).__name__)
        return {**super().config(), "positions": self.positions, "num_batches": self.num_batches,
                "loss_fn": name, "train_mode": self.train_mode}

    # -- batches -------------------------------------------------------------------------
    def batches(self, device) -> list[tuple[Any, Any]]:
        """The scoring batches, on ``device``."""
        source = [self.batch] if _is_single_batch(self.batch) else self.batch
        out = []
        for b in source:
            if self.num_batches is not None and len(out) >= self.num_batches:
                break
            if isinstance(b, Mapping):  # keyword inputs with the targets inside: loss_fn(output, None)
                b = (b, None)
            if not (isinstance(b, (tuple, list)) and len(b) >= 2):
                raise InputTypeError(f"{type(self).__name__}: every batch must be an (x, y) pair or a mapping of "
                                     f"keyword inputs, got {type(b).__name__}")
            x, y = b[0], b[1]
            out.append((_to(x, device), _to(y, device)))
        if not out:
            raise InputError(f"{type(self).__name__}: the batch iterable gave no batch to score on")
        return out

    def loss(self, model, x, y) -> torch.Tensor:
        return self.loss_fn(_forward(model, x), y)

    # -- scores --------------------------------------------------------------------------
    def compute_scores(self, model, params: list[torch.Tensor], batches) -> list[torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    @contextlib.contextmanager
    def _clean(self, model: nn.Module):
        """Run with the model in scoring mode; restore modes, buffers and the global RNG afterwards."""
        modes = [(m, m.training) for m in model.modules()]
        buffers = [(b, b.detach().clone()) for b in model.buffers()]
        devices = sorted({p.device.index for p in model.parameters() if p.device.type == "cuda"} - {None})
        with torch.random.fork_rng(devices=devices):
            try:
                model.train(self.train_mode)
                yield
            finally:
                with torch.no_grad():
                    for b, saved in buffers:
                        b.copy_(saved)
                for m, mode in modes:
                    m.training = mode

    def scores(self, model: nn.Module, named_params) -> dict[str, torch.Tensor]:
        """The saliency of every weight of ``named_params`` (``[(name, param)]``), shaped like it.

        Gradients come from ``torch.autograd.grad``, so no ``.grad`` is touched; the model's
        train/eval modes, buffers (e.g. BatchNorm statistics) and the global RNG are restored.
        """
        named_params = list(named_params)
        params = [p for _, p in named_params]
        device = params[0].device
        with self._clean(model), _without_cudnn_rnn(model, device):
            batches = self.batches(device)
            try:
                raw = self.compute_scores(model, params, batches)
            except (RuntimeError, ValueError) as e:
                if self.loss_fn is not nn.functional.cross_entropy or "target" not in str(e).lower():
                    raise
                raise InputError(
                    f"{type(self).__name__}: the default loss, cross_entropy(model(x), y), does not fit this model's "
                    f"output and targets ({e}); pass loss_fn=, e.g. for (B, T, V) logits: loss_fn=lambda out, y: "
                    "F.cross_entropy(out.flatten(0, 1), y.flatten())") from None
        return {n: s.detach().reshape(p.shape) for (n, p), s in zip(named_params, raw)}

    def initial_masks(self, model, named_params, counts, generator):
        named_params = list(named_params)
        sc = self.scores(model, named_params)
        # layers the sparsifier gives all their weights (pinned with dense=, or capped by a
        # non-uniform distribution) stay dense; the rest share the budget by global ranking
        dense = {n for n, p in named_params if counts[n] >= p.numel()}
        free = [(n, p) for n, p in named_params if n not in dense]
        budget = sum(int(counts[n]) for n, _ in named_params) - sum(p.numel() for n, p in named_params if n in dense)
        masks = {n: torch.ones(p.shape, dtype=torch.bool, device=p.device) for n, p in named_params if n in dense}
        if free:
            worst = float("-inf") if not self.keep_lowest else float("inf")
            flat = [torch.nan_to_num(sc[n].float().cpu(), nan=worst).view(p.shape) for n, p in free]
            budget = max(0, min(budget, sum(p.numel() for _, p in free)))
            chosen = global_topk(flat, budget, largest=not self.keep_lowest)
            for (n, p), part in zip(free, chosen):
                if self.positions == "random":
                    part = random_mask(p.shape, int(part.sum()), generator)
                masks[n] = part.to(p.device)
        return masks


class SNIP(_Saliency):
    """SNIP: connection sensitivity ``|g ⊙ w|`` on a batch before training; keep the global top D.

    ``g`` is the gradient of ``loss_fn(model(x), y)`` (cross-entropy by default) with respect
    to the sparse weights at initialisation, summed over the given batches. The mask never
    changes afterwards (like :class:`Static`). ``positions="random"`` keeps only the per-layer
    counts that the scores give and draws the positions at random.

    Args:
        density: global density D.
        batch: ``(x, y)``, or an iterable of ``(x, y)`` batches (all are used unless
            ``num_batches`` is given); ``x`` is a tensor (``model(x)``) or a mapping of keyword
            inputs (``model(**x)``, a Hugging Face batch); a batch may also be a mapping alone
            (targets inside it: ``loss_fn(output, None)``).
        loss_fn: ``loss_fn(output, target) -> scalar``; default cross-entropy (for a Hugging Face
            model: ``lambda out, y: out.loss`` with ``labels`` in ``x``).
        positions: ``"scored"`` (default) or ``"random"``.
        num_batches: use at most this many batches of ``batch``.
        train_mode: score in train mode (default) or eval mode; the modes are restored after.
        distribution: only decides which layers are dense from the start (the default
            ``"uniform"`` makes none dense except those pinned with ``dense=``).
    """

    name = "snip"

    def compute_scores(self, model, params, batches):
        grads = [torch.zeros_like(p) for p in params]
        for x, y in batches:
            g = torch.autograd.grad(self.loss(model, x, y), params, allow_unused=True)
            for acc, gi in zip(grads, g):
                if gi is not None:
                    acc.add_(gi.detach())
        return [(g * p.detach()).abs() for g, p in zip(grads, params)]


def _without_cudnn_rnn(model: nn.Module, device: torch.device):
    """cuDNN's RNN kernels have no double backward (GraSP) and no backward in eval mode (SNIP with
    ``train_mode=False``): score a CUDA model holding a recurrent layer on the native kernels."""
    if device.type == "cuda" and any(isinstance(m, nn.RNNBase) for m in model.modules()):
        return torch.backends.cudnn.flags(enabled=False)
    return contextlib.nullcontext()


class GraSP(_Saliency):
    """GraSP: gradient-signal preservation; score ``−w ⊙ (H g)``, prune the highest, keep the global lowest D.

    ``g`` is the gradient of the loss summed over the batches and ``H g`` the Hessian-gradient
    product, by double back-propagation: ``H g = ∇_w (g_detached · ∇_w L)``, summed over the
    batches. Both are taken with respect to the sparse weights only, as in the reference code,
    whose temperature (logits divided by ``temperature = 200`` before the loss) is the default.

    Args: as :class:`SNIP`, plus ``temperature`` (> 0; 1 disables it).
    """

    name = "grasp"
    keep_lowest = True

    def __init__(self, density: float, *, temperature: float = 200.0, **kwargs):
        super().__init__(density, **kwargs)
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise InputError(f"temperature must be a number > 0 (200 in the reference code, 1 to disable), got {temperature!r}")
        self.temperature = float(temperature)

    def config(self):
        return {**super().config(), "temperature": self.temperature}

    def loss(self, model, x, y):
        out = _forward(model, x)
        if not torch.is_tensor(out):
            raise InputError(f"GraSP divides the model's output by its temperature, so it needs a tensor output, got "
                             f"{type(out).__name__}; wrap the model in a Module whose forward returns its logits "
                             "(model(**x).logits), or use SNIP, whose loss_fn takes any output")
        return self.loss_fn(out / self.temperature, y)

    def compute_scores(self, model, params, batches):
        g = [torch.zeros_like(p) for p in params]
        for x, y in batches:
            gi = torch.autograd.grad(self.loss(model, x, y), params, allow_unused=True)
            for acc, d in zip(g, gi):
                if d is not None:
                    acc.add_(d.detach())
        hg = [torch.zeros_like(p) for p in params]
        for x, y in batches:
            grads = torch.autograd.grad(self.loss(model, x, y), params, create_graph=True, allow_unused=True)
            z = sum((gd * gr).sum() for gd, gr in zip(g, grads) if gr is not None)
            if not torch.is_tensor(z) or not z.requires_grad:
                continue  # the loss is linear in the weights: H g = 0
            hv = torch.autograd.grad(z, params, allow_unused=True)
            for acc, d in zip(hg, hv):
                if d is not None:
                    acc.add_(d.detach())
        return [-(p.detach() * h) for p, h in zip(params, hg)]
