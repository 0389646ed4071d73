"""Translation: a parallel corpus -> subword tokenizer -> encoder-decoder trained with label smoothing,
selected by validation BLEU.

Recipe tables: [data] (corpus, languages or files, batch size in tokens), [tokenizer] (BPE size, joint or
separate vocabularies), [model] (a preset and any ModelConfig fields), [training] (TrainConfig) and
[decoding] (DecodeOptions: the defaults `translate` and `evaluate` use for the trained model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import torch
from torch import Tensor, nn

from ..config import Config, ModelConfig, RNNConfig, preset, require
from ..data.batching import Seq2SeqBatch, bucket_by_tokens, seq2seq_batch
from ..data.bpe_dropout import BPEDropout
from ..data.datasets import Parallel, multi30k, read_parallel
from ..data.tokenizers import encode, special_ids, train_bpe
from ..errors import ConfigError, DataError
from ..evaluation.metrics import perplexity, sacrebleu_score
from ..inference.translate import DecodeOptions, translate
from ..models import EncoderDecoder, RNNSeq2Seq, build_model
from ..training.losses import linear_cross_entropy, rdrop_loss
from ..training.trainer import TrainConfig
from .recipe import Setup, model_keys, read_tables, starting_model, table_errors


@dataclass(frozen=True)
class DataTable(Config):
    """[data]: which parallel corpus, and how it is batched."""

    KIND: ClassVar[str] = "key"
    corpus: Literal["multi30k", "files"] = "multi30k"
    source: str | None = None  # multi30k: the languages, e.g. "de" -> "en"
    target: str | None = None
    train_source: str | None = None  # files: two aligned files per split
    train_target: str | None = None
    val_source: str | None = None
    val_target: str | None = None
    batch_tokens: int = 4096  # padded positions per side per batch
    max_sentence_tokens: int | None = None  # longer training pairs are left out (default: the model's max_len)
    val_sentences: int | None = None  # evaluate on the first N validation pairs only

    def validate(self) -> None:
        needed = ("source", "target") if self.corpus == "multi30k" else (
            "train_source", "train_target", "val_source", "val_target")
        for name in needed:
            require(self, name, getattr(self, name) is not None, f"set when corpus = {self.corpus!r}")
        require(self, "batch_tokens", self.batch_tokens >= 1, "at least 1")
        for name in ("max_sentence_tokens", "val_sentences"):
            require(self, name, getattr(self, name) is None or getattr(self, name) >= 1, "at least 1 (or unset)")


@dataclass(frozen=True)
class TokenizerTable(Config):
    """[tokenizer]: BPE trained on the training split, or an existing tokenizer file."""

    KIND: ClassVar[str] = "key"
    kind: Literal["bpe"] = "bpe"
    vocab_size: int = 8000
    joint: bool = True  # one vocabulary for both languages (shared embeddings and output layer)
    min_frequency: int = 2
    path: str | None = None  # an existing joint tokenizer.json (an experiment shares one across models)
    dropout: float = 0.0  # BPE-dropout on the training data (data/bpe_dropout.py): a new segmentation each epoch

    def validate(self) -> None:
        require(self, "vocab_size", self.vocab_size >= 8, "at least 8")
        require(self, "min_frequency", self.min_frequency >= 1, "at least 1")
        require(self, "dropout", 0 <= self.dropout < 1, "in [0, 1)")
        require(self, "path", self.path is None or Path(self.path).is_file(), "an existing tokenizer file")


def load_corpus(data: DataTable, split: str) -> Parallel:
    """The recipe's corpus: Multi30k by language pair, or two aligned files per split; never empty."""
    if data.corpus == "multi30k":
        pairs = multi30k("train" if split == "train" else "val", data.source, data.target)
        where = f"Multi30k {split} {data.source}-{data.target}"
    else:
        pairs = read_parallel(getattr(data, f"{split}_source"), getattr(data, f"{split}_target"))
        where = f"{getattr(data, f'{split}_source')} / {getattr(data, f'{split}_target')}"
    if not len(pairs):
        raise DataError(f"{where}: no sentence pairs to {'train on' if split == 'train' else 'validate with'}")
    return pairs


