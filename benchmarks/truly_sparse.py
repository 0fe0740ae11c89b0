"""Truly sparse vs masked-dense execution, measured side by side (spec §6, issue "Truly sparse").

Model: an MLP 784 → 4096 → 4096 → 4096 → 10 (three 4096-wide hidden layers), batch 256, SGD
with momentum, ERK densities. For each density two copies train on the same batches with their
steps interleaved (order alternating): *masked dense* (``nn.Linear`` + ``Sparsifier``, what
every DST library does) and *truly sparse* (``st.sparse.to_sparse`` + the same ``Sparsifier``).
Reported per density:

- median training-step time (forward, backward, optimizer step) and the ratio;
- median inference time (batch 256, no gradients) and the ratio;
- the cost of a topology-update step of the sparse model (dense gradient + drop/grow +
  restructure), in its own ordinary steps;
- parameter + optimizer-state bytes of the sparse layers, and that over ``nnz × 4`` bytes;
- resident memory while training, each mode in a fresh subprocess.

Run: ``python benchmarks/truly_sparse.py [--densities 1,0.2,0.1,0.05,0.02,0.01] [--steps 20]
[--threads 2] [--out results/truly_sparse/truly_sparse.json] [--profile 0.02]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch
from torch import nn

from common import machine_header, step, timed

import sparsetrain as st
from sparsetrain.sparse import kernels, to_sparse

WIDTH, DEPTH, IN, OUT, BATCH = 4096, 3, 784, 10, 256


def build(width=WIDTH, depth=DEPTH) -> nn.Module:
    torch.manual_seed(0)
    layers, d = [], IN
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, OUT))
    return nn.Sequential(*layers)


def make(mode: str, density: float, width=WIDTH, depth=DEPTH):
    model = build(width, depth)
    if mode == "sparse":
        to_sparse(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    # RigL with updates far apart: ordinary steps are measured; one update is forced in measure().
    # At density 1 the sparse model is a full CSR (the break-even reference), the dense one plain.
    sp = None
    if density < 1.0 or mode == "sparse":
        sp = st.Sparsifier(model, opt, st.RigL(density=density, update_interval=10**9, end=None),
                           total_steps=10**9, track_usage=False)
    return model, opt, sp


def state_bytes(model, opt, sp) -> tuple[int, int, int]:
    """(parameter + optimizer-state bytes of the sparse layers, their index-structure bytes, nnz)."""
    total = index = nnz = 0
    for layer in sp.layers.values():
        p = layer.param
        total += p.numel() * p.element_size()
        for v in opt.state.get(p, {}).values():
            if torch.is_tensor(v):
                total += v.numel() * v.element_size()
        if layer.sparse_module is not None:
            m = layer.sparse_module
            index += sum(b.numel() * b.element_size() for b in
                         (m.crow_indices, m.col_indices, m.t_crow_indices, m.t_col_indices, m.t_perm))
        nnz += layer.n_active
    return total, index, nnz


def measure(density: float, steps: int) -> dict:
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(BATCH, IN, generator=g), torch.randint(0, OUT, (BATCH,), generator=g)) for _ in range(4)]
    dm, dopt, dsp = make("dense", density, WIDTH, DEPTH)
    sm, sopt, ssp = make("sparse", density, WIDTH, DEPTH)
    for i in range(2):  # warm-up
        step(dm, dopt, *batches[i])
        step(sm, sopt, *batches[i])
    td, ts = [], []
    for i in range(steps):
        x, y = batches[i % 4]
        if i % 2:
            ts.append(timed(lambda: step(sm, sopt, x, y)))
            td.append(timed(lambda: step(dm, dopt, x, y)))
        else:
            td.append(timed(lambda: step(dm, dopt, x, y)))
            ts.append(timed(lambda: step(sm, sopt, x, y)))
    id_, is_ = [], []
    with torch.no_grad():
        for i in range(steps):
            x = batches[i % 4][0]
            id_.append(timed(lambda: dm(x)))
            is_.append(timed(lambda: sm(x)))
    row = {
        "density": density,
        "train_dense_ms": 1e3 * statistics.median(td),
        "train_sparse_ms": 1e3 * statistics.median(ts),
        "infer_dense_ms": 1e3 * statistics.median(id_),
        "infer_sparse_ms": 1e3 * statistics.median(is_),
    }
    row["train_speedup"] = row["train_dense_ms"] / row["train_sparse_ms"]
    # the kernels each layer's operations ran on (auto: measured per operation and shape class)
    from sparsetrain.experiments.build import kernel_choices

    row["kernels"] = kernel_choices(sm, BATCH)
    row["infer_speedup"] = row["infer_dense_ms"] / row["infer_sparse_ms"]
    if ssp is not None and density < 1.0:
        upd = []
        for i in range(3):
            x, y = batches[i % 4]
            ssp.request_update(0.3, grow="gradient")
            upd.append(timed(lambda: step(sm, sopt, x, y)))
        row["update_step_in_steps"] = statistics.median(upd) / statistics.median(ts)
    if ssp is not None:
        sb, ib, nnz = state_bytes(sm, sopt, ssp)
        db = state_bytes(dm, dopt, dsp)[0] if dsp is not None else None
        row.update(sparse_state_bytes=sb, sparse_index_bytes=ib, dense_state_bytes=db, nnz=nnz,
                   state_over_nnz4=sb / (4 * nnz), state_and_index_over_nnz4=(sb + ib) / (4 * nnz))
    return row


def training_rss(mode: str, density: float, width: int, depth: int, steps: int = 3) -> float:
    """Resident memory (MiB) while training, each mode in a fresh process.

    Sampled after every backward (gradients alive) and after every optimizer step, once the
    model, optimizer and sparsifier are set up and freed setup memory was returned to the OS
    (building a model starts from a dense ``nn.Linear`` either way, so the setup's high-water mark
    says nothing about training).
    """
    code = f"""
