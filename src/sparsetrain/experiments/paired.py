"""Paired comparisons of runs by seed, with 95% confidence intervals.

Runs of two methods with the same seed share the initial weights, the first mask draw and the
order of the batches, so the difference of their accuracies has far less variance than either
accuracy: methods whose means differ by a few tenths of a point are told apart by *paired*
differences, not by overlapping ``mean ± std`` columns. This module

* pairs runs by (density, seed) and, for grid variants, by the variant suffix of their label
  (``"set-itop epochs=60"`` is compared with ``"rigl epochs=60"`` when the baseline was run in the
  same grid, else with the plain baseline label);
* reports mean differences with Student-t 95% confidence intervals (:func:`mean_ci`);
* for Sup-tickets runs, compares the superposed output with θ_pre (the base phase's model just
  before the first cycle) and with the base method run alone for the same number of epochs
  (:func:`ticket_rows`).

The tables never use ``best_test_acc`` (selected on the test set): only final accuracies.
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional, Sequence

__all__ = ["LOWER_IS_BETTER", "t975", "mean_ci", "pair_key", "paired_rows", "paired_table", "ticket_rows", "ticket_paired_table",
           "report_sections", "check_baseline"]

#: The label suffix of a Sup-tickets run (``"rigl+sup-tickets"``); as a method name it turns Sup-tickets on.
SUP_SUFFIX = "+sup-tickets"

# two-sided 95% Student-t quantiles t_{0.975, df}, df = 1..30
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


#: metrics where a smaller value is better (the paired tables count "better" accordingly)
LOWER_IS_BETTER = frozenset({"test_bpb", "test_loss", "test_ppl"})


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (1.96 beyond 120)."""
    if df < 1:
        raise ValueError(f"a confidence interval needs at least 2 pairs (df >= 1), got df={df}")
    if df <= 30:
        return _T975[df - 1]
    # the tabulated values at 40, 60, 120, then the normal quantile
    for bound, t in ((40, 2.021), (60, 2.000), (120, 1.980)):
        if df <= bound:
            return t
    return 1.960


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its two-sided 95% t interval (``nan`` bounds for one value)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci of no values")
    m = sum(values) / n
    if n < 2:
        return m, float("nan"), float("nan")
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return m, m - half, m + half


def _label(r: dict[str, Any]) -> str:
    return r.get("label", r["config"]["method"])


def _density(r: dict[str, Any]) -> float:
    return 1.0 if r["config"]["method"] == "dense" else float(r["config"]["density"])


def pair_key(r: dict[str, Any]) -> tuple[str, str, float, int]:
    """``(arm, variant, density, seed)`` of a run: its label split at the first space into the arm
    and the grid-variant suffix (``"rigl-itop epochs=60"`` -> ``("rigl-itop", "epochs=60")``)."""
    arm, _, variant = _label(r).partition(" ")
    return arm, variant, _density(r), int(r["config"].get("seed", 0))


def _fmt_ci(m: float, lo: float, hi: float, scale: float = 100.0, digits: int = 2) -> str:
    if math.isnan(lo):
        return f"{scale * m:+.{digits}f}"
    return f"{scale * m:+.{digits}f} [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _run_stats(r: dict[str, Any]) -> dict[str, float]:
    hist = r.get("update_history") or []
    surv = [h["survival"] for h in hist if h.get("survival") is not None]
    expl = [h["exploration"] for h in hist if "exploration" in h]
    return {"itop_rate": r.get("itop_rate", float("nan")),
            "survival": _mean(surv), "exploration": _mean(expl)}


def _natural(text: str) -> tuple:
    """Sort key putting "epochs=30" before "epochs=120" (numbers compared as numbers)."""
    return tuple((0, float(p), "") if p.replace(".", "", 1).isdigit() else (1, 0.0, p)
                 for p in re.split(r"(\d+(?:\.\d+)?)", text) if p)


