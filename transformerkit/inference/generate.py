"""Text generation with a decoder-only model: prefill the prompt in one pass, then one position per step.

The KV cache is preallocated for prompt + new tokens and written in place. A batch of prompts of different
lengths is left-padded; the decoding state numbers each row's positions as if it were alone and masks its
padding, so every prompt gets the output it would get by itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..nn.kv_cache import DecodeState
from .sampling import pick_next
from .search import drop_finished


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
        if self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens: {self.max_new_tokens} is not allowed; it must be 0 or more")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty: {self.repetition_penalty} is not allowed; it must be positive")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p: {self.top_p} is not allowed; it must be in (0, 1]")


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
    prompt_ids = [tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
    streamer = _TextStreamer(tokenizer, len(texts), opts.stop, on_text) if on_text or opts.stop else None
    outputs = generate_ids(model, prompt_ids, opts, on_token=streamer.push if streamer else None)
    results = [tokenizer.decode(ids, skip_special_tokens=True) for ids in outputs]
    results = [_cut_at_stop(text, opts.stop) for text in results]
    if streamer:
        streamer.flush()
    return results[0] if single else results


@torch.no_grad()
def generate_ids(model: nn.Module, prompts: list[list[int]], options: GenerationOptions | None = None,
                 on_token: Callable[[int, int], bool] | None = None,
                 state: DecodeState | None = None) -> list[list[int]]:
    """Token-level generation. `on_token(row, token)` may return True to end that row (a stop string).

    With a `state` that already holds earlier tokens (a conversation), the single prompt continues it.
    """
    opts = options or GenerationOptions()
    config = model.config
    device = model.lm_head.weight.device
    B = len(prompts)
    if any(len(p) == 0 for p in prompts):
        raise ConfigError("an empty prompt: give at least one token (for example the start token)")
    width = max(len(p) for p in prompts)
    ids = torch.full((B, width), config.pad_id, dtype=torch.long)
    mask = torch.zeros(B, width, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), True  # left padding
    ids, mask = ids.to(device), mask.to(device)
    limit = width + opts.max_new_tokens + (state.length if state is not None else 0)
    if config.positions in ("sinusoidal", "learned") and limit > config.max_len:
        raise ConfigError(f"max_len: prompt and new tokens ({limit}) exceed the model's context ({config.max_len})")
    if state is None:
        state = model.start(B, limit)
    elif state.max_len < limit:
        raise ConfigError(f"the conversation ({limit} tokens) no longer fits its cache ({state.max_len})")
    if opts.beam > 1:
        return _beam(model, ids, mask, state, opts)
    generator = torch.Generator(device=device).manual_seed(opts.seed) if opts.seed is not None else None
    stop_tokens = torch.tensor(sorted({config.eos_id, *opts.stop_tokens}), device=device)
    outputs: list[list[int]] = [[] for _ in range(B)]
    rows = torch.arange(B)  # the original row of each live batch row
    seen = ids if opts.repetition_penalty != 1.0 else None  # (b, t): tokens each row has seen
    hidden = model.decoder(ids, mask if not bool(mask.all()) else None, state=state)[:, -1:]  # prefill
    for t in range(opts.max_new_tokens):
        logits = model.lm_head(hidden)[:, -1].float()  # (b, V)
        if t < opts.min_new_tokens:
            logits[:, stop_tokens] = float("-inf")
        if seen is not None:
            logits = _penalize(logits, seen, opts.repetition_penalty)
        next_tokens = pick_next(logits, opts.temperature, opts.top_k, opts.top_p, generator)  # (b,)
        ended = torch.isin(next_tokens, stop_tokens)
        for i, (row, token) in enumerate(zip(rows.tolist(), next_tokens.tolist())):
            if not ended[i]:
                outputs[row].append(token)
                if on_token is not None and on_token(row, token):
                    ended[i] = True
        if ended.any():
            keep = drop_finished(ended, state)
            if keep is None:
                break
            rows, next_tokens = rows[keep.cpu()], next_tokens[keep]
            seen = seen[keep] if seen is not None else None
        if seen is not None:
            seen = torch.cat([seen, next_tokens[:, None]], dim=1)
        hidden = model.decoder(next_tokens[:, None], state=state)
    return outputs


class _Prompted:
    """A decoder-only model behind the encoder-decoder decoding interface: `start` reads the prompt (all but its
    last token, from which decoding continues), `step` continues it. Beam search then needs no second copy."""

    def __init__(self, model: nn.Module, state: DecodeState):
        self.model, self.config, self.state = model, model.config, state

    def start(self, prompt: Tensor, mask: Tensor, max_len: int) -> DecodeState:
        if prompt.shape[1] > 1:
            self.model.decoder(prompt[:, :-1], mask[:, :-1] if not bool(mask.all()) else None, state=self.state)
        return self.state

    def step(self, tokens: Tensor, state: DecodeState) -> Tensor:
        return self.model.lm_head(self.model.decoder(tokens, state=state))


def _beam(model: nn.Module, ids: Tensor, mask: Tensor, state: DecodeState, opts: GenerationOptions) -> list[list[int]]:
    """Beam search from each prompt (which ends at the model's end-of-sequence token)."""
    from .beam import beam_search

    return beam_search(_Prompted(model, state), ids, mask, opts.beam, opts.max_new_tokens, opts.length_penalty,
                       opts.min_new_tokens, first_tokens=ids[:, -1])


def _penalize(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """Make every token a row has seen less likely: positive logits divided by the penalty, negative multiplied."""
    picked = logits.gather(1, seen)
    return logits.scatter(1, seen, torch.where(picked > 0, picked / penalty, picked * penalty))


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
