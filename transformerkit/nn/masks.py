"""Attention masks: one convention everywhere, boolean, True at (i, j) means query i may attend to key j.

Masks are built here and nowhere else. They broadcast against attention scores of shape (B, H, Tq, Tk).
Other conventions are converted at the boundary: `nn.MultiheadAttention` wants True = ignore,
Hugging Face models want additive masks.
"""

from __future__ import annotations

import torch
from torch import Tensor


def causal_mask(t_query: int, t_key: int, device: torch.device | None = None) -> Tensor:
    """(Tq, Tk) bool lower triangle, aligned to the bottom right: the last query sees every key.

    With a KV cache the Tq new queries sit at the end of Tk keys, so query i is at position Tk - Tq + i.
    """
    return torch.ones(t_query, t_key, dtype=torch.bool, device=device).tril(diagonal=t_key - t_query)


def attention_mask(
    key_mask: Tensor | None, t_query: int, t_key: int, causal: bool, device: torch.device | None = None
) -> tuple[Tensor | None, bool]:
    """Combine key padding (B, Tk) and causality into (mask (B, 1, Tq, Tk) or None, is_causal).

    is_causal=True asks the attention kernel for its own causal path, with no mask tensor at all; it is
    only right when queries and keys are the same positions (Tq == Tk). A query row with no key left to
    attend to (a left-padding position under a causal mask) would softmax over nothing and give NaN; such
    rows may attend everywhere instead: their outputs are padding and are never read.
    """
    if not causal:
        return (None if key_mask is None else key_mask[:, None, None, :]), False
    if key_mask is None:
        if t_query == 1:
            return None, False  # one new query at the end sees every key
        if t_query == t_key:
            return None, True
        return causal_mask(t_query, t_key, device)[None, None], False
    mask = key_mask[:, None, None, :]  # (B, 1, 1, Tk): one new query at the end needs nothing more
    if t_query > 1:
        mask = mask & causal_mask(t_query, key_mask.shape[-1], key_mask.device)  # (B, 1, Tq, Tk)
    return mask | ~mask.any(dim=-1, keepdim=True), False


def to_additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask -> 0 where True, -inf where False, in `dtype`: added to attention scores, it masks them."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def to_key_padding(mask: Tensor) -> Tensor:
    """(B, Tk) True = real token -> `nn.MultiheadAttention`'s key_padding_mask, True = ignore."""
    return ~mask


def real_tokens(mask: Tensor | None) -> Tensor | None:
    """A user's (B, T) mask (bool, or 1/0 as Hugging Face passes it) -> bool, or None when nothing is padding.

    None lets causal attention use the kernel's own causal path instead of a mask tensor.
    """
    if mask is None or bool(mask.all()):
        return None
    return mask.bool()
