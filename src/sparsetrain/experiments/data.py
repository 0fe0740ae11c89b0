"""In-memory image datasets and a fast, deterministic, resumable batch iterator.

Everything here depends on torch and the standard library only (no numpy, no
torchvision):

* :func:`load_dataset` reads Fashion-MNIST / MNIST (idx files, gzipped or not),
  CIFAR-10 / CIFAR-100 (the official python pickle batches, unpickled without numpy),
  scikit-learn's 8x8 ``digits`` (needs scikit-learn) or generates a ``synthetic``
  learnable image set, and returns ``(train, test, info)``.
* :class:`Loader` iterates over an :class:`InMemoryDataset` in batches of normalised
  float images, with a shuffling order and augmentation fully determined by
  ``(seed, epoch)`` so a run can be reproduced exactly after a resume.

Fashion-MNIST is searched for in ``root``, then ``./data/fashion-mnist``, then
``/usr/share/datasets/fashion-mnist`` (the Debian/Ubuntu package
``dataset-fashion-mnist``).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import pickle
import struct
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "DATASETS",
    "FASHION_MNIST_DIRS",
    "MNIST_DIRS",
    "CIFAR_DIRS",
    "InMemoryDataset",
    "Loader",
    "load_dataset",
    "read_idx",
    "channel_stats",
    "random_crop",
]

logger = logging.getLogger(__name__)

#: Canonical dataset names accepted by :func:`load_dataset`.
DATASETS: tuple[str, ...] = ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder", "digits", "synthetic")

_ALIASES = {
    "fashion-mnist": "fashion-mnist", "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist",
    "mnist": "mnist",
    "cifar10": "cifar10", "cifar-10": "cifar10", "cifar_10": "cifar10",
    "cifar100": "cifar100", "cifar-100": "cifar100", "cifar_100": "cifar100",
    "digits": "digits", "synthetic": "synthetic",
    "imagefolder": "imagefolder", "image-folder": "imagefolder", "image_folder": "imagefolder",
}

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

#: Default places searched for Fashion-MNIST after ``root`` (relative paths are
#: resolved against the current working directory at load time).
FASHION_MNIST_DIRS: tuple[str, ...] = ("data/fashion-mnist", "/usr/share/datasets/fashion-mnist")
#: Default places searched for MNIST after ``root``.
MNIST_DIRS: tuple[str, ...] = ("data/mnist",)
#: Default places searched for the CIFAR pickle directories after ``root``.
CIFAR_DIRS: tuple[str, ...] = ("data", "data/cifar")

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# Official download locations and MD5 checksums of the gzipped idx files.
_DOWNLOADS: dict[str, dict[str, Any]] = {
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


# --------------------------------------------------------------------------- dataset


class InMemoryDataset:
    """A labelled image set held in memory as two tensors.

    Attributes:
        x: images, ``(N, C, H, W)``; ``uint8`` in 0..255 or floating point in [0, 1].
        y: labels, ``int64`` of shape ``(N,)``.
        mean, std: per-channel statistics of the *training* images on the [0, 1] scale,
            used by :class:`Loader` for normalisation.
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
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"labels must be (N,) with N={x.shape[0]}, got {tuple(y.shape)}")
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

    def __repr__(self) -> str:
        return (f"InMemoryDataset(name={self.name!r}, n={len(self)}, "
                f"shape={tuple(self.x.shape[1:])}, dtype={self.x.dtype})")


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """Convert images to float32 on the [0, 1] scale (uint8 is divided by 255)."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``(N, C, H, W)`` images on the [0, 1] scale.

    Computed in float64 over chunks of ``chunk`` images, so memory stays small. A
    channel with zero spread gets std 1 (so normalising never divides by zero).
    """
    if x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(f"expected non-empty (N, C, H, W) images, got shape {tuple(x.shape)}")
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


def _make_split(
    name: str,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    classes: Sequence[str] | None = None,
) -> tuple[InMemoryDataset, InMemoryDataset, dict[str, Any]]:
    mean, std = channel_stats(train_x)
    train = InMemoryDataset(train_x, train_y, mean, std, name, classes)
    test = InMemoryDataset(test_x, test_y, mean, std, name, classes)
    for split, ds in (("train", train), ("test", test)):
        if len(ds) and (int(ds.y.min()) < 0 or int(ds.y.max()) >= num_classes):
            raise ValueError(f"{name}: {split} labels outside 0..{num_classes - 1}")
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


