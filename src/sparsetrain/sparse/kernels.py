"""Compiled CPU kernels for :class:`~sparsetrain.sparse.SparseLinear` (optional, built on first use).

torch's own CSR × dense product on CPU converts layouts inside the call and reaches about a
fifth of the per-multiply-add rate of a dense GEMM, which caps the speed-up of a truly sparse
layer far below what its nonzero count allows. ``csrc/kernels.cpp`` holds two small kernels
written for SparseLinear's layout (activations passed transposed, ``K × B``, as a chain of
SparseLinear layers produces them without copies):

- ``spmm``: ``Y = A · Xᵀ`` for a CSR ``A`` (optionally with its values read through a
  permutation, which gives the transposed product for the input gradient without a copy): the
  batch is cut into 32-column strips packed so each stays in cache while all rows stream over
  it; every stored entry costs one 128-byte load and two 16-wide multiply-adds per strip (the
  bias, if given, is added in the kernel);
- ``sddmm``: the value gradient, one dot product of length B per stored entry.

They are compiled with :func:`torch.utils.cpp_extension.load` the first time a SparseLinear
computes on CPU in float32 (a C++ compiler and ``ninja`` are needed: ``pip install
'sparsetrain[native]'``; about 10 s, cached afterwards in torch's extension directory,
``TORCH_EXTENSIONS_DIR`` moves it). The choice of backend:

- ``SPARSETRAIN_KERNELS=auto`` (default): the compiled kernels when they build, else torch's
  kernels, with one warning in the log saying why;
- ``native``: the compiled kernels or an error;
- ``torch``: torch's kernels only (no compilation).

:func:`set_backend` changes it at run time. Other devices and dtypes always use torch's kernels.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
import threading
from pathlib import Path
from typing import Optional

import torch

__all__ = ["backend", "set_backend", "native_available", "native_error", "spmm", "sddmm", "use_native"]

log = logging.getLogger(__name__)

_BACKENDS = ("auto", "native", "torch")
_SOURCE = Path(__file__).with_name("csrc") / "kernels.cpp"
_lock = threading.Lock()
_state: dict = {"backend": None, "loaded": None, "error": None}


def _check_backend(name: str) -> str:
    name = str(name).strip().lower()
    if name not in _BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}: use one of {', '.join(_BACKENDS)} "
                         "(argument of set_backend or the SPARSETRAIN_KERNELS environment variable)")
    return name


def backend() -> str:
    """The configured backend: ``"auto"``, ``"native"`` or ``"torch"``."""
    if _state["backend"] is None:
        _state["backend"] = _check_backend(os.environ.get("SPARSETRAIN_KERNELS", "auto"))
    return _state["backend"]


def set_backend(name: str) -> None:
    """Choose the SparseLinear CPU kernels: ``"auto"``, ``"native"`` or ``"torch"`` (see module doc).

    ``"native"`` builds the kernels now and raises ``RuntimeError`` if that fails.
    """
    name = _check_backend(name)
    if name == "native" and not native_available():
        raise RuntimeError(f"the compiled sparsetrain kernels are not available: {native_error()}")
    _state["backend"] = name


def _cpu_tag() -> str:
    """Identifies the CPU the kernels are compiled for (``-march=native``): a cached build from
    another CPU model in a shared home directory must not be loaded."""
    flags = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "model name")):
                flags += line
    except OSError:
        pass
    return flags


def _build() -> None:
    """Compile and load ``csrc/kernels.cpp`` (registers ``torch.ops.sparsetrain``); raises on failure."""
    if hasattr(torch.ops, "sparsetrain") and hasattr(torch.ops.sparsetrain, "spmm"):
        return  # already loaded in this process
    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:  # pip's ninja sits beside the interpreter of a venv not on PATH
        here = Path(sys.executable).parent
        if (here / "ninja").exists():
            os.environ["PATH"] = f"{here}{os.pathsep}{os.environ.get('PATH', '')}"
    source = _SOURCE.read_text()
    cflags = ["-O3", "-fopenmp"]
    arch = platform.machine().lower()
    if arch in ("x86_64", "amd64"):
        cflags.append("-march=native")
    elif arch in ("aarch64", "arm64"):
        cflags.append("-mcpu=native")
    key = hashlib.sha256("\0".join([source, " ".join(cflags), torch.__version__, _cpu_tag()]).encode()).hexdigest()
    cpp_extension.load(name=f"sparsetrain_kernels_{key[:12]}", sources=[str(_SOURCE)], extra_cflags=cflags,
                       extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)


def native_available() -> bool:
    """Whether the compiled kernels are loaded (builds them on the first call; never raises)."""
    if _state["loaded"] is None:
        with _lock:
            if _state["loaded"] is None:
                try:
                    _build()
                    _state["loaded"] = True
                except Exception as exc:  # no compiler, no ninja, a build error: fall back
                    _state["loaded"], _state["error"] = False, f"{type(exc).__name__}: {exc}".strip()
                    log.warning("sparsetrain: compiled sparse kernels unavailable, using torch's CSR kernels "
                                "(install a C++ compiler and `pip install ninja`, or set SPARSETRAIN_KERNELS="
                                "torch to silence this): %s", _state["error"].splitlines()[0][:300])
    return bool(_state["loaded"])


def native_error() -> Optional[str]:
    """Why the compiled kernels could not be built (``None`` if they were, or were not tried)."""
    return _state["error"]


def use_native(*tensors: torch.Tensor) -> bool:
    """Whether a product of these tensors runs on the compiled kernels (CPU float32, backend allows)."""
    name = backend()
    if name == "torch":
        return False
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
        return False
    if name == "native":
        if not native_available():
            raise RuntimeError(f"SPARSETRAIN_KERNELS=native but the compiled kernels are not available: "
                               f"{native_error()}")
        return True
    return native_available()


def spmm(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, xt: torch.Tensor, rows: int,
         perm: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``A @ xt (+ bias[:, None])`` for the CSR matrix ``A = (crow, col, values[perm] if perm else
    values)`` with ``rows`` rows; ``xt`` is ``K × B``; returns a contiguous ``rows × B`` tensor."""
    if bias is not None:
        bias = bias.detach().contiguous()
    return torch.ops.sparsetrain.spmm(crow, col, values.contiguous(), perm, xt.contiguous(), int(rows), bias)


def sddmm(crow: torch.Tensor, col: torch.Tensor, gyt: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """``(gyt @ xtᵀ)`` sampled at the stored entries of the CSR structure ``(crow, col)``, in its
    order (``gyt``: ``rows × B``, ``xt``: ``K × B``); returns an ``nnz`` vector."""
    return torch.ops.sparsetrain.sddmm(crow, col, gyt.contiguous(), xt.contiguous())
