"""Causal language modelling on a text corpus: predict every next token of random windows (as nanoGPT).

Recipe tables: [data] (the corpus file, the held-out fraction, batch size and context), [tokenizer]
(char or byte_bpe), [model], [training] and [sample] (what to print at each evaluation).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import torch
from torch import Tensor, nn

from ..config import Config, ModelConfig, preset, require
from ..data.batching import LazyEpoch, batch_generator
from ..data.datasets import data_dir, read_lines
from ..data.tokenizers import special_ids, train_byte_bpe, train_chars
from ..errors import ConfigError, DataError
from ..evaluation.metrics import perplexity
from ..models import DecoderOnly, build_model
from ..training.losses import linear_cross_entropy
from ..training.trainer import TrainConfig
from .recipe import Setup, model_keys, read_tables, starting_model

CORPORA = {"tinyshakespeare": "tinyshakespeare/input.txt"}


@dataclass(frozen=True)
class DataTable(Config):
    """[data]: the corpus, the held-out fraction (the end of the text) and the windows drawn from it."""

    KIND: ClassVar[str] = "key"
    corpus: Literal["tinyshakespeare", "file"] = "tinyshakespeare"
    path: str | None = None  # corpus = "file": any UTF-8 text file
    val_fraction: float = 0.1
    batch_size: int = 64
    context: int | None = None  # tokens per window (default: the model's max_len)
    batches_per_epoch: int | None = None  # default: as many windows as the training text holds
    val_batches: int = 20

    def validate(self) -> None:
        require(self, "path", self.corpus != "file" or self.path is not None, "set when corpus = 'file'")
        require(self, "val_fraction", 0 < self.val_fraction < 1, "in (0, 1)")
        for name in ("batch_size", "val_batches"):
            require(self, name, getattr(self, name) >= 1, "at least 1")
        for name in ("context", "batches_per_epoch"):
            require(self, name, getattr(self, name) is None or getattr(self, name) >= 1, "at least 1 (or unset)")


@dataclass(frozen=True)
class TokenizerTable(Config):
    KIND: ClassVar[str] = "key"
    kind: Literal["char", "byte_bpe"] = "char"
    vocab_size: int = 4096  # byte_bpe
    min_frequency: int = 2

    def validate(self) -> None:
        require(self, "vocab_size", self.vocab_size >= 260, "at least 260 (the 256 bytes and the special tokens)")


@dataclass(frozen=True)
class SampleTable(Config):
    """[sample]: what each evaluation prints for a human to read."""

    KIND: ClassVar[str] = "key"
    prompt: str = "\n"
    tokens: int = 200
    temperature: float = 0.8
    top_k: int = 0

    def validate(self) -> None:
        for name in ("tokens", "top_k"):
            require(self, name, getattr(self, name) >= 0, "0 or more")
        require(self, "temperature", self.temperature >= 0, "0 or more")


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

    def __init__(self, ids: Tensor, batch_size: int, context: int, seed: int, batches_per_epoch: int, what: str):
        if len(ids) <= context + 1:
            raise DataError(f"the {what} text has {len(ids)} tokens, fewer than one window of context {context} + 1")
        self.ids, self.batch_size, self.context, self.seed = ids, batch_size, context, seed
        self.batches_per_epoch = batches_per_epoch

    def batch(self, epoch: int, index: int) -> WindowBatch:
        starts = torch.randint(0, len(self.ids) - self.context - 1, (self.batch_size,),
                               generator=batch_generator(self.seed, epoch, index))
        return WindowBatch(torch.stack([self.ids[s:s + self.context + 1] for s in starts.tolist()]))

    def batches(self, epoch: int) -> LazyEpoch:
        return LazyEpoch(range(self.batches_per_epoch), lambda index, _: self.batch(epoch, index))


class LanguageModelLoss:
    """Cross-entropy of every next token (no label smoothing by default)."""

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def __call__(self, model: nn.Module, batch: WindowBatch) -> tuple[Tensor, int]:
        inputs, targets = batch.ids[:, :-1], batch.ids[:, 1:]
        hidden = model.hidden_states(inputs)  # (B, T, C)
        output = model.output_layer()
        loss = linear_cross_entropy(hidden.flatten(0, 1), output.weight, output.bias, targets.flatten(),
                                    self.label_smoothing)
        return loss, targets.numel()


def read_corpus(data: DataTable) -> str:
    path = Path(data.path) if data.corpus == "file" else data_dir() / CORPORA[data.corpus]
    text = "\n".join(read_lines(path)) + "\n"
    if not text.strip():
        raise DataError(f"{path}: the corpus is empty")
    return text


def prepare(recipe: dict[str, Any], run_dir: Path, resume: bool = False, init: nn.Module | None = None,
            device: torch.device | str = "cpu") -> Setup:
    tables = read_tables(recipe, data=DataTable, tokenizer=TokenizerTable, model=model_keys("preset"),
                         training=TrainConfig, sample=SampleTable)
    data, sample, train_config = tables["data"], tables["sample"], tables["training"]
    text = read_corpus(data)
    split = int(len(text) * (1 - data.val_fraction))  # the held-out part is the end of the text

    def build() -> nn.Module:
        fields = tables["model"]
        tokenizer = make_tokenizer(tables["tokenizer"], text[:split])
        base = preset(fields.pop("preset")) if "preset" in fields else ModelConfig(family="decoder")
        model = build_model(base.replace(**{**fields, **special_ids(tokenizer), "family": "decoder",
                                            "vocab_size": tokenizer.get_vocab_size()}))
        model.tokenizer = tokenizer
        return model

    model = starting_model(run_dir, resume, init, build)
    if not isinstance(model, DecoderOnly):
        raise ConfigError("task 'language_model' needs a decoder-only model")
    model.task = {"task": "language_model", "corpus": data.corpus, "recipe": recipe.get("name")}
    config = model.config
    context = data.context or config.max_len
    bounded = config.positions in ("learned", "sinusoidal")  # no position beyond max_len exists
    if bounded and context > config.max_len:
        raise ConfigError(f"[data] context: {context} is longer than the model's max_len ({config.max_len})")
    prompt = model.tokenizer.encode(sample.prompt, add_special_tokens=False).ids
    if bounded and sample.tokens and len(prompt) + sample.tokens > config.max_len:
        raise ConfigError(f"[sample] tokens: {sample.tokens} more after a {len(prompt)}-token prompt pass the "
                          f"model's max_len ({config.max_len})")
    ids = torch.tensor(model.tokenizer.encode(text, add_special_tokens=False).ids, dtype=torch.long)
    boundary = len(model.tokenizer.encode(text[:split], add_special_tokens=False).ids)
    train = WindowData(ids[:boundary], data.batch_size, context, train_config.seed,
                       data.batches_per_epoch or max(1, boundary // (data.batch_size * context)), "training")
    val = WindowData(ids[boundary:], data.batch_size, context, 0, data.val_batches, "held-out")
    return Setup(model, train, LanguageModelLoss(), train_config, make_evaluator(val, sample, device), "val_loss",
                 floor=0.9 * math.log(config.vocab_size))  # uniform guessing scores log(vocab)


def make_tokenizer(table: TokenizerTable, text: str):
    if table.kind == "char":
        return train_chars(text)
    return train_byte_bpe(text.splitlines(keepends=True), table.vocab_size, table.min_frequency)


def make_evaluator(val: WindowData, sample: SampleTable, device) -> Callable[[nn.Module], dict[str, float]]:
    """Validation loss and perplexity on fixed held-out windows, and a sample printed for a human to read."""
    loss_fn = LanguageModelLoss()
    batches = [val.batch(0, i) for i in range(val.batches_per_epoch)]  # the same windows at every evaluation

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict[str, float]:
        from ..inference.generate import generate

        total, tokens = 0.0, 0
        for batch in batches:
            value, n = loss_fn(model, batch.to(device))
            total, tokens = total + float(value), tokens + n
        mean = total / tokens
        if sample.tokens:
            text = generate(model, sample.prompt, max_new_tokens=sample.tokens, temperature=sample.temperature,
                            top_k=sample.top_k, seed=0)
            print(f"--- sample ---\n{sample.prompt}{text}\n--------------", file=sys.stderr)
        return {"val_loss": mean, "val_ppl": perplexity(mean)}

    return evaluate
