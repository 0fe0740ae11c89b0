"""The deterministic, resumable batch iterator over an in-memory dataset.

Each epoch's order and augmentation come from ``(seed, epoch)`` alone, and
:meth:`Loader.set_epoch` can start an epoch at any batch, so a run resumed in the middle of an
epoch sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from ..errors import InputError

__all__ = ["Loader", "random_crop"]

_AUGMENTS = ("none", "crop-flip", "crop", "flip")


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """Convert images to float32 on the [0, 1] scale (uint8 is divided by 255)."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


class Loader:
    """Fast in-memory batch iterator with a reproducible order and augmentation.

    Each epoch's shuffling order and augmentation draws come from a CPU
    ``torch.Generator`` seeded with ``seed * 1000003 + epoch``; call :meth:`set_epoch`
    at the start of every epoch (like ``DistributedSampler``). The same
    ``(seed, epoch)`` therefore always gives the same batches, including after a
    resume, and :meth:`set_epoch` can also skip the first batches of an epoch.

    Batches are produced as follows: gather the raw images (on ``device`` if given,
    where the whole dataset is copied once), convert to float on the [0, 1] scale,
    zero-pad to ``pad_to`` if set, augment, then normalise with the per-channel
    ``mean``/``std`` (by default the dataset's, i.e. the training-set statistics).

    Args:
        dataset: an :class:`InMemoryDataset`, anything with ``.x``/``.y`` tensors, or a
            ``torch.utils.data.TensorDataset`` of ``(images, labels)``.
        batch_size: examples per batch.
        shuffle: shuffle each epoch (otherwise the dataset order is kept).
        seed: base seed of the per-epoch generator.
        augment: ``None``/``False``/``"none"``; ``True`` or ``"crop-flip"`` (random crop
            with 4-pixel zero padding and horizontal flip, the CIFAR recipe); ``"crop"``;
            ``"flip"``; or a callable ``f(x, generator) -> x`` applied to each float batch
            ``(B, C, H, W)`` before normalisation, with a CPU generator seeded from
            ``(seed, epoch, batch index)``.
        drop_last: drop the last incomplete batch.
        device: where batches are produced (default: where the dataset lives).
        pad_to: zero-pad images (before augmentation, in pixel space) to this side
            length, e.g. 32 for 28x28 images fed to a CIFAR ResNet.
        mean, std: override the normalisation statistics.
        normalize: set ``False`` to get images on the [0, 1] scale.
        crop_padding: padding of the random crop (default 4).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        augment: bool | str | Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        drop_last: bool = False,
        device: str | torch.device | None = None,
        *,
        pad_to: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        normalize: bool = True,
        crop_padding: int = 4,
    ):
        if hasattr(dataset, "x") and hasattr(dataset, "y"):
            x, y = dataset.x, dataset.y
        elif hasattr(dataset, "tensors") and len(dataset.tensors) >= 2:
            x, y = dataset.tensors[0], dataset.tensors[1]
        else:
            raise TypeError("dataset must have .x/.y tensors or be a TensorDataset(images, labels)")
        if x.dim() != 4:
            raise InputError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
        if len(x) != len(y) or len(x) == 0:
            raise InputError(f"need a non-empty dataset with as many labels as images "
                             f"({len(x)} images, {len(y)} labels)")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.device = torch.device(device) if device is not None else x.device
        self.epoch = 0
        self.start_batch = 0
        self._x = x.to(self.device)
        self._y = y.to(self.device).long()
        self.num_examples = int(len(x))
        if pad_to is not None and (pad_to < x.shape[-1] or pad_to < x.shape[-2]):
            raise InputError(f"pad_to={pad_to} is smaller than the images ({tuple(x.shape[-2:])})")
        self.pad_to = None if pad_to is None or tuple(x.shape[-2:]) == (pad_to, pad_to) else int(pad_to)
        self.crop_padding = int(crop_padding)

        self._augment_fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
        if augment is None or augment is False:
            mode = "none"
        elif augment is True:
            mode = "crop-flip"
        elif callable(augment):
            mode = "custom"
            self._augment_fn = augment
        elif isinstance(augment, str) and augment.lower() in _AUGMENTS:
            mode = augment.lower()
        else:
            raise InputError(f"augment must be None, a bool, a callable or one of {_AUGMENTS}; got {augment!r}")
        self.augment = mode

        if mean is None:
            mean = getattr(dataset, "mean", None)
        if std is None:
            std = getattr(dataset, "std", None)
        self._norm: tuple[torch.Tensor, torch.Tensor] | None = None
        if normalize and mean is not None and std is not None:
            c = x.shape[1]
            m = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
            s = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
            if m.numel() == 1:
                m, s = m.expand(c), s.expand(c)
            if m.numel() != c or s.numel() != c:
                raise InputError(f"mean/std need {c} values, got {m.numel()} and {s.numel()}")
            if bool((s <= 0).any()):
                raise InputError("std must be positive")
            self._norm = (m.reshape(1, c, 1, 1).to(self.device), s.reshape(1, c, 1, 1).to(self.device))

    def __len__(self) -> int:
        """Number of batches per epoch."""
        if self.drop_last:
            return self.num_examples // self.batch_size
        return -(-self.num_examples // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch whose order/augmentation the next iterations use.

        ``start_batch`` makes the *next* iteration skip the first batches of that epoch
        (for resuming in the middle of one); the batches that follow are identical to
        an uninterrupted run. Later iterations start from batch 0 again.
        """
        if start_batch < 0:
            raise InputError(f"start_batch must be >= 0, got {start_batch}")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def epoch_seed(self, epoch: int | None = None) -> int:
        """The generator seed of ``epoch`` (default: the current epoch)."""
        e = self.epoch if epoch is None else int(epoch)
        return (self.seed * 1000003 + e) % (1 << 63)

    def _plan(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, int]:
        """Order of the epoch and per-position augmentation draws (all on the CPU)."""
        g = torch.Generator().manual_seed(self.epoch_seed())
        n = self.num_examples
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        offsets = flips = None
        if self.augment in ("crop-flip", "crop"):
            offsets = torch.randint(0, 2 * self.crop_padding + 1, (n, 2), generator=g)
        if self.augment in ("crop-flip", "flip"):
            flips = torch.rand(n, generator=g) < 0.5
        return order, offsets, flips, self.epoch_seed()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels)``: normalised float32 ``(B, C, H, W)`` and int64 ``(B,)``."""
        order, offsets, flips, eseed = self._plan()
        bs = self.batch_size
        start, self.start_batch = self.start_batch, 0
        for b in range(start, len(self)):
            lo, hi = b * bs, min((b + 1) * bs, self.num_examples)
            idx = order[lo:hi]
            dev_idx = idx.to(self.device)
            xb = _to_unit(self._x[dev_idx])
            yb = self._y[dev_idx]
            if self.pad_to is not None:
                xb = _pad_to(xb, self.pad_to)
            if offsets is not None:
                xb = random_crop(xb, offsets[lo:hi].to(self.device), self.crop_padding)
            if flips is not None:
                xb = torch.where(flips[lo:hi].to(self.device).view(-1, 1, 1, 1), xb.flip(3), xb)
            if self._augment_fn is not None:
                g = torch.Generator().manual_seed((eseed * 1000003 + b) % (1 << 63))
                xb = self._augment_fn(xb, g)
            if self._norm is not None:
                xb = (xb - self._norm[0]) / self._norm[1]
            yield xb, yb

    def __repr__(self) -> str:
        return (f"Loader(n={self.num_examples}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"seed={self.seed}, epoch={self.epoch}, augment={self.augment!r}, device={self.device})")


def _pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(x, (left, size - w - left, top, size - h - top))


def random_crop(x: torch.Tensor, offsets: torch.Tensor, padding: int) -> torch.Tensor:
    """Crop each image of ``x`` from its zero-padded version at the given offsets.

    Args:
        x: images ``(B, C, H, W)``.
        offsets: ``(B, 2)`` integer ``(dy, dx)`` in ``0..2*padding``; ``(padding, padding)``
            returns the image unchanged.
        padding: zero padding added on every side before cropping.

    Returns:
        Images of the same shape as ``x`` (translated, with zero fill).
    """
    if padding == 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows.view(b, h, 1), cols.view(b, 1, w)]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()
