#!/bin/sh
# Protocol fmnist-mlp-dstee-power (../../shared/spec/BENCHMARK.md): LeNet-300-100, density 0.02,
# 100 epochs, step LR at 50/75%, RigL skeleton (ΔT 100, α 0.3 cosine, end 0.75), seeds 0-9.
# Arms: RigL; DST-EE default (c=1e-3, N counted in steps); DST-EE with N counted in update rounds
# and the gradient term divided by the layer's max (c = 0.03, 0.1). Resumable: rerun it.
# The issue's second density: the first's runs are done and skipped; results.md then covers both.
cd "$(dirname "$0")/../.." && exec .venv/bin/python -m sparsetrain sweep \
  --out results/fmnist-mlp-dstee-power --jobs 2 --threads 1 --seed-major \
  --methods "rigl,dstee,dstee-rounds-c0.03=dstee:count=updates:grad_norm=layer_max:c=0.03,dstee-rounds-c0.1=dstee:count=updates:grad_norm=layer_max:c=0.1" \
  --densities 0.02,0.01 --seeds 0,1,2,3,4,5,6,7,8,9 --epochs 100 --schedule multistep \
  --title "DST-EE with statistical power (density 0.02 and 0.01, 10 seeds)" \
  --protocol "fmnist-mlp-dstee-power: LeNet-300-100, 100 epochs, batch 128, SGD 0.1 mom 0.9 wd 5e-4, step LR x0.1 at 50/75%, RigL skeleton (dT 100, 0.3 cosine, end 0.75), ERK"
