import pytest
import torch
from torch import nn

import sparsetrain as st
from sparsetrain.schedules import CosineAnnealing


def test_itop_presets_follow_the_spec():
    s = st.presets.set_itop(0.05)
    r = st.presets.rigl_itop(0.05)
    assert isinstance(s, st.SET) and isinstance(r, st.RigL)
    assert s.update_schedule.interval == 1500 and r.update_schedule.interval == 4000
    assert s.update_schedule.end is None and r.update_schedule.end is None
    assert s.drop_schedule == CosineAnnealing(0.5, 0.005) and s.distribution == "erk"
    assert st.presets.rigl_itop(0.1, update_interval=50, seed=3).seed == 3


def test_itop_keeps_exploring_until_the_end():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = st.Sparsifier(model, opt, st.presets.set_itop(0.2, update_interval=5), total_steps=40)
    for _ in range(40):
        model(torch.randn(4, 10)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    steps = [h["step"] for h in sp.history]
    assert steps == [5, 10, 15, 20, 25, 30, 35]  # to the end, but none after the last step (40)
    rs = [h["itop_rate"] for h in sp.history]
    assert rs == sorted(rs) and rs[-1] > 0.2
    with pytest.raises(ValueError, match="total_steps"):
        st.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), st.presets.set_itop(0.2))


def test_the_suptickets_base_is_the_reference_codes_rigl():
    base = st.presets.suptickets_base(0.05)
    ref = st.RigL(0.05, update_interval=1200, drop_fraction=0.5, drop_schedule="constant", end=None)
    assert base.config() == ref.config()
    assert st.presets.suptickets_base(0.05, update_interval=300).update_schedule.interval == 300
    # as a method name, with Sup-tickets on top (the sweep's spelling)
    from sparsetrain.experiments.config import RunConfig
    from sparsetrain.experiments.grid import plan_runs

    (run,) = plan_runs(["suptickets-base+sup-tickets"], [0.05], [0], {"dataset": "synthetic", "model": "mlp", "epochs": 10, "cycle_epochs": 1})
    assert run.tag == "suptickets-base+sup-tickets-d0.05-s0"
    cfg = RunConfig.from_settings(run.settings)
    cfg.validate()
    assert cfg.method == "suptickets-base" and cfg.sup_tickets
