"""Aggregating run results into tables and plots (``sparsetrain report``).

Reads the per-run JSON results written by ``sparsetrain compare`` (``runs/*.json``) and the
``summary.json`` of run directories (``sparsetrain train`` / ``sweep``), groups them by method
and density, averages over seeds (mean ± sample std) and writes ``results.md``,
``results.csv`` and PNG plots. Plots need matplotlib (the ``plot`` extra).
"""

from __future__ import annotations

import functools
import json
import math
import subprocess
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import InputError, InputWarning
from .paired import SUP_SUFFIX, _natural, report_sections  # SUP_SUFFIX is re-exported (config and grid read it here)

__all__ = [
    "aggregate", "format_table", "ticket_table", "load_runs", "write_report", "plot_accuracy_vs_sparsity",
    "plot_learning_curves", "plot_itop", "plot_accuracy_vs_itop", "plot_turnover", "plot_layer_density", "make_plots",
    "git_commit", "loaded_commit", "provenance", "describe_found", "one_setup", "describe_runs",
]

def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def aggregate(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group run results by (method, density) and average over seeds (mean ± sample std)."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(_row_key(r), []).append(r)
    rows = []
    for (method, density), rs in groups.items():
        acc_m, acc_s = _mean_std([100 * r["test_acc"] for r in rs])
        rows.append({
            "method": method,
            "density": density,
            "seeds": len(rs),
            "acc_mean": acc_m,
            "acc_std": acc_s,
            "realised_density": _mean_std([r["density"] for r in rs])[0],
            "itop_rate": _mean_std([r["itop_rate"] for r in rs])[0],
            "train_flops": _mean_std([r["train_flops_fraction"] for r in rs])[0],
            "inference_flops": _mean_std([r["inference_flops_fraction"] for r in rs])[0],
            "wall_time_s": _mean_std([r["wall_time_s"] for r in rs])[0],
        })
        if all("test_bpb" in r for r in rs):  # a language model: validation bits per byte, perplexity
            rows[-1]["bpb_mean"], rows[-1]["bpb_std"] = _mean_std([r["test_bpb"] for r in rs])
            rows[-1]["ppl_mean"] = _mean_std([r["test_ppl"] for r in rs])[0]
    order = {"dense": 0, "static": 1, "set": 2, "rigl": 3, "dstee": 4}
    rows.sort(key=lambda r: (-r["density"], order.get(r["method"], 9), r["method"]))
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of aggregated rows (language models: validation bits per byte and perplexity
    first; accuracy is then next-byte accuracy)."""
    lm = any("bpb_mean" in r for r in rows)
    head = "| method | sparsity | test acc. (%) | seeds | density | R_s | train FLOPs | inference FLOPs | time/run (s) |"
    if lm:
        head = "| method | sparsity | val. bits/byte | val. perplexity | next-byte acc. (%) |" + head.split("test acc. (%) |")[1]
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        acc = f"{r['acc_mean']:.2f} ± {r['acc_std']:.2f}" if r["seeds"] > 1 else f"{r['acc_mean']:.2f}"
        if lm:
            bpb = (f"{r['bpb_mean']:.3f} ± {r['bpb_std']:.3f}" if r["seeds"] > 1 else f"{r['bpb_mean']:.3f}") \
                if "bpb_mean" in r else "–"
            acc = f"{bpb} | {r['ppl_mean']:.2f} | {acc}" if "ppl_mean" in r else f"{bpb} | – | {acc}"
        lines.append(
            f"| {r['method']} | {100 * (1 - r['density']):.0f}% | {acc} | {r['seeds']} | {r['realised_density']:.4f} | "
            f"{r['itop_rate']:.3f} | {r['train_flops']:.3f}× | {r['inference_flops']:.3f}× | {r['wall_time_s']:.1f} |"
        )
    return "\n".join(lines)


def git_commit() -> str:
    """The short hash of the checked-out commit of this package, with ``+modified`` when the
    package's sources differ from it, or ``"unknown"`` (not a git checkout)."""
    here = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=here).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "."], capture_output=True, cwd=here)
    except Exception:  # noqa: BLE001 - not a git checkout, no git
        return "unknown"
    return head + ("+modified" if dirty.returncode == 1 else "")


