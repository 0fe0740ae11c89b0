"""Large compressed layers keep their active set as the storage's sorted index and their
ever-active map as packed bits: no dense bool per position, and the same runs as the dense path.

Small layers stand in for large ones with the threshold lowered (``storage.LARGE_LAYER``)."""

import pytest
import torch
from torch import nn

import sparsetrain as st
from sparsetrain.bits import PackedBits, SparseCounts
from sparsetrain.sparse import to_sparse
from sparsetrain.storage import StreamingStorage
from sparsetrain.testing import assert_invariants


def _large(monkeypatch, limit=100):
    import sparsetrain.scores as scores_mod
    import sparsetrain.storage as storage_mod

    monkeypatch.setattr(storage_mod, "LARGE_LAYER", limit)
    monkeypatch.setattr(scores_mod, "LARGE_LAYER", limit)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 5))


def _data(n=8):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 20, generator=g), torch.randint(0, 5, (16,), generator=g)) for _ in range(n)]


def _run(sparse, make, steps, track_usage=True, state=None, model_state=None, opt_state=None, start=0):
    model = _mlp()
    if sparse:
        to_sparse(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sp = st.Sparsifier(model, opt, make(), total_steps=120, track_usage=track_usage, state=state)
    if model_state is not None:
        model.load_state_dict(model_state)
        opt.load_state_dict(opt_state)
    data, losses = _data(), []
    for i in range(start, steps):
        x, y = data[i % len(data)]
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return sp, model, opt, losses


# uniform densities below 25%: every layer streams
ALGS = {
    "set": lambda: st.SET(density=0.2, distribution="uniform", update_interval=10, seed=3),
    "rigl": lambda: st.RigL(density=0.2, distribution="uniform", update_interval=10, seed=3),
}


@pytest.mark.parametrize("name", sorted(ALGS))
def test_streaming_layers_keep_no_dense_mask_and_match_masked_dense(monkeypatch, name):
    _large(monkeypatch)
    masked = _run(False, ALGS[name], 120)[0]
    formed = []
    original = StreamingStorage.dense_mask

    def spy(self):
        formed.append(1)
        return original(self)

    monkeypatch.setattr(StreamingStorage, "dense_mask", spy)
    sp = _run(True, ALGS[name], 120)[0]
    sp.metrics(), sp.itop_rate, sp.state_dict()
    assert not formed  # training, updates, metrics and saving never formed a dense mask
    streaming = [n for n, l in sp.layers.items() if l.index_backed]
    assert streaming == ["0.weight", "2.weight", "4.weight"] and sp.updates > 5
    masked.state_dict()  # brings the lazy usage counters up to date, as saving sp did
    for n, layer in sp.layers.items():
        assert isinstance(layer.ever_active, PackedBits) == (n in streaming)
        assert torch.equal(layer.mask, masked.layers[n].mask)
        assert torch.equal(layer.ever_dense(), masked.layers[n].ever_active)
        # usage counters from the index, kept for the ever-active positions only
        assert isinstance(layer.counter, SparseCounts) == (n in streaming)
        counter = layer.counter.to_dense(layer.shape) if n in streaming else layer.counter
        assert torch.equal(counter, masked.layers[n].counter)
        assert torch.equal(sp.usage_counters()[n], masked.usage_counters()[n])
    assert sp.itop_rate == masked.itop_rate and sp.metrics() == masked.metrics()
    for key in ("turnover", "exploration", "survival", "itop_rate"):
        assert [h.get(key) for h in sp.history] == pytest.approx([h.get(key) for h in masked.history])
    assert_invariants(sp)


def test_a_streaming_state_saves_index_sets_and_resumes_bit_for_bit(monkeypatch):
    _large(monkeypatch)
    make = ALGS["set"]
    full = _run(True, make, 100)
    sp, model, opt, _ = _run(True, make, 45)
    state = sp.state_dict()
    for n in ("0.weight", "2.weight", "4.weight"):
        s = state["layers"][n]
        assert "mask" not in s and "ever_active" not in s
        assert s["mask_index"].dtype == torch.int64 and s["mask_index"].numel() == s["n_active"]
        assert s["ever_active_bits"].dtype == torch.uint8
    resumed = _run(True, make, 100, state=state, model_state=model.state_dict(), opt_state=opt.state_dict(),
                   start=45)
    assert resumed[3] == full[3][45:]
    for n, layer in resumed[0].layers.items():
        assert torch.equal(layer.mask, full[0].layers[n].mask)
        assert torch.equal(layer.ever_dense(), full[0].layers[n].ever_dense())
    assert resumed[0].history == full[0].history


def test_either_state_form_loads_into_either_kind_of_layer(monkeypatch):
    make = ALGS["set"]
    dense_form = _run(True, make, 35)[0].state_dict()  # threshold not lowered: dense bools
    _large(monkeypatch)
    index_form = _run(True, make, 35)[0].state_dict()
    assert "mask_index" in index_form["layers"]["0.weight"] and "mask" in dense_form["layers"]["0.weight"]
    for state, large in ((dense_form, True), (index_form, True), (index_form, False)):
        if not large:
            monkeypatch.setattr("sparsetrain.storage.LARGE_LAYER", 1 << 20)
        sp = _run(True, make, 0)[0]
        assert sp.layers["0.weight"].index_backed == large
        sp.load_state_dict(state)
        for n, layer in sp.layers.items():
            saved = state["layers"][n]
            expect = saved["mask"] if "mask" in saved else torch.zeros(layer.numel, dtype=torch.bool).index_fill_(
                0, saved["mask_index"], True).view(layer.shape)
            assert torch.equal(layer.mask, expect) and layer.n_active == saved["n_active"]
            assert layer.ever_count() == (int(saved["ever_active"].sum()) if "ever_active" in saved
                                          else PackedBits(layer.numel, saved["ever_active_bits"]).count)
        if large:  # the saved pattern is adopted by the storage (a compressed one waits for the model's state)
            assert_invariants(sp)


def test_a_damaged_index_state_is_refused(monkeypatch):
    _large(monkeypatch)
    state = _run(True, ALGS["set"], 15)[0].state_dict()
    sp = _run(True, ALGS["set"], 0)[0]
    s = state["layers"]["0.weight"]
    s["mask_index"] = s["mask_index"].flip(0)
    with pytest.raises(st.errors.InputError, match="sorted"):
        sp.load_state_dict(state)


def test_a_method_that_cannot_stream_on_large_layers_says_what_is_dense_and_why(monkeypatch):
    _large(monkeypatch)
    model = to_sparse(_mlp())
    alg = st.SNFS(density=0.2, distribution="uniform", update_interval=10)
    with pytest.warns(UserWarning, match="SNFS's topology updates cannot stream .*0.weight.*momentum.*every position"):
        st.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), alg, total_steps=100, track_usage=False)


@pytest.mark.parametrize("make", [ALGS["set"], ALGS["rigl"],
                                  lambda: st.DSTEE(density=0.2, distribution="uniform", update_interval=10),
                                  lambda: st.MEST(density=0.2, distribution="uniform", update_interval=10),
                                  lambda: st.GraNet(density=0.2, initial_density=0.2, distribution="uniform",
                                                    update_interval=10)])
def test_streaming_methods_do_not_warn_usage_counters_included(monkeypatch, make):
    import warnings

    _large(monkeypatch)
    for track in (False, True):
        model = to_sparse(_mlp())
        alg = make()
        if not track and alg.needs_usage_counters:
            continue  # DST-EE counting steps reads the counters (refused without them)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            st.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), alg, total_steps=100,
                          track_usage=track)
        text = " ".join(str(w.message) for w in seen)
        assert "cannot stream" not in text and "dense path" not in text and "usage counters" not in text
