"""Greedy and sampled decoding for any sequence-to-sequence model.

The decoding interface: `model.start(source_ids, source_mask, max_len)` encodes once and returns a state;
`model.step(target_ids, state)` feeds new target tokens and returns their logits (B, T, V);
`state.reorder(index)` keeps rows `index`. The Transformer and the recurrent models both provide it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .sampling import pick_next


def max_target_length(source_mask: Tensor, a: float, b: int) -> int:
    """The longest output allowed for this batch: a * (longest source) + b."""
    return int(a * int(source_mask.sum(dim=1).max()) + b)


@torch.no_grad()
def greedy_search(model: nn.Module, source: Tensor, source_mask: Tensor, max_len: int, temperature: float = 0.0,
                  top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
                  min_len: int = 0) -> list[list[int]]:
    """Pick one token per step (argmax, or a sample when temperature > 0) until every row has ended.

    Rows that have produced the end token leave the batch, so the remaining steps cost less. The end token
    cannot come before `min_len` tokens. Returns each row's ids, without the start and end tokens.
    """
    config = model.config
    B = source.shape[0]
    state = model.start(source, source_mask, max_len)
    outputs: list[list[int]] = [[] for _ in range(B)]
    rows = torch.arange(B)  # which original row each batch row is
    tokens = torch.full((B, 1), config.start_id, dtype=torch.long, device=source.device)
    for t in range(max_len):
        logits = model.step(tokens, state)[:, -1]  # (b, V)
        if t < min_len:
            logits[:, config.eos_id] = float("-inf")
        next_tokens = pick_next(logits, temperature, top_k, top_p, generator)  # (b,)
        ended = next_tokens == config.eos_id
        for row, token, end in zip(rows.tolist(), next_tokens.tolist(), ended.tolist()):
            if not end:
                outputs[row].append(token)
        if ended.any():
            keep = drop_finished(ended, state)
            if keep is None:
                break
            rows, next_tokens = rows[keep.cpu()], next_tokens[keep]
        tokens = next_tokens[:, None]
    return outputs


def drop_finished(ended: Tensor, state) -> Tensor | None:
    """Shrink the batch to its unfinished rows: the decoding state is reordered in place; returns the rows kept
    (b',), or None when every row has finished."""
    keep = (~ended).nonzero().squeeze(1)
    if keep.numel() == 0:
        return None
    state.reorder(keep)
    return keep
