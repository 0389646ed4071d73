"""Masked-language-model pretraining of an encoder (BERT): restore the 15% of tokens that were hidden.

Recipe tables: [data] (which Multi30k files: task 1 training text in each language and the task 2
captions; never val or test), [tokenizer] (WordPiece), [model] (an encoder preset and fields) and [training].
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..config import ModelConfig, preset
from ..data.batching import bucket_by_tokens
from ..data.datasets import MULTI30K_LANGUAGES, multi30k_captions, multi30k_path, read_lines
from ..data.masking import IGNORE, mask_tokens
from ..data.tokenizers import BERT_SPECIALS, special_ids, train_wordpiece
from ..errors import ConfigError
from ..models import EncoderOnly, build_model
from ..recipes import section
from ..training.losses import linear_cross_entropy
from ..training.trainer import TrainConfig
from . import Setup, starting_model
from .encoder_data import LazyEpoch, SentenceBatch, batch_generator, sentence_batch

DATA_KEYS = {"languages", "captions", "batch_tokens", "mask_rate", "max_tokens", "val_sentences"}
TOKENIZER_KEYS = {"kind", "vocab_size", "lowercase", "min_frequency"}
MODEL_KEYS = {"preset"} | {f.name for f in dataclasses.fields(ModelConfig)}
TRAINING_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}


def multi30k_sentences(split: str, languages: list[str], captions: bool) -> list[str]:
    """Task 1 text of `split` in each language, and the task 2 captions (en and de) when asked."""
    sentences = [line for lang in languages for line in read_lines(multi30k_path(split, lang))]
    if captions:
        caption_split = "test_2016" if split == "test_2016_flickr" else split
        sentences += [line for k in range(1, 6) for lang in ("en", "de")
                      for line in multi30k_captions(caption_split, k, lang)]
    return [s for s in sentences if s.strip()]


class MaskedData:
    """Sentences in token-count batches; each batch's masks are drawn fresh from (seed, epoch, batch)."""

    def __init__(self, rows: list[list[int]], batch_tokens: int, seed: int, mask_id: int, vocab_size: int,
                 pad_id: int, specials: list[int], rate: float):
        self.rows, self.batch_tokens, self.seed = rows, batch_tokens, seed
        self.mask_id, self.vocab_size, self.pad_id, self.rate = mask_id, vocab_size, pad_id, rate
        self.specials = torch.tensor(specials)
        self.lengths = [len(r) for r in rows]

    def batches(self, epoch: int) -> LazyEpoch:
        return LazyEpoch(bucket_by_tokens(self.lengths, self.batch_tokens, self.seed, epoch),
                         lambda index, group: self.masked(group, batch_generator(self.seed, epoch, index)))

    def masked(self, group: list[int], generator: torch.Generator) -> SentenceBatch:
        batch = sentence_batch([self.rows[i] for i in group], torch.empty(0), self.pad_id)
        maskable = batch.mask & ~torch.isin(batch.ids, self.specials)
        ids, labels = mask_tokens(batch.ids, maskable, self.mask_id, self.vocab_size, generator, self.rate,
                                  first_regular_id=len(BERT_SPECIALS))
        return SentenceBatch(ids, batch.mask, labels)


class MaskedLMLoss:
    """Cross-entropy at the chosen positions only: the MLM head runs on those rows, not the whole batch."""

    def __call__(self, model: nn.Module, batch: SentenceBatch) -> tuple[Tensor, int]:
        hidden = model.encode(batch.ids, batch.mask)  # (B, T, C)
        chosen = batch.labels != IGNORE
        head = model.mlm_head
        h = head.norm(head.act(head.dense(hidden[chosen])))  # (N, C)
        return linear_cross_entropy(h, head.output.weight, head.output.bias, batch.labels[chosen]), int(chosen.sum())


def prepare(recipe: dict[str, Any], run_dir: Path, resume: bool = False, init: nn.Module | None = None,
            device: torch.device | str = "cpu") -> Setup:
    data = section(recipe, "data", DATA_KEYS)
    tokenizer_recipe = section(recipe, "tokenizer", TOKENIZER_KEYS)
    model_recipe = dict(section(recipe, "model", MODEL_KEYS))
    train_config = TrainConfig(**section(recipe, "training", TRAINING_KEYS))
    languages = data.get("languages", list(MULTI30K_LANGUAGES))
    train = multi30k_sentences("train", languages, data.get("captions", True))
    val = multi30k_sentences("val", languages, False)[: data.get("val_sentences", 4000)]
    def build() -> nn.Module:
        if tokenizer_recipe.get("kind", "wordpiece") != "wordpiece":
            raise ConfigError(f"[tokenizer] kind: {tokenizer_recipe['kind']!r} is not allowed here; use 'wordpiece'")
        tokenizer = train_wordpiece(train, tokenizer_recipe.get("vocab_size", 16000),
                                    tokenizer_recipe.get("lowercase", False), tokenizer_recipe.get("min_frequency", 2))
        base = preset(model_recipe.pop("preset")) if "preset" in model_recipe else preset("bert-tiny")
        config = base.replace(**{**model_recipe, **special_ids(tokenizer), "family": "encoder", "mlm_head": True,
                                 "vocab_size": tokenizer.get_vocab_size()})
        model = build_model(config)
        model.tokenizer = tokenizer
        return model

    model = starting_model(run_dir, resume, init, build)
    if not isinstance(model, EncoderOnly) or model.mlm_head is None:
        raise ConfigError("task 'masked_lm' needs an encoder-only model with an MLM head")
    model.task = {"task": "masked_lm", "recipe": recipe.get("name")}
    tokenizer, config = model.tokenizer, model.config
    max_tokens = data.get("max_tokens", config.max_len)
    tokenizer.enable_truncation(max_tokens)
    mask_id = tokenizer.token_to_id("[MASK]")
    specials = [tokenizer.token_to_id(t) for t in BERT_SPECIALS]

    def dataset(sentences: list[str], seed: int) -> MaskedData:
        rows = [e.ids for e in tokenizer.encode_batch(sentences)]
        return MaskedData(rows, data.get("batch_tokens", 8192), seed, mask_id, config.vocab_size, config.pad_id,
                          specials, data.get("mask_rate", 0.15))

    return Setup(model, dataset(train, train_config.seed), MaskedLMLoss(), train_config,
                 make_evaluator(dataset(val, 0), device), "val_loss")


def make_evaluator(val: MaskedData, device) -> Callable[[nn.Module], dict[str, float]]:
    """Loss and accuracy of restoring the masked tokens of held-out sentences (the same masks every time)."""
    batches = list(val.batches(0))

    def evaluate(model: nn.Module) -> dict[str, float]:
        total, correct, count = 0.0, 0, 0
        for batch in batches:
            batch = batch.to(device)
            hidden = model.encode(batch.ids, batch.mask)
            chosen = batch.labels != IGNORE
            logits = model.mlm_head(hidden[chosen])
            total += float(torch.nn.functional.cross_entropy(logits.float(), batch.labels[chosen], reduction="sum"))
            correct += int((logits.argmax(-1) == batch.labels[chosen]).sum())
            count += int(chosen.sum())
        return {"val_loss": total / count, "val_accuracy": correct / count}

    return evaluate
