"""sparsetrain.sparse.execution: which Linear layers train faster truly sparse, measured."""

import pytest

from sparsetrain.sparse import autotune, kernels
from sparsetrain.sparse.execution import sparse_layer_faster


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSETRAIN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SPARSETRAIN_AUTOTUNE", raising=False)
    yield tmp_path


@pytest.mark.skipif(not kernels.native_available(), reason="the compiled kernels do not build here")
def test_layer_break_even_is_measured_once(cache):
    first = sparse_layer_faster(256, 256, 64, 0.02, reps=2)
    (entry,) = [v for k, v in autotune.decisions().items() if k.startswith("layer ")]
    assert entry["choice"] == ("sparse" if first else "masked") and entry["sparse_ms"] > 0 and entry["masked_ms"] > 0
    assert sparse_layer_faster(256, 256, 64, 0.02) == first


def test_dense_layers_never_convert_and_measuring_can_be_off(cache, monkeypatch):
    assert sparse_layer_faster(64, 64, 8, 1.0) is False
    monkeypatch.setenv("SPARSETRAIN_AUTOTUNE", "0")
    assert sparse_layer_faster(64, 64, 8, autotune.DEFAULT_BREAK_EVEN / 2)
    assert not sparse_layer_faster(64, 64, 8, autotune.DEFAULT_BREAK_EVEN * 2)
    assert autotune.decisions() == {}
