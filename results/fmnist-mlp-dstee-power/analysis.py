"""Paired tests of every arm against RigL, per density, corrected over the DST-EE arms (Holm), with a
non-parametric check (Wilcoxon signed-rank). Needs scipy (not a sparsetrain dependency).

    .venv/bin/python results/fmnist-mlp-dstee-power/analysis.py > results/fmnist-mlp-dstee-power/analysis.txt
    .venv/bin/python results/fmnist-mlp-dstee-power/analysis.py results/fmnist-mlp-dstee-power-subset/runs
    .venv/bin/python results/fmnist-mlp-dstee-power/analysis.py results/fmnist-mlp-dstee-power/runs \
        results/fmnist-mlp-dstee-power-subset/runs      # each, then both pooled per density

Arguments: runs directories (default: this directory's runs/); ``--base ARM`` names the reference
arm (default rigl). Arms not named ``dstee*`` (dense) are compared too but are not in the Holm
family. With several directories, a last table per density pools their pairs (a pair = one seed
of one directory), and a last one pools every directory and density (a pair = one seed of one
density of one directory): post-hoc summaries across regimes, not pre-registered tests.
"""
import json
import math
import statistics
import sys
from pathlib import Path

from scipy import stats

here = Path(__file__).resolve().parent
args = sys.argv[1:]
base = "rigl"
if "--base" in args:
    i = args.index("--base")
    base = args[i + 1]
    del args[i:i + 2]
roots = [Path(a) for a in args] or [here / "runs"]


def load(root, key=lambda seed: seed):
    """{density: {arm: {key(seed): run}}} of one runs directory; dense is compared at every density."""
    runs = [json.loads(p.read_text()) for p in sorted(Path(root).glob("*/summary.json"))]
    by_density = {}
    for r in runs:
        if r["config"]["method"] != "dense":
            by_density.setdefault(r["config"]["density"], {}).setdefault(r["label"], {})[key(r["config"]["seed"])] = r
    for r in runs:  # dense (density 1) is compared at every density
        if r["config"]["method"] == "dense":
            for by in by_density.values():
                by.setdefault(r["label"], {})[key(r["config"]["seed"])] = r
    return by_density


def survival_fresh(r):
    """Mean over updates of the survival of grown weights and of the fresh share of growth (grown
    weights never active before: the history's "exploration"); None for dense."""
    h = r.get("update_history") or []
    surv = [u["survival"] for u in h if u.get("survival") is not None]
    fresh = [u["exploration"] for u in h if "exploration" in u]
    return (statistics.mean(surv) if surv else math.nan), (statistics.mean(fresh) if fresh else math.nan)


def table(density, by, where=""):
    family = [a for a in by if a != base and a.startswith("dstee")]
    print(f"=== {where}density {density}: paired by seed against {base}; accuracy in points; "
          f"Holm over the {len(family)} DST-EE arms\n")
    print(f"{'arm':22} {'n':>2} {'acc':>6} {'Δ':>6} {'95% CI':>16} {'p(t)':>6} {'p Holm':>6} {'p(W)':>6} "
          f"{'+/-':>5} {'R_s':>6} {'surv.':>6} {'fresh':>6}")
    rows = []
    for arm, seeds in sorted(by.items()):
        common = sorted(set(seeds) & set(by[base]))
        acc = statistics.mean(100 * seeds[s]["test_acc"] for s in common)
        rs = statistics.mean(seeds[s].get("itop_rate") or 1.0 for s in common)
        sv, fr = zip(*(survival_fresh(seeds[s]) for s in common))
        if arm == base:
            print(f"{arm:22} {len(common):2d} {acc:6.2f} {'':>6} {'':>16} {'':>6} {'':>6} {'':>6} {'':>5} {rs:6.3f} "
                  f"{statistics.mean(sv):6.3f} {statistics.mean(fr):6.3f}")
            continue
        d = [100 * (seeds[s]["test_acc"] - by[base][s]["test_acc"]) for s in common]
        if len(d) < 2:
            continue
        m, sd = statistics.mean(d), statistics.stdev(d)
        half = stats.t.ppf(0.975, len(d) - 1) * sd / math.sqrt(len(d))
        p = stats.ttest_1samp(d, 0.0).pvalue
        pw = stats.wilcoxon(d).pvalue
        rows.append([arm, len(d), acc, m, m - half, m + half, p, pw, sum(x > 0 for x in d), sum(x < 0 for x in d),
                     rs, statistics.mean(sv), statistics.mean(fr)])
    # Holm over the DST-EE arms: the k-th smallest p times (m - k + 1), made monotone
    fam = [i for i, r in enumerate(rows) if r[0] in family]
    adj, running = [math.nan] * len(rows), 0.0
    for k, i in enumerate(sorted(fam, key=lambda i: rows[i][6])):
        running = max(running, min(1.0, rows[i][6] * (len(fam) - k)))
        adj[i] = running
    for r, a in zip(rows, adj):
        arm, n, acc, m, lo, hi, p, pw, plus, minus, rs, sv, fr = r
        holm = f"{a:6.3f}" if not math.isnan(a) else f"{'-':>6}"
        print(f"{arm:22} {n:2d} {acc:6.2f} {m:+6.2f} [{lo:+6.2f}, {hi:+6.2f}] {p:6.3f} {holm} {pw:6.3f} "
              f"{plus:2d}/{minus:<2d} {rs:6.3f} {sv:6.3f} {fr:6.3f}")
    print("\nper seed (test accuracy, %):")
    print("seed " + " ".join(f"{a:>20}" for a in sorted(by)))
    for s in sorted(by[base]):
        print(f"{str(s):>4} " + " ".join(f"{100 * by[a][s]['test_acc']:20.2f}" if s in by[a] else f"{'-':>20}"
                                         for a in sorted(by)))
    print()


for root in roots:
    by_density = load(root)
    for density in sorted(by_density, reverse=True):
        if base in by_density[density]:
            table(density, by_density[density], f"{root}: " if len(roots) > 1 else "")
groups = [(i, d) for i, root in enumerate(roots) for d, by in load(root).items() if base in by]
if len(groups) > 1:  # every directory and density together: seed s of density d in directory i keyed "i:d:s"
    every = {}
    for i, root in enumerate(roots):
        for density, by in load(root, lambda seed, i=i: (i, seed)).items():
            if base not in by:
                continue
            for arm, seeds in by.items():
                every.setdefault(arm, {}).update({f"{k[0]}:{density}:{k[1]}": r for k, r in seeds.items()})
    table("all", every, f"pooled over {len(groups)} regimes (directories x densities; post hoc): ")
if len(roots) > 1:  # pairs of every directory together, seed s of directory i keyed "i:s"
    pooled, sources = {}, {}
    for i, root in enumerate(roots):
        for density, by in load(root, lambda seed, i=i: f"{i}:{seed}").items():
            sources.setdefault(density, set()).add(i)
            for arm, seeds in by.items():
                pooled.setdefault(density, {}).setdefault(arm, {}).update(seeds)
    for density in sorted(pooled, reverse=True):
        if base in pooled[density] and len(sources[density]) > 1:  # a density of one directory: shown above
            table(density, pooled[density], f"pooled over {len(roots)} directories (post hoc): ")
