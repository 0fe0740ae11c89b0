"""Compiled CPU kernels for :class:`~sparsetrain.sparse.SparseLinear` (optional, built on first use).

torch's own CSR × dense product on CPU converts layouts inside the call and reaches about a
fifth of the per-multiply-add rate of a dense GEMM, which caps the speed-up of a truly sparse
layer far below what its nonzero count allows. ``csrc/kernels.cpp`` holds two small kernels
written for SparseLinear's layout (activations passed transposed, ``K × B``, as a chain of
SparseLinear layers produces them without copies):

- ``spmm``: ``Y = A · Xᵀ`` for a CSR ``A`` (optionally with its values read through a
  permutation — gathered once per call — which gives the transposed product for the input
  gradient from the stored transpose's structure): the batch is cut into strips of two vectors'
  width, packed (``pack``) so each stays in cache while all rows stream over it; every stored
  entry costs two vector loads and two fused multiply-adds per strip (the bias, if given, is
  added in the kernel);
- ``sddmm``: the value gradient, from the packed strips of the output gradient and of the input:
  per stored entry and strip two loads and two fused multiply-adds, the lanes of 8 entries summed
  together.

``pack`` reads an operand either with contiguous rows (``K × B``) or as the transposed view of a
contiguous ``B × K`` activation (what a layer receives), so no transposed copy is made; the
backward pass packs the output gradient once for both of its products (``spmm_packed``,
``sddmm_packed``).

**Instruction sets.** The source holds each kernel three times — AVX-512F and AVX2+FMA with
explicit intrinsics, and a portable 4-lane version (SSE2 / NEON) — and is compiled with generic
flags (``-O3``, never ``-march=native``): the binary runs on any CPU of the architecture, its
speed does not depend on the compiler's tuning for the build machine, and the widest set the CPU
supports is chosen at run time (:func:`isa`; :func:`set_isa` forces a narrower one, which the
tests use to check every path the CPU has).

They are compiled with :func:`torch.utils.cpp_extension.load` the first time a SparseLinear
computes on CPU in float32 (a C++ compiler and ``ninja`` are needed: ``pip install
'sparsetrain[native]'``; under a minute, cached afterwards in torch's extension directory,
``TORCH_EXTENSIONS_DIR`` moves it). The choice of backend:

- ``SPARSETRAIN_KERNELS=auto`` (default): per operation and shape, whichever of the compiled
  kernels and torch's kernels is faster *on this machine*, measured on first use and cached on
  disk (:mod:`sparsetrain.sparse.autotune`); torch's kernels when the compiled ones do not build,
  with one warning in the log saying why;
- ``native``: the compiled kernels or an error;
- ``torch``: torch's kernels only (no compilation).

:func:`set_backend` changes it at run time. Other devices and dtypes always use torch's kernels.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import torch

__all__ = ["backend", "set_backend", "native_available", "native_error", "spmm", "sddmm", "pack", "spmm_packed",
           "sddmm_packed", "use_native", "isa",
           "isas", "set_isa", "build_flags", "build_key", "describe"]

log = logging.getLogger(__name__)

_BACKENDS = ("auto", "native", "torch")
_SOURCE = Path(__file__).with_name("csrc") / "kernels.cpp"
_BODY = _SOURCE.with_name("kernels_body.inc")  # included by kernels.cpp once per instruction set
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


def build_flags() -> list[str]:
    """The compiler flags of the kernels: generic (no ``-march=native``), so the binary and its
    speed are the same on every CPU of the architecture; the instruction set is chosen at run time."""
    return ["-O3", "-fopenmp"]


@functools.lru_cache(maxsize=None)
def build_key() -> str:
    """Identifies a build: the sources, the flags and torch's version (12 hex digits)."""
    text = "\0".join([_SOURCE.read_text(), _BODY.read_text(), " ".join(build_flags()), torch.__version__,
                      platform.machine()])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _build() -> None:
    """Compile and load ``csrc/kernels.cpp`` (registers ``torch.ops.sparsetrain``); raises on failure."""
    if hasattr(torch.ops, "sparsetrain") and hasattr(torch.ops.sparsetrain, "spmm"):
        return  # already loaded in this process
    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:  # pip's ninja sits beside the interpreter of a venv not on PATH
        here = Path(sys.executable).parent
        if (here / "ninja").exists():
            os.environ["PATH"] = f"{here}{os.pathsep}{os.environ.get('PATH', '')}"
    name = f"sparsetrain_kernels_{build_key()}"
    # torch's own place for it (TORCH_EXTENSIONS_DIR moves it), named here so its lock is known
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    build_dir = Path(root) / f"py{sys.version_info.major}{sys.version_info.minor}_cpu" / name
    build_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(build_dir):
        cpp_extension.load(name=name, sources=[str(_SOURCE)], extra_cflags=build_flags(), extra_ldflags=["-fopenmp"],
                           build_directory=str(build_dir), is_python_module=False, verbose=False)


