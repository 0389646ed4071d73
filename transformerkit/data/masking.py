"""Masked-language-model corruption (Devlin et al., 2018): hide tokens and ask the encoder to restore them."""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE = -100  # a label that is not predicted


def mask_tokens(ids: Tensor, maskable: Tensor, mask_id: int, vocab_size: int, generator: torch.Generator,
                rate: float = 0.15, first_regular_id: int = 0) -> tuple[Tensor, Tensor]:
    """Choose `rate` of the maskable tokens; of those, 80% become [MASK], 10% a random token, 10% stay.

    ids (B, T); maskable (B, T) False at padding and special tokens, which are never chosen. Returns the
    corrupted ids and labels (B, T): the original id where a token was chosen, IGNORE elsewhere. Random
    replacements and kept tokens make the encoder represent every position well, not just [MASK]s.
    """
    chosen = (torch.rand(ids.shape, generator=generator) < rate) & maskable
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    action = torch.rand(ids.shape, generator=generator)
    corrupted = ids.masked_fill(chosen & (action < 0.8), mask_id)
    random_tokens = torch.randint(first_regular_id, vocab_size, ids.shape, generator=generator)
    replace = chosen & (action >= 0.8) & (action < 0.9)
    return torch.where(replace, random_tokens, corrupted), labels
