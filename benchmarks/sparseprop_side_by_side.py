"""One sparse layer, side by side: dense vs SparseProp vs sparsetrain on each of its backends.

A 4096 × 4096 Linear layer (batch 256) at densities 10/5/2/1% with a uniformly random mask, the
same weights and inputs for every contender:

- ``dense``: ``nn.Linear`` with the masked weight (what masked DST computes);
- ``sparseprop``: ``sparseprop.modules.SparseLinear`` (PyPI ``sparseprop``, IST Austria's CPU
  sparse-training library; the ``bench`` extra installs it; skipped with a note if missing);
- ``st-torch``: sparsetrain's SparseLinear on torch's CSR kernels;
- ``st-<isa>``: on its compiled kernels, forced to each instruction set the CPU has;
- ``st-auto``: the default backend (per operation the faster of compiled and torch's kernels,
  measured on first use — here in a fresh cache, so on this quiet machine).

Forward (no gradients) and forward + backward (input and weight gradients) are timed with the
contenders interleaved in a rotating order, ``--reps`` times each after a warm-up; medians and
speed-ups over dense are reported. The machine (CPU, SIMD sets, compiler and flags, threads) is
printed first. Run from the repository root:

    python benchmarks/sparseprop_side_by_side.py [--densities 0.1,0.05,0.02,0.01] [--threads 2]
        [--reps 15] [--out results/truly_sparse/sparseprop.json]

Never run it while other jobs share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
from torch import nn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--densities", default="0.1,0.05,0.02,0.01")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="JSON file for the numbers")
    ap.add_argument("--keep-cache", action="store_true", help="use the user's autotune cache (default: a fresh one)")
    args = ap.parse_args()
    if not args.keep_cache:
        os.environ["SPARSETRAIN_CACHE_DIR"] = tempfile.mkdtemp(prefix="sparsetrain-bench-")
    if args.threads:
        torch.set_num_threads(args.threads)

    sys.path.insert(0, os.path.dirname(__file__))
    from common import machine_header

    from sparsetrain.sparse import SparseLinear, autotune, kernels

    try:
        from sparseprop.modules import SparseLinear as SPLinear
        sp_error = None
    except Exception as exc:  # noqa: BLE001 - optional comparison
        SPLinear, sp_error = None, f"{type(exc).__name__}: {exc}"

    print(machine_header())
    if sp_error:
        print(f"SparseProp not available ({sp_error}); `pip install sparseprop` (the bench extra) to include it")
    n, b = args.size, args.batch
    isas = kernels.isas()
    results = []
    for density in [float(d) for d in args.densities.split(",")]:
        gen = torch.Generator().manual_seed(0)
        base = nn.Linear(n, n)
        mask = torch.rand(n, n, generator=gen) < density
        with torch.no_grad():
            base.weight.mul_(mask)
        contenders: dict[str, tuple[nn.Module, str, str | None]] = {"dense": (base, "torch", None)}
        if SPLinear is not None:
            contenders["sparseprop"] = (SPLinear.from_dense(base), "torch", None)
        st_layer = SparseLinear.from_linear(base, mask)
        contenders["st-torch"] = (st_layer, "torch", None)
        for isa in isas:
            contenders[f"st-{isa}"] = (st_layer, "native", isa)
        contenders["st-auto"] = (st_layer, "auto", isas[-1] if isas else None)
        x = torch.randn(b, n, generator=gen)
        gy = torch.randn(b, n, generator=gen)

        def run(name: str, backward: bool) -> float:
            module, backend, isa = contenders[name]
            kernels.set_backend(backend)
            if isa is not None:
                kernels.set_isa(isa)
            if backward:
                xi = x.clone().requires_grad_(True)
                t = time.perf_counter()
                module(xi).backward(gy)
                dt = time.perf_counter() - t
                module.zero_grad(set_to_none=True)
            else:
                with torch.no_grad():
                    t = time.perf_counter()
                    module(x)
                    dt = time.perf_counter() - t
            return 1e3 * dt

        names = list(contenders)
        row = {"density": density}
        for phase, backward in (("fwd", False), ("fwd+bwd", True)):
            times: dict[str, list[float]] = {k: [] for k in names}
            for k in names:  # warm-up (and, for st-auto, the first-use measurement)
                run(k, backward)
            for r in range(args.reps):
                order = names[r % len(names):] + names[:r % len(names)]
                for k in order:
                    times[k].append(run(k, backward))
            med = {k: statistics.median(v) for k, v in times.items()}
            row[phase] = {k: {"ms": med[k], "speedup": med["dense"] / med[k]} for k in names}
        kernels.set_backend("auto")
        row["auto_choices"] = autotune.layer_kernels(st_layer, b)
        results.append(row)

    for phase in ("fwd", "fwd+bwd"):
        names = list(results[0][phase])
        print(f"\n{phase}, {n}x{n}, batch {b}: median ms (speed-up over dense)")
        print("| density | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for row in results:
            cells = [f"{row[phase][k]['ms']:.2f} ({row[phase][k]['speedup']:.2f}×)" for k in names]
            print(f"| {row['density']:g} | " + " | ".join(cells) + " |")
        if "sparseprop" in names:
            print("st-auto speed-up ÷ SparseProp speed-up: " + ", ".join(
                f"{row['density']:g}: {row[phase]['st-auto']['speedup'] / row[phase]['sparseprop']['speedup']:.2f}"
                for row in results))
    print("\nauto's choice per operation: " + "; ".join(f"{r['density']:g}: {r['auto_choices']}" for r in results))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"machine": kernels.describe(), "size": n, "batch": b, "reps": args.reps, "results": results},
                      f, indent=1)


if __name__ == "__main__":
    main()
