"""The key/value cache: what makes decoding one position cost one position, not the whole prefix."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


class KVCache:
    """Keys and values of one self-attention layer, preallocated for max_len positions and written in place."""

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype: torch.dtype, device):
        self.k = torch.zeros(batch, n_kv_heads, max_len, head_dim, dtype=dtype, device=device)  # (B, Hkv, Tmax, D)
        self.v = torch.zeros_like(self.k)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def write(self, k: Tensor, v: Tensor, position: int) -> tuple[Tensor, Tensor]:
        """Store (B, Hkv, T, D) keys and values at [position, position + T); return all keys and values so far."""
        end = position + k.shape[2]
        self.k[:, :, position:end] = k
        self.v[:, :, position:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def reorder(self, index: Tensor) -> None:
        self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


@dataclass
class DecodeState:
    """Everything a Transformer decoder carries from one step to the next.

    `length` positions are filled. `key_mask` (B, Tmax), True at real tokens, exists once a padded batch was
    fed; `n_real` (B,) counts each row's real tokens, so left-padded rows get the positions they would
    have alone. Cross-attention keys and values (`memory_kv`, one pair per layer) are computed once per source.
    """

    caches: list[KVCache]
    memory_kv: list[tuple[Tensor, Tensor]] | None = None
    memory_mask: Tensor | None = None  # (B, S) True at real source tokens
    length: int = 0
    key_mask: Tensor | None = None
    n_real: Tensor | None = None

    @property
    def max_len(self) -> int:
        return self.caches[0].max_len

    @property
    def batch_size(self) -> int:
        return self.caches[0].k.shape[0]

    def reorder(self, index: Tensor, memory: bool = True) -> None:
        """Keep rows `index` (B',) of the batch, in that order: beam search's survivors, or unfinished rows.

        memory=False leaves the source side alone, for reorders that stay within each source's rows
        (the beams of one sentence share one source, so their memory rows are equal).
        """
        for cache in self.caches:
            cache.reorder(index)
        if self.key_mask is not None:
            self.key_mask, self.n_real = self.key_mask.index_select(0, index), self.n_real.index_select(0, index)
        if memory and self.memory_kv is not None:
            self.memory_kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.memory_kv]
        if memory and self.memory_mask is not None:
            self.memory_mask = self.memory_mask.index_select(0, index)
