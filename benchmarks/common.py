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
