"""Translating text: tokenize, batch by length, decode (beam or greedy), detokenize, in input order."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Iterable, Iterator

from torch import nn

from ..data.batching import bucket_by_tokens, pad
from ..data.tokenizers import decode, encode
from ..errors import ConfigError
from .beam import beam_search
from .search import greedy_search, max_target_length


@dataclass
class DecodeOptions:
    """How to decode; a recipe's [decoding] table sets the model's defaults."""

    beam: int = 5  # 1 is greedy
    length_penalty: float = 0.6  # GNMT alpha
    max_len_a: float = 1.5  # outputs may be up to a * source length + b tokens
    max_len_b: int = 10
    batch_tokens: int = 6000  # source tokens per decoding batch
    temperature: float = 0.0  # greedy only: sample when above 0

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise ConfigError(f"beam: {self.beam} is not allowed; it must be at least 1")


def translate(model: nn.Module, sentences: list[str], beam: int | None = None, **options) -> list[str]:
    """Translate sentences with a loaded encoder-decoder; beam 1 is greedy. Returns them in input order."""
    return list(translate_stream(model, sentences, chunk=len(sentences) or 1, beam=beam, **options))


def translate_stream(model: nn.Module, lines: Iterable[str], chunk: int = 256, beam: int | None = None,
                     **options) -> Iterator[str]:
    """Translate an input stream chunk by chunk, yielding translations in input order as chunks finish."""
    defaults = dict(getattr(model, "task", None) or {}).get("decoding", {})
    opts = DecodeOptions(**{**defaults, **{k: v for k, v in options.items() if v is not None},
                            **({"beam": beam} if beam is not None else {})})
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
    todo = [i for i, s in enumerate(ids) if s]  # an empty line translates to an empty line
    for batch in bucket_by_tokens([len(ids[i]) + 1 for i in todo], opts.batch_tokens, seed=0, epoch=0, shuffle=False):
        rows = [todo[j] for j in batch]
        source, source_mask = pad([ids[i] + [config.eos_id] for i in rows], config.pad_id)
        source, source_mask = source.to(device), source_mask.to(device)
        max_len = max_target_length(source_mask, opts.max_len_a, opts.max_len_b)
        max_len = min(max_len, config.max_len)
        if opts.beam > 1:
            results = beam_search(model, source, source_mask, opts.beam, max_len, opts.length_penalty)
        else:
            results = greedy_search(model, source, source_mask, max_len, temperature=opts.temperature)
        for i, result in zip(rows, results):
            outputs[i] = result
    return decode(model.target_tokenizer, outputs)
