"""Helpers shared by the benchmark scripts (run them from the repository root)."""

from __future__ import annotations

import time

from torch import nn


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
    return (f"machine: {d['cpu']} ({d['machine']}; SIMD {' '.join(d['cpu_simd']) or 'unknown'}), "
            f"{d['threads']} threads, torch {d['torch']}\n"
            f"kernels: backend {d['backend']}, instruction set {isa}, compiler {d['compiler']}, flags {d['flags']}, "
            f"build {d['build']}")
