"""Batched beam search with the GNMT length penalty, for any model with the decoding interface
(models/interface.py)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def length_penalty(length: int, alpha: float) -> float:
    """((5 + length) / 6) ** alpha (Wu et al., 2016): without it, beam search prefers short outputs,
    since every token multiplies in a probability below one. The 2017 paper used alpha = 0.6."""
    return ((5 + length) / 6) ** alpha


@torch.no_grad()
def beam_search(model: nn.Module, state, first_tokens: Tensor, beam: int, max_len: int | Tensor, alpha: float = 0.6,
                min_len: int = 0) -> list[list[int]]:
    """Keep the `beam` best partial outputs of each row; return each row's best finished one.

    `state` comes from model.start for B rows (and holds any prompt already fed); decoding continues from
    `first_tokens` (B,), the start token or a prompt's last token. Every step extends each live hypothesis
    by every token, keeps the 2 x beam best candidates per row, retires those that end (scored by
    log-probability / length penalty) and continues the best `beam` that do not. A row is done when it has
    `beam` finished hypotheses, or when its hypotheses reach its `max_len` (one for all rows, or one per row
    (B,), so that a row's output does not depend on the others in its batch); its rows then leave the batch.
    No hypothesis ends before `min_len` tokens. Ids are returned without the first and end tokens.
    """
    config = model.config
    B, K, device = first_tokens.shape[0], beam, first_tokens.device
    limits = torch.as_tensor(max_len).expand(B).cpu()  # (B,) the longest output of each row
    state.reorder(torch.arange(B, device=device).repeat_interleave(K))  # (B * K) rows: K per sentence
    sentences = torch.arange(B)  # the original sentence of each live group of K rows
    live_limits = limits  # (n,) the limit of each live sentence; its least, as a number, saves a check a step
    shortest = int(live_limits.min())
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start equal: keep one so the first step does not pick K copies
    history = torch.full((B * K, 0), config.eos_id, dtype=torch.long, device=device)
    tokens = first_tokens.repeat_interleave(K)[:, None]  # (B * K, 1)
    first_row = torch.arange(B, device=device)[:, None] * K  # (n, 1) each live sentence's first row
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    # compiled steps (step_graph.py) are made for one batch size: sentences that are done stay, unread
    keep_rows = getattr(model, "step_graphs", None) is not None
    if keep_rows:  # and reorders leave the keys and values where they are: the steps read them where they lie
        state.follow_rows()
    for t in range(int(limits.max())):
        n = sentences.shape[0]
        logits = model.step(tokens, state).float()  # (n * K, V)
        normalizer = logits.logsumexp(dim=-1, keepdim=True)  # log_softmax = logits - this: the same order
        if t < min_len:
            logits[:, config.eos_id] = float("-inf")
        # A candidate in the best 2K of all K x V is in the best 2K of its own beam: only those are scored
        best_logits, best_tokens = logits.topk(min(2 * K, logits.shape[-1]), dim=-1)  # (n * K, k)
        log_probs = best_logits - normalizer
        k = log_probs.shape[-1]
        candidates = (scores.reshape(n * K, 1) + log_probs).reshape(n, K * k)
        top_scores, top_index = candidates.topk(2 * K, dim=1)  # (n, 2K)
        top_beam, top_token = top_index // k, best_tokens.reshape(n, K * k).gather(1, top_index)
        ends = top_token == config.eos_id
        retired = _retire(finished, sentences, history, top_scores, top_beam, ends, K, alpha, t + 1)
        # the first K candidates that do not end continue, best first (a stable sort puts the ending ones last)
        keep = ends.sort(dim=1, stable=True).indices[:, :K]  # (n, K)
        scores = top_scores.gather(1, keep)
        rows = (first_row + top_beam.gather(1, keep)).reshape(-1)  # (n * K,)
        next_tokens = top_token.gather(1, keep).reshape(-1, 1)
        history = torch.cat([history[rows], next_tokens], dim=1)
        # a sentence is done once it has K finished hypotheses or reaches its limit: only then is it looked for
        done = _done(finished, sentences, history, scores, live_limits, K, alpha, t + 1) \
            if retired or t + 1 >= shortest else None
        if done is not None and done.all():
            break
        state.reorder(rows, memory=False)  # a sentence's beams share its source: no need to move memory
        if done is not None and done.any() and not keep_rows:
            alive = (~done).nonzero().squeeze(1)
            alive_rows = (alive.to(device)[:, None] * K + torch.arange(K, device=device)).reshape(-1)
            state.reorder(alive_rows)
            sentences, scores, live_limits = sentences[alive], scores[alive.to(device)], live_limits[alive]
            history, next_tokens = history[alive_rows], next_tokens[alive_rows]
            shortest, first_row = int(live_limits.min()), first_row[:len(alive)]
        tokens = next_tokens
    return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in finished]


def _done(finished: list[list[tuple[float, list[int]]]], sentences: Tensor, history: Tensor, scores: Tensor,
          limits: Tensor, K: int, alpha: float, length: int) -> Tensor:
    """Retire the live hypotheses of sentences at their length limit (as greedy output would end there); return
    which sentences (n,) are done: at their limit, or with K finished hypotheses."""
    n, device = sentences.shape[0], scores.device
    full = limits == length  # (n,)
    if full.any():
        at = full.nonzero().squeeze(1)
        _retire(finished, sentences[at], history.view(n, K, -1)[at.to(device)].flatten(0, 1), scores[at.to(device)],
                torch.arange(K, device=device).expand(len(at), K),
                torch.ones(len(at), K, dtype=torch.bool, device=device), K, alpha, length, with_last=True)
    return torch.tensor([len(finished[s]) >= K for s in sentences.tolist()]) | full


def _retire(finished: list[list[tuple[float, list[int]]]], sentences: Tensor, history: Tensor, scores: Tensor,
            beams: Tensor, ends: Tensor, K: int, alpha: float, length: int, with_last: bool = False) -> bool:
    """Move ending candidates ranked within the top K of their sentence to its finished list; return whether
    any was moved.

    history rows are the hypotheses before this step's token (an ending candidate's end token is not kept),
    or, with_last, after it (live hypotheses retired at the length limit)."""
    ends = ends[:, :K]
    if not ends.any():
        return False
    penalty, moved = length_penalty(length, alpha), False
    for i, j in ends.nonzero().tolist():
        sentence = int(sentences[i])
        if len(finished[sentence]) < K:
            tokens = history[i * K + (j if with_last else int(beams[i, j]))].tolist()
            finished[sentence].append((float(scores[i, j]) / penalty, tokens))
            moved = True
    return moved
