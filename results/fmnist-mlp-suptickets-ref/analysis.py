"""Sup-tickets in the reference regime, in the paper's own terms. For each density and base arm
(``rigl``: our RigL defaults; ``rigl-ref``: the reference code's base), seeds paired throughout:

1. the trajectory: θ_pre (the base model when the cycles start), each ticket (the live model at
   the end of its cycle), the superposed model θ_sup after each ticket (θ_sup after ticket 3 is
   the run's output), and the base alone trained for the same 250 epochs;
2. paired differences with Student-t 95% intervals: output − θ_pre (does superposition add
   anything to the model it starts from?), each ticket − θ_pre, θ_sup after ticket k − after k−1
   (does each superposition step help?), output − base alone (the claim: a better network in
   the same budget), base alone − θ_pre (what the 24 epochs given to the cycles are worth as
   ordinary training);
3. the two base arms against each other (paired): base alone, θ_pre, output.

    .venv/bin/python results/fmnist-mlp-suptickets-ref/analysis.py > results/fmnist-mlp-suptickets-ref/analysis.txt
"""
import json
import math
import statistics
from pathlib import Path

T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
SUP = "+sup-tickets"

here = Path(__file__).resolve().parent
runs = {}
for p in sorted((here / "runs").glob("*/summary.json")):
    r = json.loads(p.read_text())
    runs[(r["label"], r["config"]["density"], r["config"]["seed"])] = r
bases = sorted({k[0].removesuffix(SUP) for k in runs})
densities = sorted({k[1] for k in runs}, reverse=True)
seeds = sorted({k[2] for k in runs})


def ci(values):
    """Mean and 95% interval (points), and how many pairs are positive."""
    n = len(values)
    if n == 0:
        return "-"
    m = statistics.mean(values)
    if n < 2:
        return f"{m:+.2f} (n=1)"
    half = T975[n - 2] * statistics.stdev(values) / math.sqrt(n)
    pos = sum(v > 0 for v in values)
    return f"{m:+.2f} [{m - half:+.2f}, {m + half:+.2f}]  {pos}/{n} > 0"


def trajectory(r):
    """θ_pre, [ticket k], [θ_sup after k], output (accuracies in %)."""
    t = r["tickets"]
    return (100 * r["pre_test_acc"], [100 * x["ticket_acc"] for x in t], [100 * x["sup_acc"] for x in t],
            100 * r["test_acc"])


def pairs(d, base):
    """(seed, sup run, base-alone run) for the seeds where both finished."""
    return [(s, runs[(base + SUP, d, s)], runs[(base, d, s)]) for s in seeds
            if (base + SUP, d, s) in runs and (base, d, s) in runs]


def mean(xs):
    return statistics.mean(xs) if xs else float("nan")


for d in densities:
    print(f"=== density {d}\n")
    print("1. accuracy (%), mean over the paired seeds")
    print(f"  {'base':9} {'n':>2}  {'θ_pre':>6}  {'ticket 1 / θ_sup':>16}  {'ticket 2 / θ_sup':>16}  "
          f"{'ticket 3 / θ_sup':>16}  {'output':>6}  {'base alone':>10}  R_s (sup / alone)")
    for b in bases:
        ps = pairs(d, b)
        if not ps:
            continue
        tr = [trajectory(sup) for _, sup, _ in ps]
        k = min(len(t[1]) for t in tr)
        cells = [f"{mean([t[1][i] for t in tr]):6.2f} / {mean([t[2][i] for t in tr]):6.2f}" for i in range(k)]
        print(f"  {b:9} {len(ps):>2}  {mean([t[0] for t in tr]):6.2f}  " + "  ".join(f"{c:>16}" for c in cells) +
              f"  {mean([t[3] for t in tr]):6.2f}  {mean([100 * a['test_acc'] for _, _, a in ps]):10.2f}  "
              f"{mean([s['itop_rate'] for _, s, _ in ps]):.3f} / {mean([a['itop_rate'] for _, _, a in ps]):.3f}")
    print("\n2. paired differences (points), 95% interval, pairs > 0")
    for b in bases:
        ps = pairs(d, b)
        if not ps:
            continue
        tr = {s: trajectory(sup) for s, sup, _ in ps}
        alone = {s: 100 * a["test_acc"] for s, _, a in ps}
        print(f"  {b}")
        print(f"    {'output − θ_pre':30}{ci([t[3] - t[0] for t in tr.values()])}")
        for i in range(min(len(t[1]) for t in tr.values())):
            print(f"    {f'ticket {i + 1} − θ_pre':30}{ci([t[1][i] - t[0] for t in tr.values()])}")
        for i in range(min(len(t[2]) for t in tr.values())):
            prev = "θ_pre" if i == 0 else f"θ_sup after {i}"
            label = f"θ_sup after {i + 1} − {prev}"
            print(f"    {label:30}{ci([t[2][i] - (t[0] if i == 0 else t[2][i - 1]) for t in tr.values()])}")
        print(f"    {'output − base alone':30}{ci([tr[s][3] - alone[s] for s in tr])}")
        print(f"    {'base alone − θ_pre':30}{ci([alone[s] - tr[s][0] for s in tr])}")
    if len(bases) == 2:
        ours, ref = bases[0], bases[1]
        common = [s for s in seeds if all((x, d, s) in runs for x in (ours, ref, ours + SUP, ref + SUP))]
        print(f"\n3. {ref} − {ours}, paired (points)")
        if common:
            t = {x: {s: trajectory(runs[(x + SUP, d, s)]) for s in common} for x in (ours, ref)}
            print(f"    {'base alone':30}{ci([100 * (runs[(ref, d, s)]['test_acc'] - runs[(ours, d, s)]['test_acc']) for s in common])}")
            print(f"    {'θ_pre':30}{ci([t[ref][s][0] - t[ours][s][0] for s in common])}")
            print(f"    {'output':30}{ci([t[ref][s][3] - t[ours][s][3] for s in common])}")
    print()
