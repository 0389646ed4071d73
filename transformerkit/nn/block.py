"""The Transformer block, shared by all three families, and the stack of blocks every model is built on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import ConfigError
from ..runtime import require_compile
from .attention import MultiHeadAttention
from .dropout import Dropout
from .embedding import Embeddings, TokenEmbedding
from .feedforward import FeedForward
from .kv_cache import DecodeState, KVCache
from .linear import Linear
from .masks import attention_mask
from .norm import make_norm
from .rope import RotaryEmbedding


@dataclass
class Context:
    """What every block of one forward pass shares, built once by the stack."""

    mask: Tensor | None = None  # self-attention mask, broadcastable to (B, H, T, Tk); True = may attend
    is_causal: bool = False  # let the attention kernel apply causality itself (no mask tensor)
    rope: tuple[Tensor, Tensor] | None = None  # rotary cos and sin for the new positions
    position: int = 0  # with a KV cache: where the new positions start
    memory: Tensor | None = None  # (B, S, C) the encoder output, on a full pass
    memory_mask: Tensor | None = None  # (B, 1, 1, S) True at real source tokens


class TransformerBlock(nn.Module):
    """Self-attention, optional cross-attention, feed-forward: each inside a residual connection with a norm.

    Post-norm (2017 paper, BERT) normalises after the residual add: norm(x + f(x)). Pre-norm (GPT-2, LLaMA)
    normalises the sub-layer's input and leaves the residual path untouched: x + f(norm(x)), which keeps
    gradients well-scaled in deep stacks and trains without a long warmup.
    """

    def __init__(self, config: ModelConfig, cross_attention: bool = False):
        super().__init__()
        self.pre_norm, self.residual = config.norm_position == "pre", config.residual
        self.self_attn = MultiHeadAttention(config)
        self.self_attn_norm = make_norm(config)
        self.cross_attn = MultiHeadAttention(config) if cross_attention else None
        self.cross_attn_norm = make_norm(config) if cross_attention else None
        self.ffn = FeedForward(config)
        self.ffn_norm = make_norm(config)
        self.dropout = Dropout(config.dropout)

    def _residual(self, x: Tensor, norm: nn.Module, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        """The residual connection y = x + f(x) (y = f(x) with config.residual off), with dropout on f's output
        and the norm before or after."""
        skip = x if self.residual else 0
        if self.pre_norm:
            return skip + self.dropout(sublayer(norm(x)))
        return norm(skip + self.dropout(sublayer(x)))

    def forward(self, x: Tensor, context: Context | None = None, cache: KVCache | None = None,
                memory_kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x (B, T, C) -> (B, T, C). Cross-attention reads the context's memory (B, S, C), projected here, or
        `memory_kv`, that memory already projected by cross_attn.project_memory (once per source when decoding)."""
        c = context or Context()
        x = self._residual(x, self.self_attn_norm, lambda h: self.self_attn(
            h, mask=c.mask, is_causal=c.is_causal, rope=c.rope, cache=cache, position=c.position))
        if self.cross_attn is not None:
            if memory_kv is None:
                memory_kv = self.cross_attn.project_memory(c.memory)
            x = self._residual(x, self.cross_attn_norm,
                               lambda h: self.cross_attn(h, mask=c.memory_mask, memory_kv=memory_kv))
        return self._residual(x, self.ffn_norm, self.ffn)


class BlockRun(nn.Module):
    """Consecutive blocks called one after another: the region compile_blocks compiles as one."""

    def __init__(self, blocks: nn.ModuleList):
        super().__init__()
        self.blocks = blocks

    def forward(self, x: Tensor, context: Context, caches: list[KVCache | None],
                memory_kv: list[tuple[Tensor, Tensor] | None]) -> Tensor:
        for block, cache, kv in zip(self.blocks, caches, memory_kv):
            x = block(x, context, cache, kv)
        return x


