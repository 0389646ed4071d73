"""Scaled dot-product attention, written out and fused, and the multi-head attention around it.

Notation: B batch, Tq queries, Tk keys, C = d_model, H query heads, Hkv key/value heads, D head width.
Masks are boolean, True at (i, j) means query i may attend to key j (see masks.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import runtime
from ..config import ModelConfig
from .kv_cache import KVCache
from .linear import Linear
from .masks import causal_mask, to_additive
from .quantized import project
from .rope import apply_rotary


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, is_causal: bool = False, dropout_p: float = 0.0,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """softmax(q k^T / sqrt(D)) v, written out so the weights can be inspected (Vaswani et al., 2017, eq. 1).

    q (B, H, Tq, D); k, v (B, Hkv, Tk, D) with Hkv dividing H (grouped-query: each key/value head serves
    H / Hkv query heads); mask broadcastable to (B, H, Tq, Tk). Returns out (B, H, Tq, D) and weights
    (B, H, Tq, Tk). Dividing by sqrt(D) keeps the scores' variance near 1, so softmax does not saturate;
    `scale` replaces 1 / sqrt(D) (1.0 shows what the division is for).
    """
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)  # (B, H, Tk, D)
    # the scale goes on q (Tq x D numbers) rather than on the scores (Tq x Tk): one pass fewer over the
    # largest tensor here
    scores = (q * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)) @ k.transpose(-2, -1)  # (B, H, Tq, Tk)
    # The softmax runs in float32 at least. Autocast leaves it in bfloat16 on CPU, and while attention is still
    # flat (a cross-attention that has not learned yet: keys and values nearly alike) the rounded weights leave
    # an error 20-50x the queries' true gradient; from float32 weights it stays below the gradient.
    exact = torch.promote_types(scores.dtype, torch.float32)
    if is_causal:
        mask = causal_mask(q.shape[2], k.shape[2], q.device)
    if mask is not None:
        # Added as 0 / -inf in float32 rather than filled in: the one addition also turns bfloat16 scores into
        # float32, and passes the gradient through untouched (masked_fill's backward is one more pass). A
        # shakespeare-char training step in bfloat16 took 1-5% less time for it (two runs alternating the two
        # kernels step by step in one process, AMD EPYC with AVX-512 bf16); float32 level.
        scores = scores + to_additive(mask, exact)
    weights = scores.softmax(dim=-1, dtype=exact).to(v.dtype)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v, weights


def fused_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, is_causal: bool = False, dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """The same attention through PyTorch's fused kernels (flash / memory-efficient): faster, no weights.

    A grouped-query decoding step (one query per head, several query heads per key/value head) is folded:
    each group's queries become the rows of one head, so every key and value is read once per group, not once
    per query head. A long cache is read at every step, so this is most of a step's attention time: measured
    with SmolLM2 (9 query heads on 3 key/value heads) compiled, 4-bit, on a 2-core Xeon, decoding after 4,000
    tokens went from 13.7-15.5 to 20.7-22.1 tokens/s (no change at 100 tokens)."""
    B, H, Tq, D = q.shape
    Hkv = k.shape[1]
    if Tq == 1 and H != Hkv and (mask is None or mask.shape[1] == 1):  # one query: causality restricts nothing
        out = F.scaled_dot_product_attention(q.reshape(B, Hkv, H // Hkv, D), k, v, attn_mask=mask,
                                             dropout_p=dropout_p, scale=scale)  # (B, Hkv, H / Hkv, D)
        return out.reshape(B, H, 1, D)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p, scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )


# scores in one probe of the attention kernels: a gpt2-small layer's (8 x 12 x 512 x 512) are 25M, so it is probed
# on 64 of its 96 heads (0.5 s on a 2-core AMD EPYC)
PROBE_SCORES = 1 << 24


def _written_out_is_faster(q: Tensor, k: Tensor, mask: Tensor | None = None, is_causal: bool = False) -> bool:
    """PyTorch's fused CPU kernel (flash attention) pays off only for long sequences. Measured forward and
    backward on a 2-core Xeon: the written-out kernel is faster up to 64 keys in float32 (2x at 20 keys); on a
    2-core AMD EPYC too (level at 64 and 128 keys, fused 1.2x faster at 256). Training in bfloat16 (or float16)
    is timed instead (runtime.fused_attention_trains_faster): there machines disagree, the fused backward losing
    at every length on one and winning from 256 keys on another.

    A decoding step (one query, no gradient) is another case. Measured on a 2-core AMD EPYC, 2 threads,
    keys read from a KV cache: in float32 the fused kernel is faster or level up to 512 keys (2.1x at batch 1
    and 128 keys) and at most 20% slower beyond (batch 8 and 2,048 keys). In bfloat16, with as many key/value
    heads as query heads, it loses once batch x keys reaches about 256 (written out 2.0x faster at batch 8
    and 128 keys, 1.6x at batch 1 and 2,048 keys; 0.7x at batch 1 and 128). With grouped-query heads the
    fused kernel (folded, see fused_attention) wins by 1.4-6x everywhere.

    In a decoding step traced whole (inference/step_graph.py), where a mask hides the cache positions not written
    yet, PyTorch's fused kernel with that mask took 408 us a layer against 270 for the written-out one fused by
    inductor (batch 8, 6 heads, 256 keys, float32; one thread, beside a training run): written out there, except
    with grouped-query heads.

    On GPUs the fused kernels always win. Inside torch.compile the fused kernel is kept at every length: a choice
    by length would recompile the block when a growing KV cache crosses the limit, mid-generation."""
    if q.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    if runtime.tracing():  # a decoding step traced whole (inference/step_graph.py): keys past those written, masked
        return q.shape[1] == k.shape[1]
    if q.shape[2] == 1 and not torch.is_grad_enabled():  # a decoding step
        return q.dtype == torch.bfloat16 and q.shape[1] == k.shape[1] and q.shape[0] * k.shape[2] >= 256
    if q.dtype.itemsize == 2 and torch.is_grad_enabled():  # training in bfloat16 or float16: timed
        kind = "causal" if is_causal else None if mask is None else "padding"
        return not runtime.fused_attention_trains_faster(q.dtype, *_size_class(q, k), q.shape[3], kind)
    return k.shape[2] <= 64


def _size_class(q: Tensor, k: Tensor) -> tuple[int, int, int]:
    """(batch x heads, queries, keys) rounded up to powers of two, so that a probe answers for a class of
    shapes rather than for each batch, with batch x heads capped at PROBE_SCORES scores (a probe's cost)."""
    t_query, t_key = (1 << (n - 1).bit_length() for n in (q.shape[2], k.shape[2]))
    slices = 1 << (q.shape[0] * q.shape[1] - 1).bit_length()
    return min(slices, max(1, PROBE_SCORES // (t_query * t_key))), t_query, t_key


class MultiHeadAttention(nn.Module):
    """Projections, rotary positions and the KV cache around one attention kernel.

    Self-attention (optionally causal) when called with x alone; cross-attention when given `memory_kv`,
    the encoder output already projected by `project_memory` (computed once per source, not per step).
    """

    fused = True  # False: always run the written-out kernel (teaching, debugging); see _written_out_is_faster

    def __init__(self, config: ModelConfig):
        super().__init__()
        C, H, Hkv, D = config.d_model, config.n_heads, config.kv_heads, config.d_head
        self.n_heads, self.n_kv_heads, self.head_dim = H, Hkv, D
        self.q_proj = Linear(C, H * D, bias=config.bias)
        self.k_proj = Linear(C, Hkv * D, bias=config.bias)
        self.v_proj = Linear(C, Hkv * D, bias=config.bias)
        self.o_proj = Linear(H * D, C, bias=config.bias)
        self.dropout_p = config.attention_dropout
        self.scale = None if config.scale_attention else 1.0  # None: the kernels' 1 / sqrt(D)
        self.record_weights = False  # set by viz.record_attention: keep the last weights in self.weights
        self.weights: Tensor | None = None

    def _heads(self, x: Tensor, n_heads: int) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n_heads, self.head_dim).transpose(1, 2)  # (B, T, C) -> (B, heads, T, D)

    def project_memory(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder output (B, S, C) -> cross-attention keys and values, each (B, Hkv, S, D)."""
        return self._heads(self.k_proj(memory), self.n_kv_heads), self._heads(self.v_proj(memory), self.n_kv_heads)

    def forward(self, x: Tensor, *, mask: Tensor | None = None, is_causal: bool = False,
                rope: tuple[Tensor, Tensor] | None = None, cache: KVCache | None = None, position: int = 0,
                memory_kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x (B, T, C) -> (B, T, C). With a cache, the T new positions start at `position`."""
        B, T, _ = x.shape
        if memory_kv is not None:
            q, (k, v) = self._heads(self.q_proj(x), self.n_heads), memory_kv  # (B, H, T, D), (B, Hkv, S, D)
        else:
            q, k, v = project(x, self.q_proj, self.k_proj, self.v_proj)  # one matmul where they are joined
            q, k, v = self._heads(q, self.n_heads), self._heads(k, self.n_kv_heads), self._heads(v, self.n_kv_heads)
            if rope is not None:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            if cache is not None:
                k, v = cache.write(k, v, position)  # (B, Hkv, position + T, D)
        dropout_p = self.dropout_p if self.training else 0.0
        if self.record_weights or not self.fused or _written_out_is_faster(q, k, mask, is_causal):
            out, weights = scaled_dot_product_attention(q, k, v, mask, is_causal, dropout_p, self.scale)
            self.weights = weights.detach() if self.record_weights else None
        else:
            out = fused_attention(q, k, v, mask, is_causal, dropout_p, self.scale)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))  # (B, H, T, D) -> (B, T, H * D) -> (B, T, C)
