"""Choosing the next token from logits: argmax, or a sample shaped by temperature, top-k and top-p."""

from __future__ import annotations

import torch
from torch import Tensor


def pick_next(logits: Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
              generator: torch.Generator | None = None) -> Tensor:
    """logits (B, V) -> token ids (B,). temperature 0 is greedy (argmax).

    Temperature divides the logits (below 1 sharpens, above 1 flattens); top-k keeps the k likeliest
    tokens; top-p (nucleus, Holtzman et al., 2019) keeps the smallest set whose probability reaches p.
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= top_p  # keep the token that crosses p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return sample(logits, generator)


def sample(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One draw per row from softmax(logits) (B, V) -> (B,), by inverting the cumulative distribution.

    One uniform number per row instead of torch.multinomial's V: on CPU that is 5-10x faster at a 50k
    vocabulary, or at batch 100. The running sum is in float64 so that a token far below the total's
    float32 precision keeps its chance, and the draw stays strictly below the total so that it can never
    land past the last token of non-zero probability."""
    weights = (logits - logits.amax(dim=-1, keepdim=True)).exp().double()  # (B, V) unnormalised
    cumulative = weights.cumsum(dim=-1)  # (B, V)
    total = cumulative[:, -1:]  # (B, 1)
    draw = torch.rand(total.shape, generator=generator, dtype=total.dtype, device=total.device) * total
    draw = torch.minimum(draw, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cumulative, draw, right=True).squeeze(-1)  # first token whose sum passes the draw
