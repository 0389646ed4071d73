"""Batches for encoder-only tasks: sentences (with labels), or pairs of sentences, by token count."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
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


class LazyEpoch:
    """The batches of one epoch, each built when asked for (masks drawn fresh per batch, reproducibly)."""

    def __init__(self, groups: list[list[int]], build):
        self.groups, self.build = groups, build

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int):
        return self.build(index, self.groups[index])


def shuffled_groups(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Fixed-size batches of a shuffled range (pairs: a batch needs many rows for in-batch negatives)."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [order[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def batch_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + index)
