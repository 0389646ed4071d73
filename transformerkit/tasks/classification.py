"""Sequence classification fine-tuned from a pretrained encoder: here, which language a sentence is in.

Recipe `multi30k-langid`: Multi30k task 1 sentences labelled de, en, fr or cs; the classifier reads the
encoder's pooled output. `[model] init` (or `train --init`) names the pretrained encoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config, require
from ..data.batching import bucket_by_tokens
from ..data.datasets import MULTI30K_LANGUAGES, multi30k_path, read_lines
from ..errors import ConfigError, DataError
from ..models import EncoderOnly
from ..training.trainer import TrainConfig
from .encoder_data import SentenceBatch, sentence_batch
from .pretrained import PretrainedTable, encoder_from
from .recipe import Setup, read_tables, starting_model


@dataclass(frozen=True)
class DataTable(Config):
    """[data]: the labels (Multi30k languages) and how sentences are batched."""

    KIND: ClassVar[str] = "key"
    languages: list[str] = field(default_factory=lambda: list(MULTI30K_LANGUAGES))
    batch_tokens: int = 8192
    max_tokens: int | None = None  # longer sentences are truncated (default: the model's max_len)
    val_sentences: int | None = None  # evaluate on about this many validation sentences

    def validate(self) -> None:
        require(self, "languages", len(self.languages) >= 2 and set(self.languages) <= set(MULTI30K_LANGUAGES),
                f"a list of at least two of {', '.join(MULTI30K_LANGUAGES)}")
        require(self, "batch_tokens", self.batch_tokens >= 1, "at least 1")
        for name in ("max_tokens", "val_sentences"):
            require(self, name, getattr(self, name) is None or getattr(self, name) >= 1, "at least 1 (or unset)")


@dataclass(frozen=True)
class ModelTable(PretrainedTable):
    pooling: Literal["cls", "mean"] = "cls"  # the classifier reads BERT's pooled [CLS], or the mean of the states


def labelled(split: str, languages: list[str]) -> tuple[list[str], list[int]]:
    sentences, labels = [], []
    for label, lang in enumerate(languages):
        lines = [line for line in read_lines(multi30k_path(split, lang)) if line.strip()]
        sentences += lines
        labels += [label] * len(lines)
    return sentences, labels


class LabelledData:
    def __init__(self, rows: list[list[int]], labels: list[int], batch_tokens: int, seed: int, pad_id: int):
        self.rows, self.labels, self.batch_tokens, self.seed, self.pad_id = rows, labels, batch_tokens, seed, pad_id
        self.lengths = [len(r) for r in rows]

    def batches(self, epoch: int) -> list[SentenceBatch]:
        return [sentence_batch([self.rows[i] for i in g], torch.tensor([self.labels[i] for i in g]), self.pad_id)
                for g in bucket_by_tokens(self.lengths, self.batch_tokens, self.seed, epoch)]


class ClassificationLoss:
    """Cross-entropy of the class logits; every sentence weighs the same."""

    def __call__(self, model: nn.Module, batch: SentenceBatch) -> tuple[Tensor, int]:
        logits = model.classify(batch.ids, batch.mask)  # (B, K)
        return F.cross_entropy(logits.float(), batch.labels, reduction="sum"), batch.labels.shape[0]


def prepare(recipe: dict[str, Any], run_dir: Path, resume: bool = False, init: nn.Module | None = None,
            device: torch.device | str = "cpu") -> Setup:
    tables = read_tables(recipe, data=DataTable, model=ModelTable, training=TrainConfig)
    data, table, train_config = tables["data"], tables["model"], tables["training"]
    languages = data.languages
    model = starting_model(run_dir, resume, None, lambda: encoder_from(
        init, table, n_classes=len(languages), pooling=table.pooling, mlm_head=False))
    if not isinstance(model, EncoderOnly) or not model.config.n_classes:
        raise ConfigError("task 'classification' needs an encoder with a classification head")
    model.task = {"task": "classification", "labels": languages, "recipe": recipe.get("name")}
    model.tokenizer.enable_truncation(min(data.max_tokens or model.config.max_len, model.config.max_len))

    def dataset(split: str, seed: int, limit: int | None = None) -> LabelledData:
        sentences, labels = labelled(split, languages)
        if not sentences:
            raise DataError(f"no {split} sentences in Multi30k for {', '.join(languages)}")
        if limit:
            step = max(1, len(sentences) // limit)
            sentences, labels = sentences[::step], labels[::step]
        rows = [e.ids for e in model.tokenizer.encode_batch(sentences)]
        return LabelledData(rows, labels, data.batch_tokens, seed, model.config.pad_id)

    val = dataset("val", 0, data.val_sentences)
    return Setup(model, dataset("train", train_config.seed), ClassificationLoss(), train_config,
                 make_evaluator(val, languages, device), "val_accuracy", floor=1 / len(languages) + 0.05)


def accuracy_by_label(model: nn.Module, data: LabelledData, names: list[str], device) -> dict[str, float]:
    """Accuracy overall and for each label."""
    correct, count = torch.zeros(len(names)), torch.zeros(len(names))
    for batch in data.batches(0):
        batch = batch.to(device)
        predicted = model.classify(batch.ids, batch.mask).argmax(dim=-1)
        for label in range(len(names)):
            rows = batch.labels == label
            correct[label] += int((predicted[rows] == label).sum())
            count[label] += int(rows.sum())
    return {"accuracy": float(correct.sum() / count.sum()),
            **{f"accuracy_{name}": float(correct[i] / max(count[i], 1)) for i, name in enumerate(names)}}


def make_evaluator(val: LabelledData, names: list[str], device) -> Callable[[nn.Module], dict[str, float]]:
    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict[str, float]:
        return {f"val_{k}": v for k, v in accuracy_by_label(model, val, names, device).items()}

    return evaluate