# --------------------------------------------------------------------------- idx files

_IDX_DTYPES = {
    0x08: (torch.uint8, 1), 0x09: (torch.int8, 1), 0x0B: (torch.int16, 2),
    0x0C: (torch.int32, 4), 0x0D: (torch.float32, 4), 0x0E: (torch.float64, 8),
}


def _read_bytes(path: Path) -> bytes:
    with path.open("rb") as fh:
        head = fh.read(2)
    if head == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as fh:
                return fh.read()
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: corrupted gzip file ({exc})") from exc
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
        raise ValueError(f"{path}: not an idx file (only {len(data)} bytes)")
    zero, dtype_code, dims = struct.unpack(">HBB", data[:4])
    magic = int.from_bytes(data[:4], "big")
    if zero != 0 or dtype_code not in _IDX_DTYPES or dims == 0:
        expected = f"0x000008{ndim:02x}" if ndim is not None else "0x000008NN"
        raise ValueError(
            f"{path}: bad idx magic number 0x{magic:08x} (expected {expected}); "
            "the file is corrupted or not an idx file")
    if ndim is not None and dims != ndim:
        raise ValueError(
            f"{path}: idx file has {dims} dimensions (magic 0x{magic:08x}), expected {ndim}")
    header = 4 + 4 * dims
    if len(data) < header:
        raise ValueError(f"{path}: truncated idx header ({len(data)} bytes, need {header})")
    shape = struct.unpack(f">{dims}I", data[4:header])
    dtype, itemsize = _IDX_DTYPES[dtype_code]
    expected_len = header + math.prod(shape) * itemsize
    if len(data) != expected_len:
        raise ValueError(
            f"{path}: idx size mismatch: header says shape {tuple(shape)} "
            f"({expected_len} bytes in all) but the file has {len(data)} bytes; "
            "the file is truncated or corrupted")
    if math.prod(shape) == 0:
        return torch.zeros(shape, dtype=dtype)
    buf = bytearray(memoryview(data)[header:])
    tensor = torch.frombuffer(buf, dtype=torch.uint8) if itemsize == 1 else None
    if tensor is None:
        # Multi-byte idx data is big-endian: swap to native order byte-wise.
        raw = torch.frombuffer(buf, dtype=torch.uint8).view(-1, itemsize)
        if struct.pack("=H", 1) == struct.pack("<H", 1):
            raw = raw.flip(1)
        tensor = raw.contiguous().view(dtype)
    elif dtype != torch.uint8:
        tensor = tensor.view(dtype)
    return tensor.reshape(shape)


def _find_idx_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def _idx_dir_candidates(root: str | os.PathLike | None, subdirs: Sequence[str],
                        defaults: Sequence[str]) -> list[Path]:
    dirs: list[Path] = []
    if root is not None:
        root = Path(root).expanduser()
        dirs.append(root)
        dirs += [root / sub for sub in subdirs]
    dirs += [Path(d) for d in defaults]
    return dirs


def _locate_idx(dirs: Sequence[Path]) -> dict[str, Path] | None:
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


def _download_idx(name: str, directory: Path) -> None:
    spec = _DOWNLOADS[name]
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


