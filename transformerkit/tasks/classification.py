"""Sequence classification fine-tuned from a pretrained encoder: here, which language a sentence is in.

Recipe `multi30k-langid`: Multi30k task 1 sentences labelled de, en, fr or cs; the classifier reads the
encoder's pooled output. `[model] init` (or `train --init`) names the pretrained encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.batching import bucket_by_tokens
from ..data.datasets import MULTI30K_LANGUAGES, multi30k_path, read_lines
from ..errors import ConfigError
from ..models import EncoderOnly
from ..recipes import section
from ..training.trainer import TrainConfig
from . import Setup, starting_model
from .encoder_data import SentenceBatch, sentence_batch
from .masked_lm import TRAINING_KEYS
from .pretrained import encoder_from

DATA_KEYS = {"languages", "batch_tokens", "max_tokens", "val_sentences"}
MODEL_KEYS = {"init", "pooling", "dropout"}


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
    data = section(recipe, "data", DATA_KEYS)
    model_recipe = section(recipe, "model", MODEL_KEYS)
    train_config = TrainConfig(**section(recipe, "training", TRAINING_KEYS))
    languages = data.get("languages", list(MULTI30K_LANGUAGES))
    model = starting_model(run_dir, resume, None, lambda: encoder_from(
        init, model_recipe, n_classes=len(languages), pooling=model_recipe.get("pooling", "cls"), mlm_head=False))
    if not isinstance(model, EncoderOnly) or model.classifier is None:
        raise ConfigError("task 'classification' needs an encoder with a classification head")
    model.task = {"task": "classification", "labels": languages, "recipe": recipe.get("name")}
    model.tokenizer.enable_truncation(data.get("max_tokens", model.config.max_len))

    def dataset(split: str, seed: int, limit: int | None = None) -> LabelledData:
        sentences, labels = labelled(split, languages)
        if limit:
            step = max(1, len(sentences) // limit)
            sentences, labels = sentences[::step], labels[::step]
        rows = [e.ids for e in model.tokenizer.encode_batch(sentences)]
        return LabelledData(rows, labels, data.get("batch_tokens", 8192), seed, model.config.pad_id)

    val = dataset("val", 0, data.get("val_sentences"))
    return Setup(model, dataset("train", train_config.seed), ClassificationLoss(), train_config,
                 make_evaluator(val, languages, device), "val_accuracy")


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
    def evaluate(model: nn.Module) -> dict[str, float]:
        return {f"val_{k}": v for k, v in accuracy_by_label(model, val, names, device).items()}

    return evaluate
