"""The key/value cache: what makes decoding one position cost one position, not the whole prefix."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError


class KVCache:
    """Keys and values of one self-attention layer, preallocated for max_len positions and written in place."""

    spare: tuple[Tensor, Tensor] | None = None  # buffers of the same shape that beam search's reorders alternate with
    visible: int | None = None  # a traced step's caches: how many positions attention reads (write)
    rows: Tensor | None = None  # a traced step's caches: (B, visible) the row holding each position, if not its own

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype: torch.dtype, device):
        self.k = torch.zeros(batch, n_kv_heads, max_len, head_dim, dtype=dtype, device=device)  # (B, Hkv, Tmax, D)
        self.v = torch.zeros_like(self.k)

    @classmethod
    def holding(cls, k: Tensor, v: Tensor, visible: int, rows: Tensor | None) -> KVCache:
        """A cache around existing (B, Hkv, Tmax, D) keys and values, a traced step's inputs, of which attention reads
        the first `visible` positions, position t of row b from row rows[b, t] (B, visible) where rows are given."""
        cache = cls.__new__(cls)
        cache.k, cache.v, cache.visible, cache.rows = k, v, visible, rows
        return cache

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def write(self, k: Tensor, v: Tensor, position: int | Tensor) -> tuple[Tensor, Tensor]:
        """Store (B, Hkv, T, D) keys and values at [position, position + T); return all keys and values so far.

        In a step traced whole (inference/step_graph.py) `position` is a tensor (1,), known only when the step
        runs, so the first `visible` positions are returned, written or not: the key mask hides those not written
        yet. With `rows` (beam search, DecodeState.origin) each position comes from the row that holds it, a
        gather that inductor does as attention reads, in place of beam search's copies of the cache.
        The write goes into the whole cache tensor (the graph's input, not a slice of it) by index_put_, which
        inductor keeps in place. An index_copy_ into a slice was compiled as two copies of the slice every step,
        and writing in place made the shakespeare-char step 1.1-1.2x faster at batch 8 and in beam search (AMD
        EPYC)."""
        if isinstance(position, Tensor):
            self.k[:, :, position] = k  # (B, Hkv, 1, D) into (B, Hkv, Tmax, D)
            self.v[:, :, position] = v
            if self.rows is None:
                return self.k[:, :, :self.visible], self.v[:, :, :self.visible]
            return self._gather(self.k, self.rows), self._gather(self.v, self.rows)
        end = position + k.shape[2]
        self.k[:, :, position:end] = k
        self.v[:, :, position:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    @staticmethod
    def _gather(kv: Tensor, rows: Tensor) -> Tensor:
        """(B, Hkv, Tmax, D) -> (B, Hkv, T, D), position t of row b taken from row rows[b, t] (rows (B, T))."""
        positions = torch.arange(rows.shape[1], device=rows.device)  # (T,)
        return kv[rows, :, positions].transpose(1, 2)  # (B, T, Hkv, D) -> (B, Hkv, T, D)

    def settle(self, rows: Tensor) -> None:
        """Move position t of row b to where row rows[b, t] (B, T) holds it, for the first T positions: what a
        traced step read through DecodeState.origin, made real for a step that reads the cache as it is."""
        length = rows.shape[1]
        k, v = self._swap_in_spare()
        self.k[:, :, :length], self.v[:, :, :length] = self._gather(k, rows), self._gather(v, rows)

    def reorder(self, index: Tensor, length: int) -> None:
        """Keep rows `index` of the batch. A reorder that keeps the number of rows (a beam search step) gathers the
        `length` positions written so far into a second pair of buffers, which then become the cache: one copy of
        what was written rather than of the whole preallocated cache into new tensors."""
        if index.shape[0] != self.k.shape[0]:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)
            self.spare = None
            return
        k, v = self._swap_in_spare()
        torch.index_select(k[:, :, :length], 0, index, out=self.k[:, :, :length])  # (B, Hkv, length, D)
        torch.index_select(v[:, :, :length], 0, index, out=self.v[:, :, :length])

    def _swap_in_spare(self) -> tuple[Tensor, Tensor]:
        """Make the spare buffers the cache (created on first use) and return the old keys and values to read
        from: a reorder writes into the cache while reading what it held, without allocating."""
        if self.spare is None:
            self.spare = (torch.zeros_like(self.k), torch.zeros_like(self.v))
        old = (self.k, self.v)
        self.k, self.v = self.spare
        self.spare = old
        return old


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
    traced_position: Tensor | None = None  # (1,) where a step traced whole writes (inference/step_graph.py)
    # (B, Tmax), kept from follow_rows to the next settle: the cache row that holds each row's position t
    origin: Tensor | None = None

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
        self.check_room(T)
        if self.traced_position is None:
            self.settle()  # an eager step reads the cache as it is
        start, end = self.length, self.length + T
        if mask is not None and self.key_mask is None:
            self.mask_keys(device)
        self.length = end
        if self.traced_position is not None:  # one token a row, none of them padding: tensors in, tensors out
            self.key_mask.index_fill_(1, self.traced_position, True)
            positions = self.n_real[:, None].clone()  # (B, 1); a copy: n_real changes in place next
            self.n_real.add_(1)
            return self.traced_position, positions, self.key_mask
        if self.key_mask is None:
            return start, torch.arange(start, end, device=device)[None], None
        new = mask if mask is not None else torch.ones(self.batch_size, T, dtype=torch.bool, device=device)
        self.key_mask[:, start:end] = new
        positions = (self.n_real[:, None] + new.long().cumsum(dim=-1) - 1).clamp(min=0)  # (B, T)
        self.n_real = self.n_real + new.sum(dim=-1)
        return start, positions, self.key_mask[:, :end]

    def check_room(self, T: int) -> None:
        """Refuse T more tokens where the cache has no room for them."""
        if self.length + T > self.max_len:
            raise ConfigError(f"max_len: decoding past the {self.max_len} positions this decoding state holds")

    def mask_keys(self, device: torch.device) -> None:
        """Start keeping the key mask and each row's count of real tokens: from the first padded tokens on, and
        from the start in a step traced whole, where the key mask is what tells written positions from the rest."""
        self.key_mask = torch.zeros(self.batch_size, self.max_len, dtype=torch.bool, device=device)
        self.key_mask[:, :self.length] = True
        self.n_real = torch.full((self.batch_size,), self.length, dtype=torch.long, device=device)

    def rewind(self, length: int) -> None:
        """Forget every position from `length` on (a chat turn that changes the end of the conversation); the
        cache keeps the rest."""
        if not 0 <= length <= self.length:
            raise ConfigError(f"cannot rewind a decoding state of {self.length} positions to {length}")
        self.settle()
        self.length = length
        if self.key_mask is not None:
            self.key_mask[:, length:] = False  # a compiled step reads the mask past the positions written
            self.n_real = self.key_mask[:, :length].sum(dim=-1)

    def reorder(self, index: Tensor, memory: bool = True) -> None:
        """Keep rows `index` (B',) of the batch, in that order: beam search's survivors, or unfinished rows.

        memory=False leaves the source side alone, for reorders that stay within each source's rows
        (the beams of one sentence share one source, so their memory rows are equal).

        While the state keeps `origin` (follow_rows), a reorder that keeps the number of rows (a beam search
        step) moves no keys or values: it reorders `origin`, B x length numbers, and the next step reads each
        position from the row that holds it. Copying the written cache at every step was 16% of a beam-5 step at
        the shakespeare-char size in float32 (AMD EPYC, compiled steps, torch.profiler).
        """
        if self.origin is not None and index.shape[0] == self.batch_size:
            self.origin[:, :self.length] = self.origin[index, :self.length]  # (B, length)
        else:
            self.settle()
            for cache in self.caches:
                cache.reorder(index, self.length)
        if self.key_mask is not None:
            self.key_mask, self.n_real = self.key_mask.index_select(0, index), self.n_real.index_select(0, index)
        if memory and self.memory_kv is not None:
            self.memory_kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.memory_kv]
        if memory and self.memory_mask is not None:
            self.memory_mask = self.memory_mask.index_select(0, index)

    def join(self, other: DecodeState) -> None:
        """Append `other`'s rows to this batch, in place: continuous batching, where a request prefilled by
        itself joins a batch that is already decoding, at the next step, instead of waiting for it to end.

        Every row's last token must sit at the same position for the next step, so the rows are right-aligned:
        the shorter state is padded on the left (key_mask False), and each row keeps its own positions
        (n_real), so it decodes as it would alone. Leading positions that are padding in every row of a state
        (left by rows that finished) are dropped on the way, so a long-running batch does not grow without end.
        Each state keeps the room it had for new tokens. States that read a source (memory_kv) cannot join.
        """
        if self.memory_kv is not None or other.memory_kv is not None:
            raise ConfigError("join: decoding states that read a source (an encoder-decoder's) cannot be joined")
        self.settle()
        other.settle()
        parts = [(state, state._first_real()) for state in (self, other)]
        length = max(state.length - first for state, first in parts)  # the longer one's real span
        room = max(state.max_len - state.length for state, _ in parts)
        template = self.caches[0].k
        B, Hkv, _, D = template.shape
        rows = B + other.batch_size
        caches = [KVCache(rows, Hkv, length + room, D, template.dtype, template.device) for _ in self.caches]
        key_mask = torch.zeros(rows, length + room, dtype=torch.bool, device=template.device)
        n_real, row = [], 0
        for state, first in parts:
            span, end = state.length - first, row + state.batch_size
            for joined, cache in zip(caches, state.caches):
                joined.k[row:end, :, length - span:length] = cache.k[:, :, first:state.length]  # (b, Hkv, span, D)
                joined.v[row:end, :, length - span:length] = cache.v[:, :, first:state.length]
            if state.key_mask is None:
                key_mask[row:end, length - span:length] = True
                n_real.append(torch.full((state.batch_size,), state.length, dtype=torch.long, device=template.device))
            else:
                key_mask[row:end, length - span:length] = state.key_mask[:, first:state.length]
                n_real.append(state.n_real)
            row = end
        self.caches, self.key_mask, self.n_real, self.length = caches, key_mask, torch.cat(n_real), length

    def follow_rows(self) -> None:
        """Start keeping `origin`, the row of the cache that holds each row's positions, so that reorders move
        no keys or values (reorder): beam search does, where compiled steps (which read through it,
        KVCache.write) serve the model. An eager step, a rewind or a join settles the cache first."""
        if self.origin is None:
            B, device = self.batch_size, self.caches[0].k.device
            self.origin = torch.arange(B, device=device)[:, None].expand(B, self.max_len).contiguous()  # (B, Tmax)

    def settle(self) -> None:
        """Move every row's keys and values to where `origin` says they are, and stop keeping it: the cache as a
        step that reads it directly (an eager step, a rewind, a join) needs it."""
        if self.origin is None:
            return
        rows = self.origin[:, :self.length]  # (B, length)
        if not torch.equal(rows, torch.arange(self.batch_size, device=rows.device)[:, None].expand_as(rows)):
            for cache in self.caches:
                cache.settle(rows)
        self.origin = None

    def _first_real(self) -> int:
        """The first position that holds a real token in some row (0 without padding)."""
        if self.key_mask is None:
            return 0
        real = self.key_mask[:, :self.length].any(dim=0)  # (T,)
        return int(real.int().argmax()) if bool(real.any()) else self.length
