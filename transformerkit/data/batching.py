"""Batches by token count with length bucketing, padded, with their masks built once.

Sentences of similar length go together, so little compute is spent on padding; a batch holds as many
sentences as fit in `max_tokens` padded positions, so short sentences come many to a batch and long ones
few. The batches of an epoch depend only on (seed, epoch): a resumed run sees the same data in the same order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import Any, Callable, Sequence

import torch
from torch import Tensor


@dataclass
class Seq2SeqBatch:
    """A padded batch of sentence pairs. Masks are True at real tokens."""

    source: Tensor  # (B, S): sentence + </s>
    source_mask: Tensor  # (B, S)
    target_in: Tensor  # (B, T): <s> + sentence, what the decoder reads
    target_out: Tensor  # (B, T): sentence + </s>, what it must predict
    target_mask: Tensor  # (B, T)
    indices: list[int]  # positions of these pairs in the corpus

    @property
    def n_tokens(self) -> int:
        """Real (non-padding) source plus target tokens: what tokens/s counts."""
        return int(self.source_mask.sum() + self.target_mask.sum())

    @property
    def n_target_tokens(self) -> int:
        return int(self.target_mask.sum())

    def to(self, device: torch.device | str) -> Seq2SeqBatch:
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self) if f.name != "indices"}
        return Seq2SeqBatch(**moved, indices=self.indices)


def pad(rows: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad lists of ids -> ids (B, T) and mask (B, T), True at real tokens."""
    lengths = torch.tensor([len(row) for row in rows])
    ids = torch.full((len(rows), int(lengths.max())), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids, torch.arange(ids.shape[1])[None] < lengths[:, None]


def seq2seq_batch(sources: list[list[int]], targets: list[list[int]], indices: list[int], pad_id: int, bos_id: int,
                  eos_id: int) -> Seq2SeqBatch:
    source, source_mask = pad([s + [eos_id] for s in sources], pad_id)
    target_in, target_mask = pad([[bos_id] + t for t in targets], pad_id)
    target_out, _ = pad([t + [eos_id] for t in targets], pad_id)
    return Seq2SeqBatch(source, source_mask, target_in, target_out, target_mask, indices)


def bucket_by_tokens(lengths: list[int], max_tokens: int, seed: int, epoch: int,
                     shuffle: bool = True) -> list[list[int]]:
    """Group item indices into batches of at most `max_tokens` padded positions (longest x count).

    Items are sorted by length (ties broken at random, so batches differ from epoch to epoch), cut into
    batches, and the batches shuffled: a function of (seed, epoch) only.
    """
    rng = epoch_rng(seed, epoch)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    order.sort(key=lambda i: lengths[i])
    batches, current, longest = [], [], 0
    for i in order:
        longest_if_added = max(longest, lengths[i])
        if current and longest_if_added * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest_if_added = [], lengths[i]
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


def epoch_rng(seed: int, epoch: int) -> random.Random:
    """The order of an epoch's data: a function of (seed, epoch) alone, so a resumed run sees the same."""
    return random.Random(seed * 1_000_003 + epoch)


def batch_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The random numbers of batch `index` of `epoch` (masks, windows): rebuilt exactly when a run resumes."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + index)


class LazyEpoch:
    """The batches of one epoch, each built when asked for (masks drawn fresh per batch, reproducibly)."""

    def __init__(self, groups: Sequence, build: Callable[[int, Any], Any]):
        self.groups, self.build = groups, build

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int):
        return self.build(index, self.groups[index])


def shuffled_groups(n: int, batch_size: int, seed: int, epoch: int,
                    lengths: list[int] | None = None) -> list[list[int]]:
    """Fixed-size batches of a shuffled range (pairs: a batch needs many rows for in-batch negatives).

    With `lengths`, each batch holds items of about the same length (sorted, ties broken at random, the
    batches then shuffled), so little of a batch is padding: in batches of 128 Multi30k caption pairs, padding
    was 61% of the positions at random and is 15% sorted, 2.2x fewer positions. A function of (seed, epoch) only.
    """
    rng = epoch_rng(seed, epoch)
    order = list(range(n))
    rng.shuffle(order)
    order = order[:n - n % batch_size]  # the items left out of this epoch: at random, not the longest
    if lengths is not None:
        order.sort(key=lambda i: lengths[i])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if lengths is not None:
        rng.shuffle(batches)
    return batches