class TransformerStack(nn.Module):
    """Embeddings, N blocks and (with pre-norm) a final norm: the trunk every family is built on.

    An encoder is a stack without causality; a decoder is a causal stack, with cross-attention when it
    reads an encoder. Called with a DecodeState, the stack appends the new positions to the KV caches.
    """

    def __init__(self, config: ModelConfig, n_layers: int, causal: bool, cross_attention: bool, tokens: TokenEmbedding):
        super().__init__()
        self.config, self.causal = config, causal and config.causal
        self.embed = Embeddings(config, tokens)
        self.rope = RotaryEmbedding(config.d_head, config.rope_theta) if config.positions == "rope" else None
        self.layers = nn.ModuleList(TransformerBlock(config, cross_attention) for _ in range(n_layers))
        self.norm = make_norm(config) if config.norm_position == "pre" else None
        # the blocks as they are called: one run of all, or compile_blocks' compiled regions (a plain list, not
        # submodules: they hold the same blocks, which the state dict names once, under `layers`)
        self.runs = [BlockRun(self.layers)]

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
        end = T if state is None else state.length + T
        if end > self.config.max_len and self.config.positions in ("sinusoidal", "learned"):
            raise ConfigError(f"max_len: a sequence of {end} tokens is longer than this model's "
                              f"max_len ({self.config.max_len})")
        if state is None:
            position, positions, key_mask = 0, torch.arange(T, device=ids.device)[None], mask  # (1, T)
        else:
            position, positions, key_mask = state.advance(T, mask, ids.device)
            memory_mask = state.memory_mask
        self_mask, is_causal = attention_mask(key_mask, T, end, self.causal, ids.device)
        x = self.embed(ids, positions, token_types)
        context = Context(self_mask, is_causal, self.rope(positions, x.dtype) if self.rope is not None else None,
                          position, memory, None if memory_mask is None else memory_mask[:, None, None, :])
        n = len(self.layers)
        caches = state.caches if state else [None] * n
        memory_kv = state.memory_kv if state and state.memory_kv else [None] * n
        start = 0
        for run in self.runs:
            end = start + len(run.blocks)
            x = run(x, context, caches[start:end], memory_kv[start:end])
            start = end
        return self.norm(x) if self.norm is not None else x

    def start(self, batch_size: int, max_len: int, dtype: torch.dtype, device: torch.device,
              memory: Tensor | None = None, memory_mask: Tensor | None = None) -> DecodeState:
        """Empty KV caches for max_len positions; with an encoder output, its cross-attention keys and values."""
        c = self.config
        caches = [KVCache(batch_size, c.kv_heads, max_len, c.d_head, dtype, device) for _ in self.layers]
        memory_kv = [layer.cross_attn.project_memory(memory) for layer in self.layers] if memory is not None else None
        return DecodeState(caches, memory_kv, memory_mask)


BLOCKS_PER_REGION = 3  # see compile_blocks


def compile_blocks(model: nn.Module, per_region: int = BLOCKS_PER_REGION) -> int:
    """torch.compile the Transformer blocks of `model` in regions of `per_region` consecutive blocks (regional
    compilation); returns how many blocks.

    A one-token decoding step on CPU spends much of its time between the matmuls: norms, rotary positions,
    residual adds, casts to and from the quantized kernels' dtype, each a separate small operation. A compiled
    region fuses them. Each call of a compiled region also pays a fixed cost (Dynamo's guards, the wrappers
    around the compiled graph: about 0.25 ms at SmolLM2's size), so a region of a few blocks beats one block.
    Every region of the same length runs the same code, so one compilation serves them all; shapes are
    dynamic, since the KV cache grows by one position a step. Measured on a 2-core Xeon without native bf16,
    SmolLM2 with its 4-bit weights, median of 6 interleaved rounds of 64 tokens, same tokens out: 32.3
    tokens/s with each block compiled alone, 38.8 with regions of 3 (about 25 s to compile), 39.4 with regions
    of 6 (49 s); the whole loop of 30 blocks as one region took 10 minutes to compile and then decoded at 19.6
    (against 30.2 for single blocks, another hour). A small float32 character model, whose steps are mostly
    matmuls, gains under 1.1x.
    """
    require_compile(next(model.parameters()).device.type)
    for module in model.modules():  # compiled regions multiply through inductor, never the packed copies
        if isinstance(module, Linear):
            module.packed = None
    stacks = [m for m in model.modules() if isinstance(m, TransformerStack)]
    for stack in stacks:
        n = len(stack.layers)
        n_regions = -(-n // per_region)
        bounds = [round(i * n / n_regions) for i in range(n_regions + 1)]  # lengths differ by 1 at most
        stack.runs = [BlockRun(stack.layers[a:b]) for a, b in zip(bounds, bounds[1:])]  # slices: the same blocks
        for run in stack.runs:
            run.compile(dynamic=True)
    return sum(len(stack.layers) for stack in stacks)