def _load_idx_dataset(
    name: str, root: str | os.PathLike | None, download: bool,
    subdirs: Sequence[str], defaults: Sequence[str], how_to: str,
    classes: Sequence[str] | None,
) -> tuple[InMemoryDataset, InMemoryDataset, dict[str, Any]]:
    dirs = _idx_dir_candidates(root, subdirs, defaults)
    files = _locate_idx(dirs)
    if files is None and download:
        target = Path(root).expanduser() if root is not None else Path(defaults[0])
        _download_idx(name, target)
        files = _locate_idx([target])
    if files is None:
        searched = "\n  ".join(str(d.resolve() if not d.is_absolute() else d) for d in dirs)
        raise FileNotFoundError(
            f"{name} not found. Looked for {', '.join(s + '[.gz]' for s in _IDX_FILES.values())} "
            f"in:\n  {searched}\nTo get it: {how_to}")
    images = {}
    labels = {}
    for split in ("train", "test"):
        images[split] = read_idx(files[f"{split}_images"], ndim=3)
        labels[split] = read_idx(files[f"{split}_labels"], ndim=1)
        if images[split].dtype != torch.uint8 or labels[split].dtype != torch.uint8:
            raise ValueError(f"{name}: expected unsigned-byte idx files for the {split} split")
        if images[split].shape[0] != labels[split].shape[0]:
            raise ValueError(
                f"{name}: {split} split has {images[split].shape[0]} images but "
                f"{labels[split].shape[0]} labels ({files[f'{split}_images']}, "
                f"{files[f'{split}_labels']})")
    logger.info("loaded %s from %s", name, files["train_images"].parent)
    return _make_split(
        name,
        images["train"].unsqueeze(1), labels["train"].long(),
        images["test"].unsqueeze(1), labels["test"].long(),
        num_classes=10, classes=classes,
    )


# --------------------------------------------------------------------------- CIFAR


class _NumpyArrayStub:
    """Stand-in for ``numpy.ndarray`` while unpickling: records shape, dtype and bytes."""

    def __init__(self, *args: Any):
        self.shape: tuple[int, ...] = ()
        self.dtype: _NumpyDtypeStub | None = None
        self.fortran = False
        self.raw: bytes = b""

    def __setstate__(self, state: tuple) -> None:
        # (version, shape, dtype, is_fortran, rawdata); version is absent in old pickles.
        if len(state) == 5:
            state = state[1:]
        shape, dtype, fortran, raw = state
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        self.fortran = bool(fortran)
        if isinstance(raw, str):  # Python 2 str loaded with encoding="latin1"
            raw = raw.encode("latin1")
        if isinstance(raw, list):
            raise pickle.UnpicklingError("numpy object arrays are not supported")
        self.raw = bytes(raw)

    def to_tensor(self) -> torch.Tensor:
        """Convert to a torch tensor (copying the bytes)."""
        assert self.dtype is not None
        return _tensor_from_bytes(self.raw, self.dtype, self.shape, self.fortran)


class _NumpyDtypeStub:
    """Stand-in for ``numpy.dtype`` while unpickling."""

    _MAP = {
        key: value for key, value in {
            "u1": torch.uint8, "i1": torch.int8, "b1": torch.bool, "i2": torch.int16,
            "i4": torch.int32, "i8": torch.int64, "f2": torch.float16, "f4": torch.float32,
            "f8": torch.float64,
            # Unsigned 16/32/64-bit tensors only exist in recent torch versions.
            "u2": getattr(torch, "uint16", None), "u4": getattr(torch, "uint32", None),
            "u8": getattr(torch, "uint64", None),
        }.items() if value is not None
    }

    def __init__(self, spec: Any = "u1", *args: Any):
        if isinstance(spec, bytes):
            spec = spec.decode("latin1")
        self.spec = str(spec)
        self.byteorder = "="

    def __setstate__(self, state: tuple) -> None:
        if len(state) > 1 and isinstance(state[1], (str, bytes)):
            order = state[1]
            self.byteorder = order.decode("latin1") if isinstance(order, bytes) else order

    def torch_dtype(self) -> tuple[torch.dtype, int]:
        """Return the equivalent torch dtype and item size."""
        spec = self.spec.lstrip("<>=|")
        if spec not in self._MAP:
            raise pickle.UnpicklingError(f"unsupported numpy dtype {self.spec!r} in pickle")
        dtype = self._MAP[spec]
        return dtype, int(spec[1:])


