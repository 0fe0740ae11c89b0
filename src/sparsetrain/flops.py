"""Forward FLOPs by forward hooks, dense and sparse, and training FLOPs per method.

Convention (as in the DST literature): one multiply-accumulate of a weight counts as one FLOP;
only the weight layers are counted (Linear, Conv1d/2d/3d and their transposed forms), which
dominate every model here. For a weight layer, each weight entry is used once per output
position, so

    dense FLOPs  = positions × numel(W)        sparse FLOPs = positions × nnz(W)

where ``positions`` is the number of output elements per example divided by the number of
output channels (``1`` per example for a Linear layer on a vector, ``H_out·W_out`` for a Conv2d).
Numbers are per example (the example input's first dimension is the batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch
from torch import nn

from .sparse.linear import SparseLinear

__all__ = ["LayerFlops", "FlopsReport", "flops", "training_flops_per_step", "COUNTED_MODULES"]

#: Module types whose weight FLOPs are counted.
COUNTED_MODULES = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
)


@dataclass
class LayerFlops:
    """Forward FLOPs of one weight layer, per example."""

    name: str
    positions: float
    numel: int
    nnz: int

    @property
    def per_weight(self) -> float:
        """FLOPs contributed by one active weight entry (its number of output positions)."""
        return self.positions

    @property
    def dense(self) -> float:
        """Dense forward FLOPs of this layer."""
        return self.positions * self.numel

    @property
    def sparse(self) -> float:
        """Sparse forward FLOPs of this layer (only the active weights)."""
        return self.positions * self.nnz


@dataclass
class FlopsReport:
    """Forward FLOPs per example: ``dense`` (f_D), ``sparse`` (f_S) and per layer."""

    layers: dict[str, LayerFlops] = field(default_factory=dict)

    @property
    def dense(self) -> float:
        """f_D: dense forward FLOPs per example."""
        return sum(l.dense for l in self.layers.values())

    @property
    def sparse(self) -> float:
        """f_S: sparse forward FLOPs per example (unmasked layers count fully)."""
        return sum(l.sparse for l in self.layers.values())

    @property
    def fraction(self) -> float:
        """Inference FLOPs fraction f_S / f_D."""
        return self.sparse / self.dense if self.dense else 1.0

    def __getitem__(self, key: str) -> float:
        return {"dense": self.dense, "sparse": self.sparse, "fraction": self.fraction}[key]


@torch.no_grad()
def flops(model: nn.Module, example_input, masks: Optional[Mapping[str, torch.Tensor]] = None) -> FlopsReport:
    """Count forward FLOPs of ``model`` on ``example_input`` (a tensor, or a tuple of arguments).

    ``masks`` maps fully-qualified parameter names (``"fc1.weight"``) to bool masks; a layer
    without a mask counts fully (dense). The report's keys are the weight parameters' names,
    so they match ``Sparsifier.masks``. The model runs once in eval mode (no gradients).
    """
    masks = dict(masks or {})
    report = FlopsReport()
    handles = []
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    batch = int(args[0].shape[0]) if torch.is_tensor(args[0]) and args[0].dim() > 0 else 1

    def make_hook(pname: str, module: nn.Module):
        def hook(mod, inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            channels = module.out_features if isinstance(module, (nn.Linear, SparseLinear)) else module.out_channels
            positions = out.numel() / batch / channels
            if isinstance(module, SparseLinear):  # compressed: its stored entries are its nonzeros
                numel, stored = module.weight_shape.numel(), module.nnz
            else:
                numel = stored = module.weight.numel()
            nnz = int(masks[pname].sum()) if pname in masks else stored
            prev = report.layers.get(pname)
            if prev is None:
                report.layers[pname] = LayerFlops(pname, positions, numel, nnz)
            else:  # a module called several times per forward (shared weights)
                prev.positions += positions

        return hook

    for mod_name, module in model.named_modules():
        if isinstance(module, SparseLinear) or (
                isinstance(module, COUNTED_MODULES) and getattr(module, "weight", None) is not None):
            pname = f"{mod_name}.weight" if mod_name else "weight"
            handles.append(module.register_forward_hook(make_hook(pname, module)))
    was_training = model.training
    model.eval()
    try:
        model(*args)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return report


def training_flops_per_step(method: str, f_sparse: float, f_dense: float, update_interval: int = 100) -> float:
    """Training FLOPs per step by the spec's formulas (§1.7); backward ≈ 2 × forward.

    ``method`` is ``"dense"``, ``"static"``/``"set"``/``"mest"`` (3 f_S), ``"snfs"``
    (2 f_S + f_D) or ``"rigl"``/``"dstee"`` ((3 f_S ΔT + 2 f_S + f_D)/(ΔT + 1)).
    :meth:`sparsetrain.Sparsifier.training_flops` gives the exact count of an actual run.
    """
    m = method.lower()
    if m == "dense":
        return 3.0 * f_dense
    if m in ("static", "set", "mest"):
        return 3.0 * f_sparse
    if m == "snfs":
        return 2.0 * f_sparse + f_dense
    if m in ("rigl", "dstee"):
        dt = update_interval
        return (3.0 * f_sparse * dt + 2.0 * f_sparse + f_dense) / (dt + 1)
    raise ValueError(f"no training-FLOPs formula for {method!r}; known: dense, static, set, mest, snfs, rigl, dstee")
