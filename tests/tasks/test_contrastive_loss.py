"""The in-batch negatives loss, against its definition worked out by hand."""

import math

import pytest
import torch

from transformerkit.tasks.contrastive import InBatchNegativesLoss
from transformerkit.tasks.encoder_data import PairBatch, SentenceBatch


class Vectors:
    """A stand-in encoder whose sentence vectors are the batch's ids read as vectors."""

    def sentence_vectors(self, ids, mask):
        return ids.float()


def test_in_batch_negatives_is_cross_entropy_over_scaled_cosines_both_ways():
    a = torch.tensor([[1, 0], [0, 1]])
    b = torch.tensor([[1, 1], [0, 2]])
    batch = PairBatch(SentenceBatch(a, torch.ones_like(a, dtype=torch.bool), torch.arange(2)),
                      SentenceBatch(b, torch.ones_like(b, dtype=torch.bool), torch.arange(2)))
    loss, n = InBatchNegativesLoss(scale=10.0)(Vectors(), batch)
    s = 1 / math.sqrt(2)  # cos((1,0),(1,1)) = cos((0,1),(1,1)); cos((1,0),(0,1)) = 0; cos((0,1),(0,1)) = 1
    similarity = 10.0 * torch.tensor([[s, 0.0], [s, 1.0]])  # rows: first sentences, columns: second ones

    def cross_entropy(logits):  # the right partner is on the diagonal
        return -sum(float(logits[i].log_softmax(-1)[i]) for i in range(2))

    expected = (cross_entropy(similarity) + cross_entropy(similarity.t())) / 2
    assert n == 2 and float(loss) == pytest.approx(expected, rel=1e-6)
    perfect = PairBatch(batch.first, batch.first)
    assert float(InBatchNegativesLoss(scale=50.0)(Vectors(), perfect)[0]) < 1e-6  # partners identical, others far
