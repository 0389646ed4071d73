"""Text generation with a decoder-only model: prefill the prompt in one pass, then one position per step.

The KV cache is preallocated for prompt + new tokens and written in place. A batch of prompts of different
lengths is left-padded; the decoding state numbers each row's positions as if it were alone and masks its
padding, so every prompt gets the output it would get by itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..config import check_types, require
from ..data.tokenizers import encode_text
from ..errors import ConfigError
from .beam import beam_search
from .search import greedy_search


@dataclass
class GenerationOptions:
    """How to choose and when to stop; temperature 0 is greedy."""

    max_new_tokens: int = 128
    min_new_tokens: int = 0  # stop tokens are ignored until this many tokens were generated
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # above 1 discourages tokens already in the prompt or output (Keskar et al., 2019)
    stop: list[str] = field(default_factory=list)  # stop strings: the output ends before the first one
    stop_tokens: list[int] = field(default_factory=list)  # besides the model's end-of-sequence token
    seed: int | None = None
    beam: int = 1  # above 1: beam search (deterministic; temperature and penalties do not apply)
    length_penalty: float = 1.0  # beam search's GNMT alpha

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("max_new_tokens", "min_new_tokens", "top_k"):
            require(self, name, getattr(self, name) >= 0, "0 or more")
        require(self, "temperature", self.temperature >= 0, "0 or more (0 is greedy)")
        require(self, "repetition_penalty", self.repetition_penalty > 0, "positive")
        require(self, "top_p", 0 < self.top_p <= 1, "in (0, 1]")
        require(self, "beam", self.beam >= 1, "at least 1")


def generate(model: nn.Module, prompts: str | list[str], on_text: Callable[[int, str], None] | None = None,
             **options) -> str | list[str]:
    """Continue each prompt with a loaded decoder-only model; returns the continuations (a str for a str).

    `on_text(row, text)` receives each new piece of text as soon as it is decoded (streaming).
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError("this model has no tokenizer: pass token ids to generate_ids instead")
    single = isinstance(prompts, str)
    texts = [prompts] if single else list(prompts)
    opts = GenerationOptions(**options)
    prompt_ids = [encode_text(tokenizer, t) for t in texts]
    streamer = _TextStreamer(tokenizer, len(texts), opts.stop, on_text) if on_text or opts.stop else None
    outputs = generate_ids(model, prompt_ids, opts, on_token=streamer.push if streamer else None)
    results = [tokenizer.decode(ids, skip_special_tokens=True) for ids in outputs]
    results = [_cut_at_stop(text, opts.stop) for text in results]
    if streamer:
        streamer.flush()
    return results[0] if single else results


@torch.no_grad()
def generate_ids(model: nn.Module, prompts: list[list[int]], options: GenerationOptions | None = None,
                 on_token: Callable[[int, int], bool] | None = None, state=None) -> list[list[int]]:
    """Token-level generation. `on_token(row, token)` may return True to end that row (a stop string).

    With a `state` that already holds earlier tokens (a conversation), the single prompt continues it.
    """
    opts = options or GenerationOptions()
    config = model.config
    device = next(model.parameters()).device
    B = len(prompts)
    if any(len(p) == 0 for p in prompts):
        raise ConfigError("an empty prompt: give at least one token (for example the start token)")
    width = max(len(p) for p in prompts)
    ids = torch.full((B, width), config.pad_id, dtype=torch.long)
    mask = torch.zeros(B, width, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), True  # left padding
    ids, mask = ids.to(device), (mask.to(device) if not bool(mask.all()) else None)
    limit = width + opts.max_new_tokens + (state.length if state is not None else 0)
    if config.positions in ("sinusoidal", "learned") and limit > config.max_len:
        raise ConfigError(f"max_len: prompt and new tokens ({limit}) exceed the model's context ({config.max_len})")
    if state is None:
        state = model.start(B, limit)
    elif state.max_len < limit:
        raise ConfigError(f"the conversation ({limit} tokens) no longer fits its cache ({state.max_len})")
    if opts.beam > 1:  # the prompt but its last token is read; beam search continues from that token
        if width > 1:
            model.step(ids[:, :-1], state, None if mask is None else mask[:, :-1])
        return beam_search(model, state, ids[:, -1], opts.beam, opts.max_new_tokens, opts.length_penalty,
                           opts.min_new_tokens)
    generator = torch.Generator(device=device).manual_seed(opts.seed) if opts.seed is not None else None
    return greedy_search(model, state, ids, opts.max_new_tokens, mask=mask,
                         stop_tokens=[config.eos_id, *opts.stop_tokens], min_new=opts.min_new_tokens,
                         temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p,
                         repetition_penalty=opts.repetition_penalty, generator=generator, on_token=on_token)


def _cut_at_stop(text: str, stops: list[str]) -> str:
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text[:cut] if cut >= 0 else text


class _TextStreamer:
    """Turns tokens into text pieces as they come (a token may end mid-character), and watches for stop strings."""

    def __init__(self, tokenizer, rows: int, stops: list[str], on_text: Callable[[int, str], None] | None):
        self.tokenizer, self.stops, self.on_text = tokenizer, stops, on_text
        self.ids: list[list[int]] = [[] for _ in range(rows)]
        self.sent = [0] * rows  # characters already passed on

    def push(self, row: int, token: int) -> bool:
        self.ids[row].append(token)
        text = self.tokenizer.decode(self.ids[row], skip_special_tokens=True)
        stopped = any(s in text for s in self.stops)
        text = _cut_at_stop(text, self.stops)
        if text.endswith("\ufffd") and not stopped:  # half a multi-byte character: wait for the rest
            return False
        hold = max((len(s) - 1 for s in self.stops), default=0)  # a stop string may be starting
        ready = len(text) if stopped else max(self.sent[row], len(text) - hold)
        if self.on_text is not None and ready > self.sent[row]:
            self.on_text(row, text[self.sent[row]:ready])
        self.sent[row] = ready
        return stopped

    def flush(self) -> None:
        for row, ids in enumerate(self.ids):
            text = _cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), self.stops)
            if self.on_text is not None and len(text) > self.sent[row]:
                self.on_text(row, text[self.sent[row]:])
            self.sent[row] = len(text)
