"""A model too large to train densely within a memory budget, trained sparsely (issue "Truly sparse", Beyond).

An MLP 784 → W → W → W → 10 with W = 20,000 hidden units per layer (816 M weights) at 99.5%
sparsity (ERK) on Fashion-MNIST. Densely it needs 3.3 GB for the weights alone and about 9.8 GB
for weights, gradients and SGD momentum. Sparsely it is built on the meta device, converted with
``st.sparse.to_sparse`` into *deferred* SparseLinear layers (no dense weight is ever allocated),
and trained by the ordinary :class:`~sparsetrain.Sparsifier` with SET (or RigL): topology updates
of layers above 2²⁴ positions stream (no dense float temporaries), so the memory is the nonzeros,
their optimizer state and indices, plus one byte per position for each of the mask and the
ever-active map.

Reported: peak resident memory of the sparse run (whole process, from ``getrusage``), the
per-epoch test accuracy, step and update times, and — in a separate process, unless
``--dense-steps 0`` — the peak memory of two training steps of the same model held densely.

Run: ``python benchmarks/wide_sparse_mlp.py [--width 20000] [--density 0.005] [--method set]
[--epochs 5] [--out results/wide-mlp]``.
"""

from __future__ import annotations

import argparse
import json
import os
import math
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import sparsetrain as st
from sparsetrain.experiments.data import load_dataset
from sparsetrain.sparse import kernels, to_sparse

IN, OUT = 784, 10


def peak_gib() -> float:
    """Peak resident memory of this process so far (GiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def build(width: int, depth: int, device: str = "meta") -> nn.Sequential:
    layers, d = [], IN
    with torch.device(device):
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        layers.append(nn.Linear(d, OUT))
    return nn.Sequential(*layers)


def data(name: str = "fashion-mnist"):
    train, test, info = load_dataset(name)
    if info["in_channels"] * info["image_size"] ** 2 != IN:
        raise ValueError(f"{name} images are not 28×28 grey: this MLP takes {IN} inputs")
    mean, std = info["mean"][0], info["std"][0]

    def prep(ds):
        return ((ds.x.float().div_(255) - mean) / std).reshape(len(ds), -1), ds.y

    return prep(train), prep(test)


@torch.no_grad()
def accuracy(model, x, y, batch=1000) -> float:
    model.eval()
    hits = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    model.train()
    return hits / len(x)


def dense_peak(width: int, depth: int, steps: int, batch: int) -> float:
    """Peak resident memory (GiB) of ``steps`` dense SGD-momentum steps of the same MLP, in a fresh process."""
    code = f"""
import resource, sys, torch
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import wide_sparse_mlp as w
torch.manual_seed(0)
m = w.build({width}, {depth}, device='cpu')
o = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
x = torch.randn({batch}, w.IN); y = torch.randint(0, w.OUT, ({batch},))
for _ in range({steps}):
    o.zero_grad(); torch.nn.functional.cross_entropy(m(x), y).backward(); o.step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        return float("nan")
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="fashion-mnist", help="28×28 grey images (synthetic for a smoke test)")
    ap.add_argument("--width", type=int, default=20000)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--density", type=float, default=0.005)
    ap.add_argument("--method", choices=["set", "rigl"], default="set")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--init", choices=["dense", "sparse"], default="sparse",
                    help="scale of the drawn weights: nn.Linear's, or divided by √density (default)")
    ap.add_argument("--update-interval", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit-batches", type=int, default=None, help="batches per epoch (quick checks)")
    ap.add_argument("--dense-steps", type=int, default=2, help="dense steps measured for comparison (0: skip)")
    ap.add_argument("--out", default=None, help="directory to write summary.json into")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    (xtr, ytr), (xte, yte) = data(args.dataset)
    base = peak_gib()

    t0 = time.perf_counter()
    model = to_sparse(build(args.width, args.depth), init=args.init)  # deferred layers: nothing allocated yet
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(xtr) / args.batch)
    if args.limit_batches:
        steps_per_epoch = min(steps_per_epoch, args.limit_batches)
    total = steps_per_epoch * args.epochs
    alg_cls = st.SET if args.method == "set" else st.RigL
    alg = alg_cls(density=args.density, update_interval=args.update_interval, seed=args.seed)
    sp = st.Sparsifier(model, opt, alg, total_steps=total, track_usage=False)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    attach_s = time.perf_counter() - t0
    n_weights = sum(l.numel for l in sp.layers.values())
    nnz = sum(l.n_active for l in sp.layers.values())
    n_bias = sum(m.bias.numel() for m in model.modules() if isinstance(getattr(m, "bias", None), torch.Tensor))
    used = "native" if kernels.backend() != "torch" and kernels.native_available() else "torch"
    head = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, kernels {used}; "
            f"MLP {IN}-{'-'.join([str(args.width)] * args.depth)}-{OUT}: {n_weights / 1e6:.1f} M weights, "
            f"{args.method.upper()} at density {args.density} ({nnz / 1e6:.2f} M nonzeros), batch {args.batch}, "
            f"{args.epochs} epochs, lr {args.lr} cosine, ΔT {args.update_interval}, init {args.init}")
    print(head, flush=True)
    print(f"attach: {attach_s:.1f} s, peak RSS {peak_gib():.2f} GiB (data and torch: {base:.2f} GiB)", flush=True)

    g = torch.Generator().manual_seed(args.seed)
    epochs, step_times, update_times = [], [], []
    for epoch in range(args.epochs):
        order = torch.randperm(len(xtr), generator=g)
        t_epoch = time.perf_counter()
        loss_sum = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * args.batch:(i + 1) * args.batch]
            t = time.perf_counter()
            updates = sp.updates
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            sched.step()
            (update_times if sp.updates != updates else step_times).append(time.perf_counter() - t)
            loss_sum += loss.item()
        acc = accuracy(model, xte, yte)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / steps_per_epoch, "test_acc": acc,
               "epoch_s": time.perf_counter() - t_epoch, "peak_rss_gib": peak_gib(), "itop_rate": sp.itop_rate,
               "density": sp.density, "updates": sp.updates}
        epochs.append(row)
        print(f"epoch {row['epoch']}: loss {row['train_loss']:.4f}, test acc {acc:.4f}, {row['epoch_s']:.0f} s, "
              f"peak RSS {row['peak_rss_gib']:.2f} GiB, R_s {row['itop_rate']:.4f}, density {row['density']:.5f}",
              flush=True)
    summary = {
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "header": head, "weights": n_weights, "nnz": nnz, "attach_s": attach_s,
        "step_ms_median": 1e3 * sorted(step_times)[len(step_times) // 2] if step_times else None,
        "update_s_median": sorted(update_times)[len(update_times) // 2] if update_times else None,
        "sparse_peak_rss_gib": peak_gib(), "final_test_acc": epochs[-1]["test_acc"] if epochs else None,
        "dense_bytes_weights_grads_momentum": 12 * (n_weights + n_bias),
        "epochs": epochs,
    }
    print(f"sparse: peak RSS {summary['sparse_peak_rss_gib']:.2f} GiB, step {summary['step_ms_median']:.0f} ms, "
          f"topology update {summary['update_s_median'] or float('nan'):.2f} s", flush=True)
    print(f"dense: weights + gradients + momentum alone = {summary['dense_bytes_weights_grads_momentum'] / 2**30:.2f} GiB",
          flush=True)
    if args.dense_steps:
        summary["dense_peak_rss_gib"] = dense_peak(args.width, args.depth, args.dense_steps, args.batch)
        print(f"dense: measured peak RSS over {args.dense_steps} steps {summary['dense_peak_rss_gib']:.2f} GiB", flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
