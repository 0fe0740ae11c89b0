"""The catalogue of bad inputs (docs/errors.md), executable: each case gives one bad input through the
Python API or the command line and checks the exception or warning type AND that the message
names the setting and says how to fix it. Nothing a user typed may be silently ignored."""

import io
import json
import re
import warnings

import pytest
import torch
from torch import nn

import sparsetrain as st
from sparsetrain import cli
from sparsetrain.errors import InputError, InputTypeError, InputWarning, ScheduleWarning


def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _train(model, opt, steps):
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(4, 8)).pow(2).sum().backward()
        opt.step()


def _says(text, *words):
    """``text`` names every one of ``words`` (case-insensitive regexes)."""
    for w in words:
        assert re.search(w, str(text), re.I), f"{w!r} not in: {text}"


# ---------------------------------------------------------------------------------------------- algorithm values
@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(density=True), InputTypeError, ["density", r"density=0\.1"]),
    (dict(density="0.1"), InputTypeError, ["density", "number"]),
    (dict(density=1.5), InputError, ["density", r"\(0, 1\]", r"density=0\.1"]),
    (dict(density=0.1, end=1.5), InputError, ["end=1.5", r"end=0\.75"]),
    (dict(density=0.1, end=True), InputTypeError, ["end", "fraction"]),
    (dict(density=0.1, update_interval=1.5), InputError, ["update_interval", ">= 1"]),
    (dict(density=0.1, update_interval=True), InputError, ["update_interval"]),
    (dict(density=0.1, start=-1), InputError, ["start", ">= 0"]),
    (dict(density=0.1, seed=1.7), InputError, ["seed", "integer"]),
    (dict(density=0.1, drop_fraction=True), InputTypeError, ["drop_fraction", r"\[0, 1\]"]),
    (dict(density=0.1, erk_power=-1), InputError, ["erk_power", ">= 0"]),
    (dict(density=0.1, distribution="ekr"), InputError, ["distribution", "erk"]),
])
def test_algorithm_refuses_bad_values(kwargs, exc, words):
    with pytest.raises(exc) as info:
        st.RigL(**kwargs)
    _says(info.value, *words)


def test_input_errors_are_value_errors_so_old_handlers_still_catch_them():
    with pytest.raises(ValueError):
        st.RigL(density=2.0)
    with pytest.raises(TypeError):
        st.RigL(density=True)


# ---------------------------------------------------------------------------------------------- runs that cannot do what they say
def test_no_update_fits_in_the_run_warns_that_it_would_be_static():
    model, opt = _mlp()
    with pytest.warns(ScheduleWarning) as rec:
        st.Sparsifier(model, opt, "rigl", density=0.1, total_steps=16)
    _says(rec[0].message, "RigL", "no topology update", "update_interval=100", "total_steps=16", "static",
          "lower update_interval")


def test_start_after_end_warns_that_no_update_fits():
    model, opt = _mlp()
    with pytest.warns(ScheduleWarning) as rec:
        st.Sparsifier(model, opt, "set", density=0.1, total_steps=1000, update_interval=10, start=900)
    _says(rec[0].message, "start=900", "end=0.75", "static")


def test_a_run_with_updates_does_not_warn():
    model, opt = _mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        st.Sparsifier(model, opt, "rigl", density=0.1, total_steps=100, update_interval=10)


def test_training_past_total_steps_warns_once():
    model, opt = _mlp()
    sp = st.Sparsifier(model, opt, "rigl", density=0.5, total_steps=4, update_interval=1, end=1.0)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        _train(model, opt, 7)
    past = [w for w in rec if issubclass(w.category, InputWarning)]
    assert len(past) == 1 and sp.step == 7
    _says(past[0].message, "step 5", "total_steps=4", "real run length")


@pytest.mark.parametrize("total, words", [(1.5, ["total_steps", "whole number"]), (True, ["total_steps"]),
                                          (0, ["total_steps", "positive"])])
def test_total_steps_must_be_a_positive_whole_number(total, words):
    model, opt = _mlp()
    with pytest.raises(InputError) as info:
        st.Sparsifier(model, opt, "rigl", density=0.1, total_steps=total)
    _says(info.value, *words, r"len\(loader\) \* epochs")


def test_flags_must_be_bools():
    model, opt = _mlp()
    with pytest.raises(InputTypeError) as info:
        st.Sparsifier(model, opt, "rigl", density=0.1, total_steps=100, track_usage="no")
    _says(info.value, "track_usage", "True or False")


