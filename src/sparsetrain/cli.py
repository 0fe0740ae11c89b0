"""The ``sparsetrain`` command line: ``demo`` and ``compare`` (methods × densities × seeds).

The command line is a user of the library: it prints to the terminal; the library only logs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

__all__ = ["main", "format_table", "aggregate"]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def aggregate(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group run results by (method, density) and average over seeds (mean ± sample std)."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in results:
        key = (r.get("label", r["config"]["method"]), 1.0 if r["config"]["method"] == "dense" else r["config"]["density"])
        groups.setdefault(key, []).append(r)
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
    order = {"dense": 0, "static": 1, "set": 2, "rigl": 3, "dstee": 4}
    rows.sort(key=lambda r: (-r["density"], order.get(r["method"], 9), r["method"]))
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of aggregated rows."""
    head = "| method | sparsity | test acc. (%) | seeds | density | R_s | train FLOPs | inference FLOPs | time/run (s) |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = f"{r['acc_mean']:.2f} ± {r['acc_std']:.2f}" if r["seeds"] > 1 else f"{r['acc_mean']:.2f}"
        lines.append(
            f"| {r['method']} | {100 * (1 - r['density']):.0f}% | {acc} | {r['seeds']} | {r['realised_density']:.4f} | "
            f"{r['itop_rate']:.3f} | {r['train_flops']:.3f}× | {r['inference_flops']:.3f}× | {r['wall_time_s']:.1f} |"
        )
    return "\n".join(lines)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except Exception:  # noqa: BLE001 - not a git checkout
        return "unknown"


SUP_SUFFIX = "+sup-tickets"


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
        "| method | sparsity | superposed (%) | live model (%) | best ticket (%) | ticket ensemble (%) | "
        "tickets | overlap of consecutive tickets | density before pruning |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (label, d), rs in sorted(groups.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        ov = [t["overlap_prev"] for r in rs for t in r["tickets"] if "overlap_prev" in t]
        before = [t["density_before"] for r in rs for t in r["tickets"]]
        lines.append(
            f"| {label} | {100 * (1 - d):.0f}% | {ms([r['test_acc'] for r in rs])} | {ms([r['live_test_acc'] for r in rs])} | "
            f"{ms([max(t['ticket_acc'] for t in r['tickets']) for r in rs])} | {ms([r['ensemble_test_acc'] for r in rs])} | "
            f"{len(rs[0]['tickets'])} | {sum(ov) / len(ov) if ov else float('nan'):.3f} | "
            f"{sum(before) / len(before):.4f} |"
        )
    return "\n".join(lines)


def _compare(methods, densities, seeds, base: dict[str, Any], out: Optional[Path], quiet: bool = False,
             resume: bool = False) -> list[dict]:
    from .experiments.runner import RunConfig, run

    results = []
    plan = [("dense", 1.0, s) for s in seeds if "dense" in methods]
    plan += [(m, d, s) for d in densities for m in methods if m != "dense" for s in seeds]
    if out is not None:
        (out / "runs").mkdir(parents=True, exist_ok=True)
    for i, (method, density, seed) in enumerate(plan, 1):
        kw = dict(base)
        if method.endswith(SUP_SUFFIX):
            kw["sup_tickets"] = True
        cfg = RunConfig(method=method[: -len(SUP_SUFFIX)] if kw.get("sup_tickets") else method,
                        density=density, seed=seed, **kw)
        tag = f"{cfg.label}-d{density:g}-s{seed}"
        done = out / "runs" / f"{tag}.json" if out is not None else None
        if resume and done is not None and done.exists():
            results.append(json.loads(done.read_text()))
            if not quiet:
                print(f"[{i}/{len(plan)}] {tag}: already done, skipped", flush=True)
            continue
        if not quiet:
            print(f"[{i}/{len(plan)}] {tag} ...", end="", flush=True)
        r = run(cfg)
        results.append(r)
        if not quiet:
            print(f" acc {100 * r['test_acc']:.2f}%  density {r['density']:.4f}  R_s {r['itop_rate']:.3f}  "
                  f"({r['wall_time_s']:.1f}s)", flush=True)
        if done is not None:  # atomic: a killed run leaves no half-written result
            tmp = done.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(r, indent=1))
            os.replace(tmp, done)
    return results


