"""Translation: a parallel corpus -> subword tokenizer -> encoder-decoder trained with label smoothing,
selected by validation BLEU.

Recipe tables: [data] (corpus, languages or files, batch size in tokens), [tokenizer] (BPE size, joint or
separate vocabularies), [model] (a preset and any ModelConfig fields), [training] (TrainConfig) and
[decoding] (DecodeOptions: the defaults `translate` and `evaluate` use for the trained model).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..config import ModelConfig, preset
from ..data.batching import Seq2SeqBatch, bucket_by_tokens, seq2seq_batch
from ..data.datasets import Parallel, multi30k, read_parallel
from ..data.tokenizers import encode, special_ids, train_bpe
from ..errors import ConfigError
from ..evaluation.metrics import sacrebleu_score
from ..inference.translate import DecodeOptions, translate
from ..models import EncoderDecoder, RNNConfig, RNNSeq2Seq, build_model
from ..recipes import section
from ..training.objectives import TranslationLoss
from ..training.trainer import TrainConfig
from . import Setup, starting_model

DATA_KEYS = {"corpus", "source", "target", "train_source", "train_target", "val_source", "val_target",
             "batch_tokens", "max_sentence_tokens", "val_sentences"}
TOKENIZER_KEYS = {"kind", "vocab_size", "joint", "min_frequency", "path"}
MODEL_KEYS = {"preset", "architecture"} | {f.name for f in dataclasses.fields(ModelConfig)} | \
    {f.name for f in dataclasses.fields(RNNConfig)}
TRAINING_KEYS = {f.name for f in dataclasses.fields(TrainConfig)} | {"label_smoothing"}
DECODING_KEYS = {f.name for f in dataclasses.fields(DecodeOptions)}


def load_corpus(data: dict[str, Any], split: str) -> Parallel:
    """The recipe's corpus: Multi30k by language pair, or two aligned files per split."""
    corpus = data.get("corpus", "multi30k")
    if corpus == "multi30k":
        return multi30k("train" if split == "train" else "val", data["source"], data["target"])
    if corpus == "files":
        try:
            return read_parallel(data[f"{split}_source"], data[f"{split}_target"])
        except KeyError as missing:
            raise ConfigError(f"[data] {missing.args[0]}: needed when corpus = 'files'") from None
    raise ConfigError(f"[data] corpus: {corpus!r} is not allowed; choose 'multi30k' or 'files'")


class TranslationData:
    """Tokenized sentence pairs, served as length-bucketed batches of about `batch_tokens` tokens."""

    def __init__(self, sources: list[list[int]], targets: list[list[int]], batch_tokens: int, seed: int,
                 pad_id: int, bos_id: int, eos_id: int):
        self.sources, self.targets = sources, targets
        self.batch_tokens, self.seed = batch_tokens, seed
        self.special = dict(pad_id=pad_id, bos_id=bos_id, eos_id=eos_id)
        self.lengths = [max(len(s), len(t)) + 1 for s, t in zip(sources, targets)]
        self._cache: tuple[int, list[Seq2SeqBatch]] | None = None

    def batches(self, epoch: int) -> list[Seq2SeqBatch]:
        if self._cache is None or self._cache[0] != epoch:
            groups = bucket_by_tokens(self.lengths, self.batch_tokens, self.seed, epoch)
            self._cache = (epoch, [seq2seq_batch([self.sources[i] for i in g], [self.targets[i] for i in g], g,
                                                 **self.special) for g in groups])
        return self._cache[1]


def prepare(recipe: dict[str, Any], run_dir: Path, resume: bool = False, init: nn.Module | None = None,
            device: torch.device | str = "cpu") -> Setup:
    data = section(recipe, "data", DATA_KEYS)
    tokenizer_recipe = section(recipe, "tokenizer", TOKENIZER_KEYS)
    section(recipe, "model", MODEL_KEYS)  # every table is checked before any data is read
    training = dict(section(recipe, "training", TRAINING_KEYS))
    decoding = DecodeOptions(**section(recipe, "decoding", DECODING_KEYS))
    label_smoothing = training.pop("label_smoothing", 0.1)
    train_config = TrainConfig(**training)
    train, val = load_corpus(data, "train"), load_corpus(data, "val")

    model = starting_model(run_dir, resume, init, lambda: new_model(recipe, train, tokenizer_recipe))
    if not isinstance(model, (EncoderDecoder, RNNSeq2Seq)):
        raise ConfigError("task 'translation' needs an encoder-decoder model (a Transformer or a recurrent one)")
    model.task = {"task": "translation", "corpus": data.get("corpus", "multi30k"), "source_lang": data.get("source"),
                  "target_lang": data.get("target"), "decoding": dataclasses.asdict(decoding),
                  "recipe": recipe.get("name")}

    limit = data.get("max_sentence_tokens", model.config.max_len - 1)
    sources, targets = encode(model.source_tokenizer, train.sources), encode(model.target_tokenizer, train.targets)
    keep = [i for i, (s, t) in enumerate(zip(sources, targets)) if len(s) < limit and len(t) < limit]
    config = model.config
    train_data = TranslationData([sources[i] for i in keep], [targets[i] for i in keep],
                                 data.get("batch_tokens", 4096), train_config.seed, config.pad_id, config.bos_id,
                                 config.eos_id)
    n_val = data.get("val_sentences", len(val))
    evaluate = make_evaluator(val.sources[:n_val], val.targets[:n_val], data.get("batch_tokens", 4096), device)
    return Setup(model, train_data, TranslationLoss(label_smoothing), train_config, evaluate, "val_bleu")