# ---------------------------------------------------------------------------------------------- a second sparsifier
def test_a_second_sparsifier_on_the_same_weights_is_refused_naming_remove():
    model, opt = _mlp()
    first = st.Sparsifier(model, opt, "rigl", density=0.1, total_steps=100, update_interval=10)
    opt2 = torch.optim.SGD(model.parameters(), lr=0.1)  # the re-run cell builds a new optimizer
    with pytest.raises(RuntimeError) as info:
        st.Sparsifier(model, opt2, "rigl", density=0.5, total_steps=100, update_interval=10)
    _says(info.value, "already sparsified", r"\.remove\(\)")
    first.remove()  # the documented way out
    second = st.Sparsifier(model, opt2, "rigl", density=0.5, total_steps=100, update_interval=10)
    _train(model, opt2, 3)
    assert second.density == pytest.approx(0.5, abs=0.02)
    st.testing.assert_invariants(second, opt2)  # only the second one's hooks act now


# ---------------------------------------------------------------------------------------------- checkpoints
def _state(**kw):
    model, opt = _mlp()
    sp = st.Sparsifier(model, opt, kw.pop("algorithm", "dstee"), density=kw.pop("density", 0.3), total_steps=100,
                       update_interval=kw.pop("update_interval", 2), **kw)
    _train(model, opt, 5)
    state = sp.state_dict()
    sp.remove()
    return state


def _fresh(**kw):
    model, opt = _mlp()
    return st.Sparsifier(model, opt, kw.pop("algorithm", "dstee"), density=kw.pop("density", 0.3), total_steps=100,
                         update_interval=kw.pop("update_interval", 2), **kw)


@pytest.mark.parametrize("saved, now, words", [
    (dict(density=0.1), dict(density=0.3), [r"density=0\.1", r"0\.3"]),
    (dict(update_interval=5), dict(update_interval=2), ["update_interval=5"]),
    (dict(algorithm="set"), dict(algorithm="dstee"), ["algorithm 'set'"]),
])
def test_a_state_of_another_configuration_is_refused(saved, now, words):
    state, sp = _state(**saved), _fresh(**now)
    before = {n: m.clone() for n, m in sp.masks.items()}
    with pytest.raises(InputError) as info:
        sp.load_state_dict(state)
    _says(info.value, *words, "strict=False")
    assert all(torch.equal(before[n], m) for n, m in sp.masks.items())  # nothing changed


def test_strict_false_loads_another_configuration_with_a_warning():
    state, sp = _state(density=0.1), _fresh(density=0.3)
    with pytest.warns(InputWarning) as rec:
        sp.load_state_dict(state, strict=False)
    _says(rec[0].message, r"density=0\.1", "strict=False")
    assert sp.density == pytest.approx(0.1, abs=0.02)


def test_a_byte_corrupted_state_is_detected_by_its_checksum():
    state = _state()
    counter = state["layers"]["0.weight"]["counter"]
    buf = io.BytesIO()
    torch.save(state, buf)
    raw = bytearray(buf.getvalue())
    at = raw.find(bytes(counter.contiguous().untyped_storage()))
    assert at > 0
    raw[at + 5] ^= 0x40  # one flipped bit in DST-EE's usage counters
    damaged = torch.load(io.BytesIO(bytes(raw)), weights_only=True)
    with pytest.raises(InputError) as info:
        _fresh().load_state_dict(damaged)
    _says(info.value, "corrupt", "checksum", "intact checkpoint")


def test_a_state_without_checksum_still_loads():
    state = _state()
    del state["checksum"]  # as written before the checksum existed
    sp = _fresh()
    sp.load_state_dict(state)
    assert sp.step == 5


def test_a_mask_of_the_wrong_shape_leaves_the_sparsifier_untouched():
    state = _state()
    state["layers"]["2.weight"]["mask"] = torch.ones(3, 3, dtype=torch.bool)
    sp = _fresh()
    before = {n: m.clone() for n, m in sp.masks.items()}
    with pytest.raises(InputError) as info:
        sp.load_state_dict(state)
    _says(info.value, "mask of 2.weight", r"\[4, 16\]", "intact checkpoint")
    assert sp.step == 0 and all(torch.equal(before[n], m) for n, m in sp.masks.items())


def test_another_total_steps_loads_with_a_warning():
    state = _state()
    model, opt = _mlp()
    sp = st.Sparsifier(model, opt, "dstee", density=0.3, total_steps=200, update_interval=2)
    with pytest.warns(InputWarning) as rec:
        sp.load_state_dict(state)
    _says(rec[0].message, "total_steps=100", "total_steps=200")
    assert sp.total_steps == 200
