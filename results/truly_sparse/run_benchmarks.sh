#!/bin/sh
# The truly sparse benchmarks of issue 12 on the machine at hand, into results/truly_sparse/<cpu>/.
# Run on a quiet machine (no sweep, no tests): the kernel choices are measured too. The benchmark
# scripts fix glibc's mmap thresholds themselves (benchmarks/common.py), so steady state is measured.
set -e
cd "$(dirname "$0")/../.."
cpu=$(.venv/bin/python -c "from sparsetrain.sparse import kernels; import re; print(re.sub('[^a-z0-9]+', '-', kernels.cpu_model().lower()).strip('-'))")
out=results/truly_sparse/$cpu
mkdir -p "$out"
export SPARSETRAIN_CACHE_DIR=$(mktemp -d)   # fresh kernel choices, measured now
.venv/bin/python benchmarks/sparseprop_side_by_side.py --threads 2 --reps 15 --out "$out/sparseprop.json" | tee "$out/sparseprop.txt"
.venv/bin/python benchmarks/truly_sparse.py --densities 0.1,0.05,0.02,0.01 --steps 20 --threads 2 --memory 0 \
  --out "$out/truly_sparse.json" | tee "$out/truly_sparse.txt"
.venv/bin/python benchmarks/truly_sparse.py --densities 0.1,0.02 --steps 20 --threads 2 --memory 0 --kernels torch \
  --out "$out/truly_sparse_torch.json" | tee "$out/truly_sparse_torch.txt"
.venv/bin/python benchmarks/gpt_step_time.py --model gpt-mini --densities 0.1,0.05 --steps 15 --threads 2 \
  --out "$out/gpt_step_time_mini.json" | tee "$out/gpt_step_time_mini.txt"
.venv/bin/python benchmarks/gpt_step_time.py --model gpt-wide --densities 0.1,0.05 --steps 10 --threads 2 \
  --out "$out/gpt_step_time_wide.json" | tee "$out/gpt_step_time_wide.txt"
