"""Measured choices on the machine at hand, cached on disk.

Two choices of the truly sparse path depend on the CPU, its SIMD width, the thread count and the
shape, so no constant is right everywhere; both are measured the first time they are needed and
remembered:

* :func:`prefer_native` — for one kernel operation (``spmm`` forward, ``spmm_t`` input
  gradient, ``sddmm`` value gradient) on one shape class, whether the compiled kernels or
  torch's are faster. With ``SPARSETRAIN_KERNELS=auto`` (the default) SparseLinear asks it, so
  the default is never slower than torch's kernels on a shape it has measured.
* :func:`sparsetrain.sparse.execution.sparse_layer_faster` — whether a Linear layer of a given
  shape, batch and density trains faster truly sparse (SparseLinear) than masked dense;
  ``execution="auto"`` asks it per layer (the break-even density is measured, not assumed).

A *shape class* is the operation, the matrix shape, the batch rounded up to a power of two, the
density rounded to half a binary order of magnitude and, for the kernel operations, the operand
layouts (``layout``: each operand contiguous ``c``, a transposed view ``t`` or strided ``s``, and
``>r``/``>c`` for a row-major or transposed output): torch's kernels pay a transposing copy that
the compiled ones do not, so a choice measured for one layout does not hold for another. Decisions are kept per machine key (CPU
model, kernel build, torch version, thread count) in ``autotune.json`` under
``$SPARSETRAIN_CACHE_DIR``, else ``$XDG_CACHE_HOME/sparsetrain``, else ``~/.cache/sparsetrain``
(written atomically; an unwritable directory keeps them in memory). Each new decision is logged
once at INFO level with both timings. ``SPARSETRAIN_AUTOTUNE=0`` turns measuring off (the
compiled kernels are then used whenever they are available, the fixed break-even density
:data:`DEFAULT_BREAK_EVEN` decides execution).

Timings are medians of interleaved repetitions after a warm-up; measure on a quiet machine
(another job sharing the cores skews them — :func:`clear` forgets every decision).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

__all__ = ["cache_dir", "cache_file", "enabled", "machine_key", "shape_class", "measured_choice", "prefer_native",
           "recorded", "layer_kernels", "decisions", "clear", "DEFAULT_BREAK_EVEN"]

log = logging.getLogger(__name__)

#: break-even density used when measuring is turned off (SPARSETRAIN_AUTOTUNE=0)
DEFAULT_BREAK_EVEN = 0.2

_lock = threading.RLock()
_loaded: dict[str, dict[str, Any]] = {}  # machine key -> {shape class -> decision}
# (op, rows, cols, batch, nnz, threads, cache dir) -> use native: the per-call fast path
_fast: dict[tuple, bool] = {}
_state: dict[str, Any] = {"path": None, "warned": False}


def cache_dir() -> Path:
    """Where decisions are kept (see the module docstring)."""
    return _cache_dir(os.environ.get("SPARSETRAIN_CACHE_DIR"), os.environ.get("XDG_CACHE_HOME"))


@functools.lru_cache(maxsize=8)
def _cache_dir(explicit: Optional[str], xdg: Optional[str]) -> Path:
    if explicit:
        return Path(explicit)
    return Path(xdg or os.path.join(os.path.expanduser("~"), ".cache")) / "sparsetrain"


def cache_file() -> Path:
    """The decisions file, ``cache_dir() / "autotune.json"``."""
    return cache_dir() / "autotune.json"


def enabled() -> bool:
    """Whether decisions are measured (``SPARSETRAIN_AUTOTUNE`` is not ``0``/``false``/``off``)."""
    return os.environ.get("SPARSETRAIN_AUTOTUNE", "1").strip().lower() not in ("0", "false", "off", "no")


def machine_key() -> str:
    """CPU model, kernel build, torch version and thread count: decisions hold for this key only."""
    from . import kernels

    return f"{kernels.cpu_model()} | build {kernels.build_key()} | torch {torch.__version__} | " \
           f"{torch.get_num_threads()} threads"


def shape_class(op: str, rows: int, cols: int, batch: int, nnz: int, layout: str = "") -> str:
    """``"spmm 4096x4096 b256 d2^-5.5 t>r"``: the operation, the matrix shape, the batch rounded up to
    a power of two, the density rounded to half a binary order of magnitude and the operands'
    ``layout`` (if given; see the module docstring)."""
    b = 1 << max(0, math.ceil(math.log2(max(int(batch), 1))))
    density = max(int(nnz), 1) / max(int(rows) * int(cols), 1)
    key = f"{op} {int(rows)}x{int(cols)} b{b} d2^{round(2 * math.log2(density)) / 2:g}"
    return f"{key} {layout}" if layout else key


def _table() -> dict[str, Any]:
    key = machine_key()
    path = cache_file()
    if _state["path"] != path:  # first use, or the cache directory moved (tests)
        _loaded.clear()
        _fast.clear()
        _state["path"] = path
    if key not in _loaded:
        saved: dict[str, Any] = {}
        try:
            saved = json.loads(path.read_text()).get(key, {})
        except (OSError, ValueError, AttributeError):
            pass
        _loaded[key] = saved if isinstance(saved, dict) else {}
    return _loaded[key]


def _save() -> None:
    from .._util import atomic_write_text

    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        everything: dict[str, Any] = {}
        try:
            everything = json.loads(path.read_text())
            if not isinstance(everything, dict):
                everything = {}
        except (OSError, ValueError):
            pass
        everything.update(_loaded)
        atomic_write_text(json.dumps(everything, indent=1, sort_keys=True), path)
    except OSError as exc:
        if not _state["warned"]:
            _state["warned"] = True
            log.warning("sparsetrain: cannot write the autotune cache %s (%s); decisions are kept in memory "
                        "only (set SPARSETRAIN_CACHE_DIR to a writable directory)", path, exc)


def _median_ms(fn: Callable[[], Any], other: Callable[[], Any], reps: int) -> tuple[float, float]:
    fn(), other()  # warm-up: allocations, first-touch, lazy initialisation
    a, b = [], []
    for i in range(reps):  # interleaved, alternating which goes first
        for f, out in ((fn, a), (other, b)) if i % 2 == 0 else ((other, b), (fn, a)):
            t = time.perf_counter()
            f()
            out.append(1e3 * (time.perf_counter() - t))
    return statistics.median(a), statistics.median(b)


def measured_choice(key: str, first: Callable[[], Any], second: Callable[[], Any], names: tuple[str, str],
                    reps: int = 5) -> dict[str, Any]:
    """The recorded decision for ``key``, else time ``first`` against ``second`` now (warm-up, then
    ``reps`` interleaved repetitions, medians), record and return ``{"choice": names[i],
    "<name>_ms": ...}``: the faster's name, ties to ``first``."""
    with _lock:
        table = _table()
        hit = table.get(key)
        if hit is not None:
            return hit
        t1, t2 = _median_ms(first, second, reps)
        decision = {"choice": names[0] if t1 <= t2 else names[1], f"{names[0]}_ms": round(t1, 4),
                    f"{names[1]}_ms": round(t2, 4)}
        table[key] = decision
        _save()
        log.info("sparsetrain autotune: %s -> %s (%s %.3f ms, %s %.3f ms)", key, decision["choice"], names[0], t1,
                 names[1], t2)
        return decision