def _write_report(out: Path, results, command: str, title: str, protocol: str, wall: float,
                  commit: Optional[str] = None) -> str:
    import torch

    rows = aggregate(results)
    table = format_table(rows)
    meta = (
        f"# {title}\n\nProtocol: {protocol}\n\nCommand: `{command}`\n\n"
        f"Commit: {commit or _git_commit()} · torch {torch.__version__} · {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads · total wall time {wall / 60:.1f} min\n\n"
    )
    tickets = ticket_table(results)
    if tickets:
        tickets = ("\n\n## Sup-tickets\n\nThe superposed model is the method's output (its accuracy is the "
                   "table's above); the live model, the best single ticket and the tickets' softmax ensemble "
                   "(FreeTickets-style, K× the inference cost) are shown beside it.\n\n" + tickets)
    (out / "results.md").write_text(meta + table + tickets + "\n")
    with open(out / "results.csv", "w") as f:
        keys = list(rows[0])
        f.write(",".join(keys) + "\n")
        for r in rows:
            f.write(",".join(str(r[k]) for k in keys) + "\n")
    return table


def load_runs(dirs: Sequence[str]) -> list[dict[str, Any]]:
    """Every run result (``runs/*.json`` or ``*.json`` with a ``config``) under the given directories."""
    results = []
    for d in dirs:
        for path in sorted(Path(d).rglob("*.json")):
            try:
                r = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
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
    for r in rows:
        if r["method"] == "dense":
            ax.axhline(r["acc_mean"], color="black", ls="--", lw=1, label=f"dense ({r['acc_mean']:.2f}%)")
            ax.axhspan(r["acc_mean"] - r["acc_std"], r["acc_mean"] + r["acc_std"], color="black", alpha=0.08)
    markers = "osD^v<>pPX*h"
    for i, m in enumerate(methods):
        pts = sorted((100 * (1 - r["density"]), r["acc_mean"], r["acc_std"]) for r in rows if r["method"] == m)
        xs, ys, es = zip(*pts)
        ax.errorbar(xs, ys, yerr=es, marker=markers[i % len(markers)], capsize=3, label=m, lw=1.2, ms=5)
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``sparsetrain`` / ``python -m sparsetrain``."""
    parser = argparse.ArgumentParser(prog="sparsetrain", description="Dynamic sparse training for PyTorch.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="quick comparison: dense vs static vs SET vs RigL vs DST-EE on Fashion-MNIST",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--epochs", type=int, default=5, help="epochs per run")
    demo.add_argument("--density", type=float, default=0.1, help="fraction of weights kept (0.1 = 90%% sparsity)")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.add_argument("--out", default="runs/demo", help="output directory for the table and per-run JSON")
    demo.add_argument("--data-root", default=None, help="directory with the Fashion-MNIST idx files")

    cmp_ = sub.add_parser("compare", help="methods × densities × seeds on one protocol; writes results.md/csv",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cmp_.add_argument("--methods", default="dense,static,set,rigl", help="comma-separated methods (dense or algorithm names)")
    cmp_.add_argument("--densities", default="0.1,0.05,0.02", help="comma-separated densities")
    cmp_.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    cmp_.add_argument("--model", default="lenet300-100", help="model name")
    cmp_.add_argument("--dataset", default="fashion-mnist", help="dataset name")
    cmp_.add_argument("--epochs", type=int, default=30, help="epochs per run")
    cmp_.add_argument("--batch-size", type=int, default=128, help="batch size")
    cmp_.add_argument("--lr", type=float, default=0.1, help="initial learning rate (cosine to 0)")
    cmp_.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay")
    cmp_.add_argument("--update-interval", type=int, default=None,
                      help="ΔT in optimizer steps for dynamic methods (default: each method's own)")
    cmp_.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    cmp_.add_argument("--out", required=True, help="output directory")
    cmp_.add_argument("--title", default="Accuracy comparison", help="title of results.md")
    cmp_.add_argument("--protocol", default="fmnist-mlp (shared/spec/BENCHMARK.md)", help="protocol line for results.md")
    cmp_.add_argument("--data-root", default=None, help="dataset directory")
    cmp_.add_argument("--resume", action="store_true", help="skip runs whose result already exists in --out")
    cmp_.add_argument("--sup-tickets", action="store_true",
                      help=f"add Sup-tickets to every sparse method (or name single methods as e.g. rigl{SUP_SUFFIX})")
    cmp_.add_argument("--cycles", type=int, default=None, help="Sup-tickets: number of tickets K (default: from --cycle-ratio)")
    cmp_.add_argument("--cycle-epochs", type=int, default=8, help="Sup-tickets: cycle length C in epochs")
    cmp_.add_argument("--cycle-ratio", type=float, default=0.1, help="Sup-tickets: share of the epochs spent in cycles")
    cmp_.add_argument("--ticket-lr", default="0.001,0.005", help="Sup-tickets: triangular cycle's low,high learning rate")

    rep = sub.add_parser("report", help="aggregate run JSON files from directories into results.md/csv and a plot",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    rep.add_argument("dirs", nargs="+", help="directories searched recursively for run JSON files")
    rep.add_argument("--out", required=True, help="output directory")
    rep.add_argument("--title", default="Accuracy comparison", help="title of results.md and the plot")
    rep.add_argument("--protocol", default="fmnist-mlp (shared/spec/BENCHMARK.md)", help="protocol line")
    rep.add_argument("--command-note", default="", help="the command(s) that produced the runs, for results.md")
    rep.add_argument("--methods", default=None, help="only these methods (comma-separated table labels; default: all)")
    rep.add_argument("--densities", default=None, help="only these densities (comma-separated; dense is always kept)")

    args = parser.parse_args(argv)
    command = "sparsetrain " + " ".join(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    commit = _git_commit()  # the code the runs use, even if the checkout moves on meanwhile
    if args.command == "demo":
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        print(f"sparsetrain demo: LeNet-300-100 on Fashion-MNIST, {args.epochs} epochs, "
              f"{100 * (1 - args.density):.0f}% sparsity, seed {args.seed}")
        base = dict(model="lenet300-100", dataset="fashion-mnist", epochs=args.epochs, data_root=args.data_root)
        results = _compare(["dense", "static", "set", "rigl", "dstee"], [args.density], [args.seed], base, out)
        table = _write_report(out, results, command, "sparsetrain demo", f"fmnist-mlp, {args.epochs} epochs",
                              time.perf_counter() - start, commit)
        print()
        print(table)
        print(f"\nwritten to {out.resolve()}/results.md (and results.csv, runs/*.json)")
        return 0
    if args.command == "compare":
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        base = dict(model=args.model, dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, weight_decay=args.weight_decay, threads=args.threads, data_root=args.data_root)
        if args.update_interval is not None:
            base["algorithm_kwargs"] = {"update_interval": args.update_interval}
        lo, hi = (float(v) for v in args.ticket_lr.split(","))
        base.update(cycles=args.cycles, cycle_epochs=args.cycle_epochs, cycle_ratio=args.cycle_ratio, ticket_lr=(lo, hi))
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        if args.sup_tickets:
            methods = [m if m == "dense" or m.endswith(SUP_SUFFIX) else m + SUP_SUFFIX for m in methods]
        densities = [float(d) for d in args.densities.split(",")]
        seeds = [int(s) for s in args.seeds.split(",")]
        results = _compare(methods, densities, seeds, base, out, resume=args.resume)
        table = _write_report(out, results, command, args.title, args.protocol, time.perf_counter() - start, commit)
        print()
        print(table)
        return 0
    if args.command == "report":
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        results = load_runs(args.dirs)
        if args.methods:
            keep = {m.strip() for m in args.methods.split(",") if m.strip()}
            results = [r for r in results if r.get("label", r["config"]["method"]) in keep]
        if args.densities:
            ds = [float(d) for d in args.densities.split(",")]
            results = [r for r in results if r["config"]["method"] == "dense"
                       or any(abs(r["config"]["density"] - d) < 1e-9 for d in ds)]
        if not results:
            print(f"no run results found under {', '.join(args.dirs)}", file=sys.stderr)
            return 1
        wall = sum(r["wall_time_s"] for r in results)
        note = args.command_note or command
        table = _write_report(out, results, note, args.title, args.protocol, wall)
        png = plot_accuracy_vs_sparsity(aggregate(results), out / "accuracy_vs_sparsity.png", args.title)
        print(table)
        print(f"\n{len(results)} runs; written to {out}/results.md" + (f" and {png}" if png else ""))
        return 0
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
