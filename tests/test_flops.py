import pytest
import torch
from torch import nn

import sparsetrain as st
from _hf_like import Conv1D


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


def test_training_flops_before_the_first_step_is_nothing_spent():
    m, sp = _train(st.Static(density=0.3), steps=0)
    r = st.flops(m, torch.randn(1, 1, 8, 8), masks=sp.masks)
    tf = sp.training_flops(r)
    assert tf["sparse"] == 0 and tf["dense"] == 0
    assert tf["fraction"] == pytest.approx(r.sparse / r.dense) and tf["fraction"] < 1


def test_training_flops_rigl_matches_spec_formula():
    m, sp = _train(st.RigL(density=0.3, update_interval=4, end=None, drop_schedule="constant"), steps=40, total=41)
    assert sp.dense_grad_steps == 10
    r = st.flops(m, torch.randn(1, 1, 8, 8), masks=sp.masks)
    # constant per-layer counts, one dense-gradient step every ΔT=4 steps:
    expected = 3 * r.sparse * 40 + 10 * (r.dense - r.sparse)
    assert sp.training_flops(r)["sparse"] == pytest.approx(expected)
    per_step = (3 * r.sparse * 3 + 2 * r.sparse + r.dense) / 4  # spec formula with ΔT+1 = 4 steps
    assert sp.training_flops(r)["sparse"] / 40 == pytest.approx(per_step)


# ---------------------------------------------------------------- transformers (issue 13)


class SelfAttention(nn.Module):
    """Declares its attention products through the public method (st.flops.ATTENTION_METHOD)."""

    def __init__(self, d, heads):
        super().__init__()
        self.qkv, self.proj, self.heads = Conv1D(3 * d, d), nn.Linear(d, d), heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))

    def attention_macs(self, inputs, output):
        b, t, d = inputs[0].shape
        return 2 * b * t * t * d


class HFShapedAttention(SelfAttention):
    """No attention_macs: recognised by its shape (name ends in Attention, num_heads, head_dim)."""

    attention_macs = None

    def __init__(self, d, heads):
        super().__init__(d, heads)
        self.num_heads, self.head_dim = heads, d // heads


