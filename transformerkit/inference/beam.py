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
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start equal: keep one so the first step does not pick K copies
    history = torch.full((B * K, 0), config.eos_id, dtype=torch.long, device=device)
    tokens = first_tokens.repeat_interleave(K)[:, None]  # (B * K, 1)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    for t in range(int(limits.max())):
        n = sentences.shape[0]
        log_probs = model.step(tokens, state).float().log_softmax(dim=-1)  # (n * K, V)
        V = log_probs.shape[-1]
        if t < min_len:
            log_probs[:, config.eos_id] = float("-inf")
        candidates = (scores.reshape(n * K, 1) + log_probs).reshape(n, K * V)
        top_scores, top_index = candidates.topk(2 * K, dim=1)  # (n, 2K)
        top_beam, top_token = top_index // V, top_index % V
        ends = top_token == config.eos_id
        _retire(finished, sentences, history, top_scores, top_beam, ends, K, alpha, t + 1)
        # the first K candidates that do not end continue, best first
        rank = torch.arange(2 * K, device=device).expand(n, 2 * K) + ends * (2 * K)
        keep = rank.argsort(dim=1)[:, :K]  # (n, K)
        scores = top_scores.gather(1, keep)
        rows = (torch.arange(n, device=device)[:, None] * K + top_beam.gather(1, keep)).reshape(-1)  # (n * K,)
        next_tokens = top_token.gather(1, keep).reshape(-1, 1)
        history = torch.cat([history[rows], next_tokens], dim=1)
        full = limits[sentences] == t + 1  # (n,) out of room: live hypotheses end here, as greedy output would
        if full.any():
            at = full.nonzero().squeeze(1)
            _retire(finished, sentences[at], history.view(n, K, -1)[at.to(device)].flatten(0, 1),
                    scores[at.to(device)], torch.arange(K, device=device).expand(len(at), K),
                    torch.ones(len(at), K, dtype=torch.bool, device=device), K, alpha, t + 1, with_last=True)
        done = torch.tensor([len(finished[s]) >= K for s in sentences.tolist()]) | full
        if done.all():
            break
        state.reorder(rows, memory=False)  # a sentence's beams share its source: no need to move memory
        if done.any():
            alive = (~done).nonzero().squeeze(1)
            alive_rows = (alive.to(device)[:, None] * K + torch.arange(K, device=device)).reshape(-1)
            state.reorder(alive_rows)
            sentences, scores = sentences[alive], scores[alive.to(device)]
            history, next_tokens = history[alive_rows], next_tokens[alive_rows]
        tokens = next_tokens
    return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in finished]


def _retire(finished: list[list[tuple[float, list[int]]]], sentences: Tensor, history: Tensor, scores: Tensor,
            beams: Tensor, ends: Tensor, K: int, alpha: float, length: int, with_last: bool = False) -> None:
    """Move ending candidates ranked within the top K of their sentence to its finished list.

    history rows are the hypotheses before this step's token (an ending candidate's end token is not kept),
    or, with_last, after it (live hypotheses retired at the length limit)."""
    ends = ends[:, :K]
    if not ends.any():
        return
    penalty = length_penalty(length, alpha)
    for i, j in ends.nonzero().tolist():
        sentence = int(sentences[i])
        if len(finished[sentence]) < K:
            tokens = history[i * K + (j if with_last else int(beams[i, j]))].tolist()
            finished[sentence].append((float(scores[i, j]) / penalty, tokens))
