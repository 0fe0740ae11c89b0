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
