import pytest
import torch
from torch import nn

import sparsetrain as st
from sparsetrain.algorithms import ALGORITHMS, Algorithm, make_algorithm, register


def test_registry_names_and_classes_agree():
    assert {"static", "set", "rigl"} <= set(ALGORITHMS)
    a = make_algorithm("RigL", density=0.2, update_interval=50)
    assert isinstance(a, st.RigL) and a.density == 0.2 and a.update_schedule.interval == 50
    with pytest.raises(ValueError, match="valid names are .*rigl.*set.*static"):
        make_algorithm("rigel", density=0.1)
    with pytest.raises(ValueError, match="needs a density"):
        make_algorithm("set")


def test_register_custom_algorithm_and_use_by_name():
    @register
    class Reverse(Algorithm):
        name = "test-reverse"

        def grow_score(self, layer, ctx):
            return -torch.arange(layer.numel, dtype=torch.float).view(layer.param.shape)

    m = nn.Sequential(nn.Linear(10, 10))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    sp = st.Sparsifier(m, opt, "test-reverse", density=0.5, update_interval=1, end=None, drop_schedule="constant")
    m(torch.randn(2, 10)).sum().backward()
    opt.step()
    assert sp.updates == 1
    ALGORITHMS.pop("test-reverse")
    with pytest.raises(TypeError):
        register(int)


def test_config_is_plain():
    for cls in (st.Static, st.SET, st.RigL):
        cfg = cls(density=0.1).config()
        assert cfg["density"] == 0.1 and cfg["name"] == cls.name
        assert all(isinstance(v, (int, float, str, dict, type(None))) for v in cfg.values())


def test_set_signed_option_and_bad_values():
    assert st.SET(density=0.1, drop="signed").config()["drop"] == "signed"
    with pytest.raises(ValueError, match="magnitude"):
        st.SET(density=0.1, drop="largest")
    with pytest.raises(ValueError, match="grow_init"):
        st.RigL(density=0.1, grow_init="ones")
    with pytest.raises(ValueError, match="density=0.1"):
        st.RigL(density=90)


def test_static_never_updates_and_set_growth_depends_on_seed():
    def run(alg):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 3))
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        sp = st.Sparsifier(m, opt, alg, total_steps=20)
        init = {n: v.clone() for n, v in sp.masks.items()}
        for _ in range(20):
            m(torch.randn(8, 30)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        return init, sp

    init, sp = run(st.Static(density=0.2))
    assert sp.updates == 0 and all(torch.equal(init[n], sp.masks[n]) for n in init)
    _, a = run(st.SET(density=0.2, update_interval=5, seed=1))
    _, b = run(st.SET(density=0.2, update_interval=5, seed=1))
    _, c = run(st.SET(density=0.2, update_interval=5, seed=2))
    assert a.updates == 2  # steps 5 and 10; none from the end, 15 = 0.75 * 20
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert any(not torch.equal(a.masks[n], c.masks[n]) for n in a.masks)


def test_parse_method_specs():
    from sparsetrain.algorithms import parse_method

    assert parse_method("rigl") == ("rigl", {})
    assert parse_method("dstee:c=0.001:bonus=ucb:grad_norm=none:count=updates") == (
        "dstee", {"c": 0.001, "bonus": "ucb", "grad_norm": None, "count": "updates"})
    assert parse_method("set:update-interval=50:drop=signed") == ("set", {"update_interval": 50, "drop": "signed"})
    with pytest.raises(ValueError, match="key=value"):
        parse_method("rigl:fast")


def test_preset_names_work_through_the_registry():
    a = make_algorithm("rigl-itop", density=0.1, update_interval=500)
    assert isinstance(a, st.RigL) and a.update_schedule.end is None and a.update_schedule.interval == 500
    with pytest.raises(ValueError, match="rigl-itop"):
        make_algorithm("itop", density=0.1)


@pytest.mark.parametrize("make", [
    lambda: st.DSTEE(density=0.1, c=-1), lambda: st.DSTEE(density=0.1, bonus="x"),
    lambda: st.MEST(density=0.1, lam=-1), lambda: st.SNFS(density=0.1, momentum=2),
    lambda: st.GraNet(density=0.1, initial_density=0.05), lambda: st.SET(density=0.1, drop="x"),
    lambda: st.RigL(density=0.1, drop_fraction=2.0), lambda: st.RigL(density=0.1, drop_schedule="cosin"),
    lambda: st.RigL(density=0.1, end=-1), lambda: st.SNIP(density=0.1),
    lambda: st.SNIP(density=0.1, batch=(torch.zeros(1), torch.zeros(1)), positions="x"),
])
def test_bad_hyper_parameters_are_input_errors(make):
    # they were plain ValueErrors, which the command line reports as internal bugs with a traceback
    with pytest.raises(st.InputError):
        make()