def _mean_stats(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """R_s, survival and exploration of :func:`_run_stats`, averaged over runs (missing values skipped)."""
    stats = [_run_stats(r) for r in runs]
    return {k: _mean([x[k] for x in stats if not math.isnan(x[k])]) for k in ("itop_rate", "survival", "exploration")}


def paired_rows(results: Sequence[dict[str, Any]], baseline: str, metric: str = "test_acc") -> list[dict[str, Any]]:
    """One row per (arm, variant, density) other than ``baseline``: the runs paired by seed with the
    baseline arm's runs of the same variant and density, the mean ``metric`` of each, and the mean
    paired difference with its 95% CI. Arms without a single pair (dense, other densities) are left out."""
    runs = {pair_key(r): r for r in results}
    rows = []
    arms = dict.fromkeys((a, v, d) for a, v, d, _ in runs)
    for arm, variant, density in arms:
        if arm == baseline:
            continue
        pairs = []
        for (a, v, d, s), r in runs.items():
            if (a, v, d) != (arm, variant, density):
                continue
            base = next((runs[k] for k in ((baseline, variant, density, s), (baseline, "", density, s),
                                              (baseline, variant, 1.0, s), (baseline, "", 1.0, s))
                         if k in runs), None)  # a dense baseline (density 1) pairs with every density
            if base is not None:
                pairs.append((r, base))
        if not pairs:
            continue
        diffs = [float(r[metric]) - float(b[metric]) for r, b in pairs]
        m, lo, hi = mean_ci(diffs)
        lower = metric in LOWER_IS_BETTER
        rows.append({
            "arm": arm, "variant": variant, "density": density, "pairs": len(pairs), "metric": metric,
            "seeds": sorted(int(r["config"].get("seed", 0)) for r, _ in pairs),
            "mean": _mean([float(r[metric]) for r, _ in pairs]),
            "baseline_mean": _mean([float(b[metric]) for _, b in pairs]),
            "diff": m, "low": lo, "high": hi,
            "wins": sum((d < 0) if lower else (d > 0) for d in diffs),
            "losses": sum((d > 0) if lower else (d < 0) for d in diffs),
            **_mean_stats([r for r, _ in pairs]),
        })
    rows.sort(key=lambda x: (-x["density"], _natural(x["variant"]), x["arm"]))
    return rows


def paired_table(results: Sequence[dict[str, Any]], baseline: str, metric: str = "test_acc") -> str:
    """Markdown table of :func:`paired_rows` (accuracies in %, bits per byte as they are)."""
    rows = paired_rows(results, baseline, metric)
    if not rows:
        return ""
    pct = metric not in LOWER_IS_BETTER
    unit, dunit = (" (%)", " (pt)") if pct else ("", "")
    lines = [f"| method | sparsity | pairs | {metric}{unit} | {baseline}{unit} | Δ vs {baseline}{dunit} [95% CI] | "
             "better / worse | R_s | survival | fresh share of growth |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, d=3: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"  # noqa: E731
    base_runs: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for key, r in {pair_key(x): x for x in results}.items():
        if key[0] == baseline:
            base_runs.setdefault((key[1], key[2]), []).append(r)
    shown = set()
    for r in rows:
        group = (r["variant"], r["density"])
        found = next((g for g in (group, ("", r["density"]), (r["variant"], 1.0), ("", 1.0)) if g in base_runs), None)
        if found is not None and found not in shown:
            # the baseline's own row: its level and mechanism numbers, to read the others against
            shown.add(found)
            runs = base_runs[found]
            avg = _mean_stats(runs)
            level = _mean([float(x[metric]) for x in runs])
            lines.append(f"| {baseline} {found[0]}".rstrip() + f" (baseline) | {100 * (1 - found[1]):.0f}% | "
                         f"{len(runs)} | {f'{100 * level:.2f}' if pct else f'{level:.4f}'} | | — | | "
                         f"{fmt(avg['itop_rate'])} | {fmt(avg['survival'])} | {fmt(avg['exploration'])} |")
        name = f"{r['arm']} {r['variant']}".strip()
        sparsity = "dense" if r["arm"] == "dense" else f"{100 * (1 - r['density']):.0f}%"
        mean, base = (f"{100 * r['mean']:.2f}", f"{100 * r['baseline_mean']:.2f}") if pct else \
            (f"{r['mean']:.4f}", f"{r['baseline_mean']:.4f}")
        ci = _fmt_ci(r['diff'], r['low'], r['high']) if pct else _fmt_ci(r['diff'], r['low'], r['high'], 1.0, 4)
        lines.append(f"| {name} | {sparsity} | {r['pairs']} | {mean} | {base} | "
                     f"{ci} | {r['wins']} / {r['losses']} | "
                     f"{fmt(r['itop_rate'])} | {fmt(r['survival'])} | {fmt(r['exploration'])} |")
    return "\n".join(lines)


def ticket_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sup-tickets runs paired by seed with their own θ_pre and with the base arm run alone.

    Per (label, density): mean accuracy of θ_pre, of each ticket and of the superposed model after
    each ticket, the final output, the base alone; paired differences (output − θ_pre, output −
    base alone) with 95% CIs."""
    runs = {pair_key(r): r for r in results}
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for (arm, variant, density, _), r in runs.items():
        if r.get("tickets"):
            groups.setdefault((arm, variant, density), []).append(r)
    rows = []
    for (arm, variant, density), rs in groups.items():
        rs.sort(key=lambda r: r["config"].get("seed", 0))
        base_arm = arm[: -len(SUP_SUFFIX)] if arm.endswith(SUP_SUFFIX) else arm
        k = min(len(r["tickets"]) for r in rs)
        row: dict[str, Any] = {"arm": arm, "variant": variant, "density": density, "runs": len(rs), "tickets": k,
                               "output": _mean([r["test_acc"] for r in rs])}
        pre = [r for r in rs if r.get("pre_test_acc") is not None]
        row["pre"] = _mean([r["pre_test_acc"] for r in pre]) if pre else None
        row["ticket_acc"] = [_mean([r["tickets"][i].get("ticket_acc", float("nan")) for r in rs]) for i in range(k)]
        row["sup_acc"] = [_mean([r["tickets"][i].get("sup_acc", float("nan")) for r in rs]) for i in range(k)]
        row["vs_pre"] = mean_ci([r["test_acc"] - r["pre_test_acc"] for r in pre]) if pre else None
        alone = [(r, runs.get((base_arm, variant, density, int(r["config"].get("seed", 0))))) for r in rs]
        alone = [(r, b) for r, b in alone if b is not None]
        row["base_alone"] = _mean([b["test_acc"] for _, b in alone]) if alone else None
        row["base_pairs"] = len(alone)
        row["vs_base"] = mean_ci([r["test_acc"] - b["test_acc"] for r, b in alone]) if alone else None
        rows.append(row)
    rows.sort(key=lambda x: (-x["density"], x["arm"], x["variant"]))
    return rows


def ticket_paired_table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`ticket_rows` (accuracies in %)."""
    rows = ticket_rows(results)
    if not rows:
        return ""
    k = max(r["tickets"] for r in rows)
    ticket_cols = "".join(f" ticket {i + 1} / θ_sup after it |" for i in range(k))
    lines = [f"| method | sparsity | runs | θ_pre |{ticket_cols} output θ_sup | output − θ_pre (pt) [95% CI] | "
             "base alone | output − base alone (pt) [95% CI] |",
             "|---|---|---|---|" + "---|" * k + "---|---|---|---|"]
    pct = lambda v: "–" if v is None or math.isnan(v) else f"{100 * v:.2f}"  # noqa: E731
    for r in rows:
        cells = "".join(f" {pct(r['ticket_acc'][i])} / {pct(r['sup_acc'][i])} |" if i < r["tickets"] else " – |"
                        for i in range(k))
        vs_pre = _fmt_ci(*r["vs_pre"]) if r["vs_pre"] else "–"
        n_pairs = r["base_pairs"]
        vs_base = f"{_fmt_ci(*r['vs_base'])} ({n_pairs} pair{'s' if n_pairs != 1 else ''})" if r["vs_base"] else "–"
        name = f"{r['arm']} {r['variant']}".strip()
        lines.append(f"| {name} | {100 * (1 - r['density']):.0f}% | {r['runs']} | {pct(r['pre'])} |{cells} "
                     f"{pct(r['output'])} | {vs_pre} | {pct(r['base_alone'])} | {vs_base} |")
    return "\n".join(lines)


def check_baseline(baseline: Optional[str], labels: Sequence[str]) -> None:
    """An :class:`~sparsetrain.errors.InputError` unless ``baseline`` (``None``: the default) is the
    arm of one of ``labels`` (run labels; a grid variant's suffix is not part of its arm)."""
    arms = sorted({str(label).partition(" ")[0] for label in labels})
    if baseline is not None and baseline not in arms:
        from ..errors import InputError
        from ..registry import _near

        raise InputError(f"--baseline {baseline!r} is not one of these runs' methods ({', '.join(arms)})"
                         f"{_near(baseline, arms)}; name the arm as its table label, e.g. --baseline {arms[0]}")


def _few_pairs_note(results: Sequence[dict[str, Any]], baseline: str) -> str:
    """A note under the paired table when a row has fewer than 3 pairs (its interval says little)."""
    few = sorted({r["pairs"] for r in paired_rows(results, baseline) if r["pairs"] < 3})
    if not few:
        return ""
    return ("\n\nRows with " + " or ".join(map(str, few)) + f" pair{'s' if few != [1] else ''}: "
            + ("with 1 pair there is no interval; " if 1 in few else "")
            + ("with 2 the t quantile is 12.7, so the interval is ~7x wider than with 5 pairs at the same spread; "
               if 2 in few else "")
            + "read them as indications, not tests (run more seeds: --seeds).")


def report_sections(results: Sequence[dict[str, Any]], baseline: Optional[str] = None) -> str:
    """The paired sections of a report: differences from ``baseline`` (default ``rigl`` when it was
    run; ``dense`` pairs with every density) and the Sup-tickets comparison; ``""`` when there is
    nothing to pair. A ``baseline`` no run has is an :class:`~sparsetrain.errors.InputError`."""
    check_baseline(baseline, [_label(r) for r in results])
    arms = {pair_key(r)[0] for r in results}
    if baseline is None and "rigl" in arms:
        baseline = "rigl"
    parts = []
    if baseline is not None and all(r.get("test_bpb") is not None for r in results):
        # language models: validation bits per byte first (lower is better)
        table = paired_table(results, baseline, "test_bpb")
        if table:
            parts.append(f"## Paired differences from {baseline}: validation bits per byte\n\nSame seed = same "
                         "initial weights, first mask and batch order; Δ is the mean over seeds of (method − "
                         + baseline + ") final validation bits per byte (lower is better) with a Student-t 95% "
                         "confidence interval; better / worse counts seeds.\n\n" + table)
    if baseline is not None:
        table = paired_table(results, baseline)
        if table:
            parts.append(f"## Paired differences from {baseline}\n\nSame seed = same initial weights, first mask "
                         "and batch order; Δ is the mean over seeds of (method − " + baseline + ") final test "
                         "accuracy with a Student-t 95% confidence interval; better / worse counts seeds. "
                         "R_s: weights ever active; survival: share of an update's newly grown weights still "
                         "active after the next update (mean over updates); fresh share: grown weights never "
                         "active before (mean over updates).\n\n" + table + _few_pairs_note(results, baseline))
    tickets = ticket_paired_table(results)
    if tickets:
        parts.append("## Sup-tickets against θ_pre and the base alone\n\nθ_pre: the base phase's model just "
                     "before the first cycle; ticket k / θ_sup after it: the live model at the end of cycle k "
                     "and the superposed model after adding it; base alone: the base method trained for the "
                     "same total epochs without cycles (paired by seed).\n\n" + tickets)
    return "\n\n".join(parts)
