"""Byte-level text that exists on every machine without a download, and batches of contexts from it.

``text:stdlib`` is the Python standard library's own sources (``sysconfig.get_paths()["stdlib"]``):
every ``*.py`` file, in sorted order of its relative path, skipping ``site-packages``,
``dist-packages`` and the test suites (directories named ``test`` or ``tests``). A file goes to
the validation split when the CRC-32 of its relative path is divisible by 20 (about 5% of the
files; a file's split does not depend on which other files exist). The bytes of each split's files
are concatenated in that order; tokens are bytes (vocabulary 256), so bits per token are bits per
byte. The corpus is that of the running Python (``info["python"]`` records its version; 3.11:
~1,100 files, ~11 MB), so results are comparable between machines with the same Python minor version.

:class:`ContextLoader` cuts ``(input, target)`` contexts of the model's length out of a split:
for training, random start offsets drawn per epoch from ``(seed, epoch)`` (an "epoch" of a stream
is a fixed number of contexts, :data:`EPOCH_CONTEXTS` unless the run says otherwise); for
evaluation, evenly spaced non-overlapping contexts, the same every time.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import torch

from ...errors import InputError

__all__ = ["ByteCorpus", "ContextLoader", "TEXT_DATASETS", "EPOCH_CONTEXTS", "EVAL_CONTEXTS", "load_text",
           "stdlib_files"]

#: Text datasets by name.
TEXT_DATASETS = ("text:stdlib",)
#: Training contexts per epoch by default (32 batches of 32).
EPOCH_CONTEXTS = 1024
#: Validation contexts (at most; evenly spaced over the validation bytes).
EVAL_CONTEXTS = 256
_SKIP = {"site-packages", "dist-packages", "__pycache__", "test", "tests"}


class ByteCorpus:
    """A split of a byte-level corpus: ``data`` (``uint8``, 1-D), its ``name`` and its ``files``."""

    def __init__(self, data: torch.Tensor, name: str = "", files: tuple[str, ...] = ()):
        if data.dtype != torch.uint8 or data.dim() != 1:
            raise InputError(f"a byte corpus is a 1-D uint8 tensor, got {data.dtype} of shape {tuple(data.shape)}")
        self.data, self.name, self.files = data, name, tuple(files)

    def __len__(self) -> int:
        """Number of bytes."""
        return int(self.data.numel())

    def __repr__(self) -> str:
        return f"ByteCorpus(name={self.name!r}, bytes={len(self)}, files={len(self.files)})"


def stdlib_files(root: Optional[str | os.PathLike] = None) -> list[str]:
    """The relative paths of the corpus files under ``root`` (default: this Python's stdlib), sorted."""
    base = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    out = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP)
        rel = Path(dirpath).relative_to(base)
        out += [(rel / f).as_posix() for f in filenames if f.endswith(".py")]
    return sorted(out)


def _is_validation(rel: str) -> bool:
    return zlib.crc32(rel.encode()) % 20 == 0


def load_text(name: str, root: Optional[str | os.PathLike] = None) -> tuple[ByteCorpus, ByteCorpus, dict[str, Any]]:
    """``(train, validation, info)`` of a text dataset of :data:`TEXT_DATASETS` (``root``: another
    source tree to read instead of the stdlib, e.g. for tests)."""
    if name not in TEXT_DATASETS:
        raise InputError(f"unknown text dataset {name!r}; valid: {', '.join(TEXT_DATASETS)}")
    base = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    files = stdlib_files(base)
    if not files:
        raise FileNotFoundError(f"{name}: no *.py files under {base}; pass data_root=<a directory of Python sources>")
    splits: dict[bool, list[str]] = {False: [], True: []}
    for rel in files:
        splits[_is_validation(rel)].append(rel)
    if not splits[True] or not splits[False]:
        raise InputError(f"{name}: {len(files)} files under {base} are too few for a train/validation split")

    def read(rels: list[str]) -> torch.Tensor:
        buf = bytearray()
        for rel in rels:
            buf += (base / rel).read_bytes()
        return torch.frombuffer(buf, dtype=torch.uint8).clone() if buf else torch.zeros(0, dtype=torch.uint8)

    train = ByteCorpus(read(splits[False]), name, tuple(splits[False]))
    valid = ByteCorpus(read(splits[True]), name, tuple(splits[True]))
    info = {"name": name, "kind": "text", "in_channels": 1, "num_classes": 256, "image_size": None,
            "mean": None, "std": None, "num_train": len(train), "num_test": len(valid),
            "train_files": len(train.files), "test_files": len(valid.files), "root": str(base),
            "python": f"{sys.version_info.major}.{sys.version_info.minor}", "classes": None}
    return train, valid, info