def new_model(recipe: dict[str, Any], train: Parallel, tokenizer_recipe: dict[str, Any]) -> nn.Module:
    """Train the tokenizer(s) on the training split, then build the model sized to the vocabulary."""
    if tokenizer_recipe.get("kind", "bpe") != "bpe":
        raise ConfigError(f"[tokenizer] kind: {tokenizer_recipe['kind']!r} is not allowed for translation; use 'bpe'")
    size, min_frequency = tokenizer_recipe.get("vocab_size", 8000), tokenizer_recipe.get("min_frequency", 2)
    joint = tokenizer_recipe.get("joint", True)
    if "path" in tokenizer_recipe:  # an existing joint tokenizer (an experiment shares one across models)
        from tokenizers import Tokenizer

        if not Path(tokenizer_recipe["path"]).is_file():
            raise ConfigError(f"[tokenizer] path: {tokenizer_recipe['path']}: no such file")
        source_tokenizer = target_tokenizer = Tokenizer.from_file(str(tokenizer_recipe["path"]))
        joint = True
    elif joint:
        source_tokenizer = target_tokenizer = train_bpe(train.sources + train.targets, size, min_frequency)
    else:
        source_tokenizer = train_bpe(train.sources, size, min_frequency)
        target_tokenizer = train_bpe(train.targets, size, min_frequency)
    fields = dict(section(recipe, "model", MODEL_KEYS))
    sizes = {**special_ids(target_tokenizer), "vocab_size": source_tokenizer.get_vocab_size(),
             "target_vocab_size": None if joint else target_tokenizer.get_vocab_size(),
             "share_embeddings": joint and fields.get("share_embeddings", True)}
    architecture = fields.pop("architecture", "transformer")
    if architecture == "rnn":
        model = RNNSeq2Seq(RNNConfig.from_dict({**fields, **sizes}))
    elif architecture == "transformer":
        base = preset(fields.pop("preset")) if "preset" in fields else ModelConfig()
        model = build_model(base.replace(**{**fields, **sizes, "family": "encoder-decoder"}))
    else:
        raise ConfigError(f"[model] architecture: {architecture!r} is not allowed; choose 'transformer' or 'rnn'")
    model.source_tokenizer, model.target_tokenizer = source_tokenizer, target_tokenizer
    return model


def make_evaluator(sources: list[str], references: list[str], batch_tokens: int,
                   device: torch.device | str) -> Callable[[nn.Module], dict[str, float]]:
    """Validation loss and perplexity (teacher forcing, no smoothing) and BLEU of greedy translations."""
    loss = TranslationLoss(label_smoothing=0.0)

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
        return {"val_loss": mean, "val_ppl": float(torch.tensor(mean).exp()), "val_bleu":
                float(sacrebleu_score(hypotheses, references)["sacrebleu"])}

    return evaluate


def evaluate_split(model: nn.Module, split: str = "test_2016_flickr", beam: int | None = None,
                   source_file: str | None = None, reference_file: str | None = None,
                   language: str | None = None) -> dict[str, Any]:
    """Translate a split (or a source file) and score it: sacreBLEU and chrF on detokenized text, and, where
    official tokenized references exist (Multi30k), tokenized BLEU. Returns the numbers with the outputs."""
    import time

    from ..data.datasets import multi30k_path, multi30k_tokenized_path, read_lines
    from ..evaluation.metrics import chrf_score, tokenized_bleu

    task = getattr(model, "task", None) or {}
    tokenized = None
    if source_file or reference_file:
        if not (source_file and reference_file):
            raise ConfigError("--source-file and --reference-file go together")
        pairs = read_parallel(source_file, reference_file)
        language = language or task.get("target_lang") or "en"
    else:
        if task.get("corpus", "multi30k") != "multi30k" or not task.get("source_lang"):
            raise ConfigError("this model does not say which Multi30k languages it translates; "
                              "give --source-file and --reference-file")
        source_lang, language = task["source_lang"], task["target_lang"]
        pairs = read_parallel(multi30k_path(split, source_lang), multi30k_path(split, language))
        tok_path = multi30k_tokenized_path(split, language)
        tokenized = read_lines(tok_path) if tok_path.exists() else None
    start = time.perf_counter()
    hypotheses = translate(model, pairs.sources, beam=beam)
    seconds = time.perf_counter() - start
    used_beam = beam or (task.get("decoding") or {}).get("beam", DecodeOptions.beam)
    result: dict[str, Any] = {"split": split if not source_file else source_file, "sentences": len(pairs),
                              "beam": used_beam, "translate_seconds": seconds,
                              **sacrebleu_score(hypotheses, pairs.targets), **chrf_score(hypotheses, pairs.targets)}
    if tokenized is not None and len(tokenized) == len(hypotheses):
        result["bleu_tokenized"] = tokenized_bleu(hypotheses, tokenized, language)
    result["hypotheses"] = hypotheses
    return result
