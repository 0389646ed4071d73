"""Contrastive fine-tuning of sentence embeddings with in-batch negatives.

Two descriptions of the same image should embed close together, and descriptions of the other images
in the batch far apart: a softmax over the batch's similarities picks the right partner (the InfoNCE
loss of van den Oord et al., 2018; the MultipleNegativesRankingLoss of sentence-transformers).
Recipe `multi30k-captions-contrastive`: Multi30k task 2 training captions, starting from multi30k-bert.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.datasets import multi30k_captions
from ..evaluation.metrics import retrieval_scores
from ..models import EncoderOnly
from ..recipes import section
from ..training.trainer import TrainConfig
from . import Setup, starting_model
from .encoder_data import LazyEpoch, PairBatch, sentence_batch, shuffled_groups
from .masked_lm import TRAINING_KEYS
from .pretrained import encoder_from

DATA_KEYS = {"language", "batch_size", "max_tokens", "scale", "val_images"}
MODEL_KEYS = {"init", "dropout"}


class CaptionPairs:
    """Per epoch, each image gives one pair of its descriptions, drawn from (seed, epoch); images are shuffled
    into batches, so the other rows of a batch are descriptions of other images."""

    def __init__(self, rows: list[list[list[int]]], batch_size: int, seed: int, pad_id: int):
        self.rows, self.batch_size, self.seed, self.pad_id = rows, batch_size, seed, pad_id  # rows[k][image]

    def batches(self, epoch: int) -> LazyEpoch:
        picks = random.Random(self.seed * 7919 + epoch)
        pairs = [picks.sample(range(len(self.rows)), 2) for _ in range(len(self.rows[0]))]
        return LazyEpoch(shuffled_groups(len(pairs), self.batch_size, self.seed, epoch),
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
    data = section(recipe, "data", DATA_KEYS)
    model_recipe = section(recipe, "model", MODEL_KEYS)
    train_config = TrainConfig(**section(recipe, "training", TRAINING_KEYS))
    language = data.get("language", "en")
    model = starting_model(run_dir, resume, None, lambda: encoder_from(
        init, model_recipe, pooling="mean", normalize_embeddings=True, mlm_head=False, n_classes=0))
    assert isinstance(model, EncoderOnly)
    model.task = {"task": "sentence_embedding", "recipe": recipe.get("name")}
    tokenizer = model.tokenizer
    tokenizer.enable_truncation(data.get("max_tokens", model.config.max_len))

    def encoded(split: str) -> list[list[list[int]]]:
        return [[e.ids for e in tokenizer.encode_batch(multi30k_captions(split, k, language))] for k in range(1, 6)]

    train = CaptionPairs(encoded("train"), data.get("batch_size", 128), train_config.seed, model.config.pad_id)
    n_val = data.get("val_images", 1014)
    val = [multi30k_captions("val", k, language)[:n_val] for k in (1, 2)]
    return Setup(model, train, InBatchNegativesLoss(data.get("scale", 20.0)), train_config,
                 make_evaluator(val), "val_recall_at_1")


def make_evaluator(val: list[list[str]]) -> Callable[[nn.Module], dict[str, float]]:
    """Caption retrieval on held-out images: description 1 finds the same image's description 2."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        queries, candidates = model.embed(val[0]), model.embed(val[1])
        return {f"val_{k}": v for k, v in retrieval_scores(queries, candidates).items()}

    return evaluate