def _tensor_from_bytes(raw: bytes | bytearray | memoryview, dtype: _NumpyDtypeStub,
                       shape: Sequence[int], fortran: bool) -> torch.Tensor:
    tdtype, itemsize = dtype.torch_dtype()
    count = math.prod(shape)
    if len(raw) != count * itemsize:
        raise pickle.UnpicklingError(
            f"numpy array data has {len(raw)} bytes, expected {count * itemsize} for shape {tuple(shape)}")
    if count == 0:
        return torch.zeros(tuple(shape), dtype=tdtype)
    u8 = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    little = struct.pack("=H", 1) == struct.pack("<H", 1)
    big_endian_data = dtype.byteorder == ">" or (dtype.byteorder == "=" and not little)
    if itemsize > 1 and big_endian_data == little:
        u8 = u8.view(-1, itemsize).flip(1).contiguous().view(-1)
    tensor = u8.view(tdtype)
    if fortran:
        return tensor.reshape(tuple(reversed(shape))).permute(*reversed(range(len(shape)))).contiguous()
    return tensor.reshape(tuple(shape))


def _np_reconstruct(cls: Any, shape: Any = (0,), dtype: Any = b"b") -> _NumpyArrayStub:
    return _NumpyArrayStub()


def _np_frombuffer(buf: Any, dtype: _NumpyDtypeStub, shape: Sequence[int], order: str) -> torch.Tensor:
    return _tensor_from_bytes(bytes(buf), dtype, shape, order == "F")


def _np_scalar(dtype: _NumpyDtypeStub, raw: Any = b"") -> int | float | bool:
    if isinstance(raw, str):
        raw = raw.encode("latin1")
    return _tensor_from_bytes(raw, dtype, (), False).item()


