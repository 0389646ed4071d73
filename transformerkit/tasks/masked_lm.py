"""Masked-language-model pretraining of an encoder (BERT): restore the 15% of tokens that were hidden.

Recipe tables: [data] (which Multi30k files: task 1 training text in each language and the task 2
captions; never val or test), [tokenizer] (WordPiece), [model] (an encoder preset and fields) and [training].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import torch
from torch import Tensor, nn

from ..config import Config, preset, require
from ..data.batching import LazyEpoch, batch_generator, bucket_by_tokens
from ..data.datasets import MULTI30K_LANGUAGES, multi30k_captions, multi30k_path, read_lines
from ..data.masking import IGNORE, mask_tokens
from ..data.tokenizers import BERT_SPECIALS, special_ids, train_wordpiece
from ..errors import ConfigError, DataError
from ..models import EncoderOnly, build_model
from ..training.losses import linear_cross_entropy
from ..training.trainer import TrainConfig
from .encoder_data import SentenceBatch, sentence_batch
from .recipe import Setup, model_keys, read_tables, starting_model


@dataclass(frozen=True)
class DataTable(Config):
    """[data]: which Multi30k text to pretrain on (training splits only), and how to mask and batch it."""

    KIND: ClassVar[str] = "key"
    languages: list[str] = field(default_factory=lambda: list(MULTI30K_LANGUAGES))
    captions: bool = True  # add Multi30k task 2's English and German captions
    batch_tokens: int = 8192
    mask_rate: float = 0.15
    max_tokens: int | None = None  # longer sentences are truncated (default: the model's max_len)
    val_sentences: int = 4000

    def validate(self) -> None:
        require(self, "languages", bool(self.languages) and set(self.languages) <= set(MULTI30K_LANGUAGES),
                f"a non-empty list of {', '.join(MULTI30K_LANGUAGES)}")
        require(self, "mask_rate", 0 < self.mask_rate < 1, "in (0, 1)")
        for name in ("batch_tokens", "val_sentences"):
            require(self, name, getattr(self, name) >= 1, "at least 1")
        require(self, "max_tokens", self.max_tokens is None or self.max_tokens >= 3, "at least 3 (or unset)")


@dataclass(frozen=True)
class TokenizerTable(Config):
    KIND: ClassVar[str] = "key"
    kind: Literal["wordpiece"] = "wordpiece"
    vocab_size: int = 16000
    lowercase: bool = False
    min_frequency: int = 2

    def validate(self) -> None:
        require(self, "vocab_size", self.vocab_size >= 16, "at least 16")


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
        hidden = model.hidden_states(batch.ids, batch.mask)  # (B, T, C)
        chosen = batch.labels != IGNORE
        output = model.output_layer()
        features = model.mlm_features(hidden[chosen])  # (N, C)
        return linear_cross_entropy(features, output.weight, output.bias, batch.labels[chosen]), int(chosen.sum())


def prepare(recipe: dict[str, Any], run_dir: Path, resume: bool = False, init: nn.Module | None = None,
            device: torch.device | str = "cpu") -> Setup:
    tables = read_tables(recipe, data=DataTable, tokenizer=TokenizerTable, model=model_keys("preset"),
                         training=TrainConfig)
    data, train_config = tables["data"], tables["training"]
    train = multi30k_sentences("train", data.languages, data.captions)
    val = multi30k_sentences("val", data.languages, False)[: data.val_sentences]
    if not train or not val:
        raise DataError(f"no {'training' if not train else 'validation'} sentences in Multi30k for "
                        f"{', '.join(data.languages)}")

    def build() -> nn.Module:
        fields, t = tables["model"], tables["tokenizer"]
        tokenizer = train_wordpiece(train, t.vocab_size, t.lowercase, t.min_frequency)
        base = preset(fields.pop("preset")) if "preset" in fields else preset("bert-tiny")
        model = build_model(base.replace(**{**fields, **special_ids(tokenizer), "family": "encoder",
                                            "mlm_head": True, "vocab_size": tokenizer.get_vocab_size()}))
        model.tokenizer = tokenizer
        return model

    model = starting_model(run_dir, resume, init, build)
    if not isinstance(model, EncoderOnly) or not model.config.mlm_head:
        raise ConfigError("task 'masked_lm' needs an encoder-only model with an MLM head")
    model.task = {"task": "masked_lm", "recipe": recipe.get("name")}
    tokenizer, config = model.tokenizer, model.config
    tokenizer.enable_truncation(min(data.max_tokens or config.max_len, config.max_len))
    mask_id = tokenizer.token_to_id("[MASK]")
    specials = [tokenizer.token_to_id(t) for t in BERT_SPECIALS]

    def dataset(sentences: list[str], seed: int) -> MaskedData:
        rows = [e.ids for e in tokenizer.encode_batch(sentences)]
        return MaskedData(rows, data.batch_tokens, seed, mask_id, config.vocab_size, config.pad_id, specials,
                          data.mask_rate)

    return Setup(model, dataset(train, train_config.seed), MaskedLMLoss(), train_config,
                 make_evaluator(dataset(val, 0), device), "val_loss",
                 floor=0.9 * math.log(config.vocab_size))  # uniform guessing scores log(vocab)


def make_evaluator(val: MaskedData, device) -> Callable[[nn.Module], dict[str, float]]:
    """Loss and accuracy of restoring the masked tokens of held-out sentences (the same masks every time)."""
    batches = list(val.batches(0))

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict[str, float]:
        total, correct, count = 0.0, 0, 0
        for batch in batches:
            batch = batch.to(device)
            hidden = model.hidden_states(batch.ids, batch.mask)
            chosen = batch.labels != IGNORE
            logits = model.mlm_logits(hidden[chosen])
            total += float(torch.nn.functional.cross_entropy(logits.float(), batch.labels[chosen], reduction="sum"))
            correct += int((logits.argmax(-1) == batch.labels[chosen]).sum())
            count += int(chosen.sum())
        return {"val_loss": total / count, "val_accuracy": correct / count}

    return evaluate