import ctypes, gc, sys, torch
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import truly_sparse as b
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
m, o, s = b.make({mode!r}, {density}, {width}, {depth})
x = torch.randn(b.BATCH, b.IN); y = torch.randint(0, b.OUT, (b.BATCH,))
gc.collect(); ctypes.CDLL('libc.so.6').malloc_trim(0)
peak = 0.0
for _ in range({steps}):
    torch.nn.functional.cross_entropy(m(x), y).backward(); peak = max(peak, rss())
    o.step(); peak = max(peak, rss()); o.zero_grad(set_to_none=True)
print(peak)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def profile(density: float, steps: int = 5) -> str:
    model, opt, _ = make("sparse", density, WIDTH, DEPTH)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(BATCH, IN, generator=g), torch.randint(0, OUT, (BATCH,), generator=g)
    step(model, opt, x, y)
    from torch.profiler import ProfilerActivity, profile as prof

    with prof(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(steps):
            step(model, opt, x, y)
    return p.key_averages().table(sort_by="self_cpu_time_total", row_limit=14)


def main(argv=None) -> int:
    global WIDTH
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--densities", default="1,0.2,0.1,0.05,0.02,0.01")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per mode and density")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--memory", type=int, default=1, help="also measure peak RSS in subprocesses (1/0)")
    ap.add_argument("--profile", type=float, default=None, help="print a profile of the sparse step at this density")
    ap.add_argument("--width", type=int, default=WIDTH, help="hidden width (smaller for a quick check)")
    ap.add_argument("--kernels", default=None, choices=["auto", "native", "torch"],
                    help="SparseLinear CPU kernels (default: SPARSETRAIN_KERNELS or auto)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    WIDTH = args.width
    if args.kernels:
        os.environ["SPARSETRAIN_KERNELS"] = args.kernels  # also for the RSS subprocesses
        kernels.set_backend(args.kernels)
    used = kernels.backend() if kernels.native_available() else "torch"
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    print(machine_header())
    print(f"MLP {IN}-{'-'.join([str(WIDTH)] * DEPTH)}-{OUT}, batch {BATCH}; SparseLinear kernels: {used}")
    print("| density | train step dense (ms) | sparse (ms) | speed-up | inference dense (ms) | sparse (ms) | speed-up "
          "| update step (sparse steps) | (param+opt) / (nnz·4), with indices | training RSS dense (MiB) | sparse (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for d in [float(v) for v in args.densities.split(",")]:
        r = measure(d, args.steps)
        if args.memory:
            r["train_rss_dense_mib"] = training_rss("dense", d, WIDTH, DEPTH)
            r["train_rss_sparse_mib"] = training_rss("sparse", d, WIDTH, DEPTH)
        rows.append(r)
        print(f"| {d:g} | {r['train_dense_ms']:.1f} | {r['train_sparse_ms']:.1f} | {r['train_speedup']:.2f}× | "
              f"{r['infer_dense_ms']:.1f} | {r['infer_sparse_ms']:.1f} | {r['infer_speedup']:.2f}× | "
              f"{r.get('update_step_in_steps', float('nan')):.1f} | {r.get('state_over_nnz4', float('nan')):.2f} / {r.get('state_and_index_over_nnz4', float('nan')):.2f} | "
              f"{r.get('train_rss_dense_mib', float('nan')):.0f} | {r.get('train_rss_sparse_mib', float('nan')):.0f} |",
              flush=True)
        print("  kernels per layer (forward / input grad / weight grad): " + "; ".join(
            f"{n}: {c['spmm']}/{c['spmm_t']}/{c['sddmm']}" for n, c in r.get("kernels", {}).items()), flush=True)
    prof_table = profile(args.profile) if args.profile else None
    if prof_table:
        print(f"\nprofile of the truly sparse training step at density {args.profile}:\n{prof_table}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": kernels.describe(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "kernels": used, "rows": rows,
                       "profile": prof_table}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