class TranslationLoss:
    """Label-smoothed cross-entropy of the next target token (teacher forcing), padding excluded.

    Works for any sequence-to-sequence model that gives target-side hidden states and its output layer:
    the Transformer's EncoderDecoder and the recurrent models alike. With `rdrop` > 0 every batch goes through
    the model twice (stacked, one forward of twice the rows), and the loss adds R-Drop's divergence between the
    two passes (training/losses.py, rdrop_loss), at twice the activation memory. The loss then counts each target
    token twice, and the training loss logged includes the divergence: it compares only with runs at the same rdrop.
    """

    def __init__(self, label_smoothing: float = 0.1, rdrop: float = 0.0):
        self.label_smoothing, self.rdrop = label_smoothing, rdrop

    def __call__(self, model: nn.Module, batch: Seq2SeqBatch) -> tuple[Tensor, int]:
        passes = 2 if self.rdrop else 1
        inputs = (batch.source, batch.target_in, batch.source_mask, batch.target_mask)  # (B, S), (B, T), ...
        source, target_in, source_mask, target_mask = (x.repeat(2, 1) for x in inputs) if self.rdrop else inputs
        hidden = model.hidden_states(source, target_in, source_mask, target_mask)  # (passes * B, T, C)
        output, target = model.output_layer(), batch.target_out[batch.target_mask]  # target (N,)
        if self.rdrop:
            loss = rdrop_loss(hidden[target_mask], output.weight, output.bias, target, self.label_smoothing,
                              self.rdrop)
        else:
            loss = linear_cross_entropy(hidden[target_mask], output.weight, output.bias, target, self.label_smoothing)
        return loss, passes * batch.n_target_tokens


class TranslationData:
    """Tokenized sentence pairs, served as length-bucketed batches of about `batch_tokens` tokens.

    With `resegment` (BPE-dropout for the source and the target side), each epoch's pairs are segmented anew;
    a pair whose new segmentation is longer than `limit` tokens a side keeps its deterministic one.
    """

    def __init__(self, sources: list[list[int]], targets: list[list[int]], batch_tokens: int, seed: int,
                 pad_id: int, bos_id: int, eos_id: int, resegment: tuple[BPEDropout, BPEDropout] | None = None,
                 limit: int | None = None):
        self.sources, self.targets = sources, targets
        self.batch_tokens, self.seed = batch_tokens, seed
        self.special = dict(pad_id=pad_id, bos_id=bos_id, eos_id=eos_id)
        self.resegment, self.limit = resegment, limit
        self._cache: tuple[int, list[Seq2SeqBatch]] | None = None

    def pairs(self, epoch: int) -> tuple[list[list[int]], list[list[int]]]:
        """The (sources, targets) token ids of this epoch."""
        if self.resegment is None:
            return self.sources, self.targets
        sources, targets = (side.sample(epoch) for side in self.resegment)
        limit = self.limit or math.inf
        fits = [max(len(s), len(t)) <= limit for s, t in zip(sources, targets)]
        return ([s if ok else old for s, old, ok in zip(sources, self.sources, fits)],
                [t if ok else old for t, old, ok in zip(targets, self.targets, fits)])

    def batches(self, epoch: int) -> list[Seq2SeqBatch]:
        if self._cache is None or self._cache[0] != epoch:
            sources, targets = self.pairs(epoch)
            lengths = [max(len(s), len(t)) + 1 for s, t in zip(sources, targets)]
            groups = bucket_by_tokens(lengths, self.batch_tokens, self.seed, epoch)
            self._cache = (epoch, [seq2seq_batch([sources[i] for i in g], [targets[i] for i in g], g,
                                                 **self.special) for g in groups])
        return self._cache[1]


