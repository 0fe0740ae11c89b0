"""A GPT-style decoder (pre-norm, causal self-attention through ``F.scaled_dot_product_attention``,
GELU MLP, tied token embedding and output head), sized by :class:`GPTConfig`.

Registered in :data:`sparsetrain.experiments.models.MODELS` as ``gpt-mini`` (and ``gpt-micro``
for tests); the runner feeds it byte-level contexts (``text:stdlib``). By the library's default
selection its attention and MLP projections (``nn.Linear``) are sparse; the token and position
embeddings, the tied head, the norms and the biases stay dense. :class:`CausalSelfAttention`
declares its attention products to :func:`sparsetrain.flops` through ``attention_macs``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from ..errors import InputError

__all__ = ["GPTConfig", "GPT", "Block", "CausalSelfAttention", "GPT_CONFIGS"]


@dataclass(frozen=True)
class GPTConfig:
    """The shape of a :class:`GPT`: ``layers`` blocks of width ``width`` with ``heads`` heads,
    an MLP of ``mlp_ratio × width``, a ``vocab``-token alphabet (256: bytes) and ``context`` positions."""

    layers: int = 4
    width: int = 128
    heads: int = 4
    context: int = 128
    vocab: int = 256
    mlp_ratio: int = 4
    dropout: float = 0.0

    def __post_init__(self):
        for key in ("layers", "width", "heads", "context", "vocab", "mlp_ratio"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"GPTConfig: {key} must be a positive int, got {value!r}")
        if self.width % self.heads:
            raise InputError(f"GPTConfig: width {self.width} must be divisible by heads {self.heads}")


#: Named sizes. ``gpt-mini`` is the ``text-gpt`` protocol's model (0.8M weights in its blocks).
GPT_CONFIGS: dict[str, GPTConfig] = {
    "gpt-mini": GPTConfig(layers=4, width=128, heads=4, context=128),
    "gpt-micro": GPTConfig(layers=2, width=32, heads=2, context=32),
}


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: one ``qkv`` projection, SDPA with ``is_causal``, ``proj``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.width // cfg.heads
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))

    def attention_macs(self, inputs: tuple, output: torch.Tensor) -> float:
        """MACs of ``QKᵀ`` and ``AV`` in a call on ``inputs[0]`` of shape ``(B, T, C)``: ``2·B·T²·C``
        (the full score matrix; see ``docs/metrics.md``)."""
        b, t, c = inputs[0].shape
        return 2.0 * b * t * t * c


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.width)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.width)
        self.fc = nn.Linear(cfg.width, cfg.mlp_ratio * cfg.width)
        self.out = nn.Linear(cfg.mlp_ratio * cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """A decoder-only language model: tokens ``(B, T)`` (``T ≤ context``) -> logits ``(B, T, vocab)``.

    The output head shares the token embedding's weight (``head.weight is tok.weight``). Weights
    start as in GPT-2: normal(0, 0.02), output projections of the residual branches scaled by
    ``1/√(2·layers)``, zero biases.
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab, cfg.width)
        self.pos = nn.Embedding(cfg.context, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.vocab, bias=False)
        self.head.weight = self.tok.weight
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                std = 0.02 / (2 * cfg.layers) ** 0.5 if name.endswith(("attn.proj.weight", "out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    @property
    def context(self) -> int:
        """The longest input this model takes (its number of positions)."""
        return self.cfg.context

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise InputError(f"GPT takes token indices of shape (batch, time), got {tuple(idx.shape)} {idx.dtype}")
        t = idx.shape[1]
        if t > self.cfg.context:
            raise InputError(f"input of {t} tokens is longer than the model's context ({self.cfg.context})")
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))
