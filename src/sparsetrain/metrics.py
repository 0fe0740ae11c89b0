"""Metrics of a Sparsifier: density, R_s, per-layer tables, exact training FLOPs, a summary table.

See ``docs/metrics.md`` for the definitions. Everything here only reads the layers' state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover
    from .sparsifier import Sparsifier

__all__ = ["density", "itop_rate", "metrics", "training_flops", "summary"]


def density(sp: "Sparsifier") -> float:
    """Realised global density over the sparse parameters."""
    return sum(l.n_active for l in sp.layers.values()) / sum(l.numel for l in sp.layers.values())


def itop_rate(sp: "Sparsifier") -> float:
    """R_s: fraction of sparse-parameter weights active at least once (initial mask included)."""
    ever = sum(l.ever_count() for l in sp.layers.values())
    return ever / sum(l.numel for l in sp.layers.values())


def metrics(sp: "Sparsifier") -> dict[str, Any]:
    """Global and per-layer metrics as plain numbers."""
    last = next((h for h in reversed(sp.history) if "skipped" not in h), None)
    surv = [h["survival"] for h in sp.history if "survival" in h]
    return {
        "step": sp.step,
        "updates": sp.updates,
        "density": density(sp),
        "itop_rate": itop_rate(sp),
        "turnover": last["turnover"] if last else 0.0,
        # ITOP's "reliable exploration": of the weights an update made newly active, the fraction
        # still active after the next update (mean over updates; None before the second update)
        "survival": sum(surv) / len(surv) if surv else None,
        "active": sum(l.n_active for l in sp.layers.values()),
        "total": sum(l.numel for l in sp.layers.values()),
        "layer_density": {n: l.density for n, l in sp.layers.items()},
        "layer_itop_rate": {n: l.ever_count() / max(l.numel, 1) for n, l in sp.layers.items()},
    }


def training_flops(sp: "Sparsifier", report) -> dict[str, float]:
    """Training FLOPs of the steps so far (see :meth:`Sparsifier.training_flops`)."""
    for layer in sp.layers.values():
        layer.flush(sp.step)
    steps = sp.step
    fixed = report.dense - sum(report.layers[n].dense for n in sp.layers if n in report.layers)
    if steps == 0:  # no step yet: nothing spent; the fraction is that of a step at the current masks
        now = fixed + sum((report.layers[n].per_weight if n in report.layers else 0.0) * layer.n_active
                          for n, layer in sp.layers.items())
        return {"sparse": 0.0, "dense": 0.0, "fraction": now / report.dense if report.dense else 1.0}
    sparse_sum = 0.0
    for n, layer in sp.layers.items():
        per_weight = report.layers[n].per_weight if n in report.layers else 0.0
        sparse_sum += per_weight * layer.active_steps
    mean_fs = fixed + sparse_sum / steps
    sparse_total = 3.0 * mean_fs * steps + sp.dense_grad_steps * (report.dense - report.sparse)
    dense_total = 3.0 * report.dense * steps
    return {"sparse": sparse_total, "dense": dense_total, "fraction": sparse_total / dense_total}


def summary(sp: "Sparsifier") -> str:
    """A readable per-layer table: shape, storage, active/total, target and realised density, R_s, and
    why each layer is sparse; then the parameters left dense and why (embedding, tied, 1-D, excluded)."""
    m = metrics(sp)
    rows = [("layer", "shape", "storage", "active", "target", "density", "R_s")]
    for n, l in sp.layers.items():
        kind = l.storage.kind if l.storage is not None else "masked"
        rows.append((n, "x".join(map(str, l.shape)), kind, f"{l.n_active}/{l.numel}",
                     f"{l.target_density:.4f}", f"{l.density:.4f}", f"{m['layer_itop_rate'][n]:.4f}"))
    rows.append(("total", "", "", f"{m['active']}/{m['total']}", f"{sp.algorithm.density:.4f}",
                 f"{m['density']:.4f}", f"{m['itop_rate']:.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"{sp.algorithm!r}  step {sp.step}, {sp.updates} topology updates"]
    why = sp.selection.why if getattr(sp, "selection", None) is not None else {}
    for i, r in enumerate(rows):
        line = "  ".join(c.ljust(w) if j < 3 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths)))
        lines.append(f"{line}  {why[r[0]]}" if r[0] in why and 0 < i < len(rows) - 1 else line)
        if i == 0 or i == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    start, final = float(sp.algorithm.initial_density), float(sp.algorithm.density)
    if abs(start - final) > 1e-12:  # GraNet: the per-layer layout is the start's; pruning is global
        lines.append(f"(target: each layer's density at the start, initial_density={start:g}; pruning moves the "
                     f"global density to density={final:g}, the total row's target, shared between layers by "
                     "magnitude)")
    if why:  # the selection: why each sparse layer is sparse (above) and what was left dense
        left = sp.selection.table()
        lines += (["left dense:"] + left) if left else []
    return "\n".join(lines)