def prepare(recipe: dict[str, Any], run_dir: Path, resume: bool = False, init: nn.Module | None = None,
            device: torch.device | str = "cpu") -> Setup:
    training = dict(recipe.get("training") or {})
    label_smoothing, rdrop = training.pop("label_smoothing", 0.1), training.pop("rdrop", 0.0)
    tables = read_tables({**recipe, "training": training}, data=DataTable, tokenizer=TokenizerTable,
                         model=model_keys("preset", "architecture", rnn=True), training=TrainConfig,
                         decoding=DecodeOptions)
    data, train_config = tables["data"], tables["training"]
    if not isinstance(label_smoothing, (int, float)) or not 0 <= label_smoothing < 1:
        raise ConfigError(f"[training] label_smoothing: {label_smoothing!r} is not allowed; it must be in [0, 1)")
    if not isinstance(rdrop, (int, float)) or isinstance(rdrop, bool) or not 0 <= rdrop < math.inf:
        raise ConfigError(f"[training] rdrop: {rdrop!r} is not allowed; it must be a finite number, 0 (off) or "
                          "more (R-Drop's alpha)")
    train, val = load_corpus(data, "train"), load_corpus(data, "val")

    model = starting_model(run_dir, resume, init, lambda: new_model(tables["model"], train, tables["tokenizer"]))
    if not isinstance(model, (EncoderDecoder, RNNSeq2Seq)):
        raise ConfigError("task 'translation' needs an encoder-decoder model (a Transformer or a recurrent one)")
    model.task = {"task": "translation", "corpus": data.corpus, "source_lang": data.source,
                  "target_lang": data.target, "decoding": tables["decoding"].to_dict(), "recipe": recipe.get("name")}

    config = model.config
    limit = data.max_sentence_tokens or config.max_len - 1
    if limit >= config.max_len:
        raise ConfigError(f"[data] max_sentence_tokens: {limit} is not allowed; it must be below the model's "
                          f"max_len ({config.max_len}), which counts the end token too")
    sources, targets = encode(model.source_tokenizer, train.sources), encode(model.target_tokenizer, train.targets)
    keep = [i for i, (s, t) in enumerate(zip(sources, targets)) if len(s) <= limit and len(t) <= limit]
    if not keep:
        raise DataError(f"no training pair has at most {limit} tokens a side ([data] max_sentence_tokens): "
                        "nothing is left to train on")
    resegment = None
    if tables["tokenizer"].dropout > 0:
        p, seed = tables["tokenizer"].dropout, train_config.seed
        resegment = (BPEDropout(model.source_tokenizer, [train.sources[i] for i in keep], p, seed),
                     BPEDropout(model.target_tokenizer, [train.targets[i] for i in keep], p, seed + 1))
    train_data = TranslationData([sources[i] for i in keep], [targets[i] for i in keep], data.batch_tokens,
                                 train_config.seed, config.pad_id, config.bos_id, config.eos_id, resegment, limit)
    n_val = data.val_sentences or len(val)
    evaluate = make_evaluator(val.sources[:n_val], val.targets[:n_val], data.batch_tokens, device)
    return Setup(model, train_data, TranslationLoss(label_smoothing, rdrop), train_config, evaluate, "val_bleu",
                 floor=1.0)


def new_model(fields: dict[str, Any], train: Parallel, tokenizer_table: TokenizerTable) -> nn.Module:
    """Train the tokenizer(s) on the training split, then build the model sized to the vocabulary."""
    t = tokenizer_table
    joint = t.joint
    if t.path is not None:  # an existing joint tokenizer (an experiment shares one across models)
        from tokenizers import Tokenizer

        source_tokenizer = target_tokenizer = Tokenizer.from_file(t.path)
        joint = True
    elif joint:
        source_tokenizer = target_tokenizer = train_bpe(train.sources + train.targets, t.vocab_size, t.min_frequency)
    else:
        source_tokenizer = train_bpe(train.sources, t.vocab_size, t.min_frequency)
        target_tokenizer = train_bpe(train.targets, t.vocab_size, t.min_frequency)
    sizes = {**special_ids(target_tokenizer), "vocab_size": source_tokenizer.get_vocab_size(),
             "target_vocab_size": None if joint else target_tokenizer.get_vocab_size(),
             "share_embeddings": joint and fields.get("share_embeddings", True)}
    architecture = fields.pop("architecture", "transformer")
    with table_errors("model"):
        if architecture == "rnn":
            model = RNNSeq2Seq(RNNConfig.from_dict({**fields, **sizes}))
        elif architecture == "transformer":
            base = preset(fields.pop("preset")) if "preset" in fields else ModelConfig()
            model = build_model(base.replace(**{**fields, **sizes, "family": "encoder-decoder"}))
        else:
            raise ConfigError(f"architecture: {architecture!r} is not allowed; choose 'transformer' or 'rnn'")
    model.source_tokenizer, model.target_tokenizer = source_tokenizer, target_tokenizer
    return model


def make_evaluator(sources: list[str], references: list[str], batch_tokens: int,
                   device: torch.device | str) -> Callable[[nn.Module], dict[str, float]]:
    """Validation loss and perplexity (teacher forcing, no smoothing) and BLEU of greedy translations."""
    loss = TranslationLoss(label_smoothing=0.0)

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict[str, float]:
        c = model.config
        src, tgt = encode(model.source_tokenizer, sources), encode(model.target_tokenizer, references)
        total, tokens = 0.0, 0
        for group in bucket_by_tokens([max(len(s), len(t)) + 1 for s, t in zip(src, tgt)], batch_tokens, 0, 0, False):
            batch = seq2seq_batch([src[i] for i in group], [tgt[i] for i in group], group, c.pad_id, c.bos_id,
                                  c.eos_id).to(device)
            value, n = loss(model, batch)
            total, tokens = total + float(value), tokens + n
        hypotheses = translate(model, sources, beam=1)
        mean = total / max(tokens, 1)
        return {"val_loss": mean, "val_ppl": perplexity(mean),
                "val_bleu": float(sacrebleu_score(hypotheses, references)["sacrebleu"])}

    return evaluate
