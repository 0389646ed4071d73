"""Greedy and sampled decoding for any model with the decoding interface (models/interface.py).

One loop serves translation (start token in, until the end token) and text generation (a prompt in, with
penalties, stop tokens and streaming): each step picks one token per row, and rows that have ended leave
the batch, so the remaining steps cost less.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .sampling import pick_next


def max_target_length(source_mask: Tensor, a: float, b: int, limit: int) -> Tensor:
    """The longest output allowed for each source (B,): a * its length + b, at most `limit`. Per row, not per
    batch, so a sentence translates the same whatever it is batched with."""
    return (a * source_mask.sum(dim=1).cpu() + b).long().clamp(1, limit)


@torch.no_grad()
def greedy_search(model: nn.Module, state, tokens: Tensor, max_new: int | Tensor, *, mask: Tensor | None = None,
                  stop_tokens: list[int] | None = None, min_new: int = 0, temperature: float = 0.0, top_k: int = 0,
                  top_p: float = 1.0, repetition_penalty: float = 1.0, generator: torch.Generator | None = None,
                  on_token: Callable[[int, int], bool] | None = None) -> list[list[int]]:
    """Feed `tokens` (B, T) (a prompt, mask (B, T) marking its left padding; or the start token), then pick one
    token per step (argmax, or a sample when temperature > 0) for up to `max_new` steps (one number for all
    rows, or one per row (B,)).

    A row ends at one of `stop_tokens` (default: the model's end token), which is not returned and cannot
    come before `min_new` tokens; `on_token(row, token)` may return True to end a row too (a stop string).
    repetition_penalty above 1 makes every token a row has read or written less likely (Keskar et al., 2019).
    Returns each row's new ids.
    """
    B, device = tokens.shape[0], tokens.device
    limits = torch.as_tensor(max_new).expand(B).cpu()  # (B,)
    stops = torch.tensor(sorted(set(stop_tokens or [model.config.eos_id])), device=device)
    outputs: list[list[int]] = [[] for _ in range(B)]
    rows = torch.arange(B)  # the original row of each live batch row
    # compiled steps (step_graph.py) are made for one batch size: rows that end stay in the batch, unread
    keep_rows = getattr(model, "step_graphs", None) is not None
    finished = torch.zeros(B, dtype=torch.bool)  # rows that ended and stayed
    seen = tokens if repetition_penalty != 1.0 else None  # (b, t): tokens each row has seen
    logits = model.step(tokens, state, mask)  # (b, V)
    for t in range(int(limits.max())):
        logits = logits.float()
        if t < min_new:
            logits[:, stops] = float("-inf")
        if seen is not None:
            logits = penalize(logits, seen, repetition_penalty)
        next_tokens = pick_next(logits, temperature, top_k, top_p, generator)  # (b,)
        ended = torch.isin(next_tokens, stops).cpu()
        if keep_rows:
            ended |= finished
        for i, (row, token) in enumerate(zip(rows.tolist(), next_tokens.tolist())):
            if not ended[i]:
                outputs[row].append(token)
                if on_token is not None and on_token(row, token):
                    ended[i] = True
        ended |= limits[rows] == t + 1  # out of room
        if keep_rows:
            if ended.all():
                break
            finished = ended
        elif ended.any():
            keep = (~ended).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            rows, keep = rows[keep], keep.to(device)
            state.reorder(keep)
            next_tokens = next_tokens[keep]
            seen = seen[keep] if seen is not None else None
        if seen is not None:
            seen = torch.cat([seen, next_tokens[:, None]], dim=1)
        logits = model.step(next_tokens[:, None], state)
    return outputs


def penalize(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """Make every token a row has seen less likely: positive logits divided by the penalty, negative multiplied."""
    picked = logits.gather(1, seen)
    return logits.scatter(1, seen, torch.where(picked > 0, picked / penalty, picked * penalty))
