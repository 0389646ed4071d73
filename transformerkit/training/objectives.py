"""Training objectives: (model, batch) -> (summed loss, number of predicted tokens).

The trainer divides the sum by the token count of the whole (accumulated) step, so every token weighs
the same however the batch was split.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..data.batching import Seq2SeqBatch
from .losses import linear_cross_entropy


class TranslationLoss:
    """Label-smoothed cross-entropy of the next target token (teacher forcing), padding excluded.

    Works for any sequence-to-sequence model that gives target-side hidden states and has an output layer
    `lm_head`: the Transformer's EncoderDecoder and the recurrent models alike.
    """

    def __init__(self, label_smoothing: float = 0.1):
        self.label_smoothing = label_smoothing

    def __call__(self, model: nn.Module, batch: Seq2SeqBatch) -> tuple[Tensor, int]:
        hidden = model.hidden_states(batch.source, batch.target_in, batch.source_mask, batch.target_mask)  # (B, T, C)
        mask = batch.target_mask
        loss = linear_cross_entropy(hidden[mask], model.lm_head.weight, model.lm_head.bias, batch.target_out[mask],
                                    self.label_smoothing)
        return loss, batch.n_target_tokens
