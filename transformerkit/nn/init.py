"""Weight initialisation for models trained from scratch (loaded weights overwrite it)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig
from .attention import MultiHeadAttention
from .embedding import TokenEmbedding
from .feedforward import FeedForward


def init_weights(model: nn.Module, config: ModelConfig) -> None:
    """xavier: uniform Glorot weights, N(0, C^-1/2) token vectors (2017 paper, fairseq).
    normal: N(0, 0.02) everywhere, with the projections that write into the residual stream scaled by
    1/sqrt(2 * layers), so the stream's variance does not grow with depth (GPT-2)."""
    depth = config.n_layers + (config.decoder_layers if config.family == "encoder-decoder" else 0)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            if config.init == "xavier":
                nn.init.xavier_uniform_(module.weight)
            else:
                nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            std = config.d_model**-0.5 if config.init == "xavier" and isinstance(module, TokenEmbedding) else 0.02
            nn.init.normal_(module.weight, std=std)
    if config.init == "normal":
        for module in model.modules():
            if isinstance(module, MultiHeadAttention):
                nn.init.normal_(module.o_proj.weight, std=0.02 / math.sqrt(2 * depth))
            elif isinstance(module, FeedForward):
                nn.init.normal_(module.down_proj.weight, std=0.02 / math.sqrt(2 * depth))


def build_empty(cls: type[nn.Module], config: ModelConfig) -> nn.Module:
    """A model with uninitialised weights, for weights about to be loaded: built on the meta device (no memory,
    no random numbers), then given real storage; computed buffers (rotary frequencies, sinusoids) are
    recomputed. Skips seconds of initialisation on a 100M-parameter model."""
    with torch.device("meta"):
        model = cls(config)
    model.to_empty(device="cpu")
    if hasattr(model, "tie_weights"):  # new storage came as new parameters: tie them again
        model.tie_weights()
    for module in model.modules():
        if hasattr(module, "reset_buffers"):
            module.reset_buffers()
    return model
