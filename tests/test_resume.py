"""Exact resume: k steps + checkpoint + (new process) N-k steps == N steps in one go, bitwise.

Compared: every tensor of the model state (weights and BatchNorm buffers), of the optimizer
state, and of the Sparsifier state (masks, usage counters, ever-active masks, RNG state,
schedule position, history).
"""

from __future__ import annotations

import io
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import _resume_worker as W  # noqa: E402

TOTAL = 24  # updates after steps 4, 8, 12, 16 (end = 0.75 * 24 = 18)
SPLITS = (8, 10)  # right after an update, and between two
OPTS = ("sgd", "adam")
ALGOS = ("rigl", "set")
WORKER = Path(__file__).with_name("_resume_worker.py")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def assert_same(a, b, path="state"):
    """Recursive bitwise equality of nested state dicts."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _run_worker(jobs, path: Path) -> None:
    path.write_text(json.dumps(jobs))
    proc = subprocess.run([sys.executable, str(WORKER), str(path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    first, second = [], []
    for opt, algo in itertools.product(OPTS, ALGOS):
        base = {"opt": opt, "algo": algo, "total": TOTAL}
        first.append({**base, "a": 0, "b": TOTAL, "save": str(d / f"{opt}-{algo}-full.pt")})
        for k in SPLITS:
            ck = str(d / f"{opt}-{algo}-{k}.pt")
            first.append({**base, "a": 0, "b": k, "save": ck})
            # the new process builds everything from another seed: the checkpoint must override it
            second.append({**base, "a": k, "b": TOTAL, "seed": 1, "load": ck,
                           "save": str(d / f"{opt}-{algo}-{k}-resumed.pt")})
    _run_worker(first, d / "first.json")  # one go, and the first k steps
    _run_worker(second, d / "second.json")  # a new process: load and train N-k
    return d


@pytest.mark.parametrize("k", SPLITS)
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("opt", OPTS)
def test_resume_across_processes_is_exact(runs, opt, algo, k):
    full = torch.load(runs / f"{opt}-{algo}-full.pt", weights_only=True)
    resumed = torch.load(runs / f"{opt}-{algo}-{k}-resumed.pt", weights_only=True)
    mid = torch.load(runs / f"{opt}-{algo}-{k}.pt", weights_only=True)
    sp = full["sparsifier"]
    assert sp["step"] == TOTAL and sp["updates"] == 4
    assert [h["step"] for h in sp["history"]] == [4, 8, 12, 16]  # updates before and after the split
    assert mid["sparsifier"]["step"] == k and mid["sparsifier"]["updates"] == k // 4
    # the topology moved after the split, so the comparison is not trivially about masks at k
    assert any(not torch.equal(mid["sparsifier"]["layers"][n]["mask"], sp["layers"][n]["mask"]) for n in sp["layers"])
    for n, layer in sp["layers"].items():
        assert int(layer["counter"].sum()) > 0 and layer["ever_active"].sum() > layer["mask"].sum()
    assert len(full["optimizer"]["state"]) > 0
    assert_same(full, resumed)


def _in_process(opt, algo, k, load_sparsifier=True):
    model, optimizer, sp = W.build(opt, algo, TOTAL, seed=0)
    W.train(model, optimizer, sp, 0, TOTAL)
    full = W.checkpoint(model, optimizer, sp)
    full_metrics = sp.metrics()
    sp.remove()

    model, optimizer, sp = W.build(opt, algo, TOTAL, seed=0)
    W.train(model, optimizer, sp, 0, k)
    buf = io.BytesIO()
    torch.save(W.checkpoint(model, optimizer, sp), buf)
    sp.remove()
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)

    model, optimizer, sp = W.build(opt, algo, TOTAL, seed=1)
    W.restore(model, optimizer, sp, ck, sparsifier=load_sparsifier)
    if not load_sparsifier:
        sp.step = k  # keep the schedule aligned; everything else is the fresh sparsifier's
    W.train(model, optimizer, sp, k, TOTAL)
    resumed = W.checkpoint(model, optimizer, sp)
    metrics = sp.metrics()
    sp.remove()
    return full, resumed, full_metrics, metrics


@pytest.mark.parametrize("algo", ["static", "set", "rigl"])
def test_resume_in_process_is_exact(algo):
    full, resumed, m_full, m_resumed = _in_process("sgd", algo, 10)
    assert_same(full, resumed)
    assert m_full == m_resumed
    assert full["sparsifier"]["updates"] == (0 if algo == "static" else 4)


def test_resume_without_sparsifier_state_differs():
    """Negative control: the comparison catches a resume that forgets the sparsifier state."""
    full, resumed, _, _ = _in_process("adam", "set", 10, load_sparsifier=False)
    with pytest.raises(AssertionError):
        assert_same(full, resumed)