@functools.cache
def loaded_commit() -> str:
    """:func:`git_commit` as it was when this process first asked (the experiment runner asks when
    it is imported): the code the process actually runs. A long sweep's workers keep the code they
    loaded while the checkout moves on, so asking at the end of a run would stamp it with a later
    commit, or ``+modified`` for edits it never ran."""
    return git_commit()


def provenance(results, wall: Optional[float] = None, commit: Optional[str] = None,
               trained: Optional[int] = None) -> str:
    """The line under a table saying what made its runs: the commits (each run records the one it
    was trained at), torch, the CPU and threads, and the run time summed over the runs — true after a
    sweep resumed across sessions, unlike the time of the command that wrote the report (``wall``,
    shown beside it when given, with how many of the runs it trained when ``trained`` is given: a
    resumed sweep that found every run finished says so instead of looking like a 0-minute sweep)."""

    def counted(values, missing: str) -> str:
        counts: dict = {}
        for v in values:
            counts[v] = counts.get(v, 0) + 1
        parts = [f"{v} ({n} run{'s' if n != 1 else ''})" if len(counts) > 1 else str(v)
                 for v, n in sorted(counts.items(), key=lambda kv: (kv[0] is None, -kv[1])) if v is not None]
        if None in counts and not parts:
            return missing
        if None in counts:
            parts.append(f"{missing} ({counts[None]} run{'s' if counts[None] != 1 else ''})")
        return ", ".join(parts)

    versions = [r.get("versions") or {} for r in results]
    runs_commit = counted([v.get("commit") for v in versions], "commits not recorded")
    torch_v = counted([v.get("torch") for v in versions], "not recorded")
    cpu = counted([v.get("cpu") for v in versions], "CPU not recorded")
    threads = counted([(r.get("versions") or {}).get("threads") or r["config"].get("threads") for r in results],
                      "default")
    summed = sum(float(r.get("wall_time_s") or 0.0) for r in results)
    summed_s = f"{summed / 3600:.1f} h" if summed >= 5400 else f"{summed / 60:.1f} min"
    this = f" (this command {wall / 60:.1f} min)" if wall is not None else ""
    if wall is not None and trained is not None:
        this = (f" (this command trained {trained} of the {len(results)} in {wall / 60:.1f} min)" if trained else
                f" (this command trained none of them: all {len(results)} were finished before it)")
    made = "the runs’ commits not recorded" if runs_commit == "commits not recorded" else f"runs at {runs_commit}"
    return (f"Commit: {made}; report at {commit or git_commit()} · torch {torch_v} · {cpu}, {threads} thread(s) per "
            f"run · run time {summed_s} summed over {len(results)} runs{this}")


