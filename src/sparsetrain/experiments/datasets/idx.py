"""MNIST and Fashion-MNIST: idx files (gzipped or not) found in a directory, or downloaded.

Fashion-MNIST is searched for in ``root``, then ``./data/fashion-mnist``, then
``/usr/share/datasets/fashion-mnist`` (the Debian/Ubuntu package ``dataset-fashion-mnist``);
MNIST in ``root``, then ``./data/mnist``. With ``download=True`` missing files are fetched
from the official locations and checked against their MD5 sums.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import struct
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...errors import InputError
from .memory import Split, make_split

__all__ = ["FASHION_MNIST_DIRS", "MNIST_DIRS", "DOWNLOADS", "read_idx", "load_fashion_mnist", "load_mnist"]

logger = logging.getLogger(__name__)

#: Default places searched for Fashion-MNIST after ``root`` (relative paths are
#: resolved against the current working directory at load time).
FASHION_MNIST_DIRS: tuple[str, ...] = ("data/fashion-mnist", "/usr/share/datasets/fashion-mnist")
#: Default places searched for MNIST after ``root``.
MNIST_DIRS: tuple[str, ...] = ("data/mnist",)

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: Official download locations and MD5 checksums of the gzipped idx files.
DOWNLOADS: dict[str, dict[str, Any]] = {
    "fashion-mnist": {
        "urls": (
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ),
        "md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    },
    "mnist": {
        "urls": ("https://ossci-datasets.s3.amazonaws.com/mnist/",),
        "md5": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    },
}

_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

_IDX_DTYPES = {
    0x08: (torch.uint8, 1), 0x09: (torch.int8, 1), 0x0B: (torch.int16, 2),
    0x0C: (torch.int32, 4), 0x0D: (torch.float32, 4), 0x0E: (torch.float64, 8),
}


# --------------------------------------------------------------------------- the file format


def _read_bytes(path: Path) -> bytes:
    with path.open("rb") as fh:
        head = fh.read(2)
    if head == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as fh:
                return fh.read()
        except (OSError, EOFError) as exc:
            raise InputError(f"{path}: corrupted gzip file ({exc})") from exc
    return path.read_bytes()


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> torch.Tensor:
    """Read an idx file (as used by MNIST and Fashion-MNIST), gzipped or not.

    The format is a 4-byte magic number ``0x00 0x00 <type> <ndim>``, ``ndim`` big-endian
    uint32 sizes, then the data in C order (big-endian for multi-byte types).

    Args:
        path: the file; gzip compression is detected from its first bytes.
        ndim: if given, the number of dimensions the file must have (3 for images,
            1 for labels).

    Returns:
        A tensor of the stored shape (``uint8`` for the usual ubyte files).

    Raises:
        ValueError: bad magic number, unexpected number of dimensions, or a file
            whose size does not match its header.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise InputError(f"{path}: not an idx file (only {len(data)} bytes)")
    zero, dtype_code, dims = struct.unpack(">HBB", data[:4])
    magic = int.from_bytes(data[:4], "big")
    if zero != 0 or dtype_code not in _IDX_DTYPES or dims == 0:
        expected = f"0x000008{ndim:02x}" if ndim is not None else "0x000008NN"
        raise InputError(
            f"{path}: bad idx magic number 0x{magic:08x} (expected {expected}); "
            "the file is corrupted or not an idx file")
    if ndim is not None and dims != ndim:
        raise InputError(
            f"{path}: idx file has {dims} dimensions (magic 0x{magic:08x}), expected {ndim}")
    header = 4 + 4 * dims
    if len(data) < header:
        raise InputError(f"{path}: truncated idx header ({len(data)} bytes, need {header})")
    shape = struct.unpack(f">{dims}I", data[4:header])
    dtype, itemsize = _IDX_DTYPES[dtype_code]
    expected_len = header + math.prod(shape) * itemsize
    if len(data) != expected_len:
        raise InputError(
            f"{path}: idx size mismatch: header says shape {tuple(shape)} "
            f"({expected_len} bytes in all) but the file has {len(data)} bytes; "
            "the file is truncated or corrupted")
    if math.prod(shape) == 0:
        return torch.zeros(shape, dtype=dtype)
    raw = torch.frombuffer(bytearray(memoryview(data)[header:]), dtype=torch.uint8)
    if itemsize > 1:
        # Multi-byte idx data is big-endian: swap to native order byte-wise.
        raw = raw.view(-1, itemsize)
        if struct.pack("=H", 1) == struct.pack("<H", 1):
            raw = raw.flip(1)
        raw = raw.contiguous()
    return raw.view(dtype).reshape(shape)


# --------------------------------------------------------------------------- finding the files


