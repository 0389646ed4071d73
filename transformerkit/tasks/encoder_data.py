"""Batches for encoder-only tasks: sentences (with labels), or pairs of sentences, by token count."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..data.batching import pad


@dataclass
class SentenceBatch:
    """Padded sentences; labels are per token (masked LM) or per sentence (classification)."""

    ids: Tensor  # (B, T)
    mask: Tensor  # (B, T) True at real tokens
    labels: Tensor  # (B, T) or (B,)

    @property
    def n_tokens(self) -> int:
        return int(self.mask.sum())

    def to(self, device) -> SentenceBatch:
        return SentenceBatch(self.ids.to(device), self.mask.to(device), self.labels.to(device))


@dataclass
class PairBatch:
    """Row i of `first` and row i of `second` belong together; every other row is a negative."""

    first: SentenceBatch
    second: SentenceBatch

    @property
    def n_tokens(self) -> int:
        return self.first.n_tokens + self.second.n_tokens

    def to(self, device) -> PairBatch:
        return PairBatch(self.first.to(device), self.second.to(device))


def sentence_batch(rows: list[list[int]], labels: Tensor, pad_id: int) -> SentenceBatch:
    ids, mask = pad(rows, pad_id)
    return SentenceBatch(ids, mask, labels)
