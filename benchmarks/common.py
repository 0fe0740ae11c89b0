"""Helpers shared by the benchmark scripts (run them from the repository root).

Importing this module fixes glibc's allocator thresholds for the benchmark process (re-executing
the script once with ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` set, unless already
set): by default glibc serves large tensors with fresh ``mmap``s, page-faulting them in on every
step, until its adaptive threshold has seen them freed; on the virtual machines measured here that
warm-up lasted 20–40 s and made the first steps up to 5× slower (a GPT step: 2.0 s, then 0.37 s),
so short interleaved measurements compared warm-up noise. With the thresholds fixed, every mode
measures its steady state from the first step, as a long training run does.
"""

from __future__ import annotations

import os
import sys
import time

from torch import nn

#: the allocator settings the benchmarks run with (see the module docstring)
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 32), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}


def _steady_allocator() -> None:
    missing = {k: v for k, v in ALLOCATOR_ENV.items() if k not in os.environ}
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    # only a script run as `python benchmarks/x.py ...` is re-executed (never `python -c`, an
    # interactive session or an importer); glibc reads these variables at start-up only
    if missing and script and os.path.basename(script) == os.path.basename(sys.argv[0]) and \
            os.environ.get("SPARSETRAIN_BENCH_NO_REEXEC") != "1":
        os.environ.update(missing)
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]] if hasattr(sys, "orig_argv")
                 else [sys.executable, *sys.argv])


_steady_allocator()


def step(model, opt, x, y) -> None:
    """One ordinary training step: cross-entropy, backward, optimizer step, zero_grad."""
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def timed(fn) -> float:
    """Wall-clock seconds of ``fn()``."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def machine_header() -> str:
    """What a speed number holds for: CPU model and SIMD sets, threads, the kernels' compiler,
    flags, build and instruction set, torch's version (printed first by every benchmark)."""
    from sparsetrain.sparse import kernels

    d = kernels.describe()
    isa = d["isa"] or f"not built ({(d['native_error'] or '').splitlines()[0][:120] if d['native_error'] else 'off'})"
    alloc = ", ".join(f"{k}={os.environ[k]}" for k in ALLOCATOR_ENV if k in os.environ) or "glibc defaults"
    return (f"machine: {d['cpu']} ({d['machine']}; SIMD {' '.join(d['cpu_simd']) or 'unknown'}), "
            f"{d['threads']} threads, torch {d['torch']}, allocator {alloc}\n"
            f"kernels: backend {d['backend']}, instruction set {isa}, compiler {d['compiler']}, flags {d['flags']}, "
            f"build {d['build']}")
