"""The in-memory dataset every format loads into, and the ``(train, test, info)`` split it returns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ...errors import InputError
__all__ = ["InMemoryDataset", "channel_stats", "make_split", "Split"]


class InMemoryDataset:
    """A labelled image set held in memory as two tensors.

    Attributes:
        x: images, ``(N, C, H, W)``; ``uint8`` in 0..255 or floating point in [0, 1].
        y: labels, ``int64`` of shape ``(N,)``.
        mean, std: per-channel statistics of the *training* images on the [0, 1] scale,
            used by :class:`~sparsetrain.experiments.loader.Loader` for normalisation.
        name: dataset name (informational).
        classes: optional class names.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        name: str = "",
        classes: Sequence[str] | None = None,
    ):
        if x.dim() != 4:
            raise InputError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise InputError(f"labels must be (N,) with N={x.shape[0]}, got {tuple(y.shape)}")
        self.x = x
        self.y = y.long()
        self.mean = tuple(float(m) for m in mean) if mean is not None else None
        self.std = tuple(float(s) for s in std) if std is not None else None
        self.name = name
        self.classes = tuple(classes) if classes is not None else None

    def __len__(self) -> int:
        """Number of examples."""
        return int(self.x.shape[0])

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw ``(image, label)`` at ``index`` (no conversion or normalisation)."""
        return self.x[index], self.y[index]

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``, mirroring :class:`torch.utils.data.TensorDataset`."""
        return self.x, self.y

    def head(self, n: int) -> "InMemoryDataset":
        """The first ``n`` examples, with this set's statistics and names (a view, no copy)."""
        return InMemoryDataset(self.x[:n], self.y[:n], self.mean, self.std, self.name, self.classes)

    def __repr__(self) -> str:
        return (f"InMemoryDataset(name={self.name!r}, n={len(self)}, "
                f"shape={tuple(self.x.shape[1:])}, dtype={self.x.dtype})")


#: What every loader returns: the training set, the test set and a dict describing them.
Split = tuple[InMemoryDataset, InMemoryDataset, dict[str, Any]]


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``(N, C, H, W)`` images on the [0, 1] scale.

    Computed in float64 over chunks of ``chunk`` images, so memory stays small. A
    channel with zero spread gets std 1 (so normalising never divides by zero).
    """
    if x.dim() != 4 or x.shape[0] == 0:
        raise InputError(f"expected non-empty (N, C, H, W) images, got shape {tuple(x.shape)}")
    c = x.shape[1]
    count = x.shape[0] * x.shape[2] * x.shape[3]
    if x.dtype == torch.uint8:
        # Exact and fast: a 256-bin histogram per channel.
        values = torch.arange(256, dtype=torch.float64) / 255.0
        hist = torch.stack([torch.bincount(x[:, i].reshape(-1).cpu(), minlength=256)
                            for i in range(c)]).double()
        mean = hist @ values / count
        var = (hist @ values.pow(2) / count - mean.pow(2)).clamp_min(0.0)
    else:
        total = torch.zeros(c, dtype=torch.float64)
        total_sq = torch.zeros(c, dtype=torch.float64)
        for start in range(0, x.shape[0], chunk):
            part = x[start:start + chunk].cpu().double()
            total += part.sum(dim=(0, 2, 3))
            total_sq += part.pow(2).sum(dim=(0, 2, 3))
        mean = total / count
        var = (total_sq / count - mean.pow(2)).clamp_min(0.0)
    std = var.sqrt()
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return tuple(mean.tolist()), tuple(std.tolist())


def make_split(
    name: str,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    classes: Sequence[str] | None = None,
) -> Split:
    """Wrap loaded tensors as ``(train, test, info)``, both sets normalised by the training statistics.

    ``info`` holds ``name``, ``in_channels``, ``num_classes``, ``image_size``, ``mean``, ``std``,
    ``num_train``, ``num_test`` and ``classes``. Labels outside ``0..num_classes-1`` are an error.
    """
    mean, std = channel_stats(train_x)
    train = InMemoryDataset(train_x, train_y, mean, std, name, classes)
    test = InMemoryDataset(test_x, test_y, mean, std, name, classes)
    for split, ds in (("train", train), ("test", test)):
        if len(ds) and (int(ds.y.min()) < 0 or int(ds.y.max()) >= num_classes):
            raise InputError(f"{name}: {split} labels outside 0..{num_classes - 1}")
    info = {
        "name": name,
        "in_channels": int(train_x.shape[1]),
        "num_classes": int(num_classes),
        "image_size": int(train_x.shape[-1]),
        "mean": mean,
        "std": std,
        "num_train": len(train),
        "num_test": len(test),
        "classes": tuple(classes) if classes is not None else None,
    }
    return train, test, info
