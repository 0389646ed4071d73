"""The one decoding interface every generating model implements: the Transformer's decoder-only and
encoder-decoder families and the recurrent models alike.

    state = model.start(batch_size, max_len, source=None, source_mask=None)
    logits = model.step(ids, state, mask=None)   # (B, V): scores for the token after the last one fed
    state.reorder(index)                          # keep these rows (beam survivors, unfinished rows)

`start` prepares to decode up to `max_len` positions; a model with an encoder reads its source there,
once. `step` feeds the next tokens (B, T): a prompt in one go (mask (B, T) marks left padding) or one
token at a time. Greedy search, sampling, beam search, generate, chat, translate and the benchmarks use
a model only through these three calls, and one attribute: a Transformer may carry `step_graphs`, its
decoding steps compiled (inference/step_graph.py), for one batch size each, so while it is set the searches
keep their batch whole instead of dropping rows that ended, and beam search calls its state's `follow_rows()`,
so that reorders move row indices rather than the KV cache (nn/kv_cache.py).
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor


class DecodingState(Protocol):
    def reorder(self, index: Tensor, memory: bool = True) -> None:
        """Keep rows `index` of the batch; memory=False when the source side's rows are equal among them."""


class Decodable(Protocol):
    config: Any

    def start(self, batch_size: int, max_len: int, source: Tensor | None = None,
              source_mask: Tensor | None = None) -> DecodingState: ...

    def step(self, ids: Tensor, state: DecodingState, mask: Tensor | None = None) -> Tensor: ...
