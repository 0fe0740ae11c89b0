#!/bin/sh
# Protocol text-gpt (../../shared/spec/BENCHMARK.md): gpt-mini (4 blocks, width 128, 4 heads, context 128,
# tied byte embedding) on text:stdlib (Python's standard-library sources, bytes as tokens).
# 10 epochs x 2,048 random contexts (64 steps of 32 contexts; 640 steps, 2.6 M tokens), AdamW 1e-3,
# wd 0.1, cosine with 0.5 epoch warm-up. DST: dT 16 steps (30 updates until 75%); RigL-ITOP dT 32 until
# the end (20 updates, drop 0.5 cosine); Sup-tickets: the last 2 epochs are 2 cycles of 1 epoch,
# ticket LR 5e-5 -> 2.5e-4 (5%-25% of the peak LR, as the reference's 0.001-0.005 is 1%-5% of 0.1
# after a schedule that ended low). Densities 0.1 and 0.05, seeds 0-2. Resumable: rerun it.
cd "$(dirname "$0")/../.." && exec .venv/bin/python -m sparsetrain sweep \
  --out results/text-gpt --jobs 2 --threads 1 --seed-major \
  --model gpt-mini --dataset text:stdlib \
  --methods "dense,static,set,rigl,dstee,rigl-itop=rigl-itop:update_interval=32,rigl+sup-tickets" \
  --densities 0.1,0.05 --seeds 0,1,2 --epochs 10 --train-subset 2048 --batch-size 32 \
  --optimizer adamw --lr 1e-3 --weight-decay 0.1 --schedule cosine --warmup-epochs 0.5 \
  --hp update_interval=16 --cycle-epochs 1 --cycles 2 --ticket-lr 0.00005,0.00025 \
  --title "DST methods on a small GPT (text:stdlib, validation bits per byte)" \
  --protocol "text-gpt: gpt-mini (4x128, 4 heads, ctx 128, tied bytes), text:stdlib, 10 epochs x 2048 contexts, batch 32, AdamW 1e-3 wd 0.1, cosine + 0.5 ep warm-up, dT 16 (RigL-ITOP 32, to the end), Sup-tickets 2 x 1-epoch cycles at LR 5e-5..2.5e-4"
