#!/bin/sh
# Protocol fmnist-mlp-suptickets-ref (../../shared/spec/BENCHMARK.md): LeNet-300-100, 250 epochs =
# 226 base + 3 cycles of 8; SGD 0.1, momentum 0.9, wd 5e-4, batch 128; step LR x0.1 at 50/75% of the
# base phase (of the 250 epochs for the base-alone runs); tickets: triangular LR 0.001-0.005, 50% drop +
# gradient regrowth at each cycle start. Base arms: our RigL defaults (dT 100, 0.3 cosine, end 0.75)
# and the reference's base (RigL, dT 1,200 steps, constant drop 0.5, no end), each with and without
# Sup-tickets; densities 0.05 and 0.02; seeds 0-4. Resumable: rerun it.
cd "$(dirname "$0")/../.." && exec .venv/bin/python -m sparsetrain sweep \
  --out results/fmnist-mlp-suptickets-ref --jobs 2 --threads 1 --seed-major \
  --methods "rigl,rigl+sup-tickets,rigl-ref=rigl:update_interval=1200:drop_fraction=0.5:drop_schedule=constant:end=none,rigl-ref=rigl:update_interval=1200:drop_fraction=0.5:drop_schedule=constant:end=none+sup-tickets" \
  --densities 0.05,0.02 --seeds 0,1,2,3,4 --epochs 250 --cycles 3 --cycle-epochs 8 --schedule multistep \
  --title "Sup-tickets in the reference regime (250 epochs, 8-epoch cycles)" \
  --protocol "fmnist-mlp-suptickets-ref: LeNet-300-100, 250 epochs (226 base + 3x8 cycles), SGD 0.1 mom 0.9 wd 5e-4, batch 128, step LR x0.1 at 50/75% of the base phase; tickets 0.001-0.005 triangular, 50% drop + gradient regrowth"