def _find_idx_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def _locate(dirs: Sequence[Path]) -> dict[str, Path] | None:
    """The four idx files from the first directory that holds all of them."""
    for directory in dirs:
        if not directory.is_dir():
            continue
        found = {key: _find_idx_file(directory, stem) for key, stem in _IDX_FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
        if any(found.values()):
            missing = [_IDX_FILES[k] for k, v in found.items() if v is None]
            logger.warning("%s has some idx files but lacks %s; skipping it",
                           directory, ", ".join(missing))
    return None


def _download(url: str, dest: Path, md5: str) -> None:
    """Download ``url`` to ``dest`` atomically, checking its MD5."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    digest = hashlib.md5(usedforsecurity=False)
    logger.info("downloading %s", url)
    with urllib.request.urlopen(url, timeout=60) as response, tmp.open("wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != md5:
        tmp.unlink(missing_ok=True)
        raise OSError(f"checksum mismatch for {url}: md5 {digest.hexdigest()}, expected {md5}")
    os.replace(tmp, dest)


def _download_all(name: str, directory: Path) -> None:
    spec = DOWNLOADS[name]
    for filename, md5 in spec["md5"].items():
        dest = directory / filename
        if dest.is_file():
            continue
        errors = []
        for base in spec["urls"]:
            try:
                _download(base + filename, dest, md5)
                break
            except OSError as exc:  # URLError and HTTPError are OSErrors
                errors.append(f"{base}{filename}: {exc}")
        else:
            raise OSError(f"could not download {name} file {filename}:\n  " + "\n  ".join(errors))


# --------------------------------------------------------------------------- the two datasets


def _load(name: str, root: str | os.PathLike | None, download: bool, subdirs: Sequence[str],
          defaults: Sequence[str], how_to: str, classes: Sequence[str]) -> Split:
    dirs: list[Path] = []
    if root is not None:  # a root the user gave is the only place looked in: never another copy silently
        base = Path(root).expanduser()
        dirs += [base] + [base / sub for sub in subdirs]
    else:
        dirs += [Path(d) for d in defaults]
    files = _locate(dirs)
    if files is None and download:
        target = Path(root).expanduser() if root is not None else Path(defaults[0])
        _download_all(name, target)
        files = _locate([target])
    if files is None:
        searched = "\n  ".join(str(d.resolve() if not d.is_absolute() else d) for d in dirs)
        raise FileNotFoundError(
            f"{name} not found. Looked for {', '.join(s + '[.gz]' for s in _IDX_FILES.values())} "
            f"in:\n  {searched}\nTo get it: {how_to}"
            + ("" if root is None else f"\n(Only the data root you gave, {root}, was searched; leave it out to use "
               f"the default locations {', '.join(defaults)}.)"))
    images, labels = {}, {}
    for split in ("train", "test"):
        images[split] = read_idx(files[f"{split}_images"], ndim=3)
        labels[split] = read_idx(files[f"{split}_labels"], ndim=1)
        if images[split].dtype != torch.uint8 or labels[split].dtype != torch.uint8:
            raise InputError(f"{name}: expected unsigned-byte idx files for the {split} split")
        if images[split].shape[0] != labels[split].shape[0]:
            raise InputError(
                f"{name}: {split} split has {images[split].shape[0]} images but "
                f"{labels[split].shape[0]} labels ({files[f'{split}_images']}, "
                f"{files[f'{split}_labels']})")
    logger.info("loaded %s from %s", name, files["train_images"].parent)
    return make_split(name, images["train"].unsqueeze(1), labels["train"].long(),
                      images["test"].unsqueeze(1), labels["test"].long(), num_classes=10, classes=classes)


def _place(root: str | os.PathLike | None, default: str) -> Path:
    return Path(root).expanduser() if root is not None else Path(default).resolve()


def load_fashion_mnist(root: str | os.PathLike | None = None, download: bool = False) -> Split:
    """Fashion-MNIST from ``root`` (or ``root/fashion-mnist``, ``root/FashionMNIST/raw``), then
    :data:`FASHION_MNIST_DIRS`; the error of a missing set says how to get it."""
    how_to = ("`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu, installs into "
              "/usr/share/datasets/fashion-mnist), or place the four files in "
              f"{_place(root, 'data/fashion-mnist')}, "
              "or pass download=True where a network is available "
              "(https://github.com/zalandoresearch/fashion-mnist).")
    return _load("fashion-mnist", root, download, ("fashion-mnist", "FashionMNIST/raw"), FASHION_MNIST_DIRS,
                 how_to, _FASHION_CLASSES)


def load_mnist(root: str | os.PathLike | None = None, download: bool = False) -> Split:
    """MNIST from ``root`` (or ``root/mnist``, ``root/MNIST/raw``), then :data:`MNIST_DIRS`."""
    how_to = (f"place the four MNIST idx files in {_place(root, 'data/mnist')}, "
              "or pass download=True where a network is available.")
    return _load("mnist", root, download, ("mnist", "MNIST/raw"), MNIST_DIRS, how_to,
                 [str(i) for i in range(10)])
