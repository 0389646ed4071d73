"""The Transformer block, shared by all three families, and the stack of blocks every model is built on."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import ConfigError
from .attention import MultiHeadAttention
from .dropout import Dropout
from .embedding import Embeddings, TokenEmbedding
from .feedforward import FeedForward
from .kv_cache import DecodeState, KVCache
from .masks import attention_mask
from .norm import make_norm
from .rope import RotaryEmbedding


class TransformerBlock(nn.Module):
    """Self-attention, optional cross-attention, feed-forward: each inside a residual connection with a norm.

    Post-norm (2017 paper, BERT) normalises after the residual add: norm(x + f(x)). Pre-norm (GPT-2, LLaMA)
    normalises the sub-layer's input and leaves the residual path untouched: x + f(norm(x)), which keeps
    gradients well-scaled in deep stacks and trains without a long warmup.
    """

    def __init__(self, config: ModelConfig, cross_attention: bool = False):
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.self_attn = MultiHeadAttention(config)
        self.self_attn_norm = make_norm(config)
        self.cross_attn = MultiHeadAttention(config) if cross_attention else None
        self.cross_attn_norm = make_norm(config) if cross_attention else None
        self.ffn = FeedForward(config)
        self.ffn_norm = make_norm(config)
        self.dropout = Dropout(config.dropout)

    def _residual(self, x: Tensor, norm: nn.Module, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        """The residual connection y = x + f(x), with dropout on f's output and the norm before or after."""
        if self.pre_norm:
            return x + self.dropout(sublayer(norm(x)))
        return norm(x + self.dropout(sublayer(x)))

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        is_causal: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        memory_kv: tuple[Tensor, Tensor] | None = None,
        memory_mask: Tensor | None = None,
        cache: KVCache | None = None,
        position: int = 0,
        memory: Tensor | None = None,
    ) -> Tensor:
        """x (B, T, C) -> (B, T, C); cross-attention reads memory (B, S, C), the encoder output, or memory_kv,
        that output already projected by cross_attn.project_memory (once per source when decoding)."""
        x = self._residual(x, self.self_attn_norm,
                           lambda h: self.self_attn(h, mask, is_causal, rope, cache, position))
        if self.cross_attn is not None:
            if memory_kv is None:
                memory_kv = self.cross_attn.project_memory(memory)
            x = self._residual(x, self.cross_attn_norm,
                               lambda h: self.cross_attn(h, memory_mask, memory_kv=memory_kv))
        return self._residual(x, self.ffn_norm, self.ffn)


class TransformerStack(nn.Module):
    """Embeddings, N blocks and (with pre-norm) a final norm: the trunk every family is built on.

    An encoder is a stack without causality; a decoder is a causal stack, with cross-attention when it
    reads an encoder. Called with a DecodeState, the stack appends the new positions to the KV caches.
    """

    def __init__(self, config: ModelConfig, n_layers: int, causal: bool, cross_attention: bool, tokens: TokenEmbedding):
        super().__init__()
        self.config, self.causal = config, causal
        self.embed = Embeddings(config, tokens)
        self.rope = RotaryEmbedding(config.d_head, config.rope_theta) if config.positions == "rope" else None
        self.layers = nn.ModuleList(TransformerBlock(config, cross_attention) for _ in range(n_layers))
        self.norm = make_norm(config) if config.norm_position == "pre" else None

    def forward(
        self,
        ids: Tensor,
        mask: Tensor | None = None,
        token_types: Tensor | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        state: DecodeState | None = None,
    ) -> Tensor:
        """ids (B, T); mask (B, T) True at real tokens; memory (B, S, C) and memory_mask (B, S) for
        cross-attention -> hidden states (B, T, C)."""
        B, T = ids.shape
        position = 0 if state is None else state.length
        if position + T > self.config.max_len and self.config.positions in ("sinusoidal", "learned"):
            raise ConfigError(f"max_len: a sequence of {position + T} tokens is longer than this model's "
                              f"max_len ({self.config.max_len})")
        if state is None:
            positions, key_mask = torch.arange(T, device=ids.device)[None], mask  # (1, T)
            memory_kv = None  # each block projects the memory itself
        else:
            positions, key_mask = _advance(state, mask, T, ids.device)
            memory_kv, memory_mask = state.memory_kv, state.memory_mask
        self_mask, is_causal = attention_mask(key_mask, T, position + T, self.causal, ids.device)
        cross_mask = None if memory_mask is None else memory_mask[:, None, None, :]  # (B, 1, 1, S)
        x = self.embed(ids, positions, token_types)
        rope = self.rope(positions, x.dtype) if self.rope is not None else None
        for i, layer in enumerate(self.layers):
            x = layer(x, self_mask, is_causal, rope, memory_kv[i] if memory_kv else None, cross_mask,
                      state.caches[i] if state else None, position, memory)
        if state is not None:
            state.length += T
        return self.norm(x) if self.norm is not None else x

    def start(self, batch_size: int, max_len: int, dtype: torch.dtype, device: torch.device,
              memory: Tensor | None = None, memory_mask: Tensor | None = None) -> DecodeState:
        """Empty KV caches for max_len positions; with an encoder output, its cross-attention keys and values."""
        c = self.config
        caches = [KVCache(batch_size, c.kv_heads, max_len, c.d_head, dtype, device) for _ in self.layers]
        memory_kv = [layer.cross_attn.project_memory(memory) for layer in self.layers] if memory is not None else None
        return DecodeState(caches, memory_kv, memory_mask)


def _advance(state: DecodeState, mask: Tensor | None, T: int, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """Positions (B or 1, T) of T new tokens and the key mask (B, length + T) over all tokens so far.

    Without padding, positions simply continue. With padding, each token's position is the number of real
    tokens before it in its row, so a left-padded prompt is numbered as if it were alone.
    """
    start, end = state.length, state.length + T
    if end > state.max_len:
        raise ConfigError(f"max_len: decoding past the {state.max_len} positions this decoding state holds")
    if mask is None and state.key_mask is None:
        return torch.arange(start, end, device=device)[None], None
    if state.key_mask is None:
        state.key_mask = torch.zeros(state.batch_size, state.max_len, dtype=torch.bool, device=device)
        state.key_mask[:, :start] = True
        state.n_real = torch.full((state.batch_size,), start, dtype=torch.long, device=device)
    new = mask if mask is not None else torch.ones(state.batch_size, T, dtype=torch.bool, device=device)
    state.key_mask[:, start:end] = new
    positions = (state.n_real[:, None] + new.long().cumsum(dim=-1) - 1).clamp(min=0)  # (B, T)
    state.n_real = state.n_real + new.sum(dim=-1)
    return positions, state.key_mask[:, :end]
