"""Chatting with an instruct model: the chat template turns the conversation into a prompt, and the KV cache
keeps what the model has already read, so each turn costs only its new tokens."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..data.tokenizers import encode_text
from ..errors import ConfigError
from .generate import GenerationOptions, _TextStreamer, generate_ids


def render(template: str, messages: list[dict[str, str]], add_generation_prompt: bool = True, **variables) -> str:
    """Render a Hugging Face chat template (Jinja) as `transformers` does: sandboxed, trimmed blocks."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = raise_exception
    try:
        return environment.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                        **variables)
    except TemplateError as error:
        raise ConfigError(f"chat template: {error}") from None


def turn_end_ids(tokenizer) -> list[int]:
    """The token that ends an assistant's turn, where the vocabulary has one: ChatML's <|im_end|> (SmolLM2). The
    reply ends there, as at the end-of-sequence token."""
    end = tokenizer.token_to_id("<|im_end|>")
    return [end] if end is not None else []


class Chat:
    """A conversation with a model that has a tokenizer and a chat template (ChatML for SmolLM2).

    Each turn renders the whole conversation, keeps the part of the KV cache that still matches it (all of
    it, normally) and feeds only the rest: the new user message and the assistant header.
    """

    def __init__(self, model: nn.Module, system: str | None = None, context: int | None = None, **options):
        if getattr(model, "chat_template", None) is None or getattr(model, "tokenizer", None) is None:
            raise ConfigError("this model has no chat template: use `transformerkit generate` instead")
        self.model, self.options = model, GenerationOptions(**options)
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        self.state = model.start(1, min(context or model.config.max_len, model.config.max_len))
        self.tokens: list[int] = []  # what the cache holds
        self.options.stop_tokens = [*self.options.stop_tokens, *turn_end_ids(model.tokenizer)]

    def send(self, text: str, on_text: Callable[[str], None] | None = None) -> str:
        """Add a user message, stream and return the assistant's reply."""
        tokenizer = self.model.tokenizer
        self.messages.append({"role": "user", "content": text})
        prompt = encode_text(tokenizer, render(self.model.chat_template, self.messages))
        common = 0
        while common < min(len(prompt), len(self.tokens)) and prompt[common] == self.tokens[common]:
            common += 1
        if common == len(prompt):  # at least one new token must be fed to get logits
            common -= 1
        self.state.rewind(common)
        self.tokens = self.tokens[:common]
        streamer = _TextStreamer(tokenizer, 1, self.options.stop, (lambda row, piece: on_text(piece)) if on_text
                                 else None)
        reply_ids = generate_ids(self.model, [prompt[common:]], self.options, streamer.push, self.state)[0]
        streamer.flush()
        self.tokens = (prompt + reply_ids)[: self.state.length]  # what the cache holds (the last pick is not fed)
        reply = tokenizer.decode(reply_ids, skip_special_tokens=True)
        self.messages.append({"role": "assistant", "content": reply})
        return reply
