import pytest
import torch
from torch import nn

import sparsetrain as st


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)      # 8x8 out: 64 positions x 36 weights
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2)      # 3x3 out: 9 positions x 216 weights
        self.fc = nn.Linear(54, 10)                    # 1 position x 540 weights
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def test_hand_count_dense_and_sparse():
    torch.manual_seed(0)
    m = SmallCNN()
    x = torch.randn(5, 1, 8, 8)
    r = st.flops(m, x)
    assert r.layers["conv.weight"].dense == 64 * 36
    assert r.layers["conv2.weight"].dense == 9 * 216
    assert r.layers["fc.weight"].dense == 540
    assert r.dense == 64 * 36 + 9 * 216 + 540
    assert r.fraction == 1.0
    masks = {"conv.weight": torch.zeros(4, 1, 3, 3, dtype=torch.bool), "fc.weight": torch.zeros(10, 54, dtype=torch.bool)}
    masks["conv.weight"].view(-1)[:9] = True   # 9 of 36 active
    masks["fc.weight"].view(-1)[:54] = True    # 54 of 540
    r = st.flops(m, x, masks=masks)
    assert r.sparse == 64 * 9 + 9 * 216 + 54   # conv2 unmasked counts fully
    assert r["fraction"] == pytest.approx(r.sparse / r.dense)


def test_shared_module_counted_per_call_and_model_mode_restored():
    lin = nn.Linear(8, 8)
    m = nn.Sequential(lin, nn.ReLU(), lin)
    m.train()
    r = st.flops(m, torch.randn(2, 8))
    assert r.layers["0.weight"].dense == 2 * 64
    assert m.training


def test_spec_formulas():
    assert st.training_flops_per_step("dense", 1, 10) == 30
    assert st.training_flops_per_step("set", 1, 10) == 3
    assert st.training_flops_per_step("snfs", 1, 10) == 12
    assert st.training_flops_per_step("rigl", 1, 10, update_interval=4) == pytest.approx((12 + 2 + 10) / 5)
    with pytest.raises(ValueError, match="known"):
        st.training_flops_per_step("magic", 1, 10)


def _train(alg, steps=40, total=40):
    torch.manual_seed(0)
    m = SmallCNN()
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    sp = st.Sparsifier(m, opt, alg, total_steps=total)
    for i in range(steps):
        x = torch.randn(4, 1, 8, 8)
        m(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return m, sp


def test_training_flops_static_is_three_sparse_forwards():
    m, sp = _train(st.Static(density=0.3))
    r = st.flops(m, torch.randn(1, 1, 8, 8), masks=sp.masks)
    tf = sp.training_flops(r)
    assert tf["fraction"] == pytest.approx(r.sparse / r.dense)
    assert tf["sparse"] == pytest.approx(3 * r.sparse * 40)


def test_training_flops_rigl_matches_spec_formula():
    m, sp = _train(st.RigL(density=0.3, update_interval=4, end=None, drop_schedule="constant"), steps=40)
    assert sp.dense_grad_steps == 10
    r = st.flops(m, torch.randn(1, 1, 8, 8), masks=sp.masks)
    # constant per-layer counts, one dense-gradient step every ΔT=4 steps:
    expected = 3 * r.sparse * 40 + 10 * (r.dense - r.sparse)
    assert sp.training_flops(r)["sparse"] == pytest.approx(expected)
    per_step = (3 * r.sparse * 3 + 2 * r.sparse + r.dense) / 4  # spec formula with ΔT+1 = 4 steps
    assert sp.training_flops(r)["sparse"] / 40 == pytest.approx(per_step)