class _NumpyFreeUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR batches that maps numpy arrays to stubs, without numpy.

    Only the handful of numpy globals used to pickle plain arrays are allowed; any
    other global raises :class:`pickle.UnpicklingError` (which also makes loading an
    untrusted pickle safe from arbitrary code execution).
    """

    def find_class(self, module: str, name: str) -> Any:
        """Resolve the numpy reconstruction helpers to torch-based stand-ins."""
        if module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            if name == "_reconstruct":
                return _np_reconstruct
            if name == "scalar":
                return _np_scalar
        if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
            return _np_frombuffer
        if module == "numpy" and name == "ndarray":
            return _NumpyArrayStub
        if module == "numpy" and name == "dtype":
            return _NumpyDtypeStub
        if module in ("builtins", "__builtin__") and name in ("bytearray", "list", "dict", "set"):
            return {"bytearray": bytearray, "list": list, "dict": dict, "set": set}[name]
        if module == "_codecs" and name == "encode":
            import codecs
            return codecs.encode
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, _NumpyArrayStub):
        return value.to_tensor()
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (bytes, bytearray)):
        return torch.frombuffer(bytearray(value), dtype=torch.uint8)
    return torch.tensor(value)


def _load_cifar_batch(path: Path, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with path.open("rb") as fh:
            batch = _NumpyFreeUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a valid CIFAR python batch ({exc})") from exc
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a dict, got {type(batch).__name__}")
    batch = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise ValueError(f"{path}: missing 'data' or '{label_key}' entry (keys: {sorted(batch)})")
    data = _as_tensor(batch["data"])
    labels = _as_tensor(batch[label_key]).long().reshape(-1)
    if data.dtype != torch.uint8 or data.numel() != labels.numel() * 3072:
        raise ValueError(
            f"{path}: expected uint8 data of {labels.numel()} x 3072 values, got "
            f"{data.dtype} with {data.numel()} values")
    return data.reshape(-1, 3, 32, 32).contiguous(), labels


def _load_cifar(name: str, root: str | os.PathLike | None) -> tuple[InMemoryDataset, InMemoryDataset, dict[str, Any]]:
    if name == "cifar10":
        subdir, train_files, test_files = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
        label_key, num_classes, archive = "labels", 10, "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
        meta_file, names_key = "batches.meta", "label_names"
    else:
        subdir, train_files, test_files = "cifar-100-python", ["train"], ["test"]
        label_key, num_classes, archive = "fine_labels", 100, "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
        meta_file, names_key = "meta", "fine_label_names"
    candidates: list[Path] = []
    bases = ([Path(root).expanduser()] if root is not None else []) + [Path(d) for d in CIFAR_DIRS]
    for base in bases:
        candidates += [base / subdir, base]
    directory = next((d for d in candidates if all((d / f).is_file() for f in train_files + test_files)), None)
    if directory is None:
        searched = "\n  ".join(str(d) for d in candidates)
        raise FileNotFoundError(
            f"{name} not found: need {subdir}/{{{', '.join(train_files + test_files)}}} "
            f"(the python version of the dataset) in one of:\n  {searched}\n"
            f"To get it: download {archive} and extract it into the directory you pass as root "
            f"(e.g. `tar xzf {archive.rsplit('/', 1)[1]} -C ./data`).")
    parts = [_load_cifar_batch(directory / f, label_key) for f in train_files]
    tests = [_load_cifar_batch(directory / f, label_key) for f in test_files]
    classes = None
    if (directory / meta_file).is_file():
        try:
            with (directory / meta_file).open("rb") as fh:
                meta = _NumpyFreeUnpickler(fh, encoding="bytes").load()
            raw = meta.get(names_key.encode(), meta.get(names_key))
            if raw is not None:
                classes = [c.decode() if isinstance(c, bytes) else str(c) for c in raw]
        except Exception as exc:  # metadata is optional
            logger.warning("could not read %s: %s", directory / meta_file, exc)
    logger.info("loaded %s from %s", name, directory)
    return _make_split(
        name,
        torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
        torch.cat([t[0] for t in tests]), torch.cat([t[1] for t in tests]),
        num_classes=num_classes, classes=classes,
    )


# --------------------------------------------------------------------------- digits / synthetic


def _load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> tuple[InMemoryDataset, InMemoryDataset, dict[str, Any]]:
    try:
        from sklearn.datasets import load_digits  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ImportError(
            "the 'digits' dataset needs scikit-learn: run `pip install scikit-learn`") from exc
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = load_digits()
    images = torch.tensor(bunch.images.tolist(), dtype=torch.float32).div_(16.0).unsqueeze(1)
    labels = torch.tensor(bunch.target.tolist(), dtype=torch.long)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
    n_test = int(round(len(labels) * test_fraction))
    test_idx, train_idx = perm[:n_test].sort().values, perm[n_test:].sort().values
    return _make_split("digits", images[train_idx], labels[train_idx],
                       images[test_idx], labels[test_idx], num_classes=10,
                       classes=[str(i) for i in range(10)])


def _load_synthetic(
    num_train: int = 512,
    num_test: int = 256,
    num_classes: int = 10,
    channels: int = 1,
    image_size: int = 28,
    noise: float = 0.25,
    seed: int = 0,
) -> tuple[InMemoryDataset, InMemoryDataset, dict[str, Any]]:
    for key, value in (("num_train", num_train), ("num_test", num_test), ("num_classes", num_classes),
                       ("channels", channels), ("image_size", image_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"synthetic: {key} must be a positive int, got {value!r}")
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
    return _make_split("synthetic", train_x, train_y, test_x, test_y, num_classes=num_classes,
                       classes=[f"class{i}" for i in range(num_classes)])


# --------------------------------------------------------------------------- image folders


def _load_imagefolder(root: str | os.PathLike | None, image_size: int | None = None,
                      grayscale: bool = False) -> tuple[InMemoryDataset, InMemoryDataset, dict[str, Any]]:
    """``root/train/<class>/*.png`` and ``root/test/<class>/*`` (or ``val/``), read with Pillow."""
    if root is None:
        raise FileNotFoundError("imagefolder needs a root directory: --data-root DIR with DIR/train/<class>/... "
                                "and DIR/test/<class>/... (or DIR/val/...)")
    base = Path(root).expanduser()
    train_dir = base / "train"
    test_dir = next((base / d for d in ("test", "val") if (base / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise FileNotFoundError(f"imagefolder: expected {train_dir}/<class>/... and {base}/test (or val)/<class>/...")
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("imagefolder needs Pillow: pip install 'sparsetrain[images]' (or pillow)") from e
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"imagefolder: no class directories in {train_dir}")
    index = {c: i for i, c in enumerate(classes)}

    def read(split_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for c in sorted(d.name for d in split_dir.iterdir() if d.is_dir()):
            if c not in index:
                raise ValueError(f"imagefolder: class {c!r} in {split_dir} is not among the training classes")
            for f in sorted(p for p in (split_dir / c).iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES):
                with Image.open(f) as im:
                    im = im.convert("L" if grayscale else "RGB")
                    if image_size is not None:
                        im = im.resize((image_size, image_size), Image.BILINEAR)
                    w, h = im.size
                    t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
                    t = t.view(h, w, -1).permute(2, 0, 1).contiguous()
                if images and t.shape != images[0].shape:
                    raise ValueError(f"imagefolder: {f} is {tuple(t.shape)}, others {tuple(images[0].shape)}; "
                                     "pass image_size=N to resize every image")
                images.append(t)
                labels.append(index[c])
        if not images:
            raise ValueError(f"imagefolder: no images in {split_dir}")
        return torch.stack(images), torch.tensor(labels, dtype=torch.long)

    train_x, train_y = read(train_dir)
    test_x, test_y = read(test_dir)
    if test_x.shape[1:] != train_x.shape[1:]:
        raise ValueError("imagefolder: train and test images differ in size; pass image_size=N")
    return _make_split("imagefolder", train_x, train_y, test_x, test_y, num_classes=len(classes), classes=classes)


# --------------------------------------------------------------------------- entry point


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    download: bool = False,
    **options: Any,
) -> tuple[InMemoryDataset, InMemoryDataset, dict[str, Any]]:
    """Load a dataset into memory.

    Args:
        name: one of :data:`DATASETS` (``fashion-mnist``, ``mnist``, ``cifar10``,
            ``cifar100``, ``digits``, ``synthetic``; case-insensitive, common
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
        ImportError: ``digits`` without scikit-learn.
    """
    key = _ALIASES.get(str(name).strip().lower())
    if key is None:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    allowed = {
        "synthetic": {"num_train", "num_test", "num_classes", "channels", "image_size", "noise", "seed"},
        "digits": {"test_fraction", "split_seed"},
        "imagefolder": {"image_size", "grayscale"},
    }.get(key, set())
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"unknown option(s) for {key}: {', '.join(sorted(unknown))}; "
                         f"valid: {', '.join(sorted(allowed)) or 'none'}")
    if download and key not in _DOWNLOADS:
        logger.warning("download=True is not supported for %s; ignoring it", key)
    if key == "fashion-mnist":
        how_to = ("`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu, installs into "
                  "/usr/share/datasets/fashion-mnist), or place the four files in "
                  f"{Path(root).expanduser() if root is not None else Path('data/fashion-mnist').resolve()}, "
                  "or pass download=True where a network is available "
                  "(https://github.com/zalandoresearch/fashion-mnist).")
        return _load_idx_dataset(key, root, download, ("fashion-mnist", "FashionMNIST/raw"),
                                 FASHION_MNIST_DIRS, how_to, _FASHION_CLASSES)
    if key == "mnist":
        how_to = ("place the four MNIST idx files in "
                  f"{Path(root).expanduser() if root is not None else Path('data/mnist').resolve()}, "
                  "or pass download=True where a network is available.")
        return _load_idx_dataset(key, root, download, ("mnist", "MNIST/raw"), MNIST_DIRS, how_to,
                                 [str(i) for i in range(10)])
    if key in ("cifar10", "cifar100"):
        return _load_cifar(key, root)
    if key == "digits":
        return _load_digits(**options)
    if key == "imagefolder":
        return _load_imagefolder(root, **options)
    return _load_synthetic(**options)


# --------------------------------------------------------------------------- Loader

_AUGMENTS = ("none", "crop-flip", "crop", "flip")


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
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"need a non-empty dataset with as many labels as images "
                             f"({len(x)} images, {len(y)} labels)")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
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
            raise ValueError(f"pad_to={pad_to} is smaller than the images ({tuple(x.shape[-2:])})")
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
            raise ValueError(f"augment must be None, a bool, a callable or one of {_AUGMENTS}; got {augment!r}")
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
                raise ValueError(f"mean/std need {c} values, got {m.numel()} and {s.numel()}")
            if bool((s <= 0).any()):
                raise ValueError("std must be positive")
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
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
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
