"""The data layer's front door: :func:`load_dataset` by name, and the names it re-exports.

Everything here depends on torch and the standard library only (no numpy, no torchvision):

* :func:`load_dataset` reads Fashion-MNIST / MNIST (idx files, gzipped or not),
  CIFAR-10 / CIFAR-100 (the official python batches, read without numpy), image folders
  (Pillow), scikit-learn's 8x8 ``digits`` or generates a ``synthetic`` learnable image set,
  and returns ``(train, test, info)``; each format lives in its own module of
  :mod:`sparsetrain.experiments.datasets`.
* ``text:stdlib`` (:mod:`sparsetrain.experiments.datasets.text`): the Python standard library's
  sources as a byte-level corpus, split by file, batched into contexts by
  :class:`~sparsetrain.experiments.datasets.text.ContextLoader`.
* :class:`Loader` (:mod:`sparsetrain.experiments.loader`) iterates over an
  :class:`InMemoryDataset` in batches of normalised float images, with a shuffling order
  and augmentation fully determined by ``(seed, epoch)`` so a run can be reproduced
  exactly after a resume, also from the middle of an epoch.

Fashion-MNIST is searched for in ``root``, then ``./data/fashion-mnist``, then
``/usr/share/datasets/fashion-mnist`` (the Debian/Ubuntu package
``dataset-fashion-mnist``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..errors import InputError
from .datasets.builtin import load_digits, load_synthetic
from .datasets.cifar import CIFAR_DIRS, load_cifar
from .datasets.idx import DOWNLOADS, FASHION_MNIST_DIRS, MNIST_DIRS, load_fashion_mnist, load_mnist, read_idx
from .datasets.imagefolder import load_imagefolder
from .datasets.memory import InMemoryDataset, Split, channel_stats
from .datasets.text import TEXT_DATASETS, ByteCorpus, ContextLoader, load_text
from .loader import Loader, random_crop

__all__ = [
    "DATASETS",
    "FASHION_MNIST_DIRS",
    "MNIST_DIRS",
    "CIFAR_DIRS",
    "InMemoryDataset",
    "Loader",
    "ByteCorpus",
    "ContextLoader",
    "TEXT_DATASETS",
    "load_dataset",
    "dataset_name",
    "read_idx",
    "channel_stats",
    "random_crop",
]

logger = logging.getLogger(__name__)

#: Canonical dataset names accepted by :func:`load_dataset`.
DATASETS: tuple[str, ...] = ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder", "digits", "synthetic",
                             *TEXT_DATASETS)

_ALIASES = {
    "fashion-mnist": "fashion-mnist", "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist",
    "mnist": "mnist",
    "cifar10": "cifar10", "cifar-10": "cifar10", "cifar_10": "cifar10",
    "cifar100": "cifar100", "cifar-100": "cifar100", "cifar_100": "cifar100",
    "digits": "digits", "synthetic": "synthetic",
    "imagefolder": "imagefolder", "image-folder": "imagefolder", "image_folder": "imagefolder",
    **{name: name for name in TEXT_DATASETS},
}

# the options each dataset takes (all others have none)
_OPTIONS = {
    "synthetic": {"num_train", "num_test", "num_classes", "channels", "image_size", "noise", "seed"},
    "digits": {"test_fraction", "split_seed"},
    "imagefolder": {"image_size", "grayscale"},
}


def dataset_name(name: str) -> str:
    """The canonical name of a dataset (``"Fashion_MNIST"`` -> ``"fashion-mnist"``); a ``ValueError``
    listing the valid names for an unknown one."""
    key = _ALIASES.get(str(name).strip().lower())
    if key is None:
        raise InputError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return key


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    download: bool = False,
    **options: Any,
) -> Split:
    """Load a dataset into memory.

    Args:
        name: one of :data:`DATASETS` (``fashion-mnist``, ``mnist``, ``cifar10``,
            ``cifar100``, ``imagefolder``, ``digits``, ``synthetic``, ``text:stdlib`` (which
            returns :class:`ByteCorpus` splits and ``info["kind"] == "text"``); case-insensitive, common
            spellings such as ``cifar-10`` or ``fashion_mnist`` are accepted).
        root: directory to look in first. Fashion-MNIST is then searched in
            ``./data/fashion-mnist`` and ``/usr/share/datasets/fashion-mnist``; MNIST in
            ``./data/mnist``; CIFAR in ``./data`` (``cifar-10-batches-py/`` or
            ``cifar-100-python/`` inside ``root``, or ``root`` itself).
        download: for ``fashion-mnist`` and ``mnist`` only, download the missing idx
            files (official URLs, MD5-checked) into ``root`` (or the first default
            directory) when they are not found anywhere. Needs network access.
        **options: dataset-specific options. ``imagefolder`` (``root/train/<class>/*``,
            ``root/test/<class>/*`` or ``val/``, read with Pillow): ``image_size=None``
            (resize to N×N), ``grayscale=False``. ``synthetic``: ``num_train=512``,
            ``num_test=256``, ``num_classes=10``, ``channels=1``, ``image_size=28``,
            ``noise=0.25``, ``seed=0``. ``digits``: ``test_fraction=0.2``, ``split_seed=0``.

    Returns:
        ``(train, test, info)``: two :class:`InMemoryDataset` (images ``uint8``
        ``(N, C, H, W)``, except ``digits`` which is float in [0, 1]; labels ``int64``)
        and a dict with ``name``, ``in_channels``, ``num_classes``, ``image_size``,
        ``mean`` and ``std`` (per-channel tuples computed on the training images, [0, 1]
        scale), ``num_train``, ``num_test`` and ``classes``.

    Raises:
        ValueError: unknown name or option, or malformed files.
        FileNotFoundError: the data is not present; the message says how to get it.
        ImportError: ``digits`` without scikit-learn, ``imagefolder`` without Pillow.
    """
    key = dataset_name(name)
    allowed = _OPTIONS.get(key, set())
    unknown = set(options) - allowed
    if unknown:
        raise InputError(f"unknown option(s) for {key}: {', '.join(sorted(unknown))}; "
                         f"valid: {', '.join(sorted(allowed)) or 'none'}")
    if download and key not in DOWNLOADS:
        logger.warning("download=True is not supported for %s; ignoring it", key)
    if key == "fashion-mnist":
        return load_fashion_mnist(root, download)
    if key == "mnist":
        return load_mnist(root, download)
    if key in ("cifar10", "cifar100"):
        return load_cifar(key, root)
    if key == "digits":
        return load_digits(**options)
    if key == "imagefolder":
        return load_imagefolder(root, **options)
    if key in TEXT_DATASETS:  # (ByteCorpus, ByteCorpus, info) with info["kind"] == "text"
        return load_text(key, root)
    return load_synthetic(**options)