@contextlib.contextmanager
def _build_lock(build_dir: Path):
    """Holds ``build_dir`` for this process's load of the kernels, and removes a lock torch left there.

    ``cpp_extension.load`` takes a ``lock`` file in the build directory for every load (the build, or
    ninja's check that nothing changed) and waits, forever and silently, while one exists: a process
    killed meanwhile (Ctrl-C at start-up) leaves it behind and every later process hangs. Loads are
    serialised here with an OS lock that dies with its process (``flock``), so a ``lock`` file found
    while holding it is stale. Where there is no ``flock`` (Windows), one older than 10 minutes is.
    """
    stale = build_dir / "lock"
    try:
        import fcntl
    except ImportError:  # no flock: only an old lock counts as stale
        fcntl = None
    handle = open(build_dir / "sparsetrain.lock", "a+") if fcntl is not None else None
    try:
        if handle is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            age = time.time() - stale.stat().st_mtime
        except FileNotFoundError:
            age = None
        if age is not None and (handle is not None or age > 600):
            log.warning("sparsetrain: removing %s, left by a process that stopped while loading the compiled "
                        "kernels (torch would wait for it forever)", stale)
            stale.unlink(missing_ok=True)
        yield
    finally:
        if handle is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()


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
         perm: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
         row_major: bool = False) -> torch.Tensor:
    """``A @ xt (+ bias[:, None])`` for the CSR matrix ``A = (crow, col, values[perm] if perm else
    values)`` with ``rows`` rows; ``xt`` is ``K × B`` (contiguous, or the transposed view of a contiguous
    ``B × K``); returns a contiguous ``rows × B`` tensor, or with ``row_major`` its transpose as a
    contiguous ``B × rows`` (what ``nn.Linear`` returns), written so by the kernel."""
    if bias is not None:
        bias = bias.detach().contiguous()
    # xt may be the transposed view of a B × K activation: the kernel packs it without a copy
    return torch.ops.sparsetrain.spmm(crow, col, values.contiguous(), perm, xt, int(rows), bias, bool(row_major))


def sddmm(crow: torch.Tensor, col: torch.Tensor, gyt: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """``(gyt @ xtᵀ)`` sampled at the stored entries of the CSR structure ``(crow, col)``, in its
    order (``gyt``: ``rows × B``, ``xt``: ``K × B``, each contiguous or the transposed view of a
    contiguous matrix); returns an ``nnz`` vector."""
    return torch.ops.sparsetrain.sddmm(crow, col, gyt, xt)


def pack(xt: torch.Tensor) -> torch.Tensor:
    """The strips the kernels read: ``xp[t, k, j] = xt[k, t·T + j]`` (zero past the batch), ``T`` twice
    the vector width of the current instruction set; ``xt`` is ``K × B``, contiguous or the transposed
    view of a contiguous ``B × K``. Valid for :func:`spmm_packed` / :func:`sddmm_packed` under the same
    instruction set."""
    return torch.ops.sparsetrain.pack(xt)


def spmm_packed(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, xp: torch.Tensor, batch: int,
                rows: int, perm: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                row_major: bool = False) -> torch.Tensor:
    """:func:`spmm` on an operand already packed by :func:`pack` (``batch`` columns)."""
    if bias is not None:
        bias = bias.detach().contiguous()
    return torch.ops.sparsetrain.spmm_packed(crow, col, values.contiguous(), perm, xp, int(batch), int(rows), bias,
                                             bool(row_major))


def sddmm_packed(crow: torch.Tensor, col: torch.Tensor, gp: torch.Tensor, xp: torch.Tensor, batch: int) -> torch.Tensor:
    """:func:`sddmm` on operands already packed by :func:`pack` (``batch`` columns)."""
    return torch.ops.sparsetrain.sddmm_packed(crow, col, gp, xp, int(batch))


def isas() -> list[str]:
    """The instruction sets the compiled kernels can use on this CPU, narrowest first
    (``["generic", "avx2", "avx512"]`` on an AVX-512 machine); ``[]`` without the kernels."""
    return list(torch.ops.sparsetrain.isas()) if native_available() else []


def isa() -> Optional[str]:
    """The instruction set the compiled kernels run on (the widest available unless
    :func:`set_isa` chose another); ``None`` without the kernels."""
    return str(torch.ops.sparsetrain.isa()) if native_available() else None


def set_isa(name: str) -> str:
    """Run the compiled kernels on ``name`` (one of :func:`isas`, or ``"best"``); returns it.
    For tests and measurements: the default, the widest set, is the fastest."""
    if not native_available():
        raise RuntimeError(f"the compiled sparsetrain kernels are not available: {native_error()}")
    try:
        return str(torch.ops.sparsetrain.set_isa(str(name)))
    except RuntimeError as exc:
        raise ValueError(str(exc).splitlines()[0]) from None


def _compiler() -> str:
    import subprocess

    cxx = os.environ.get("CXX", "c++")
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0].strip() if out else cxx
    except (OSError, subprocess.SubprocessError):
        return f"{cxx} (not found)"


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` or :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict:
    """What the kernels run on: CPU model, the CPU's SIMD sets, the compiler and flags, the build,
    the configured backend and the instruction set in use (for benchmark reports)."""
    simd = []
    try:
        flags = next((l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith(("flags", "Features"))), "")
        simd = sorted({f for f in flags.split(":", 1)[-1].split() if f in ("sse4_2", "avx", "avx2", "fma", "avx512f",
                                                                         "avx512bw", "avx512vl", "avx512_bf16",
                                                                         "amx_tile", "asimd", "sve")})
    except OSError:
        pass
    return {"cpu": cpu_model(), "machine": platform.machine(), "cpu_simd": simd, "threads": torch.get_num_threads(),
            "compiler": _compiler(), "flags": " ".join(build_flags()), "build": build_key(), "backend": backend(),
            "native": native_available(), "isa": isa(), "native_error": native_error(), "torch": torch.__version__}
