"""sparsetrain.selection: which parameters are sparse, and the errors for ones that cannot be."""

import pytest
import torch
from torch import nn

from sparsetrain.selection import check_selected, pinned_names, select


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight  # shared
        self.conv = nn.Conv2d(1, 2, 3)
        self.norm = nn.LayerNorm(4)


def test_default_selection_and_shared_weights_once():
    names = [s.name for s in select(Tied())]
    assert names == ["a.weight", "conv.weight"]  # b.weight is a.weight; norms and biases stay dense


def test_include_exclude_and_pins():
    m = Tied()
    assert [s.name for s in select(m, include=nn.Conv2d)] == ["conv.weight"]
    assert [s.name for s in select(m, include="*.weight", exclude=["norm.*", nn.Conv2d])] == ["a.weight"]
    assert [s.name for s in select(m, include=lambda n, p, mod: p.dim() == 1 and "norm" in n)] == \
        ["norm.weight", "norm.bias"]
    sel = select(m)
    assert pinned_names(sel, "conv.*") == ["conv.weight"] and pinned_names(sel, None) == []
    with pytest.raises(ValueError, match="no prunable parameter"):
        select(m, exclude="*")
    with pytest.raises(TypeError, match="selector"):
        select(m, include=[3])


def test_frozen_parameters_stay_dense_and_checks_name_the_fix():
    m = Tied()
    m.conv.weight.requires_grad_(False)
    sel = select(m)
    assert [s.name for s in sel] == ["a.weight"]
    with pytest.raises(ValueError, match="not held by the optimizer"):
        check_selected(sel, torch.optim.SGD(m.conv.parameters(), lr=0.1))
    with torch.device("meta"):
        meta = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="meta device"):
        check_selected(select(meta), None)
