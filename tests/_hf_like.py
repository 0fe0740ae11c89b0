"""Test stand-ins shaped like Hugging Face modules (no transformers import)."""

import torch
from torch import nn


class Conv1D(nn.Module):
    """Shaped like transformers.pytorch_utils.Conv1D (duck typed: name, nf, 2-D weight (in, out))."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return x @ self.weight + self.bias
