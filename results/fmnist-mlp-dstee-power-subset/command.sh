#!/bin/sh
# Optional arm of protocol fmnist-mlp-dstee-power (issue 15): the same arms where dense overfits.
# LeNet-300-100 on the first 10,000 Fashion-MNIST training images (test: the full 10,000), density
# 0.02, 200 epochs, step LR at 50/75%, RigL skeleton (ΔT 100, α 0.3 cosine, end 0.75), seeds 0-9,
# with dense. Arms: dense; RigL; DST-EE default (c=1e-3, N counted in steps); DST-EE with N counted
# in update rounds and the gradient term divided by the layer's max (c = 0.03, 0.1). Resumable.
cd "$(dirname "$0")/../.." && exec .venv/bin/python -m sparsetrain sweep \
  --out results/fmnist-mlp-dstee-power-subset --jobs 2 --threads 1 --seed-major \
  --methods "dense,rigl,dstee,dstee-rounds-c0.03=dstee:count=updates:grad_norm=layer_max:c=0.03,dstee-rounds-c0.1=dstee:count=updates:grad_norm=layer_max:c=0.1" \
  --densities 0.02 --seeds 0,1,2,3,4,5,6,7,8,9 --epochs 200 --train-subset 10000 --schedule multistep \
  --title "DST-EE where dense overfits (10k training images, 200 epochs, density 0.02, 10 seeds)" \
  --protocol "fmnist-mlp-dstee-power (10k subset): LeNet-300-100 on the first 10,000 training images, 200 epochs, batch 128, SGD 0.1 mom 0.9 wd 5e-4, step LR x0.1 at 50/75%, RigL skeleton (dT 100, 0.3 cosine, end 0.75), ERK"
