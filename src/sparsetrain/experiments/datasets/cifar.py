"""CIFAR-10 / CIFAR-100 from the official python batches in a user's directory, read without numpy.

The batches are pickles of numpy arrays. :class:`NumpyFreeUnpickler` maps the handful of numpy
globals a plain array needs to small stand-ins that rebuild it as a torch tensor; any other
global is refused, which also keeps an untrusted pickle from running code.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...errors import InputError
from .memory import Split, make_split

__all__ = ["CIFAR_DIRS", "load_cifar", "NumpyFreeUnpickler", "as_tensor"]

logger = logging.getLogger(__name__)

#: Default places searched for the CIFAR pickle directories after ``root``.
CIFAR_DIRS: tuple[str, ...] = ("data", "data/cifar")

_LAYOUT = {  # folder, train files, test files, label key, classes, archive, meta file, class-names key
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10,
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "batches.meta", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100,
                 "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "meta", "fine_label_names"),
}


# --------------------------------------------------------------------------- numpy stand-ins


class _Dtype:
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

    def to_tensor(self, raw: bytes | bytearray | memoryview, shape: Sequence[int], fortran: bool) -> torch.Tensor:
        """The array of ``shape`` stored in ``raw`` with this dtype, as a tensor (copying the bytes)."""
        spec = self.spec.lstrip("<>=|")
        if spec not in self._MAP:
            raise pickle.UnpicklingError(f"unsupported numpy dtype {self.spec!r} in pickle")
        dtype, itemsize = self._MAP[spec], int(spec[1:])
        count = math.prod(shape)
        if len(raw) != count * itemsize:
            raise pickle.UnpicklingError(
                f"numpy array data has {len(raw)} bytes, expected {count * itemsize} for shape {tuple(shape)}")
        if count == 0:
            return torch.zeros(tuple(shape), dtype=dtype)
        u8 = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        little = struct.pack("=H", 1) == struct.pack("<H", 1)
        big_endian_data = self.byteorder == ">" or (self.byteorder == "=" and not little)
        if itemsize > 1 and big_endian_data == little:
            u8 = u8.view(-1, itemsize).flip(1).contiguous().view(-1)
        tensor = u8.view(dtype)
        if fortran:
            return tensor.reshape(tuple(reversed(shape))).permute(*reversed(range(len(shape)))).contiguous()
        return tensor.reshape(tuple(shape))


class _Array:
    """Stand-in for ``numpy.ndarray`` while unpickling: records shape, dtype and bytes."""

    def __init__(self, *args: Any):
        self.shape: tuple[int, ...] = ()
        self.dtype: _Dtype | None = None
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
        return self.dtype.to_tensor(self.raw, self.shape, self.fortran)


def _reconstruct(cls: Any, shape: Any = (0,), dtype: Any = b"b") -> _Array:
    return _Array()


def _frombuffer(buf: Any, dtype: _Dtype, shape: Sequence[int], order: str) -> torch.Tensor:
    return dtype.to_tensor(bytes(buf), shape, order == "F")


def _scalar(dtype: _Dtype, raw: Any = b"") -> int | float | bool:
    if isinstance(raw, str):
        raw = raw.encode("latin1")
    return dtype.to_tensor(raw, (), False).item()


class NumpyFreeUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR batches that maps numpy arrays to stand-ins, without numpy.

    Only the handful of numpy globals used to pickle plain arrays are allowed; any
    other global raises :class:`pickle.UnpicklingError` (which also makes loading an
    untrusted pickle safe from arbitrary code execution). Arrays come out as stand-ins:
    convert them with :func:`as_tensor`.
    """

    def find_class(self, module: str, name: str) -> Any:
        """Resolve the numpy reconstruction helpers to torch-based stand-ins."""
        if module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            if name == "_reconstruct":
                return _reconstruct
            if name == "scalar":
                return _scalar
        if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
            return _frombuffer
        if module == "numpy" and name == "ndarray":
            return _Array
        if module == "numpy" and name == "dtype":
            return _Dtype
        if module in ("builtins", "__builtin__") and name in ("bytearray", "list", "dict", "set"):
            return {"bytearray": bytearray, "list": list, "dict": dict, "set": set}[name]
        if module == "_codecs" and name == "encode":
            import codecs
            return codecs.encode
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def as_tensor(value: Any) -> torch.Tensor:
    """A value read by :class:`NumpyFreeUnpickler` (array stand-in, bytes, list, tensor) as a tensor."""
    if isinstance(value, _Array):
        return value.to_tensor()
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (bytes, bytearray)):
        return torch.frombuffer(bytearray(value), dtype=torch.uint8)
    return torch.tensor(value)


# --------------------------------------------------------------------------- the batches


def _load_batch(path: Path, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with path.open("rb") as fh:
            batch = NumpyFreeUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: not a valid CIFAR python batch ({exc})") from exc
    if not isinstance(batch, dict):
        raise InputError(f"{path}: expected a dict, got {type(batch).__name__}")
    batch = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise InputError(f"{path}: missing 'data' or '{label_key}' entry (keys: {sorted(batch)})")
    data = as_tensor(batch["data"])
    labels = as_tensor(batch[label_key]).long().reshape(-1)
    if data.dtype != torch.uint8 or data.numel() != labels.numel() * 3072:
        raise InputError(
            f"{path}: expected uint8 data of {labels.numel()} x 3072 values, got "
            f"{data.dtype} with {data.numel()} values")
    return data.reshape(-1, 3, 32, 32).contiguous(), labels


def _class_names(path: Path, key: str) -> list[str] | None:
    if not path.is_file():
        return None
    try:
        with path.open("rb") as fh:
            meta = NumpyFreeUnpickler(fh, encoding="bytes").load()
        raw = meta.get(key.encode(), meta.get(key))
        return None if raw is None else [c.decode() if isinstance(c, bytes) else str(c) for c in raw]
    except Exception as exc:  # noqa: BLE001 - metadata is optional
        logger.warning("could not read %s: %s", path, exc)
        return None


def load_cifar(name: str, root: str | os.PathLike | None = None) -> Split:
    """``cifar10`` or ``cifar100`` from ``root/<folder>``, ``root`` itself, or :data:`CIFAR_DIRS`.

    ``<folder>`` is ``cifar-10-batches-py`` or ``cifar-100-python`` (the extracted python
    archive); a missing set's error names the archive to download and where to put it.
    """
    subdir, train_files, test_files, label_key, num_classes, archive, meta_file, names_key = _LAYOUT[name]
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
    parts = [_load_batch(directory / f, label_key) for f in train_files]
    tests = [_load_batch(directory / f, label_key) for f in test_files]
    classes = _class_names(directory / meta_file, names_key)
    logger.info("loaded %s from %s", name, directory)
    return make_split(
        name,
        torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
        torch.cat([t[0] for t in tests]), torch.cat([t[1] for t in tests]),
        num_classes=num_classes, classes=classes,
    )
