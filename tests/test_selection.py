"""sparsetrain.selection: which parameters are sparse, and the errors for ones that cannot be."""

import pytest
import torch
from torch import nn

from _hf_like import Conv1D
from sparsetrain.selection import check_selected, is_conv1d_like, pinned_names, plan, select


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


# ---------------------------------------------------------------- transformers (issue 13)

class CharLM(nn.Module):
    """A plain-PyTorch char-level LM with a tied head (head.weight = tok.weight)."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(50, 16)
        self.blocks = nn.ModuleList([nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 32), nn.Linear(32, 16))])
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.tok.weight




def test_tied_head_and_embedding_dense_by_default_with_reasons():
    sel = plan(CharLM())
    assert [s.name for s in sel.selected] == ["blocks.0.1.weight", "blocks.0.2.weight"]
    left = {n: r for n, _, r in sel.left}
    assert left["tok.weight"].startswith("embedding, tied to head.weight") and "include=['tok.weight']" in left["tok.weight"]
    assert left["blocks.0.0.weight"] == "1-D" and left["blocks.0.1.bias"] == "1-D"
    assert "head.weight" not in left  # one parameter, reported under its first name


def test_wildcard_include_skips_1d_and_embeddings_exact_names_opt_in():
    m = CharLM()
    assert [s.name for s in select(m, include=["blocks.*.weight"])] == ["blocks.0.1.weight", "blocks.0.2.weight"]
    assert [s.name for s in select(m, include=["*"])] == ["blocks.0.1.weight", "blocks.0.2.weight"]
    assert [s.name for s in select(m, include=["blocks.0.0.weight"])] == ["blocks.0.0.weight"]  # named exactly
    for include in (["tok.weight"], ["head.weight"], [nn.Embedding]):  # any alias, or the module type
        sel = plan(m, include=include)
        assert [(s.name, s.aliases) for s in sel.selected] == [("tok.weight", ("tok.weight", "head.weight"))]
        assert "embedding" in sel.why["tok.weight"] and "tied: head.weight" in sel.why["tok.weight"]


def test_exclude_and_dense_match_every_alias_and_module_types():
    m = CharLM()
    for exclude in (["tok.weight"], ["head.weight"], [nn.Embedding]):
        with pytest.raises(ValueError, match="no prunable parameter"):
            select(m, include=["tok.weight"], exclude=exclude)
    sel = plan(m, include=["tok.weight", "blocks.*.weight"], dense=[nn.Embedding])
    assert sel.pinned == ["tok.weight"]
    assert plan(m, include=["head.weight", "blocks.*.weight"], dense=["head.weight"]).pinned == ["tok.weight"]
    assert plan(m, exclude=[nn.LayerNorm]).left[1] == ("blocks.0.0.weight", (16,), "1-D")


@pytest.mark.parametrize("kwargs, words", [
    (dict(exclude=["blocks.9.*"]), ["exclude='blocks.9.*'", "matches no parameter", "spelling"]),
    (dict(exclude=[nn.Conv2d]), ["exclude=Conv2d", "matches no module"]),
    (dict(include=["blocks.*.weight", "typo"]), ["include='typo'"]),
    (dict(dense=["tok.weight"]), ["dense='tok.weight'", "left dense already", "remove it from dense="]),
    (dict(dense=[nn.Embedding]), ["dense=Embedding", "left dense already"]),
    (dict(dense=["nothing.*"]), ["dense='nothing.*'", "matches no parameter"]),
])
def test_selectors_that_match_nothing_are_errors(kwargs, words):
    with pytest.raises(ValueError) as e:
        plan(CharLM(), **kwargs)
    for w in words:
        assert w in str(e.value)


def test_only_embeddings_error_names_include():
    with pytest.raises(ValueError, match=r"include=\['0.weight'\] or include=\[nn.Embedding\]"):
        select(nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4)))


def test_hf_style_conv1d_is_a_weight_layer_by_duck_typing():
    m = nn.ModuleDict({"c_attn": Conv1D(12, 4), "ln": nn.LayerNorm(4)})
    assert is_conv1d_like(m["c_attn"]) and not is_conv1d_like(m["ln"])
    sel = plan(m)
    assert [s.name for s in sel.selected] == ["c_attn.weight"] and sel.why["c_attn.weight"] == "Conv1D"


def test_summary_lists_sparse_and_dense_with_reasons():
    import sparsetrain as st

    m = CharLM()
    sp = st.Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), "set", density=0.5, total_steps=1000)
    text = sp.summary()
    assert "left dense:" in text and "tok.weight" in text and "tied to head.weight" in text
    assert "4 1-D parameters (biases, norm gains; 80 values)" in text
    assert "blocks.0.1.weight" in text.split("left dense:")[0]
    sp.remove()
    sp = st.Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), "set", density=0.5, total_steps=1000,
                       include=["tok.weight"])
    assert "include='tok.weight', embedding, tied: head.weight" in sp.summary()
