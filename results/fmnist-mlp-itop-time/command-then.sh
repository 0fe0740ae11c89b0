#!/bin/sh
# Protocol fmnist-mlp-itop-time (../../shared/spec/BENCHMARK.md): LeNet-300-100, density 0.02,
# 30/60/120 epochs with ΔT held fixed (SET-ITOP 240, RigL-ITOP 640 steps; RigL its default 100),
# SGD with Nesterov momentum, step LR at 50/75%; seeds 0-4. Resumable: rerun it.
# The issue's second density: the first's runs are done and skipped; results.md then covers both.
cd "$(dirname "$0")/../.." && exec .venv/bin/python -m sparsetrain sweep \
  --out results/fmnist-mlp-itop-time --jobs 2 --threads 1 --seed-major \
  --methods "dense,set-itop=set-itop:update_interval=240,rigl-itop=rigl-itop:update_interval=640,rigl" \
  --densities 0.02,0.05 --seeds 0,1,2,3,4 --grid epochs=30,60,120 --schedule multistep --nesterov \
  --title "ITOP: longer training with a fixed update interval (density 0.02 and 0.05)" \
  --protocol "fmnist-mlp-itop-time: LeNet-300-100, 30/60/120 epochs, batch 128, SGD 0.1 Nesterov 0.9 wd 5e-4, step LR x0.1 at 50/75%, dT fixed (SET-ITOP 240, RigL-ITOP 640, RigL 100)"
