"""The key/value cache: what makes decoding one position cost one position, not the whole prefix."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError


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
    """Everything a Transformer decoder carries from one step to the next, and the bookkeeping that moves it.

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

    def advance(self, T: int, mask: Tensor | None, device: torch.device) -> tuple[int, Tensor, Tensor | None]:
        """Make room for T new tokens (mask (B, T), True at real ones, or None when none is padding).

        Returns where they start, their positions (B or 1, T) and the key mask (B, start + T) over every token
        so far (None while nothing is padding). Without padding, positions simply continue; with it, each
        token's position is the number of real tokens before it in its row.
        """
        start, end = self.length, self.length + T
        if end > self.max_len:
            raise ConfigError(f"max_len: decoding past the {self.max_len} positions this decoding state holds")
        self.length = end
        if mask is None and self.key_mask is None:
            return start, torch.arange(start, end, device=device)[None], None
        if self.key_mask is None:
            self.key_mask = torch.zeros(self.batch_size, self.max_len, dtype=torch.bool, device=device)
            self.key_mask[:, :start] = True
            self.n_real = torch.full((self.batch_size,), start, dtype=torch.long, device=device)
        new = mask if mask is not None else torch.ones(self.batch_size, T, dtype=torch.bool, device=device)
        self.key_mask[:, start:end] = new
        positions = (self.n_real[:, None] + new.long().cumsum(dim=-1) - 1).clamp(min=0)  # (B, T)
        self.n_real = self.n_real + new.sum(dim=-1)
        return start, positions, self.key_mask[:, :end]

    def rewind(self, length: int) -> None:
        """Forget every position from `length` on (a chat turn that changes the end of the conversation); the
        cache keeps the rest."""
        if not 0 <= length <= self.length:
            raise ConfigError(f"cannot rewind a decoding state of {self.length} positions to {length}")
        self.length = length
        if self.key_mask is not None:
            self.n_real = self.key_mask[:, :length].sum(dim=-1)

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
