"""Translating text: tokenize, batch by length, decode (beam or greedy), detokenize, in input order."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar, Iterable, Iterator

import torch
from torch import Tensor, nn

from ..config import Config, require
from ..data.batching import bucket_by_tokens, pad
from ..data.tokenizers import decode, encode
from ..errors import ConfigError
from .beam import beam_search
from .search import greedy_search, max_target_length


@dataclass(frozen=True)
class DecodeOptions(Config):
    """How to decode; a recipe's [decoding] table sets the model's defaults."""

    KIND: ClassVar[str] = "key"

    beam: int = 5  # 1 is greedy
    length_penalty: float = 0.6  # GNMT alpha
    max_len_a: float = 1.5  # outputs may be up to a * source length + b tokens
    max_len_b: int = 10
    batch_tokens: int = 6000  # source tokens per decoding batch
    temperature: float = 0.0  # greedy only: sample when above 0

    def validate(self) -> None:
        require(self, "beam", self.beam >= 1, "at least 1")
        require(self, "max_len_a", self.max_len_a >= 0, "0 or more")
        require(self, "max_len_b", self.max_len_b >= 1, "at least 1")
        require(self, "batch_tokens", self.batch_tokens >= 1, "at least 1")
        require(self, "temperature", self.temperature >= 0, "0 or more")


def translate(model: nn.Module, sentences: list[str], beam: int | None = None, **options) -> list[str]:
    """Translate sentences with a loaded encoder-decoder; beam 1 is greedy. Returns them in input order."""
    return list(translate_stream(model, sentences, chunk=len(sentences) or 1, beam=beam, **options))


def decode_options(model: nn.Module, beam: int | None = None, **options) -> DecodeOptions:
    """The model's decoding defaults (its recipe's [decoding]) overridden by the options given (None: keep)."""
    defaults = dict(getattr(model, "task", None) or {}).get("decoding", {})
    return DecodeOptions(**{**defaults, **{k: v for k, v in options.items() if v is not None},
                            **({"beam": beam} if beam is not None else {})})


def translate_stream(model: nn.Module, lines: Iterable[str], chunk: int = 256, beam: int | None = None,
                     **options) -> Iterator[str]:
    """Translate an input stream chunk by chunk, yielding translations in input order as chunks finish."""
    opts = decode_options(model, beam, **options)
    if getattr(model, "source_tokenizer", None) is None or getattr(model, "target_tokenizer", None) is None:
        raise ConfigError("this model has no source and target tokenizers: it cannot translate text")
    buffer: list[str] = []
    for line in lines:
        buffer.append(line.rstrip("\n"))
        if len(buffer) >= chunk:
            yield from _translate_chunk(model, buffer, opts)
            buffer = []
    if buffer:
        yield from _translate_chunk(model, buffer, opts)


@torch.no_grad()
def decode_sources(model: nn.Module, source: Tensor, source_mask: Tensor | None, max_len: int | Tensor,
                   beam: int = 1, alpha: float = 0.6, min_len: int = 0, temperature: float = 0.0,
                   generator: torch.Generator | None = None) -> list[list[int]]:
    """Token ids in, token ids out: encode a padded source batch (B, S) once, then beam search (beam > 1) or
    greedy search from the start token, up to max_len tokens (for all rows, or per row (B,)); each row's ids
    without start and end tokens."""
    state = model.start(source.shape[0], int(torch.as_tensor(max_len).max()), source, source_mask)
    start = torch.full((source.shape[0],), model.config.start_id, dtype=torch.long, device=source.device)
    if beam > 1:
        return beam_search(model, state, start, beam, max_len, alpha, min_len)
    return greedy_search(model, state, start[:, None], max_len, min_new=min_len, temperature=temperature,
                         generator=generator)


def _translate_chunk(model: nn.Module, sentences: list[str], opts: DecodeOptions) -> list[str]:
    config = model.config
    device = next(model.parameters()).device
    ids = encode(model.source_tokenizer, sentences)
    positions = getattr(config, "positions", "none")  # a recurrent model has no position table
    limit = config.max_len - 1 if positions in ("sinusoidal", "learned") else None
    if limit is not None and any(len(s) > limit for s in ids):
        print(f"warning: inputs longer than {limit} tokens were truncated", file=sys.stderr)
        ids = [s[:limit] for s in ids]
    outputs: list[list[int]] = [[] for _ in sentences]
    todo = [i for i, s in enumerate(ids) if s and sentences[i].strip()]  # a blank line translates to a blank line
    for batch in bucket_by_tokens([len(ids[i]) + 1 for i in todo], opts.batch_tokens, seed=0, epoch=0, shuffle=False):
        rows = [todo[j] for j in batch]
        source, source_mask = pad([ids[i] + [config.eos_id] for i in rows], config.pad_id)
        source, source_mask = source.to(device), source_mask.to(device)
        limits = max_target_length(source_mask, opts.max_len_a, opts.max_len_b, config.max_len)
        results = decode_sources(model, source, source_mask, limits, opts.beam, opts.length_penalty,
                                 temperature=opts.temperature)
        for i, result in zip(rows, results):
            outputs[i] = result
    return decode(model.target_tokenizer, outputs)