def prefer_native(op: str, rows: int, cols: int, batch: int, nnz: int, native: Callable[[], Any],
                  fallback: Callable[[], Any], reps: int = 5, layout: str = "") -> bool:
    """Whether the compiled kernels (``native()``) beat torch's (``fallback()``) for this operation's
    shape class (with the operands' ``layout``); measured once on the calls given, then read from
    the cache."""
    if not enabled():
        return True
    fast = (op, rows, cols, batch, nnz, layout, torch.get_num_threads(), os.environ.get("SPARSETRAIN_CACHE_DIR"))
    hit = _fast.get(fast)
    if hit is None:
        decision = measured_choice(shape_class(op, rows, cols, batch, nnz, layout), native, fallback,
                                   ("native", "torch"), reps)
        hit = _fast[fast] = decision["choice"] == "native"
    return hit


def recorded(op: str, rows: int, cols: int, batch: int, nnz: int, layout: str = "") -> Optional[str]:
    """The choice recorded for this operation's shape class (``"native"``/``"torch"``), or ``None``
    if it was never measured on this machine (nothing is measured here)."""
    with _lock:
        hit = _table().get(shape_class(op, rows, cols, batch, nnz, layout))
    return hit["choice"] if hit else None


def layer_kernels(module, batch: int) -> dict[str, Optional[str]]:
    """For a :class:`~sparsetrain.sparse.SparseLinear` trained with this batch: the recorded choice
    of each of its operations (forward ``spmm``, input-gradient ``spmm_t``, value-gradient ``sddmm``),
    for the operand layouts the layer ran them with at that batch size (else the last ones)."""
    out_f, in_f, nnz = module.out_features, module.in_features, module.nnz
    layouts, by_batch = getattr(module, "kernel_layouts", {}), getattr(module, "kernel_layouts_by_batch", {})

    def layout(op: str) -> str:  # the layout it ran with at this batch size, else the last one
        return by_batch.get((op, batch), layouts.get(op, ""))

    return {"spmm": recorded("spmm", out_f, in_f, batch, nnz, layout("spmm")),
            "spmm_t": recorded("spmm_t", in_f, out_f, batch, nnz, layout("spmm_t")),
            "sddmm": recorded("sddmm", out_f, in_f, batch, nnz, layout("sddmm"))}


def decisions() -> dict[str, Any]:
    """This machine's decisions so far (shape class -> choice and timings)."""
    with _lock:
        return dict(_table())


def clear() -> None:
    """Forget this machine's decisions (in memory and in the cache file)."""
    with _lock:
        _table().clear()
        _fast.clear()
        _save()
