"""Causal language modelling on a text corpus: predict every next token of random windows (as nanoGPT).

Recipe tables: [data] (the corpus file, the held-out fraction, batch size and context), [tokenizer]
(char or byte_bpe), [model], [training] and [sample] (what to print at each evaluation).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..config import ModelConfig, preset
from ..data.datasets import data_dir, read_lines
from ..data.tokenizers import special_ids, train_byte_bpe, train_chars
from ..errors import ConfigError, DataError
from ..models import DecoderOnly, build_model
from ..recipes import section
from ..training.losses import linear_cross_entropy
from ..training.trainer import TrainConfig
from . import Setup, starting_model

DATA_KEYS = {"corpus", "path", "val_fraction", "batch_size", "context", "batches_per_epoch", "val_batches"}
TOKENIZER_KEYS = {"kind", "vocab_size", "min_frequency"}
SAMPLE_KEYS = {"prompt", "tokens", "temperature", "top_k"}
MODEL_KEYS = {"preset"} | {f.name for f in dataclasses.fields(ModelConfig)}
TRAINING_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}
CORPORA = {"tinyshakespeare": "tinyshakespeare/input.txt"}


@dataclass
class WindowBatch:
    """B windows of T + 1 consecutive tokens: the model reads the first T and predicts the last T."""

    ids: Tensor  # (B, T + 1)

    @property
    def n_tokens(self) -> int:
        return self.ids.shape[0] * (self.ids.shape[1] - 1)  # every predicted position counts

    def to(self, device: torch.device | str) -> WindowBatch:
        return WindowBatch(self.ids.to(device))


class WindowData:
    """Random windows of a token stream. An epoch is `batches_per_epoch` batches; batch i of epoch e is drawn by
    a generator seeded with (seed, e, i), so any batch can be rebuilt exactly, which is what resuming needs."""

    def __init__(self, ids: Tensor, batch_size: int, context: int, seed: int, batches_per_epoch: int):
        if len(ids) <= context + 1:
            raise DataError(f"the corpus has {len(ids)} tokens, fewer than one window of context {context} + 1")
        self.ids, self.batch_size, self.context, self.seed = ids, batch_size, context, seed
        self.batches_per_epoch = batches_per_epoch

    def batch(self, epoch: int, index: int) -> WindowBatch:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1_000_003 + index)
        starts = torch.randint(0, len(self.ids) - self.context - 1, (self.batch_size,), generator=generator)
        return WindowBatch(torch.stack([self.ids[s:s + self.context + 1] for s in starts.tolist()]))

    def batches(self, epoch: int) -> _Epoch:
        return _Epoch(self, epoch)


class _Epoch:
    def __init__(self, data: WindowData, epoch: int):
        self.data, self.epoch = data, epoch

    def __len__(self) -> int:
        return self.data.batches_per_epoch

    def __getitem__(self, index: int) -> WindowBatch:
        return self.data.batch(self.epoch, index)


class LanguageModelLoss:
    """Cross-entropy of every next token (no label smoothing by default)."""

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def __call__(self, model: nn.Module, batch: WindowBatch) -> tuple[Tensor, int]:
        inputs, targets = batch.ids[:, :-1], batch.ids[:, 1:]
        hidden = model.decoder(inputs)  # (B, T, C)
        loss = linear_cross_entropy(hidden.flatten(0, 1), model.lm_head.weight, model.lm_head.bias,
                                    targets.flatten(), self.label_smoothing)
        return loss, targets.numel()


def read_corpus(data: dict[str, Any]) -> str:
    corpus = data.get("corpus", "tinyshakespeare")
    if corpus == "file":
        if "path" not in data:
            raise ConfigError("[data] path: needed when corpus = 'file'")
        path = Path(data["path"])
    elif corpus in CORPORA:
        path = data_dir() / CORPORA[corpus]
    else:
        raise ConfigError(f"[data] corpus: {corpus!r} is not allowed; choose one of {', '.join([*CORPORA, 'file'])}")
    return "\n".join(read_lines(path)) + "\n"


def prepare(recipe: dict[str, Any], run_dir: Path, resume: bool = False, init: nn.Module | None = None,
            device: torch.device | str = "cpu") -> Setup:
    data = section(recipe, "data", DATA_KEYS)
    tokenizer_recipe = section(recipe, "tokenizer", TOKENIZER_KEYS)
    model_recipe = dict(section(recipe, "model", MODEL_KEYS))
    sample = section(recipe, "sample", SAMPLE_KEYS)
    train_config = TrainConfig(**section(recipe, "training", TRAINING_KEYS))
    text = read_corpus(data)
    split = int(len(text) * (1 - data.get("val_fraction", 0.1)))  # the held-out part is the end of the text
    def build() -> nn.Module:
        tokenizer = make_tokenizer(tokenizer_recipe, text[:split])
        base = preset(model_recipe.pop("preset")) if "preset" in model_recipe else ModelConfig(family="decoder")
        config = base.replace(**{**model_recipe, **special_ids(tokenizer), "family": "decoder",
                                 "vocab_size": tokenizer.get_vocab_size()})
        model = build_model(config)
        model.tokenizer = tokenizer
        return model

    model = starting_model(run_dir, resume, init, build)
    if not isinstance(model, DecoderOnly):
        raise ConfigError("task 'language_model' needs a decoder-only model")
    model.task = {"task": "language_model", "corpus": data.get("corpus", "tinyshakespeare"),
                  "recipe": recipe.get("name")}
    ids = torch.tensor(model.tokenizer.encode(text, add_special_tokens=False).ids, dtype=torch.long)
    boundary = len(model.tokenizer.encode(text[:split], add_special_tokens=False).ids)
    context, batch_size = data.get("context", model.config.max_len), data.get("batch_size", 64)
    if context > model.config.max_len and model.config.positions in ("learned", "sinusoidal"):
        raise ConfigError(f"[data] context: {context} is longer than the model's max_len ({model.config.max_len})")
    train = WindowData(ids[:boundary], batch_size, context, train_config.seed,
                       data.get("batches_per_epoch", max(1, boundary // (batch_size * context))))
    val = WindowData(ids[boundary:], batch_size, context, seed=0, batches_per_epoch=data.get("val_batches", 20))
    evaluate = make_evaluator(val, sample, device)
    return Setup(model, train, LanguageModelLoss(), train_config, evaluate, "val_loss")


def make_tokenizer(recipe: dict[str, Any], text: str):
    kind = recipe.get("kind", "char")
    if kind == "char":
        return train_chars(text)
    if kind == "byte_bpe":
        return train_byte_bpe(text.splitlines(keepends=True), recipe.get("vocab_size", 4096),
                              recipe.get("min_frequency", 2))
    raise ConfigError(f"[tokenizer] kind: {kind!r} is not allowed; choose 'char' or 'byte_bpe'")


def make_evaluator(val: WindowData, sample: dict[str, Any], device) -> Callable[[nn.Module], dict[str, float]]:
    """Validation loss and perplexity on fixed held-out windows, and a sample printed for a human to read."""
    loss_fn = LanguageModelLoss()
    batches = [val.batch(0, i) for i in range(val.batches_per_epoch)]  # the same windows at every evaluation

    def evaluate(model: nn.Module) -> dict[str, float]:
        from ..inference.generate import generate

        total, tokens = 0.0, 0
        for batch in batches:
            value, n = loss_fn(model, batch.to(device))
            total, tokens = total + float(value), tokens + n
        mean = total / tokens
        if sample.get("tokens", 200):
            text = generate(model, sample.get("prompt", "\n"), max_new_tokens=sample.get("tokens", 200),
                            temperature=sample.get("temperature", 0.8), top_k=sample.get("top_k", 0), seed=0)
            print(f"--- sample ---\n{sample.get('prompt', '')}{text}\n--------------", file=sys.stderr)
        return {"val_loss": mean, "val_ppl": float(torch.tensor(mean).exp())}

    return evaluate
