"""Input embeddings: token vectors plus where each token stands."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from ..config import ModelConfig
from .dropout import Dropout
from .norm import make_norm


class TokenEmbedding(nn.Embedding):
    """A learned vector per token id, optionally multiplied by sqrt(d_model) (Vaswani et al., 2017, 3.4)."""

    def __init__(self, vocab_size: int, d_model: int, scale: bool = False):
        super().__init__(vocab_size, d_model)
        self.scale = math.sqrt(d_model) if scale else 1.0

    def forward(self, ids: Tensor) -> Tensor:
        x = super().forward(ids)  # (B, T) -> (B, T, C)
        return x * self.scale if self.scale != 1.0 else x


def sinusoids(max_len: int, d_model: int) -> Tensor:
    """(max_len, C) table: sin(pos / 10000^(2i/C)) in the first half of the channels, cos in the second.

    The paper interleaves sin and cos (even and odd channels); its code (tensor2tensor), fairseq and Marian
    concatenate them. That is a fixed permutation of channels, so the model learns the same thing, and this
    layout is the one Hugging Face's Marian expects, so exported models keep their positions.
    """
    angles = np.arange(max_len)[:, None] / np.power(10000, 2 * np.arange(d_model // 2) / d_model)  # (T, C/2)
    return torch.from_numpy(np.concatenate([np.sin(angles), np.cos(angles)], axis=1)).float()


class SinusoidalPositions(nn.Module):
    """Fixed positions: every frequency is a clock hand, so relative offsets are linear maps (2017 paper)."""

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        self.register_buffer("table", sinusoids(max_len, d_model), persistent=False)

    def reset_buffers(self) -> None:
        self.table = sinusoids(*self.table.shape).to(self.table.device)

    def forward(self, positions: Tensor) -> Tensor:
        return self.table[positions]  # (B, T) -> (B, T, C)


class LearnedPositions(nn.Embedding):
    """A learned vector per position (GPT-2, BERT, BART): simple, but no position beyond max_len exists."""


class Embeddings(nn.Module):
    """Token embedding + position (+ token type), then a norm where the family has one, then dropout."""

    def __init__(self, config: ModelConfig, tokens: TokenEmbedding):
        super().__init__()
        C = config.d_model
        self.tokens = tokens
        self.positions: nn.Module | None = None  # rope acts inside attention; none leaves the model order-blind
        if config.positions == "sinusoidal":
            self.positions = SinusoidalPositions(config.max_len, C)
        elif config.positions == "learned":
            self.positions = LearnedPositions(config.max_len, C)
        self.token_types = nn.Embedding(config.type_vocab_size, C) if config.type_vocab_size else None
        self.norm = make_norm(config) if config.embedding_norm else None
        self.dropout = Dropout(config.dropout)

    def forward(self, ids: Tensor, positions: Tensor, token_types: Tensor | None = None) -> Tensor:
        """ids (B, T), positions (B or 1, T), token_types (B, T) or None (type 0) -> (B, T, C)."""
        x = self.tokens(ids)
        if self.positions is not None:
            x = x + self.positions(positions)
        if self.token_types is not None:
            x = x + (self.token_types(token_types) if token_types is not None else self.token_types.weight[0])
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)
