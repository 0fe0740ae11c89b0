"""Overhead of the Sparsifier on an ordinary training step, measured side by side.

For each model, two identical copies train on the same batches, one plain and one with a
``Sparsifier`` (RigL, density 0.1, ΔT = 100) attached; their steps are interleaved (the order
alternates every step) so that both see the same machine state. Reported:

- median time of an ordinary step, sparse / plain (the per-step cost of the hooks);
- the cost of one topology-update step in units of ordinary steps (measured in a second phase
  with ΔT = 10 to collect more samples: the update's cost does not depend on ΔT);
- the amortised ratio at ΔT = 100: (median sparse step + update cost / 100) / median plain step.

Run: ``python benchmarks/overhead.py [--steps 200] [--models lenet5-caffe,resnet20] [--out FILE]``.
Timings are ratios from one run on one machine; no test asserts on them.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics

import torch

from common import step, timed

import sparsetrain as st
from sparsetrain.experiments.models import build_model


def measure(name: str, steps: int, batch: int, optimizer: str = "sgd", nan_safe: bool = True) -> dict:
    torch.manual_seed(0)
    image = 32 if name.startswith(("resnet", "vgg", "wrn")) else 28
    base = build_model(name, 1, 10, image)
    plain, sparse = base, copy.deepcopy(base)

    def make_opt(m):
        if optimizer == "adam":
            return torch.optim.Adam(m.parameters(), lr=1e-3)
        return torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    opt_p, opt_s = make_opt(plain), make_opt(sparse)
    total = 10 * steps
    sp = st.Sparsifier(sparse, opt_s, st.RigL(density=0.1, update_interval=100, end=None), total_steps=total,
                       nan_safe=nan_safe)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, 1, image, image, generator=gen), torch.randint(0, 10, (batch,), generator=gen))
               for _ in range(8)]

    # warm-up (allocator, first-call costs)
    for i in range(5):
        x, y = batches[i % 8]
        step(plain, opt_p, x, y)
        step(sparse, opt_s, x, y)

    t_plain, t_sparse = [], []
    for i in range(steps):
        x, y = batches[i % 8]
        upcoming_update = sp.algorithm.is_update_step(sp.step + 1, sp.total_steps)
        if i % 2 == 0:
            tp = timed(lambda: step(plain, opt_p, x, y))
            ts = timed(lambda: step(sparse, opt_s, x, y))
        else:
            ts = timed(lambda: step(sparse, opt_s, x, y))
            tp = timed(lambda: step(plain, opt_p, x, y))
        t_plain.append(tp)
        if not upcoming_update:
            t_sparse.append(ts)
    med_p, med_s = statistics.median(t_plain), statistics.median(t_sparse)

    # Phase B: update cost, ΔT = 10 (more samples), sparse model only, interleaved with plain steps.
    sp.remove()
    sp2 = st.Sparsifier(sparse, opt_s, st.RigL(density=0.1, update_interval=10, end=None), total_steps=total,
                        nan_safe=nan_safe)
    upd, normal, plain_b = [], [], []
    for i in range(max(60, steps // 2)):
        x, y = batches[i % 8]
        upcoming_update = sp2.algorithm.is_update_step(sp2.step + 1, sp2.total_steps)
        ts = timed(lambda: step(sparse, opt_s, x, y))
        plain_b.append(timed(lambda: step(plain, opt_p, x, y)))
        (upd if upcoming_update else normal).append(ts)
    update_cost = statistics.median(upd) - statistics.median(normal)
    update_in_steps = update_cost / statistics.median(plain_b)
    amortised = (med_s + update_cost / 100) / med_p
    return {
        "model": name,
        "optimizer": optimizer,
        "nan_safe": nan_safe,
        "batch": batch,
        "params": sum(p.numel() for p in base.parameters()),
        "median_plain_ms": 1e3 * med_p,
        "median_sparse_ms": 1e3 * med_s,
        "step_ratio": med_s / med_p,
        "update_cost_steps": update_in_steps,
        "amortised_ratio_dt100": amortised,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="lenet5-caffe,resnet20", help="comma-separated model names")
    ap.add_argument("--steps", type=int, default=200, help="interleaved steps per model")
    ap.add_argument("--batch", type=int, default=128, help="batch size")
    ap.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"], help="optimizer")
    ap.add_argument("--nan-safe", default="1", help="1, 0 or 1,0 (both): gradient masking by selection or multiplication")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [measure(m.strip(), args.steps, args.batch, args.optimizer, bool(int(ns)))
            for m in args.models.split(",") for ns in args.nan_safe.split(",")]
    header = "| model | optimizer | nan_safe | batch | plain step (ms) | sparse step (ms) | step ratio | update (steps) | amortised ratio, ΔT=100 |"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}")
    print(header)
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['optimizer']} | {r['nan_safe']} | {r['batch']} | {r['median_plain_ms']:.1f} | {r['median_sparse_ms']:.1f} | "
              f"{r['step_ratio']:.3f}× | {r['update_cost_steps']:.2f} | {r['amortised_ratio_dt100']:.3f}× |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
