"""Synthetic sequence tasks (copy, reverse, sort) where one property of a model decides success.

Reversing needs to know where each source token stands; sorting needs only which tokens are there; copying
needs the order and a way to keep it. A random sequence has no other pattern to lean on, so the accuracy is
the property, measured. Ids 0-3 are padding, start, end and unknown, as in every tokenizer here; symbols
start at 4. The batches follow the Trainer's TrainingData protocol and are the same Seq2SeqBatch the
translation task trains on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..data.batching import Seq2SeqBatch, pad, seq2seq_batch
from ..inference.translate import decode_sources

PAD, BOS, EOS, FIRST_SYMBOL = 0, 1, 2, 4
Task = Literal["copy", "reverse", "sort"]


def answer(task: Task, sequence: list[int]) -> list[int]:
    return {"copy": list(sequence), "reverse": sequence[::-1], "sort": sorted(sequence)}[task]


@dataclass
class SequenceTask:
    """Random sequences of `symbols` symbols, `lengths` = (shortest, longest) tokens, and their answers."""

    task: Task
    symbols: int
    lengths: tuple[int, int]

    @property
    def vocab_size(self) -> int:
        return FIRST_SYMBOL + self.symbols

    def sample(self, n: int, generator: torch.Generator,
               lengths: tuple[int, int] | None = None) -> tuple[list[list[int]], list[list[int]]]:
        """n (source, target) pairs with lengths drawn uniformly from `lengths` (default: the task's)."""
        low, high = lengths or self.lengths
        sizes = torch.randint(low, high + 1, (n,), generator=generator).tolist()
        sources = [(torch.randint(0, self.symbols, (k,), generator=generator) + FIRST_SYMBOL).tolist() for k in sizes]
        return sources, [answer(self.task, s) for s in sources]


class SequenceData:
    """`batches_per_epoch` batches of `batch_size` fresh pairs each; an epoch is a function of (seed, epoch),
    as the Trainer's TrainingData protocol asks (a resumed run would see the same batches)."""

    def __init__(self, task: SequenceTask, batch_size: int, batches_per_epoch: int, seed: int):
        self.task, self.batch_size, self.batches_per_epoch, self.seed = task, batch_size, batches_per_epoch, seed

    def batches(self, epoch: int) -> list[Seq2SeqBatch]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        out = []
        for _ in range(self.batches_per_epoch):
            sources, targets = self.task.sample(self.batch_size, generator)
            out.append(seq2seq_batch(sources, targets, list(range(len(sources))), PAD, BOS, EOS))
        return out


@torch.no_grad()
def accuracy(model: nn.Module, sources: list[list[int]], targets: list[list[int]]) -> dict[str, float]:
    """Greedy decoding through the decoding interface (start / step): the share of sequences answered exactly,
    and of target positions right (a missing or extra token is wrong)."""
    model.eval()
    source, source_mask = pad([s + [EOS] for s in sources], PAD)
    outputs = decode_sources(model, source, source_mask, max(len(t) for t in targets) + 2)
    exact = sum(o == t for o, t in zip(outputs, targets))
    right = sum(sum(a == b for a, b in zip(o, t)) for o, t in zip(outputs, targets))
    total = sum(max(len(o), len(t)) for o, t in zip(outputs, targets))
    return {"exact": exact / len(targets), "tokens": right / max(total, 1)}


def held_out(task: SequenceTask, n: int, seed: int, lengths: tuple[int, int] | None = None):
    """A fixed evaluation set, drawn apart from the training batches."""
    return task.sample(n, torch.Generator().manual_seed(10_000 + seed), lengths)
