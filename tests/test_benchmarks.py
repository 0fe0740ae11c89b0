"""The benchmark scripts run (tiny settings); their numbers are measured, never asserted."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, tmp_path):
    env_path = str(ROOT / "src")
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.slow
def test_overhead_benchmark_runs(tmp_path):
    out = tmp_path / "o.json"
    _run(["benchmarks/overhead.py", "--models", "lenet300-100", "--steps", "6", "--threads", "1", "--nan-safe", "0",
          "--out", str(out)], tmp_path)
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["model"] == "lenet300-100" and rows[0]["step_ratio"] > 0


@pytest.mark.slow
def test_truly_sparse_benchmark_runs(tmp_path):
    out = tmp_path / "t.json"
    _run(["benchmarks/truly_sparse.py", "--width", "128", "--densities", "1,0.1", "--steps", "2", "--threads", "1",
          "--out", str(out)], tmp_path)
    rows = json.loads(out.read_text())["rows"]
    assert [r["density"] for r in rows] == [1.0, 0.1]
    assert rows[1]["state_over_nnz4"] == pytest.approx(2.0, rel=0.01)  # values + momentum
    assert rows[1]["train_rss_sparse_mib"] > 0


@pytest.mark.slow
def test_wide_sparse_mlp_demo_runs(tmp_path):
    _run(["benchmarks/wide_sparse_mlp.py", "--dataset", "synthetic", "--width", "64", "--density", "0.1",
          "--method", "rigl", "--epochs", "2", "--update-interval", "1", "--dense-steps", "1", "--threads", "1",
          "--out", str(tmp_path)], tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["weights"] == 784 * 64 + 64 * 64 * 2 + 64 * 10
    assert [e["epoch"] for e in summary["epochs"]] == [1, 2] and summary["epochs"][-1]["updates"] > 0
    assert summary["sparse_peak_rss_gib"] > 0 and summary["dense_peak_rss_gib"] > 0
    assert 0 <= summary["final_test_acc"] <= 1


@pytest.mark.slow
def test_sparseprop_side_by_side_runs(tmp_path):
    out = tmp_path / "s.json"
    text = _run(["benchmarks/sparseprop_side_by_side.py", "--size", "64", "--batch", "16", "--densities", "0.1",
                 "--reps", "2", "--threads", "1", "--out", str(out)], tmp_path)
    assert text.startswith("machine: ") and "instruction set" in text
    saved = json.loads(out.read_text())
    row = saved["results"][0]
    assert row["density"] == 0.1 and {"dense", "st-torch", "st-auto"} <= set(row["fwd+bwd"])
    assert saved["machine"]["flags"] == "-O3 -fopenmp"


@pytest.mark.slow
def test_gpt_step_time_benchmark_runs(tmp_path):
    out = tmp_path / "g.json"
    text = _run(["benchmarks/gpt_step_time.py", "--model", "gpt-micro", "--densities", "0.1", "--steps", "2",
                 "--threads", "1", "--out", str(out)], tmp_path)
    assert "allocator MALLOC_MMAP_THRESHOLD_=" in text  # the steady-state allocator settings took effect
    row = json.loads(out.read_text())["rows"][0]
    assert row["density"] == 0.1 and row["train_sparse_ms"] > 0 and row["sparse_layers"] == 8
    assert set(row["kernels"]) == {f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.proj", "fc", "out")}