def ticket_table(results) -> str:
    """Markdown table of Sup-tickets runs: superposed vs live vs ensemble accuracy, ticket overlap."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in results:
        if r.get("tickets"):
            groups.setdefault((r.get("label", r["config"]["method"]), r["config"]["density"]), []).append(r)
    if not groups:
        return ""

    def ms(vals):
        vals = [100 * v for v in vals]
        m = sum(vals) / len(vals)
        if len(vals) < 2:
            return f"{m:.2f}"
        sd = (sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5
        return f"{m:.2f} ± {sd:.2f}"

    lines = [
        "| method | sparsity | superposed (%) | live model = last ticket (%) | mean ticket (%) | ticket ensemble (%) | "
        "tickets | overlap of consecutive tickets | density before pruning |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (label, d), rs in sorted(groups.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        ov = [t["overlap_prev"] for r in rs for t in r["tickets"] if "overlap_prev" in t]
        before = [t["density_before"] for r in rs for t in r["tickets"]]
        lines.append(
            f"| {label} | {100 * (1 - d):.0f}% | {ms([r['test_acc'] for r in rs])} | {ms([r['live_test_acc'] for r in rs])} | "
            f"{ms([sum(t['ticket_acc'] for t in r['tickets']) / len(r['tickets']) for r in rs])} | {ms([r['ensemble_test_acc'] for r in rs])} | "
            f"{len(rs[0]['tickets'])} | {sum(ov) / len(ov) if ov else float('nan'):.3f} | "
            f"{sum(before) / len(before):.4f} |"
        )
    return "\n".join(lines)


def write_report(out: Path, results, command: str, title: str, protocol: str, wall: Optional[float],
                 commit: Optional[str] = None, trained: Optional[int] = None, baseline: Optional[str] = None) -> str:
    """Write ``results.md`` (title, protocol, command, :func:`provenance`, table, Sup-tickets table,
    paired differences from ``baseline``: default ``rigl`` when it was run) and ``results.csv`` into
    ``out``; return the markdown table. ``wall``: the seconds the writing command ran (``None``: not
    shown); ``trained``: how many of ``results`` it trained."""
    rows = aggregate(results)
    table = format_table(rows)
    meta = (
        f"# {title}\n\nProtocol: {protocol}\n\nCommand: `{command}`\n\n"
        f"{provenance(results, wall, commit, trained)}\n\n"
    )
    tickets = ticket_table(results)
    if tickets:
        tickets = ("\n\n## Sup-tickets\n\nThe superposed model is the method's output (its accuracy is the "
                   "table's above); the live model (the last ticket), the tickets' mean accuracy (no ticket "
                   "is selected on the test set) and the tickets' softmax ensemble (FreeTickets-style, K× the "
                   "inference cost) are shown beside it; the paired table below compares it with θ_pre.\n\n" + tickets)
    paired = report_sections(results, baseline)
    (out / "results.md").write_text(meta + table + tickets + ("\n\n" + paired if paired else "") + "\n")
    with open(out / "results.csv", "w") as f:
        keys = list(rows[0])
        f.write(",".join(keys) + "\n")
        for r in rows:
            f.write(",".join(str(r[k]) for k in keys) + "\n")
    return table


def load_runs(dirs: Sequence[str], skipped: Optional[list] = None) -> list[dict[str, Any]]:
    """Every run result (``runs/*.json`` or ``*.json`` with a ``config``) under the given directories;
    files that cannot be read or parsed are appended to ``skipped`` as ``(path, reason)``."""
    results, seen = [], set()
    for d in dirs:
        for path in sorted(Path(d).rglob("*.json")):
            if path.resolve() in seen:  # a directory given twice, or one inside another: each run once
                continue
            seen.add(path.resolve())
            try:
                r = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                if skipped is not None:
                    skipped.append((path, f"corrupt or unreadable ({type(e).__name__}: {e})"))
                continue
            if isinstance(r, dict) and "config" in r and "test_acc" in r:
                results.append(r)
    return results


def plot_accuracy_vs_sparsity(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Optional[Path]:
    """Accuracy (mean ± std over seeds) vs sparsity per method, dense as a horizontal band.

    Needs matplotlib (the ``plot`` extra); returns ``None`` without it.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "dense"]
    lm = all("bpb_mean" in r for r in rows)  # a language model: validation bits per byte (lower is better)
    if lm:
        rows = [{**r, "acc_mean": r["bpb_mean"], "acc_std": r["bpb_std"]} for r in rows]
    for r in rows:
        if r["method"] == "dense":
            ax.axhline(r["acc_mean"], color="black", ls="--", lw=1,
                       label=f"dense ({r['acc_mean']:.3f})" if lm else f"dense ({r['acc_mean']:.2f}%)")
            ax.axhspan(r["acc_mean"] - r["acc_std"], r["acc_mean"] + r["acc_std"], color="black", alpha=0.08)
    markers = "osD^v<>pPX*h"
    cmap = matplotlib.colormaps["tab10" if len(methods) <= 10 else "tab20"]
    for i, m in enumerate(methods):
        pts = sorted((100 * (1 - r["density"]), r["acc_mean"], r["acc_std"]) for r in rows if r["method"] == m)
        xs, ys, es = zip(*pts)
        ax.errorbar(xs, ys, yerr=es, marker=markers[i % len(markers)], capsize=3, label=m, lw=1.2, ms=5,
                    color=cmap(i % cmap.N))
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("validation bits per byte, mean ± std over seeds" if lm else "test accuracy (%), mean ± std over seeds")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper left" if lm else "lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path




def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _label(r: dict[str, Any]) -> str:
    return r.get("label", r["config"]["method"])


def _by_density(results) -> dict[float, list[dict[str, Any]]]:
    out: dict[float, list[dict[str, Any]]] = {}
    for r in results:
        if r["config"]["method"] != "dense":
            out.setdefault(float(r["config"]["density"]), []).append(r)
    return dict(sorted(out.items(), reverse=True))


def _mean_curve(series: Sequence[Sequence[tuple[float, float]]]) -> tuple[list[float], list[float]]:
    """Average y over seeds at the x values all series share (the same schedule gives the same x)."""
    common = set(x for x, _ in series[0])
    for s in series[1:]:
        common &= set(x for x, _ in s)
    xs = sorted(common)
    ys = [sum(dict(s)[x] for s in series) / len(series) for x in xs]
    return xs, ys


def _panels(plt, n: int, title: str):
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n + 0.6, 4.2), squeeze=False)
    fig.suptitle(title, fontsize=10)
    return fig, axes[0]


def _ordered(labels: Sequence[str]) -> list[str]:
    """Labels in order: methods as first seen, a grid's variants of one method as numbers ("rigl
    epochs=30" before "rigl epochs=120")."""
    labels = list(dict.fromkeys(labels))
    arms = list(dict.fromkeys(label.partition(" ")[0] for label in labels))
    return sorted(labels, key=lambda lab: (arms.index(lab.partition(" ")[0]), _natural(lab.partition(" ")[2])))


def _labels(results) -> list[str]:
    """The runs' labels, :func:`_ordered`."""
    return _ordered([_label(r) for r in results])


def _colors(results) -> dict[str, Any]:
    """One colour per method label, the same in every panel and plot. A grid's variants of one arm
    ("rigl epochs=30/60/120") share the arm's hue, lighter to darker in variant order."""
    import matplotlib

    labels = _labels([r for r in results if r["config"]["method"] != "dense"])
    arms = list(dict.fromkeys(label.partition(" ")[0] for label in labels))
    cmap = matplotlib.colormaps["tab10" if len(arms) <= 10 else "tab20"]
    colors = {}
    for i, arm in enumerate(arms):
        variants = [label for label in labels if label.partition(" ")[0] == arm]
        base = matplotlib.colors.to_rgb(cmap(i % cmap.N))
        for j, label in enumerate(variants):  # mixed with white: 55% of the hue for the first, all of it for the last
            k = 1.0 if len(variants) == 1 else 0.55 + 0.45 * j / (len(variants) - 1)
            colors[label] = tuple(k * c + (1 - k) for c in base)
    return colors


def _finish(fig, axes, path: Path, plt) -> Path:
    seen: dict[str, Any] = {}
    for ax in axes:
        ax.grid(alpha=0.3)
        for h, l in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(l, h)
    if seen:
        order = _ordered(list(seen))
        fig.legend([seen[label] for label in order], order, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_learning_curves(results, path: Path, title: str) -> Optional[Path]:
    """Test accuracy per epoch (mean over seeds), one panel per sparsity, one line per method."""
    plt = _pyplot()
    groups = _by_density(results)
    if plt is None or not groups:
        return None
    dense = [r for r in results if r["config"]["method"] == "dense" and r.get("curve")]
    fig, axes = _panels(plt, len(groups), title + ": learning curves")
    colors = _colors(results)
    for ax, (d, rs) in zip(axes, groups.items()):
        if dense:
            xs, ys = _mean_curve([[(c["epoch"], 100 * c["test_acc"]) for c in r["curve"]] for r in dense])
            ax.plot(xs, ys, color="black", ls="--", lw=1, label="dense")
        for label in _labels(rs):
            runs = [r for r in rs if _label(r) == label and r.get("curve")]
            if runs:
                xs, ys = _mean_curve([[(c["epoch"], 100 * c["test_acc"]) for c in r["curve"]] for r in runs])
                ax.plot(xs, ys, lw=1.2, label=label, color=colors[label])
        ax.set_title(f"{100 * (1 - d):.0f}% sparsity", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        lows = [l.get_ydata()[-1] for l in ax.get_lines() if len(l.get_ydata())]
        if lows:  # zoom on the end of training, where methods differ
            ax.set_ylim(min(lows) - 4, max(max(l.get_ydata()) for l in ax.get_lines()) + 0.5)
    return _finish(fig, axes, path, plt)


def _update_series(results, key: str, per_epoch_key: Optional[str] = None):
    """(x, y) series per run: from the per-update history, else from per-epoch records."""
    out = {}
    for r in results:
        hist = r.get("update_history") or []
        pts = [(h["step"] / max(r.get("steps", 1), 1), h[key]) for h in hist if key in h and "step" in h]
        if not pts and per_epoch_key and r.get("curve"):
            e = max(len(r["curve"]), 1)
            pts = [(c["epoch"] / e, c[per_epoch_key]) for c in r["curve"] if per_epoch_key in c]
        if pts:
            out.setdefault(_label(r), []).append(pts)
    return out


def _plot_update_metric(results, path: Path, title: str, key: str, ylabel: str, per_epoch_key=None):
    plt = _pyplot()
    groups = _by_density(results)
    if plt is None or not groups:
        return None
    series = {d: _update_series(rs, key, per_epoch_key) for d, rs in groups.items()}
    if not any(series.values()):
        return None
    fig, axes = _panels(plt, len(groups), title)
    colors = _colors(results)
    for ax, (d, by_label) in zip(axes, series.items()):
        for label, runs in by_label.items():
            xs, ys = _mean_curve(runs)
            if len(xs) < 2:  # schedules differ across seeds: show the first seed
                xs, ys = zip(*runs[0])
            ax.plot(xs, ys, lw=1.2, label=label, color=colors[label])
        ax.set_title(f"{100 * (1 - d):.0f}% sparsity", fontsize=9)
        ax.set_xlabel("fraction of training")
        ax.set_ylabel(ylabel)
    return _finish(fig, axes, path, plt)


def plot_itop(results, path: Path, title: str) -> Optional[Path]:
    """R_s (the ITOP exploration rate) over training, one panel per sparsity."""
    return _plot_update_metric(results, path, title + ": exploration rate R_s", "itop_rate",
                               "R_s (fraction of weights ever active)", per_epoch_key="itop_rate")


def plot_turnover(results, path: Path, title: str) -> Optional[Path]:
    """Mask turnover per topology update over training, one panel per sparsity."""
    return _plot_update_metric(results, path, title + ": mask turnover per update", "turnover",
                               "turnover (new active / active)")


def plot_layer_density(results, path: Path, title: str) -> Optional[Path]:
    """Per-layer density of each method (first seed), one panel per sparsity."""
    plt = _pyplot()
    groups = _by_density(results)
    if plt is None or not groups:
        return None
    fig, axes = _panels(plt, len(groups), title + ": per-layer density")
    colors = _colors(results)
    for ax, (d, rs) in zip(axes, groups.items()):
        firsts: dict[str, dict[str, float]] = {}
        for r in sorted(rs, key=lambda r: r["config"].get("seed", 0)):
            dens = r["tickets"][-1].get("layer_density") if r.get("tickets") else r.get("layer_density")
            if dens:  # Sup-tickets: the superposed output's densities, not the live model's
                firsts.setdefault(_label(r), dens)
        if not firsts:
            continue
        layers = list(next(iter(firsts.values())))
        width = 0.8 / len(firsts)
        for i, (label, dens) in enumerate(firsts.items()):
            ax.bar([j + i * width for j in range(len(layers))], [dens.get(n, 0.0) for n in layers], width, label=label,
                   color=colors[label])
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layers))])
        ax.set_xticklabels([n.replace(".weight", "") for n in layers], rotation=45, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("density (log scale)")
        ax.set_title(f"{100 * (1 - d):.0f}% sparsity", fontsize=9)
    return _finish(fig, axes, path, plt)


def plot_accuracy_vs_itop(results, path: Path, title: str) -> Optional[Path]:
    """Final test accuracy against the final R_s of every sparse run (one point per run, a colour
    per method, one panel per sparsity): ITOP's claim is that accuracy rises with R_s. Written only
    when the runs' R_s values differ."""
    plt = _pyplot()
    groups = _by_density(results)
    if plt is None or not groups:
        return None
    if len({round(r.get("itop_rate", 0.0), 4) for rs in groups.values() for r in rs}) < 2:
        return None
    fig, axes = _panels(plt, len(groups), title + ": accuracy against R_s (one point per run)")
    colors = _colors(results)
    shapes: dict[str, str] = {}  # a grid's variants of one arm: a marker each (o, s, ^, ...) besides the shade
    variants: dict[str, int] = {}
    for label in colors:
        arm = label.partition(" ")[0]
        shapes[label] = "os^Dv<>pP*"[variants.get(arm, 0) % 10]
        variants[arm] = variants.get(arm, 0) + 1
    for ax, (d, rs) in zip(axes, groups.items()):
        for label in _labels(rs):
            pts = [(r["itop_rate"], 100 * r["test_acc"]) for r in rs if _label(r) == label]
            ax.scatter(*zip(*pts), s=20, label=label, color=colors[label], marker=shapes[label], alpha=0.85)
        ax.set_title(f"{100 * (1 - d):.0f}% sparsity", fontsize=9)
        ax.set_xlabel("R_s at the end of training")
        ax.set_ylabel("test accuracy (%)")
    return _finish(fig, axes, path, plt)


def make_plots(results, out: Path, title: str) -> list[Path]:
    """Every plot that the results support, written into ``out``; the paths written."""
    rows = aggregate(results)
    made = [
        plot_accuracy_vs_sparsity(rows, out / "accuracy_vs_sparsity.png", title),
        plot_learning_curves(results, out / "learning_curves.png", title),
        plot_itop(results, out / "itop_rate.png", title),
        plot_turnover(results, out / "turnover.png", title),
        plot_layer_density(results, out / "layer_density.png", title),
        plot_accuracy_vs_itop(results, out / "accuracy_vs_itop_rate.png", title),
    ]
    return [p for p in made if p is not None]


def describe_found(results) -> str:
    """What a set of runs holds, for a filter that matched none of them: methods (arms), densities,
    dataset/model."""
    arms = sorted({str(r.get("label", r["config"]["method"])).partition(" ")[0] for r in results})
    dens = sorted({float(r["config"]["density"]) for r in results if r["config"]["method"] != "dense"}, reverse=True)
    setups = sorted({f"{r['config'].get('dataset')}/{r['config'].get('model')}" for r in results})
    return (f"methods {', '.join(arms)}; densities {', '.join(f'{d:g}' for d in dens) or '(dense only)'}; "
            f"dataset/model {', '.join(setups)}")


def one_setup(results: list, dataset: Optional[str], model: Optional[str]) -> list:
    """The results of one dataset and model (``dataset``/``model`` select them); an :class:`InputError`
    naming the setups if they mix several: their accuracies are not comparable, let alone averageable
    (and :func:`check_rows`: no seed twice in a row, a warning for a row mixing settings)."""
    from .data import dataset_name

    def ds(r):
        name = r["config"].get("dataset")
        try:
            return dataset_name(name) if name is not None else None
        except ValueError:
            return str(name)

    if dataset is not None:
        try:
            want = dataset_name(dataset)
        except ValueError:
            want = dataset
        results = [r for r in results if ds(r) == want]
    if model is not None:
        results = [r for r in results if str(r["config"].get("model", "")).lower() == model.lower()]
    setups: dict[tuple, int] = {}
    for r in results:
        key = (ds(r), r["config"].get("model"))
        setups[key] = setups.get(key, 0) + 1
    epochs = sorted({r["config"].get("epochs") for r in results if r["config"].get("epochs") is not None})
    if len(epochs) > 1:
        warnings.warn(f"these runs have different epoch counts ({', '.join(map(str, epochs))}): the table averages "
                      "and the paired differences pair runs of different lengths; report each length separately "
                      "(one directory each)", InputWarning)
    if len(setups) > 1:
        listed = ", ".join(f"{d}/{m} ({n} run{'s' if n > 1 else ''})" for (d, m), n in setups.items())
        raise InputError(f"the runs are of {len(setups)} different setups (dataset/model: {listed}), whose accuracies "
                         "must not be averaged together: report them one at a time, with --dataset and --model, or "
                         "from separate directories")
    return check_rows(results)


# settings that say how a run was executed or stored, not what was trained
_HOW = ("seed", "threads", "data_root", "checkpoint_every", "device", "execution", "kernels", "name")
# ... of which these may change its numbers: a run recorded twice matches in them too
_EXECUTION = ("device", "execution", "kernels")


def _row_key(r: dict[str, Any]) -> tuple[str, float]:
    """The table row a run belongs to: its label and density (dense: 1.0, shared by every density)."""
    c = r["config"]
    return r.get("label", c["method"]), 1.0 if c["method"] == "dense" else c["density"]


def check_rows(results) -> list[dict[str, Any]]:
    """Each table row averages one setting over seeds. Returns ``results`` with a run recorded twice
    (the same settings and seed, e.g. the dense runs of two compares at different densities) kept
    once; an :class:`InputError` if a row would count a seed twice with different settings (runs
    from two commands); an :class:`InputWarning` if a row's runs differ in a setting other than the
    seed (settings an older version did not record count as their defaults)."""
    from .rundir import complete_settings

    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(_row_key(r), []).append(r)
    out = []
    for (label, density), rs in groups.items():
        configs = [complete_settings(r["config"]) for r in rs]
        keys = sorted({k for c in configs for k in c} - set(_HOW))
        text = lambda c, k: json.dumps(c.get(k), sort_keys=True, default=str)  # noqa: E731
        kept: dict[tuple, tuple] = {}  # (seed, settings, how, result) -> settings: each run once
        by_seed: dict[Any, list[tuple]] = {}
        for r, c in zip(rs, configs):
            seed, g = c.get("seed"), tuple(text(c, k) for k in keys)
            # the same run recorded twice: same settings, same execution, same result (two compares' dense runs)
            same = (seed, g, tuple(text(c, k) for k in _EXECUTION), r.get("test_acc"))
            if same in kept:
                continue
            kept[same] = g
            by_seed.setdefault(seed, []).append(same)
            out.append(r)
        twice = sorted((s for s, gs in by_seed.items() if len(gs) > 1), key=str)
        if twice:
            runs = by_seed[twice[0]]
            differ = [k for i, k in enumerate(keys) if len({x[1][i] for x in runs}) > 1] or \
                [k for i, k in enumerate(_EXECUTION) if len({x[2][i] for x in runs}) > 1] or ["result (commit?)"]
            raise InputError(
                f"{len(runs)} runs of {label} at density {density:g} have seed {twice[0]} with different "
                f"{', '.join(differ[:3])}{f' (and {len(twice) - 1} more seeds)' if len(twice) > 1 else ''}: "
                "a table row averages seeds, each once, so these runs come from two commands (e.g. a compare and "
                "a sweep written to one directory, or two library versions). Report each command's directory "
                "separately, label them apart (--name), or remove one")
        distinct = list(kept.values())
        differ = [k for i, k in enumerate(keys) if len({g[i] for g in distinct}) > 1]
        if differ:
            shown = ", ".join(f"{k}: {sorted({str(json.loads(g[keys.index(k)])) for g in distinct})}" for k in differ[:3])
            warnings.warn(f"the {label} runs at density {density:g} differ in {shown}{' ...' if len(differ) > 3 else ''}: "
                          "their row averages runs trained differently; label them apart (--name) or report them "
                          "separately", InputWarning)
    return out


def describe_runs(results) -> str:
    """A protocol line read from the runs' own settings (for ``report`` without ``--protocol``)."""
    def values(key):
        seen = sorted({str(r["config"][key]) for r in results if r["config"].get(key) is not None})
        return "/".join(seen) if seen else None

    parts = [(values("model"), "{}"), (values("dataset"), "on {}"), (values("epochs"), "{} epochs"),
             (values("batch_size"), "batch {}"), (values("optimizer"), "{}"), (values("lr"), "lr {}"),
             (values("schedule"), "{} schedule")]
    said = " ".join(form.format(v) for v, form in parts if v is not None)
    return (f"{said} (read from the runs' settings; " if said else "not stated (") + "name it with --protocol)"
