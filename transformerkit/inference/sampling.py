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
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
