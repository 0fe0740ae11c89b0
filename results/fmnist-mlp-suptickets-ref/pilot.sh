#!/bin/sh
# Pilot of protocol fmnist-mlp-suptickets-ref (../../shared/spec/BENCHMARK.md) at 100 epochs:
# 76 base epochs + 3 cycles of 8; two base arms (our RigL defaults; the reference's base: RigL with
# ΔT 1,200 steps, constant drop 0.5, no end), each with and without Sup-tickets. Resumable: rerun it.
cd "$(dirname "$0")/../.." && exec .venv/bin/python -m sparsetrain sweep \
  --out results/fmnist-mlp-suptickets-ref/pilot --jobs 2 --threads 1 --seed-major \
  --methods "rigl,rigl+sup-tickets,rigl-ref=rigl:update_interval=1200:drop_fraction=0.5:drop_schedule=constant:end=none,rigl-ref=rigl:update_interval=1200:drop_fraction=0.5:drop_schedule=constant:end=none+sup-tickets" \
  --densities 0.02 --seeds 0,1 --epochs 100 --cycles 3 --cycle-epochs 8 --schedule multistep \
  --title "Sup-tickets, reference regime: 100-epoch pilot" \
  --protocol "fmnist-mlp-suptickets-ref pilot: LeNet-300-100, 100 epochs (76 base + 3x8 cycles), SGD 0.1 mom 0.9 wd 5e-4, batch 128, step LR x0.1 at 50/75% of the base phase; tickets 0.001-0.005 triangular, 50% drop + gradient regrowth"
