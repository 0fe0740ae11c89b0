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


@pytest.mark.skipif(not kernels.native_available(), reason="the compiled kernels do not build here")
def test_token_shaped_layers_are_measured_in_their_own_layout(cache, monkeypatch):
    # a transformer's projection sees (batch, seq, width) and returns row-major outputs: it is
    # measured that way and cached apart from a 2-D layer with as many rows
    shapes = []
    measured = autotune.measured_choice

    def spy(key, a, b, names, reps):
        if key.startswith("layer "):  # not the kernels' own choices made inside the layer
            # the input the sparse step multiplies (a free variable of its closure)
            free = dict(zip(a.__code__.co_freevars, (c.cell_contents for c in a.__closure__)))
            shapes.append((key, tuple(free["x"].shape)))
        return measured(key, a, b, names, reps)

    monkeypatch.setattr(autotune, "measured_choice", spy)
    sparse_layer_faster(64, 64, 4, 0.05, reps=1, seq=16)
    sparse_layer_faster(64, 64, 64, 0.05, reps=1)
    (k3, s3), (k2, s2) = shapes
    assert s3 == (4, 16, 64) and s2 == (64, 64)
    assert k3 != k2 and k3.endswith("btd16")
    assert {k for k in autotune.decisions() if k.startswith("layer ")} == {k3, k2}
