"""Contrastive fine-tuning of sentence embeddings with in-batch negatives.

Two descriptions of the same image should embed close together, and descriptions of the other images
in the batch far apart: a softmax over the batch's similarities picks the right partner (the InfoNCE
loss of van den Oord et al., 2018; the MultipleNegativesRankingLoss of sentence-transformers).
Recipe `multi30k-captions-contrastive`: Multi30k task 2 training captions, starting from multi30k-bert.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config, require
from ..data.batching import LazyEpoch, shuffled_groups
from ..data.datasets import multi30k_captions
from ..errors import ConfigError
from ..evaluation.metrics import retrieval_scores
from ..models import EncoderOnly
from ..training.trainer import TrainConfig
from .encoder_data import PairBatch, sentence_batch
from .pretrained import PretrainedTable, encoder_from
from .recipe import Setup, read_tables, starting_model


@dataclass(frozen=True)
class DataTable(Config):
    """[data]: whose captions (Multi30k task 2), the batch of in-batch negatives, the similarity scale."""

    KIND: ClassVar[str] = "key"
    language: Literal["en", "de"] = "en"
    batch_size: int = 128
    max_tokens: int | None = None  # longer captions are truncated (default: the model's max_len)
    scale: float = 20.0
    val_images: int = 1014

    def validate(self) -> None:
        require(self, "batch_size", self.batch_size >= 2, "at least 2 (the other rows are the negatives)")
        require(self, "max_tokens", self.max_tokens is None or self.max_tokens >= 3, "at least 3 (or unset)")
        require(self, "scale", self.scale > 0, "positive")
        require(self, "val_images", self.val_images >= 2, "at least 2")


class CaptionPairs:
    """Per epoch, each image gives one pair of its descriptions, drawn from (seed, epoch); images are shuffled
    into batches of pairs of about the same length (the longer side's), so the other rows of a batch are
    descriptions of other images, and little of it is padding."""

    def __init__(self, rows: list[list[list[int]]], batch_size: int, seed: int, pad_id: int):
        self.rows, self.batch_size, self.seed, self.pad_id = rows, batch_size, seed, pad_id  # rows[k][image]

    def batches(self, epoch: int) -> LazyEpoch:
        picks = random.Random(self.seed * 7919 + epoch)
        pairs = [picks.sample(range(len(self.rows)), 2) for _ in range(len(self.rows[0]))]
        lengths = [max(len(self.rows[k][i]) for k in pair) for i, pair in enumerate(pairs)]
        return LazyEpoch(shuffled_groups(len(pairs), self.batch_size, self.seed, epoch, lengths),
                         lambda index, group: PairBatch(*(sentence_batch([self.rows[pairs[i][side]][i] for i in group],
                                                                         torch.arange(len(group)), self.pad_id)
                                                          for side in (0, 1))))


class InBatchNegativesLoss:
    """Cross-entropy over scaled cosine similarities, both ways (first -> second and second -> first)."""

    def __init__(self, scale: float = 20.0):
        self.scale = scale  # 1 / temperature: sharper softmax over similarities in [-1, 1]

    def __call__(self, model: nn.Module, batch: PairBatch) -> tuple[Tensor, int]:
        a = F.normalize(model.sentence_vectors(batch.first.ids, batch.first.mask).float(), dim=-1)
        b = F.normalize(model.sentence_vectors(batch.second.ids, batch.second.mask).float(), dim=-1)
        logits = self.scale * a @ b.t()  # (B, B): the diagonal holds the right pairs
        target = torch.arange(a.shape[0], device=a.device)
        loss = (F.cross_entropy(logits, target, reduction="sum") + F.cross_entropy(logits.t(), target,
                                                                                  reduction="sum")) / 2
        return loss, a.shape[0]


def prepare(recipe: dict[str, Any], run_dir: Path, resume: bool = False, init: nn.Module | None = None,
            device: torch.device | str = "cpu") -> Setup:
    tables = read_tables(recipe, data=DataTable, model=PretrainedTable, training=TrainConfig)
    data, train_config = tables["data"], tables["training"]
    model = starting_model(run_dir, resume, None, lambda: encoder_from(
        init, tables["model"], pooling="mean", normalize_embeddings=True, mlm_head=False, n_classes=0))
    if not isinstance(model, EncoderOnly):
        raise ConfigError("task 'sentence_embedding' needs an encoder-only model")
    model.task = {"task": "sentence_embedding", "recipe": recipe.get("name")}
    tokenizer = model.tokenizer
    tokenizer.enable_truncation(min(data.max_tokens or model.config.max_len, model.config.max_len))

    def encoded(split: str) -> list[list[list[int]]]:
        return [[e.ids for e in tokenizer.encode_batch(multi30k_captions(split, k, data.language))]
                for k in range(1, 6)]

    train = CaptionPairs(encoded("train"), data.batch_size, train_config.seed, model.config.pad_id)
    val = [multi30k_captions("val", k, data.language)[: data.val_images] for k in (1, 2)]
    return Setup(model, train, InBatchNegativesLoss(data.scale), train_config, make_evaluator(val),
                 "val_recall_at_1", floor=2 / max(1, len(val[0])))


def make_evaluator(val: list[list[str]]) -> Callable[[nn.Module], dict[str, float]]:
    """Caption retrieval on held-out images: description 1 finds the same image's description 2."""

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict[str, float]:
        queries, candidates = model.embed(val[0]), model.embed(val[1])
        return {f"val_{k}": v for k, v in retrieval_scores(queries, candidates).items()}

    return evaluate
