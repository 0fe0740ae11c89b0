"""sparsetrain.sparse.autotune: measured kernel and execution choices, cached per machine."""

import json
import time

import pytest
import torch

from sparsetrain.sparse import SparseLinear, autotune, kernels
from sparsetrain.sparse.execution import sparse_layer_faster


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSETRAIN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SPARSETRAIN_AUTOTUNE", raising=False)
    saved = dict(kernels._state)
    kernels._state["backend"] = "auto"
    yield tmp_path
    kernels._state.update(saved)


def test_shape_classes_round_batch_and_density():
    assert autotune.shape_class("spmm", 4096, 4096, 256, int(0.02 * 4096 * 4096)) == "spmm 4096x4096 b256 d2^-5.5"
    assert autotune.shape_class("spmm", 10, 10, 200, 12) == autotune.shape_class("spmm", 10, 10, 129, 13)
    assert autotune.shape_class("spmm", 10, 10, 128, 10) != autotune.shape_class("spmm", 10, 10, 129, 10)
    assert autotune.shape_class("sddmm", 10, 10, 1, 100) == "sddmm 10x10 b1 d2^0"


def test_the_faster_side_wins_and_the_decision_is_cached_on_disk(cache):
    calls = {"native": 0, "torch": 0}

    def slow():
        calls["native"] += 1
        time.sleep(0.004)

    def fast():
        calls["torch"] += 1

    assert autotune.prefer_native("spmm", 64, 32, 100, 50, slow, fast, reps=3) is False
    assert calls == {"native": 4, "torch": 4}  # a warm-up and three interleaved repetitions each
    saved = json.loads(autotune.cache_file().read_text())
    (entries,) = saved.values()
    (key, decision) = next(iter(entries.items()))
    assert key == "spmm 64x32 b128 d2^-5.5" and decision["choice"] == "torch" and decision["native_ms"] > 3
    # cached: no more measuring, also after the in-memory table is dropped (a new process)
    autotune._loaded.clear(), autotune._fast.clear()
    assert autotune.prefer_native("spmm", 64, 32, 120, 50, fast, slow) is False and calls["torch"] == 4
    assert autotune.prefer_native("spmm_t", 64, 32, 120, 50, fast, slow, reps=1) is True
    autotune.clear()
    assert autotune.decisions() == {}


def test_measuring_can_be_turned_off(cache, monkeypatch):
    monkeypatch.setenv("SPARSETRAIN_AUTOTUNE", "0")
    assert autotune.prefer_native("spmm", 8, 8, 8, 8, lambda: 1 / 0, lambda: 1 / 0) is True
    assert sparse_layer_faster(100, 100, 32, 0.1) and not sparse_layer_faster(100, 100, 32, 0.5)
    assert not autotune.cache_file().exists()


def test_an_unwritable_cache_keeps_decisions_in_memory(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SPARSETRAIN_CACHE_DIR", str(blocker / "sub"))
    autotune._state["warned"] = False
    assert autotune.prefer_native("spmm", 8, 8, 8, 8, lambda: None, lambda: time.sleep(0.002), reps=1)
    assert "cannot write the autotune cache" in caplog.text
    assert autotune.decisions()


@pytest.mark.skipif(not kernels.native_available(), reason="the compiled kernels do not build here")
def test_sparse_linear_follows_the_recorded_choice_per_operation(cache, monkeypatch):
    torch.manual_seed(0)
    layer = SparseLinear.from_linear(torch.nn.Linear(24, 16), torch.rand(16, 24) < 0.3)
    x = torch.randn(8, 24, requires_grad=True)
    nnz = layer.nnz
    layer(x).square().sum().backward()  # records the operand layouts this loop uses (and measures)
    layer.values.grad = x.grad = None
    autotune._fast.clear()
    table = autotune._table()
    lay = layer.kernel_layouts
    assert sorted(lay) == ["sddmm", "spmm", "spmm_t"]
    table[autotune.shape_class("spmm", 16, 24, 8, nnz, lay["spmm"])] = {"choice": "torch"}
    table[autotune.shape_class("spmm_t", 24, 16, 8, nnz, lay["spmm_t"])] = {"choice": "native"}
    table[autotune.shape_class("sddmm", 16, 24, 8, nnz, lay["sddmm"])] = {"choice": "torch"}
    assert autotune.layer_kernels(layer, 8) == {"spmm": "torch", "spmm_t": "native", "sddmm": "torch"}
    used = []
    real = {name: getattr(kernels, name) for name in ("spmm", "sddmm", "spmm_packed", "sddmm_packed")}
    for name in ("spmm", "spmm_packed"):
        monkeypatch.setattr(kernels, name, lambda *a, _f=real[name], **k: used.append("perm" in k) or _f(*a, **k))
    for name in ("sddmm", "sddmm_packed"):
        monkeypatch.setattr(kernels, name, lambda *a, _f=real[name], **k: used.append("sddmm") or _f(*a, **k))
    y = layer(x)
    y.square().sum().backward()
    assert used == [True]  # only the input gradient (the transposed product) ran on the compiled kernels
    ref = torch.nn.functional.linear(x.detach().requires_grad_(), layer.dense_weight().detach(), layer.bias.detach())
    torch.testing.assert_close(y, ref)


@pytest.mark.skipif(not kernels.native_available(), reason="the compiled kernels do not build here")
def test_a_choice_measured_for_one_layout_is_not_reused_for_another(cache):
    """A (B, T, D) input gets a row-major output (and torch's kernels a transposing copy): the
    decision taken for the 2-d, transposed-output layout of the same shape class does not hold."""
    torch.manual_seed(0)
    layer = SparseLinear.from_linear(torch.nn.Linear(24, 16), torch.rand(16, 24) < 0.3)
    with torch.no_grad():
        y2 = layer(torch.randn(8, 24))  # spmm, batch 8, transposed output
    first = set(autotune.decisions())
    assert len(first) == 1 and layer.kernel_layouts["spmm"].endswith(">c")
    x3 = torch.randn(2, 4, 24)  # also 8 rows: the same shape class but for the layout
    with torch.no_grad():
        y3 = layer(x3)
    new = set(autotune.decisions()) - first
    assert len(new) == 1 and next(iter(new)).startswith("spmm 16x24 b8") and layer.kernel_layouts["spmm"].endswith(">r")
    assert y3.is_contiguous() and y2.shape == (8, 16)
    torch.testing.assert_close(y3, torch.nn.functional.linear(x3, layer.dense_weight(), layer.bias.detach()))