class ContextLoader:
    """Batches ``(x, y)`` of ``(B, context)`` int64 tokens, ``y`` being ``x`` shifted by one byte.

    Args:
        corpus: a :class:`ByteCorpus` (or a 1-D uint8 tensor).
        batch_size: contexts per batch.
        context: tokens per context (the model's context length).
        contexts: contexts per epoch; training default :data:`EPOCH_CONTEXTS`, evaluation default
            (and maximum) ``min(EVAL_CONTEXTS, the non-overlapping contexts that fit)``.
        shuffle: ``True`` (training): start offsets drawn uniformly from a generator seeded by
            ``(seed, epoch)``; ``False`` (evaluation): evenly spaced, non-overlapping, fixed.
        seed: the run's seed.
        device: where batches are produced.

    Like :class:`~sparsetrain.experiments.loader.Loader`, :meth:`set_epoch` selects the epoch and
    can skip its first batches, so a resumed run sees exactly the batches of an uninterrupted one.
    """

    def __init__(self, corpus: Any, batch_size: int, context: int, contexts: Optional[int] = None,
                 shuffle: bool = True, seed: int = 0, device: Optional[str | torch.device] = None):
        data = corpus.data if isinstance(corpus, ByteCorpus) else corpus
        for key, value in (("batch_size", batch_size), ("context", context)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{key} must be a positive int, got {value!r}")
        if data.numel() < context + 2:
            raise InputError(f"the corpus ({data.numel()} bytes) is shorter than one context of {context} tokens")
        fit = (data.numel() - 1) // context
        if contexts is not None and (not isinstance(contexts, int) or contexts < 1):
            raise InputError(f"contexts per epoch must be a positive int, got {contexts!r}")
        self.num_examples = (contexts or EPOCH_CONTEXTS) if shuffle else min(contexts or EVAL_CONTEXTS, fit)
        self.batch_size, self.context, self.shuffle, self.seed = batch_size, context, bool(shuffle), int(seed)
        self.device = torch.device(device) if device is not None else data.device
        self._data = data.to(self.device)
        self.epoch, self.start_batch = 0, 0
        if not self.shuffle:  # evenly spaced over the whole split
            stride = (data.numel() - 1 - context) // max(self.num_examples - 1, 1)
            self._fixed = torch.arange(self.num_examples) * max(stride, context)

    def __len__(self) -> int:
        """Batches per epoch."""
        return -(-self.num_examples // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch whose offsets the next iteration uses; skip its first ``start_batch`` batches."""
        if start_batch < 0:
            raise InputError(f"start_batch must be >= 0, got {start_batch}")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def offsets(self) -> torch.Tensor:
        """The start offsets of this epoch's contexts, in order."""
        if not self.shuffle:
            return self._fixed
        g = torch.Generator().manual_seed((self.seed * 1000003 + self.epoch) % (1 << 63))
        return torch.randint(0, self._data.numel() - self.context, (self.num_examples,), generator=g)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)``: int64 ``(B, context)`` inputs and next-byte targets."""
        starts = self.offsets().to(self.device)
        span = torch.arange(self.context + 1, device=self.device)
        begin, self.start_batch = self.start_batch, 0
        for b in range(begin, len(self)):
            idx = starts[b * self.batch_size:(b + 1) * self.batch_size, None] + span
            chunk = self._data[idx].long()
            yield chunk[:, :-1], chunk[:, 1:]

    def __repr__(self) -> str:
        return (f"ContextLoader(contexts={self.num_examples}, batch_size={self.batch_size}, context={self.context}, "
                f"shuffle={self.shuffle}, seed={self.seed}, epoch={self.epoch})")
