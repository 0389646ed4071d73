"""The models a server holds: their ids, what each can do (by family and by what it came with), and how requests
for each are queued: a decoder's through its continuous batcher, an encoder's or translator's one at a time."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import anyio
import torch
from torch import nn

from ..errors import ConfigError
from .batching import Batcher
from .errors import APIError

T = TypeVar("T")

# what a capability needs, as said to a client that asks a model for something it cannot do
ENDPOINTS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings",
             "translations": "/v1/translations/text"}


@dataclass
class ServedModel:
    id: str
    model: nn.Module
    capabilities: list[str]
    batcher: Batcher | None = None  # decoders: every generation shares one batch
    lock: threading.Lock = field(default_factory=threading.Lock)  # the others: one request at a time
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def context(self) -> int:
        """The most tokens a sequence may hold (prompt and output together)."""
        return self.model.config.max_len

    def card(self) -> dict:
        """The OpenAI model object, with what this model can do and its context (extra fields clients ignore)."""
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": "transformerkit",
                "capabilities": self.capabilities, "context_length": self.context}

    async def run(self, work: Callable[[], T]) -> T:
        """Run `work` on a worker thread, after the requests before it for this model (the event loop stays free)."""
        def locked() -> T:
            with self.lock, torch.inference_mode():
                return work()

        return await anyio.to_thread.run_sync(locked)


def capabilities_of(model: nn.Module) -> list[str]:
    """What a model can serve: chat and completions (a decoder with a tokenizer; chat needs a chat template),
    embeddings (an encoder with a tokenizer), translations (an encoder-decoder or recurrent seq2seq model)."""
    family = getattr(model.config, "family", "encoder-decoder")  # the recurrent models' config has no family
    if family == "decoder" and getattr(model, "tokenizer", None) is not None:
        return ["chat", "completions"] if getattr(model, "chat_template", None) else ["completions"]
    if family == "encoder" and getattr(model, "tokenizer", None) is not None and hasattr(model, "embed"):
        return ["embeddings"]
    if family == "encoder-decoder" and getattr(model, "source_tokenizer", None) is not None:
        return ["translations"]
    return []


class Registry:
    def __init__(self, models: dict[str, nn.Module], max_batch: int):
        self.models: dict[str, ServedModel] = {}
        for name, model in models.items():
            capabilities = capabilities_of(model)
            if not capabilities:
                raise ConfigError(f"{name}: this model came without the tokenizer it needs to be served")
            batcher = Batcher(model, max_batch, name) if "completions" in capabilities else None
            self.models[name] = ServedModel(name, model, capabilities, batcher)

    def find(self, name: str) -> ServedModel:
        """The model a request names, if loaded (404 otherwise)."""
        served = self.models.get(name)
        if served is None:
            loaded = ", ".join(self.models) or "none"
            raise APIError(404, f"the model '{name}' does not exist here; loaded: {loaded}", "model",
                           "model_not_found")
        return served

    def get(self, name: str, capability: str) -> ServedModel:
        """The model a request names, if loaded (404) and able to do what the request asks (400)."""
        served = self.find(name)
        if capability not in served.capabilities:
            can = ", ".join(ENDPOINTS[c] for c in served.capabilities)
            raise APIError(400, f"the model '{name}' does not serve {ENDPOINTS[capability]}; it serves {can}",
                           "model")
        return served

    def load(self) -> dict[str, tuple[int, int]]:
        return {name: s.batcher.load() for name, s in self.models.items() if s.batcher is not None}

    def close(self) -> None:
        for served in self.models.values():
            if served.batcher is not None:
                served.batcher.close()


def model_id(path: str) -> str:
    """A loaded model's id: the alias it was named by, else its run folder's or its own folder's or file's name."""
    from ..loading import ALIASES, resolve, run_folder_of

    if path in ALIASES:
        return path
    run = run_folder_of(path)
    if run is not None:
        return run.name
    resolved = resolve(path)
    return resolved.name if resolved.is_dir() else resolved.stem
