"""sparsetrain.registry: one table of algorithms and presets."""

import pytest

import sparsetrain as st
from sparsetrain import registry


def test_one_table_for_classes_and_presets():
    names = registry.names()
    assert {"rigl", "set", "dstee", "granet", "set-itop", "rigl-itop"} <= set(names)
    assert registry.lookup("RigL") is st.RigL and registry.lookup("rigl-itop") is st.presets.rigl_itop
    assert st.presets.PRESETS is registry.PRESETS and st.ALGORITHMS is registry.ALGORITHMS
    with pytest.raises(ValueError, match="valid names are .*rigl-itop"):
        registry.lookup("rigel")
    alg = registry.make_algorithm("set-itop", density=0.1)
    assert isinstance(alg, st.SET) and alg.update_schedule.end is None


def test_register_checks_the_interface_and_presets_are_callables():
    with pytest.raises(TypeError):
        registry.register(dict)
    with pytest.raises(TypeError):
        registry.register_preset("x", 3)
    registry.register_preset("rigl-fast-test", lambda density, **kw: st.RigL(density, update_interval=10, **kw))
    try:
        assert registry.make_algorithm("rigl-fast-test", density=0.2).update_schedule.interval == 10
    finally:
        registry.PRESETS.pop("rigl-fast-test")


def test_parse_method():
    assert registry.parse_method("dstee:c=0.01:bonus=ucb") == ("dstee", {"c": 0.01, "bonus": "ucb"})
    with pytest.raises(ValueError, match="key=value"):
        registry.parse_method("rigl:fast")


def test_a_misspelled_name_is_an_input_error_naming_the_nearest():
    for typo, near in (("rigel", "rigl"), ("dst-ee", "dstee"), ("rigl_itop", "rigl-itop"), ("SETT", "set")):
        with pytest.raises(st.InputError, match=f"did you mean '{near}'.*valid names are"):
            registry.make_algorithm(typo, density=0.1)
    with pytest.raises(st.InputError, match="dense training needs no Sparsifier"):
        registry.lookup("dense")
    assert registry.lookup("  RigL ") is st.RigL  # surrounding spaces (from a config) are ignored


def test_an_unknown_keyword_by_name_is_an_input_error_naming_the_nearest_setting():
    with pytest.raises(st.InputTypeError, match="'update_intervall'.*did you mean 'update_interval'.*valid: density"):
        registry.make_algorithm("rigl", density=0.1, update_intervall=10)
    # a misspelt density used to be reported as a missing one
    with pytest.raises(st.InputTypeError, match="'desnity'.*did you mean 'density'"):
        registry.make_algorithm("rigl", desnity=0.1)
    with pytest.raises(st.InputTypeError, match="'update_interval'.*static mask has no topology updates"):
        registry.make_algorithm("static", density=0.1, update_interval=10)
    with pytest.raises(st.InputError, match="needs a density"):
        registry.make_algorithm("set")
    # the message keeps Python's wording, which the command line's validation reads
    with pytest.raises(TypeError, match="unexpected keyword argument 'foo'"):
        registry.make_algorithm("dstee", density=0.1, foo=1)
    assert registry.make_algorithm("dstee", density=0.1, c=0.01, update_interval=5).c == 0.01
