"""Reference implementations the benchmarks time against ours: what a user would write with plain PyTorch.

They are references, not the product: the product's own code paths (the Trainer's step, `generate_ids`,
`translate`) are what the benchmarks time on our side.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PlainAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.h = n_heads
        self.q, self.k, self.v, self.o = (nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, x, memory, mask, causal=False):
        B, T, C = x.shape
        S = memory.shape[1]
        q = self.q(x).view(B, T, self.h, -1).transpose(1, 2)
        k = self.k(memory).view(B, S, self.h, -1).transpose(1, 2)
        v = self.v(memory).view(B, S, self.h, -1).transpose(1, 2)
        if causal:
            mask = mask & torch.ones(T, S, dtype=torch.bool, device=x.device).tril()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o(out.transpose(1, 2).reshape(B, T, C))


class PlainLayer(nn.Module):
    """A Transformer layer (Vaswani et al., 2017) from nn.Linear, nn.LayerNorm and F.sdpa; post- or pre-norm."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, cross: bool, pre_norm: bool):
        super().__init__()
        self.self_attn = PlainAttention(d_model, n_heads)
        self.cross_attn = PlainAttention(d_model, n_heads) if cross else None
        self.up, self.down = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(3 if cross else 2))
        self.dropout, self.pre_norm = nn.Dropout(dropout), pre_norm

    def _residual(self, x, norm, sublayer):
        if self.pre_norm:
            return x + self.dropout(sublayer(norm(x)))
        return norm(x + self.dropout(sublayer(x)))

    def forward(self, x, self_mask, memory=None, memory_mask=None):
        x = self._residual(x, self.norms[0], lambda h: self.self_attn(h, h, self_mask, causal=memory is not None))
        if self.cross_attn is not None:
            x = self._residual(x, self.norms[1], lambda h: self.cross_attn(h, memory, memory_mask))
        return self._residual(x, self.norms[-1], lambda h: self.down(self.dropout(F.relu(self.up(h)))))


class PlainTransformer(nn.Module):
    """The 2017 encoder-decoder at a ModelConfig's sizes, written the way a tutorial would: shared, scaled
    embeddings, sinusoidal positions, post- or pre-norm layers, the tied output layer and F.cross_entropy over
    the full logits with label smoothing."""

    def __init__(self, config, label_smoothing: float = 0.1):
        super().__init__()
        c = config
        pre = c.norm_position == "pre"
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        position = torch.arange(c.max_len)[:, None] / torch.pow(10000, torch.arange(0, c.d_model, 2) / c.d_model)
        self.register_buffer("positions", torch.cat([position.sin(), position.cos()], dim=1), persistent=False)
        self.encoder = nn.ModuleList(PlainLayer(c.d_model, c.n_heads, c.d_ff, c.dropout, False, pre)
                                     for _ in range(c.n_layers))
        self.decoder = nn.ModuleList(PlainLayer(c.d_model, c.n_heads, c.d_ff, c.dropout, True, pre)
                                     for _ in range(c.decoder_layers))
        self.final_norms = nn.ModuleList(nn.LayerNorm(c.d_model) for _ in range(2)) if pre else None
        self.dropout = nn.Dropout(c.dropout)
        self.scale, self.pad_id, self.label_smoothing = math.sqrt(c.d_model), c.pad_id, label_smoothing

    def _embed(self, ids):
        return self.dropout(self.embed(ids) * self.scale + self.positions[: ids.shape[1]])

    def loss(self, batch):
        """Summed label-smoothed cross-entropy of a Seq2SeqBatch and its target token count, as our objective."""
        source_mask = batch.source_mask[:, None, None, :]  # (B, 1, 1, S)
        x = self._embed(batch.source)
        for layer in self.encoder:
            x = layer(x, source_mask)
        x = self.final_norms[0](x) if self.final_norms is not None else x
        y = self._embed(batch.target_in)
        target_mask = batch.target_mask[:, None, None, :]
        for layer in self.decoder:
            y = layer(y, target_mask, x, source_mask)
        y = self.final_norms[1](y) if self.final_norms is not None else y
        logits = y @ self.embed.weight.t()
        loss = F.cross_entropy(logits.flatten(0, 1), batch.target_out.flatten(), ignore_index=self.pad_id,
                               label_smoothing=self.label_smoothing, reduction="sum")
        return loss, batch.n_target_tokens


class TorchTransformer(nn.Module):
    """The same sizes through PyTorch's own nn.Transformer (post-norm), with the same embeddings and loss."""

    def __init__(self, c, label_smoothing: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.positions = nn.Embedding(c.max_len, c.d_model)
        self.net = nn.Transformer(c.d_model, c.n_heads, c.n_layers, c.decoder_layers, c.d_ff, c.dropout,
                                  batch_first=True, norm_first=c.norm_position == "pre")
        self.scale, self.pad_id, self.label_smoothing = math.sqrt(c.d_model), c.pad_id, label_smoothing

    def loss(self, b):
        def embed(ids):
            return self.embed(ids) * self.scale + self.positions(torch.arange(ids.shape[1], device=ids.device))

        causal = nn.Transformer.generate_square_subsequent_mask(b.target_in.shape[1])
        hidden = self.net(embed(b.source), embed(b.target_in), tgt_mask=causal, src_key_padding_mask=~b.source_mask,
                          tgt_key_padding_mask=~b.target_mask, memory_key_padding_mask=~b.source_mask)
        logits = hidden @ self.embed.weight.t()
        loss = F.cross_entropy(logits.float().flatten(0, 1), b.target_out.flatten(), ignore_index=self.pad_id,
                               label_smoothing=self.label_smoothing, reduction="sum")
        return loss, b.n_target_tokens


def time_steps(step, batches, warmup: int = 3) -> float:
    """Tokens per second of `step(batch)` over `batches` after `warmup` untimed steps."""
    import time

    for batch in batches[:warmup]:
        step(batch)
    start, tokens = time.perf_counter(), 0
    for batch in batches[warmup:]:
        step(batch)
        tokens += batch.n_tokens
    return tokens / (time.perf_counter() - start)


def plain_step(model: nn.Module, dtype: torch.dtype = torch.float32, clip_norm: float = 0.0):
    """A training step for a reference model: forward, backward, AdamW, in `dtype` (bfloat16 by autocast)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    model.train()

    def step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss, n = model.loss(batch)
        (loss / n).backward()
        if clip_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step
