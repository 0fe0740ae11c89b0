"""ITOP's claim in its own terms: at a fixed update interval, longer training raises R_s, and
accuracy rises with R_s. Separates the two effects of a longer run:

1. per arm and length, mean accuracy and R_s (seeds paired throughout);
2. the gain of each arm from 30 to 60 and 120 epochs, paired by seed, and the same gain *minus
   dense's* (difference in differences: what longer training gives a sparse network beyond what it
   gives any network), with Student-t 95% intervals;
3. each sparse arm against RigL at the same length (paired);
4. within one length, the correlation over sparse runs of accuracy with R_s (Pearson r);
5. ITOP's specific claim: does the arm that explores more gain *more* from longer training? Each
   arm's gain from 30 epochs minus RigL's gain, paired by seed.

    .venv/bin/python results/fmnist-mlp-itop-time/analysis.py > results/fmnist-mlp-itop-time/analysis.txt
"""
import json
import math
import statistics
from pathlib import Path

T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)

here = Path(__file__).resolve().parent
runs = {}
for p in sorted((here / "runs").glob("*/summary.json")):
    r = json.loads(p.read_text())
    c = r["config"]
    runs[(r["label"].split()[0], c["density"], c["epochs"], c["seed"])] = r  # label "rigl epochs=60"
arms = sorted({k[0] for k in runs}, key=lambda a: (a != "dense", a))
densities = sorted({k[1] for k in runs if k[0] != "dense"}, reverse=True)
lengths = sorted({k[2] for k in runs})


def get(arm, d, e, s):
    return runs.get((arm, 1.0 if arm == "dense" else d, e, s))


def ci(values):
    n = len(values)
    m = statistics.mean(values)
    if n < 2:
        return f"{m:+.2f} (n=1)"
    half = T975[n - 2] * statistics.stdev(values) / math.sqrt(n)
    return f"{m:+.2f} [{m - half:+.2f}, {m + half:+.2f}] n={n}"


for d in densities:
    print(f"=== density {d}\n\n1. accuracy (%) / R_s, mean over seeds (n)")
    for a in arms:
        cells = []
        for e in lengths:
            rs = [r for (la, dd, ee, s), r in runs.items() if la == a and ee == e and (a == "dense" or dd == d)]
            cells.append(f"{e:>3} ep: {100 * statistics.mean(r['test_acc'] for r in rs):.2f} / "
                         f"{statistics.mean(r['itop_rate'] for r in rs):.3f} ({len(rs)})" if rs else f"{e:>3} ep: -")
        print(f"  {a:10} " + "   ".join(cells))
    print("\n2. gain from 30 epochs (pt), paired by seed; and beyond dense's gain")
    for a in arms:
        for e in lengths[1:]:
            g, dd = [], []
            for s in range(10):
                lo, hi = get(a, d, lengths[0], s), get(a, d, e, s)
                if lo and hi:
                    g.append(100 * (hi["test_acc"] - lo["test_acc"]))
                    dlo, dhi = get("dense", d, lengths[0], s), get("dense", d, e, s)
                    if a != "dense" and dlo and dhi:
                        dd.append(g[-1] - 100 * (dhi["test_acc"] - dlo["test_acc"]))
            if g:
                print(f"  {a:10} {lengths[0]}->{e:<3}: {ci(g):32}" + (f" beyond dense: {ci(dd)}" if dd else ""))
    print("\n3. against RigL at the same length (pt), paired by seed")
    for a in arms:
        if a in ("rigl", "dense"):
            continue
        for e in lengths:
            diff = [100 * (get(a, d, e, s)["test_acc"] - get("rigl", d, e, s)["test_acc"]) for s in range(10)
                    if get(a, d, e, s) and get("rigl", d, e, s)]
            if diff:
                print(f"  {a:10} {e:>3} ep: {ci(diff)}")
    print("\n4. within a length, accuracy vs R_s over the sparse runs (Pearson r)")
    for e in lengths:
        pts = [(r["itop_rate"], r["test_acc"]) for (la, dd, ee, s), r in runs.items()
               if la != "dense" and dd == d and ee == e]
        if len(pts) > 2:
            print(f"  {e:>3} ep: r = {statistics.correlation(*zip(*pts)):+.2f} over {len(pts)} runs")
    print()
    print("5. gain from 30 epochs beyond RigL's gain (pt), paired by seed: does exploring more make longer"
          " training pay more?")
    for a in arms:
        if a in ("rigl", "dense"):
            continue
        for e in lengths[1:]:
            diff = []
            for s in range(10):
                lo, hi, rlo, rhi = get(a, d, lengths[0], s), get(a, d, e, s), get("rigl", d, lengths[0], s), \
                    get("rigl", d, e, s)
                if lo and hi and rlo and rhi:
                    diff.append(100 * ((hi["test_acc"] - lo["test_acc"]) - (rhi["test_acc"] - rlo["test_acc"])))
            if diff:
                print(f"  {a:10} {lengths[0]}->{e:<3}: {ci(diff)}")
    print()
