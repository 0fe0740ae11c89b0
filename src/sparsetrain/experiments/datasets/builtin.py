"""Data sets that need no files: scikit-learn's 8x8 ``digits`` and a learnable ``synthetic`` image set."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import InputError
from .memory import Split, make_split

__all__ = ["load_digits", "load_synthetic"]


def load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> Split:
    """scikit-learn's 1797 8x8 digits as float images in [0, 1], split at random (``split_seed``)
    into ``1 - test_fraction`` training and ``test_fraction`` test examples. Needs scikit-learn."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ImportError(
            "the 'digits' dataset needs scikit-learn: run `pip install scikit-learn`") from exc
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = sklearn_digits()
    images = torch.tensor(bunch.images.tolist(), dtype=torch.float32).div_(16.0).unsqueeze(1)
    labels = torch.tensor(bunch.target.tolist(), dtype=torch.long)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
    n_test = int(round(len(labels) * test_fraction))
    test_idx, train_idx = perm[:n_test].sort().values, perm[n_test:].sort().values
    return make_split("digits", images[train_idx], labels[train_idx],
                      images[test_idx], labels[test_idx], num_classes=10,
                      classes=[str(i) for i in range(10)])


def load_synthetic(
    num_train: int = 512,
    num_test: int = 256,
    num_classes: int = 10,
    channels: int = 1,
    image_size: int = 28,
    noise: float = 0.25,
    seed: int = 0,
) -> Split:
    """A learnable image set generated from ``seed``: each class is a smooth random template, each
    image its class's template plus Gaussian ``noise``, stored as ``uint8``."""
    for key, value in (("num_train", num_train), ("num_test", num_test), ("num_classes", num_classes),
                       ("channels", channels), ("image_size", image_size)):
        if not isinstance(value, int) or value < 1:
            raise InputError(f"synthetic: {key} must be a positive int, got {value!r}")
    g = torch.Generator().manual_seed(seed)
    # Smooth, class-specific templates: random low-resolution patterns upsampled.
    low = max(2, image_size // 4)
    coarse = torch.rand(num_classes, channels, low, low, generator=g)
    templates = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=g)]
        images = 0.15 + 0.7 * templates[labels] + noise * torch.randn(n, channels, image_size, image_size, generator=g)
        return images.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8), labels.long()

    train_x, train_y = make(num_train)
    test_x, test_y = make(num_test)
    return make_split("synthetic", train_x, train_y, test_x, test_y, num_classes=num_classes,
                      classes=[f"class{i}" for i in range(num_classes)])
