"""sparsetrain.selection: which parameters are sparse, and the errors for ones that cannot be."""

import pytest
import torch
from torch import nn

from _hf_like import Conv1D
from sparsetrain.selection import DEFAULT_LAYERS, check_selected, is_conv1d_like, plan, select


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
    assert plan(m, dense="conv.*").pinned == ["conv.weight"] and plan(m).pinned == []
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
    assert left["tok.weight"].startswith("embedding, tied to head.weight") and \
        "include=[st.DEFAULT_LAYERS, 'tok.weight']" in left["tok.weight"]
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


# ---------------------------------------------------------------- attention and recurrent layers, DEFAULT_LAYERS

class Block(nn.Module):
    """A container type: an attention layer, an LSTM, a norm and an embedding inside."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.attn = nn.MultiheadAttention(8, 2, kdim=6, vdim=6, add_bias_kv=True)
        self.rnn = nn.LSTM(8, 6, num_layers=2, bidirectional=True, proj_size=3)
        self.norm = nn.LayerNorm(8)


def test_multihead_attention_and_recurrent_weights_are_sparse_by_default():
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32), 2, enable_nested_tensor=False)
    sel = plan(enc)
    assert [s.name for s in sel.selected] == [f"layers.{i}.{n}" for i in range(2) for n in (
        "self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight")]
    assert sel.why["layers.0.self_attn.in_proj_weight"] == "MultiheadAttention"
    assert all(r == "1-D" for _, _, r in sel.left)  # biases and norm gains only
    m = nn.ModuleDict({"rnn": nn.LSTM(8, 6, num_layers=2, bidirectional=True, proj_size=3), "gru": nn.GRU(4, 5)})
    sel = plan(m)
    lstm = [f"rnn.weight_{k}_l{l}{d}" for l in range(2) for d in ("", "_reverse") for k in ("ih", "hh", "hr")]
    assert sorted(s.name for s in sel.selected) == sorted(lstm + ["gru.weight_ih_l0", "gru.weight_hh_l0"])
    assert {sel.why[n] for n in lstm} == {"LSTM"} and sel.why["gru.weight_hh_l0"] == "GRU"
    assert all(n.split(".")[1].startswith("bias") for n, _, _ in sel.left)


def test_separate_qkv_projections_are_sparse_and_bias_kv_is_not():
    sel = plan(Block())
    names = [s.name for s in sel.selected]
    assert {"attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight", "attn.out_proj.weight"} <= set(names)
    assert not any("bias" in n or n.startswith(("emb", "norm")) for n in names)
    assert {n for n, _, _ in sel.left} >= {"attn.bias_k", "attn.bias_v", "emb.weight", "norm.weight"}
    # a (1, 1, E) tensor is a vector: counted with the 1-D parameters, not offered as a layer to opt in
    assert {r for n, _, r in sel.left if n.startswith("attn.bias_")} == {"1-D"}


def test_a_module_type_selects_its_weight_matrices_and_those_inside_it():
    assert [s.name for s in select(Block(), include=[nn.LSTM])] == \
        [f"rnn.weight_{k}_l{l}{d}" for l in range(2) for d in ("", "_reverse") for k in ("ih", "hh", "hr")]
    sel = plan(Block(), include=[nn.MultiheadAttention])  # its q/k/v and the out_proj Linear inside it
    assert [s.name for s in sel.selected] == ["attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight",
                                              "attn.out_proj.weight"]
    assert "attn.bias_k" in {n for n, _, _ in sel.left}  # 3-D, but a bias
    inside = select(Block(), include=[Block])  # a container's type: like a glob, no embedding, no 1-D gain
    assert {s.name for s in inside} == {s.name for s in select(Block())}
    kept = plan(nn.TransformerEncoderLayer(16, 2, 32), exclude=[nn.MultiheadAttention])
    assert [s.name for s in kept.selected] == ["linear1.weight", "linear2.weight"]
    assert dict((n, r) for n, _, r in kept.left)["self_attn.out_proj.weight"] == "excluded by MultiheadAttention"
    with pytest.raises(ValueError, match="Dropout modules hold no weight matrix"):
        plan(nn.TransformerEncoderLayer(16, 2, 32), include=[nn.Dropout])
    with pytest.raises(ValueError, match="GRU matches no module"):
        plan(Block(), exclude=[nn.GRU])


@pytest.mark.parametrize("make", [Tied, CharLM, Block, lambda: nn.TransformerEncoderLayer(16, 2, 32),
                                  lambda: nn.ModuleDict({"c": Conv1D(12, 4), "e": nn.Embedding(5, 4)})])
def test_default_layers_is_the_default_selection_and_adds_to_it(make):
    default, same = plan(make()), plan(make(), include=[DEFAULT_LAYERS])
    assert [s.name for s in same.selected] == [s.name for s in default.selected] and same.why == default.why
    left = [n for n, shape, r in default.left if len(shape) >= 2]  # an embedding, a bias_k: added by name
    for name in left:
        more = plan(make(), include=[DEFAULT_LAYERS, name])
        assert [s.name for s in more.selected if s.name != name] == [s.name for s in default.selected]
        assert name in more.why and more.why[name].startswith(f"include={name!r}")


def test_pins_by_type_and_default_layers():
    sel = plan(Block(), dense=[nn.MultiheadAttention])
    assert sel.pinned == ["attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight", "attn.out_proj.weight"]
    assert plan(Block(), dense=[DEFAULT_LAYERS]).pinned == [s.name for s in plan(Block()).selected]


@pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated:FutureWarning")
def test_cells_and_weight_norm():
    m = nn.ModuleDict({"cell": nn.LSTMCell(4, 6), "gru": nn.GRUCell(4, 6),
                       "wn": nn.utils.weight_norm(nn.Linear(4, 5)),
                       "rnn": nn.utils.weight_norm(nn.LSTM(4, 8), "weight_hh_l0")})
    sel = plan(m)  # cells sparse; weight_norm's gain (5x1, 32x1) never: by default nor by type
    assert [s.name for s in sel.selected] == ["cell.weight_ih", "cell.weight_hh", "gru.weight_ih", "gru.weight_hh",
                                              "rnn.weight_ih_l0"]
    assert sel.why["cell.weight_ih"] == "LSTMCell" and sel.why["gru.weight_hh"] == "GRUCell"
    by_type = [s.name for s in select(m, include=[nn.Linear, nn.LSTM])]
    assert by_type == ["wn.weight_v", "rnn.weight_ih_l0", "rnn.weight_hh_l0_v"]


def test_new_user_mistakes_in_selectors_are_named():
    m = nn.Sequential(nn.Embedding(50, 16, sparse=True), nn.Linear(16, 4))
    with pytest.raises(ValueError, match="sparse=True.*sparse=False"):  # used to fail inside backward
        plan(m, include=[DEFAULT_LAYERS, nn.Embedding])
    with pytest.raises(TypeError, match="not a module.*pass LSTM"):  # an instance: was a TypeError from its forward
        plan(Block(), include=[nn.LSTM(2, 2)])
    with pytest.raises(ValueError, match="st.DEFAULT_LAYERS, not a string"):
        plan(Block(), include=["DEFAULT_LAYERS"])
    with pytest.raises(ValueError) as e:  # everything excluded: not "the only weight matrices are embeddings"
        plan(Block(), exclude=[nn.MultiheadAttention, nn.LSTM])
    assert "exclude=" in str(e.value) and "only weight matrices are embeddings" not in str(e.value)


def _mobile_block():
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False),
                         nn.Conv2d(32, 64, 1), nn.Conv1d(64, 64, 4, groups=64), nn.Conv2d(64, 64, 3, groups=4),
                         nn.Linear(64, 10))


def test_depthwise_names_the_convolutions_with_one_input_channel_per_filter():
    from sparsetrain.selection import depthwise

    m = _mobile_block()
    hits = [n for n, p in m.named_parameters() for mod in [m.get_submodule(n.rsplit(".", 1)[0])]
            if depthwise(n, p, mod)]
    assert hits == ["1.weight", "3.weight"]  # a grouped (groups=4) conv, biases and Linear are not depthwise
    sel = plan(m, exclude=[depthwise])
    assert [s.name for s in sel.selected] == ["0.weight", "2.weight", "4.weight", "5.weight"]
    assert dict((n, r) for n, _, r in sel.left)["1.weight"] == "excluded by depthwise"
    assert [s.name for s in select(m)] == ["0.weight", "1.weight", "2.weight", "3.weight", "4.weight", "5.weight"]


def test_depthwise_channels_with_no_active_weight_are_named_with_the_fix():
    import warnings

    import sparsetrain as st

    torch.manual_seed(0)
    m = _mobile_block()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        sp = st.Sparsifier(m, opt, st.RigL(density=0.02), total_steps=100)
    msg = [str(x.message) for x in w if "no active weight at the start" in str(x.message)]
    assert len(msg) == 1 and "exclude=[st.depthwise]" in msg[0]
    # the counts it gives are the masks' own, for the depthwise layers only
    for name, layer in sp.layers.items():
        empty = int((~layer.mask.reshape(layer.shape[0], -1).any(1)).sum())
        if name in ("1.weight", "3.weight"):
            assert empty and f"{name}: {empty} of {layer.shape[0]}" in msg[0]
        else:
            assert f"{name}: " not in msg[0]
    sp.remove()
    m = _mobile_block()
    with warnings.catch_warnings(record=True) as w:  # excluded: nothing to say
        warnings.simplefilter("always")
        st.Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), st.RigL(density=0.02), total_steps=100,
                      exclude=[st.depthwise])
    assert not [x for x in w if "no active weight" in str(x.message)]
    m = _mobile_block()
    with warnings.catch_warnings(record=True) as w:  # dense enough: no note
        warnings.simplefilter("always")
        st.Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), st.RigL(density=0.5), total_steps=100)
    assert not [x for x in w if "no active weight" in str(x.message)]


def test_an_uninitialised_lazy_module_is_refused_with_the_fix():
    model = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(Exception, match=r"lazy modules .* run one forward pass with an example batch"):
        plan(model)
    model(torch.randn(3, 5))  # materialised: selected as usual
    assert [s.name for s in plan(model).selected] == ["0.weight", "2.weight"]


def test_parametrized_weights_stay_dense_and_say_why():
    from torch.nn.utils.parametrizations import spectral_norm, weight_norm

    model = nn.Sequential(weight_norm(nn.Linear(8, 16)), nn.ReLU(), spectral_norm(nn.Linear(16, 4)), nn.Linear(4, 4))
    sel = plan(model)
    assert [s.name for s in sel.selected] == ["3.weight"]
    why = {n: r for n, _, r in sel.left}
    assert why["0.parametrizations.weight.original1"].startswith("parametrized weight (WeightNorm): remove")
    assert why["2.parametrizations.weight.original"].startswith("parametrized weight (SpectralNorm): remove")
    # only parametrized weights: the error says so (it used to be the generic "no prunable parameter matched")
    only = nn.Sequential(weight_norm(nn.Linear(8, 16)), nn.ReLU(), spectral_norm(nn.Linear(16, 4)))
    with pytest.raises(Exception, match=r"weight matrices are parametrized .*remove_parametrizations"):
        plan(only)
    # named in include=, spectral_norm's original is sparse
    sel = plan(only, include=["2.parametrizations.weight.original"])
    assert [s.name for s in sel.selected] == ["2.parametrizations.weight.original"]


def test_an_optimizer_built_before_to_sparse_is_named_as_the_cause():
    import sparsetrain as st

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m = st.sparse.to_sparse(m)
    with pytest.raises(st.InputError, match=r"not held by the optimizer.*to_sparse converted: an optimizer built "
                                            r"before the conversion"):
        st.Sparsifier(m, opt, st.RigL(density=0.1), total_steps=20)