class Wrapper(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.attention_macs = lambda inputs, output: 1e9  # an outer recognised module counts, the inner not

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize("cls", [SelfAttention, HFShapedAttention])
def test_conv1d_and_attention_products_hand_count(cls):
    torch.manual_seed(0)
    m = cls(8, 2)
    x = torch.randn(3, 5, 8)  # 3 examples of 5 tokens, width 8
    mask = torch.zeros(8, 24, dtype=torch.bool)
    mask.view(-1)[:48] = True  # a quarter of the qkv weights
    r = st.flops(m, x, masks={"qkv.weight": mask})
    assert r.layers["qkv.weight"].dense == 5 * 8 * 24 and r.layers["qkv.weight"].sparse == 5 * 48
    assert r.layers["proj.weight"].dense == 5 * 64
    assert r.attention == {"<model>": 2 * 5 * 5 * 8}  # QKᵀ and AV per example, untouched by weight sparsity
    assert r.dense == 5 * 8 * 24 + 5 * 64 + 400 and r.sparse == 5 * 48 + 5 * 64 + 400


def test_multihead_attention_projections_and_products_counted_once():
    m = Wrapper(nn.MultiheadAttention(8, 2, batch_first=True))
    m.inner.forward = lambda x: nn.MultiheadAttention.forward(m.inner, x, x, x)[0]
    assert st.flops(m, torch.randn(3, 5, 8)).attention == {"<model>": 1e9 / 3}
    mha = nn.MultiheadAttention(8, 2, batch_first=True)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = mha

        def forward(self, x):
            return self.a(x, x, x)[0]

    r = st.flops(M(), torch.randn(3, 5, 8))
    assert r.attention == {"a": 2 * 5 * 5 * 8}
    assert r.layers["a.in_proj_weight"].dense == 5 * 3 * 64 and r.layers["a.out_proj.weight"].dense == 5 * 64


def test_hf_gpt2_fraction_counts_conv1d_and_attention():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=256, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    m = transformers.GPT2LMHeadModel(cfg)
    sp = st.Sparsifier(m, torch.optim.AdamW(m.parameters()), st.RigL(density=0.1), total_steps=1000)
    r = st.flops(m, torch.randint(0, 256, (2, 16)), masks=sp.masks)
    blocks = 2 * 16 * (32 * 96 + 32 * 32 + 32 * 128 + 128 * 32)  # the Conv1D projections, 16 tokens
    head, attention = 16 * 32 * 256, 2 * (2 * 16 * 16 * 32)  # the tied head (dense), QKᵀ + AV per layer
    assert r.dense == blocks + head + attention
    assert r.sparse == pytest.approx(16 * sum(int(k.sum()) for k in sp.masks.values()) + head + attention)
    assert r.fraction == pytest.approx(r.sparse / r.dense) and 0.3 < r.fraction < 0.4


@pytest.mark.parametrize("arch", ["llama", "bert", "t5", "vit"])
def test_hf_models_take_a_batch_mapping_and_count_their_attention(arch):
    # attention modules that do not declare their products (LlamaAttention with SDPA, BERT's eager
    # matmuls, T5 with cross-attention, ViT) are measured by torch's FLOP counter
    tf = pytest.importorskip("transformers")
    tf.logging.set_verbosity_error()
    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    t, batch = 8, {"input_ids": torch.randint(0, 64, (3, 8))}
    if arch == "llama":
        m = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=64, num_key_value_heads=1, max_position_embeddings=32, **small))
    elif arch == "bert":
        m = tf.BertForMaskedLM(tf.BertConfig(vocab_size=64, max_position_embeddings=32, **small))
    elif arch == "t5":
        m = tf.T5ForConditionalGeneration(tf.T5Config(vocab_size=64, d_model=32, d_ff=64, num_layers=2, num_heads=2,
                                                      d_kv=16, decoder_start_token_id=0, pad_token_id=0))
        batch["decoder_input_ids"] = torch.randint(0, 64, (3, 8))
    else:
        m = tf.ViTForImageClassification(tf.ViTConfig(image_size=16, patch_size=4, num_labels=3, **small))
        t, batch = 17, {"pixel_values": torch.randn(3, 3, 16, 16)}  # 16 patches + the class token
    sp = st.Sparsifier(m, torch.optim.AdamW(m.parameters()), st.RigL(density=0.1), total_steps=1000)
    r = st.flops(m, batch, masks=sp.masks)
    per_layer = 2 * t * t * 32  # QKᵀ and AV, per example
    layers = 6 if arch == "t5" else 2  # T5: encoder self, decoder self and cross per block
    assert len(r.attention) == layers and all(v == per_layer for v in r.attention.values())
    assert r.dense > r.sparse > r.dense * 0.1 and r.sparse - sum(r.attention.values()) > 0
    for name, mask in sp.masks.items():  # every sparse projection is counted at its mask
        assert r.layers[name].nnz == int(mask.sum())


def test_an_attention_module_that_does_not_declare_its_products_is_measured():
    class MyAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(16, 48)

        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, -1)
            return torch.softmax(q @ k.transpose(-1, -2) / 4, -1) @ v

    class FusedAttention(MyAttention):
        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, -1)
            return nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    for kind in (MyAttention, FusedAttention):
        net = nn.Sequential(kind(), nn.Linear(16, 4))
        r = st.flops(net, torch.randn(2, 5, 16))
        assert r.attention == {"0": 2 * 5 * 5 * 16}  # the full score matrix, as for every attention module
        assert r.layers["0.qkv.weight"].dense == 5 * 16 * 48
    with pytest.raises(ValueError, match="empty mapping"):
        st.flops(net, {})


class Recurrent(nn.Module):
    def __init__(self, rnn: nn.RNNBase):
        super().__init__()
        self.rnn, self.fc = rnn, nn.Linear(rnn.hidden_size * (2 if rnn.bidirectional else 1), 3)

    def forward(self, x):
        out = self.rnn(x)[0]
        if isinstance(out, nn.utils.rnn.PackedSequence):
            out = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)[0]
        return self.fc(out)


