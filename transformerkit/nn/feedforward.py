"""The position-wise feed-forward network: the same two-layer network applied to every position alone."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from .linear import Linear
from .quantized import project

ACTIVATIONS = {
    "relu": F.relu,  # Vaswani et al., 2017
    "gelu": F.gelu,  # BERT, BART
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's approximation
}


class FeedForward(nn.Module):
    """down(act(up(x))) with a d_ff-wide hidden layer; SwiGLU (Shazeer, 2020; LLaMA): down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        C, F_ = config.d_model, config.d_ff
        self.gate_proj = Linear(C, F_, bias=config.bias) if config.activation == "swiglu" else None
        self.up_proj = Linear(C, F_, bias=config.bias)
        self.down_proj = Linear(F_, C, bias=config.bias)
        self.act = F.silu if self.gate_proj is not None else ACTIVATIONS[config.activation]

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, T, d_ff) -> (B, T, C)."""
        if self.gate_proj is not None:
            gate, up = project(x, self.gate_proj, self.up_proj)  # one matmul where they are joined
            return self.down_proj(self.act(gate) * up)
        return self.down_proj(self.act(self.up_proj(x)))
