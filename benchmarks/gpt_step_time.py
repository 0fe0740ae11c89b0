"""Masked vs truly sparse training step of a GPT-style decoder (protocol ``text-gpt``, issue 13 item 6).

The model of the ``text-gpt`` sweep, ``gpt-mini`` (4 blocks, width 128, 4 heads, context 128, tied
byte embedding), and a wider one of the same shape family (``--model gpt-wide``: width 512, 8 heads), at
the sweep's batch (32 contexts of 128 bytes = 4,096 tokens per step), AdamW. For each density the
same model is trained three ways on the same batches, steps interleaved in a rotating order:

- *dense*: no sparsifier;
- *masked*: ``nn.Linear`` + :class:`~sparsetrain.Sparsifier` (RigL, updates far apart), what the
  sweep runs;
- *sparse*: :func:`sparsetrain.sparse.to_sparse` (attention and MLP projections become
  ``SparseLinear`` taking ``(B, T, D)`` inputs) + the same Sparsifier.

Reported per density: median step time (forward, backward, AdamW step) of each and the ratios, the
median inference time of a batch, and the kernels each sparse layer's operations ran on. The
embedding, the tied output head, LayerNorms and the attention products stay dense in every mode
(what the default selection does), so they bound the speed-up of the whole step.

Run: ``python benchmarks/gpt_step_time.py [--model gpt-mini|gpt-wide] [--densities 0.1,0.05] [--steps 15]
[--threads 2] [--out results/text-gpt/step_time.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from common import machine_header

import sparsetrain as st
from sparsetrain.experiments.gpt import GPT, GPT_CONFIGS, GPTConfig
from sparsetrain.sparse import to_sparse

BATCH = 32
#: the sweep's model, a wider one of the same family, and a tiny one (tests)
MODELS = {"gpt-mini": GPT_CONFIGS["gpt-mini"], "gpt-micro": GPT_CONFIGS["gpt-micro"],
          "gpt-wide": GPTConfig(layers=4, width=512, heads=8, context=128)}


def make(cfg: GPTConfig, mode: str, density: float):
    torch.manual_seed(0)
    model = GPT(cfg)
    if mode == "sparse":
        to_sparse(model)  # the default selection: attention and MLP projections; embeddings/head stay dense
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    sp = None
    if mode != "dense":
        sp = st.Sparsifier(model, opt, st.RigL(density=density, update_interval=10**9, end=None),
                           total_steps=10**9, track_usage=False)
    return model, opt, sp


def train_step(model, opt, x, y) -> None:
    logits = model(x)
    nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def measure(cfg: GPTConfig, density: float, steps: int) -> dict:
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, cfg.vocab, (BATCH, cfg.context + 1), generator=g) for _ in range(4)]
    models = {mode: make(cfg, mode, density) for mode in ("dense", "masked", "sparse")}
    order = list(models)
    train = {mode: [] for mode in models}
    infer = {mode: [] for mode in models}
    for i in range(2 + steps):
        b = batches[i % 4]
        x, y = b[:, :-1], b[:, 1:]
        for mode in order[i % 3:] + order[:i % 3]:  # rotate which mode goes first
            model, opt, _ = models[mode]
            t0 = time.perf_counter()
            train_step(model, opt, x, y)
            if i >= 2:
                train[mode].append(time.perf_counter() - t0)
    with torch.no_grad():
        for i in range(steps):
            x = batches[i % 4][:, :-1]
            for mode in order[i % 3:] + order[:i % 3]:
                t0 = time.perf_counter()
                models[mode][0](x)
                infer[mode].append(time.perf_counter() - t0)
    from sparsetrain.experiments.build import kernel_choices

    row = {"density": density}
    for mode in models:
        row[f"train_{mode}_ms"] = 1e3 * statistics.median(train[mode])
        row[f"infer_{mode}_ms"] = 1e3 * statistics.median(infer[mode])
    row["train_sparse_over_masked"] = row["train_masked_ms"] / row["train_sparse_ms"]
    row["train_sparse_over_dense"] = row["train_dense_ms"] / row["train_sparse_ms"]
    row["infer_sparse_over_masked"] = row["infer_masked_ms"] / row["infer_sparse_ms"]
    row["kernels"] = kernel_choices(models["sparse"][0], BATCH * cfg.context)
    row["sparse_layers"] = len(models["sparse"][2].layers)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--densities", default="0.1,0.05")
    ap.add_argument("--steps", type=int, default=15, help="timed steps per mode and density")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model", default="gpt-mini", choices=sorted(MODELS), help="gpt-wide: width 512, 8 heads")
    ap.add_argument("--out", default=None, help="JSON file for the numbers")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = MODELS[args.model]
    name = f"{args.model} ({cfg.layers} x {cfg.width}, {cfg.heads} heads, ctx {cfg.context})"
    print(machine_header())
    print(f"\n{name}, batch {BATCH} x {cfg.context} tokens, AdamW: median ms per training step / inference batch")
    print("| density | dense | masked | truly sparse | sparse vs masked | sparse vs dense | inference masked | "
          "inference sparse | inference ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for d in (float(v) for v in args.densities.split(",")):
        r = measure(cfg, d, args.steps)
        rows.append(r)
        print(f"| {d:g} | {r['train_dense_ms']:.1f} | {r['train_masked_ms']:.1f} | {r['train_sparse_ms']:.1f} | "
              f"{r['train_sparse_over_masked']:.2f}× | {r['train_sparse_over_dense']:.2f}× | "
              f"{r['infer_masked_ms']:.1f} | {r['infer_sparse_ms']:.1f} | {r['infer_sparse_over_masked']:.2f}× |",
              flush=True)
    for r in rows:
        print(f"kernels at density {r['density']:g}: {json.dumps(r['kernels'])}")
    if args.out:
        from sparsetrain.sparse import kernels

        with open(args.out, "w") as f:
            json.dump({"model": name, "batch": BATCH, "context": cfg.context, "machine": kernels.describe(),
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