def test_recurrent_weights_count_once_per_time_step_at_their_nonzeros():
    torch.manual_seed(0)
    m = Recurrent(nn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True))
    sp = st.Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), "static", density=0.3)
    r = st.flops(m, torch.randn(2, 7, 4), sp.masks)
    names = [f"rnn.weight_{k}_l{l}{d}" for l in range(2) for d in ("", "_reverse") for k in ("ih", "hh")]
    assert set(names) <= set(r.layers) and "rnn.bias_ih_l0" not in r.layers
    for n in names:  # 7 steps per example; the masked weights at their nonzeros
        w = dict(m.named_parameters())[n]
        assert r.layers[n].positions == 7 and r.layers[n].numel == w.numel()
        assert r.layers[n].nnz == int(sp.masks[n].sum()) == int((w != 0).sum())
    assert r.layers["fc.weight"].positions == 7
    gru = Recurrent(nn.GRU(4, 5, batch_first=True))  # packed: the real lengths (7 + 3 steps, 2 examples)
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(2, 7, 4), torch.tensor([7, 3]), batch_first=True)
    r = st.flops(gru, packed)
    assert r.layers["rnn.weight_hh_l0"].positions == 10 / 2 and r.layers["rnn.weight_hh_l0"].dense == 5 * 15 * 5


def test_sequence_first_and_unbatched_recurrent_models_count_per_sequence():
    # the input's first dimension is time there: every layer's count is per sequence, as the LSTM says
    torch.manual_seed(0)
    m = Recurrent(nn.LSTM(4, 6))  # batch_first=False: (T=7, B=2, 4)
    r = st.flops(m, torch.randn(7, 2, 4))
    assert r.layers["rnn.weight_ih_l0"].positions == 7 and r.layers["fc.weight"].positions == 7
    ref = st.flops(Recurrent(nn.LSTM(4, 6, batch_first=True)), torch.randn(2, 7, 4))
    assert r.dense == ref.dense
    assert st.flops(m, torch.randn(7, 4)).dense == ref.dense  # one unbatched sequence

    class Loop(nn.Module):  # a cell called once per step
        def __init__(self):
            super().__init__()
            self.cell = nn.GRUCell(4, 5)

        def forward(self, x):
            h = None
            for t in range(x.shape[1]):
                h = self.cell(x[:, t], h)
            return h

    r = st.flops(Loop(), torch.randn(3, 6, 4))
    assert r.layers["cell.weight_ih"].positions == 6 and r.layers["cell.weight_hh"].dense == 6 * 15 * 5


def test_a_tied_sparse_head_counts_at_its_mask_under_any_name():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.rnn, self.dec = nn.Embedding(50, 32), nn.LSTM(32, 32, batch_first=True), nn.Linear(32, 50)
            self.dec.weight = self.emb.weight

        def forward(self, x):
            return self.dec(self.rnn(self.emb(x))[0])

    torch.manual_seed(0)
    m = LM()
    sp = st.Sparsifier(m, torch.optim.SGD(m.parameters(), lr=0.1), "static", density=0.1,
                       include=[st.DEFAULT_LAYERS, "dec.weight"])
    assert "emb.weight" in sp.masks  # the mask is under the parameter's first name
    r = st.flops(m, torch.randint(0, 50, (2, 10)), sp.masks)
    assert r.layers["dec.weight"].nnz == int(sp.masks["emb.weight"].sum()) == int((m.dec.weight != 0).sum())


def test_a_reshaped_batch_is_not_mistaken_for_a_sequence_first_one():
    class Hier(nn.Module):  # (B, N, T) token ids; the LSTM runs on B*N sequences
        def __init__(self):
            super().__init__()
            self.emb, self.rnn, self.fc = nn.Embedding(30, 8), nn.LSTM(8, 16, batch_first=True), nn.Linear(16, 3)

        def forward(self, x):
            b, n, t = x.shape
            h = self.rnn(self.emb(x.reshape(b * n, t)))[0][:, -1].reshape(b, n, 16).mean(1)
            return self.fc(h)

    r = st.flops(Hier(), torch.randint(0, 30, (4, 5, 7)))
    assert r.layers["rnn.weight_ih_l0"].positions == 35 and r.layers["fc.weight"].positions == 1


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_a_padding_mask_on_the_encoder_fast_path_is_counted():
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.fc = enc, nn.Linear(16, 3)

        def forward(self, x, pad):
            return self.fc(self.enc(x, src_key_padding_mask=pad).mean(1))

    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True  # eval + no_grad: nested tensors inside (was "NestedTensorImpl doesn't support sizes")
    r = st.flops(M(), (torch.randn(2, 6, 16), pad))
    assert r.layers["enc.layers.0.self_attn.in_proj_weight"].numel == 48 * 16 and r.dense > 0


def test_sequence_first_attention_counts_per_sequence_like_batch_first():
    torch.manual_seed(0)
    first = nn.TransformerEncoderLayer(16, 2, 32, batch_first=False)
    batch_first = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    batch_first.load_state_dict(first.state_dict())
    x = torch.randn(10, 4, 16)  # (T, B, D)
    a, b = st.flops(first, x), st.flops(batch_first, x.transpose(0, 1))
    assert a.dense == b.dense and a.layers["linear1.weight"].positions == 10
    assert st.flops(first, x[:, 0]).dense == b.dense  # one unbatched sequence


def test_a_multihead_attention_wrapped_in_an_attention_module_is_counted_as_mha():
    # the wrapper's name ends in Attention, but the MHA inside says what it computes (its projections run
    # in its functional call, which no Linear hook sees): the wrapper is a container
    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(32, 4, batch_first=True)

        def forward(self, x):
            return self.mha(x, x, x)[0]

    class Wrapper(SelfAttention):
        pass

    for kind in (SelfAttention, Wrapper):
        torch.manual_seed(0)
        net = nn.Sequential(kind(), nn.Linear(32, 4))
        r = st.flops(net, torch.randn(2, 8, 32))
        assert r.attention == {"0.mha": 2 * 8 * 8 * 32}
        assert r.layers["0.mha.in_proj_weight"].dense == 8 * 3 * 32 * 32 and "0.mha.out_proj.weight" in r.layers


def test_a_mapping_for_a_model_that_takes_one_dict_names_the_tuple_form():
    class DictModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, batch):
            return self.fc(batch["x"])

    with pytest.raises(st.InputError, match=r"st.flops\(model, \(batch,\)\)"):
        st.flops(DictModel(), {"x": torch.randn(3, 4)})
    assert st.flops(DictModel(), ({"x": torch.randn(3, 4)},)).dense == 8


def test_an_attention_module_whose_products_are_not_seen_is_warned():
    class PoolAttention(nn.Module):  # elementwise scores: no matmul for the counter to see
        def __init__(self):
            super().__init__()
            self.score = nn.Linear(8, 1)

        def forward(self, x):
            return (torch.softmax(self.score(x), dim=1) * x).sum(1)

    with pytest.warns(st.InputWarning, match="no attention product seen in 0"):
        r = st.flops(nn.Sequential(PoolAttention()), torch.randn(2, 5, 8))
    assert r.attention == {"0": 0.0}


@pytest.mark.parametrize("stride", [1, 2])
def test_a_transposed_convolution_counts_its_input_positions(stride):
    """Each input position of a transposed convolution meets every weight once: its MACs are the ones torch computes
    (checked here against a hand count from the unfolded matmul), not its output positions times the weight."""
    torch.manual_seed(0)
    m = nn.ConvTranspose2d(4, 6, 3, stride=stride, groups=2)
    x = torch.randn(2, 4, 5, 5)
    r = st.flops(m, x)
    # hand count: every one of the 25 input positions multiplies each in-channel by its 3 out-channels x 9 taps
    assert r.layers["weight"].dense == 25 * 4 * 3 * 9 == 25 * m.weight.numel()
