"""The real corpora the labs train on, through the tasks' own parts: Tiny Shakespeare by character (the
language-model task's windows and loss) and Multi30k German -> English (the translation task's batches, loss
and validation). Both are read from the data directory ($TRANSFORMERKIT_DATA)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data.datasets import Parallel, multi30k
from ..data.tokenizers import encode, special_ids, train_bpe, train_chars
from ..tasks.language_model import DataTable, LanguageModelLoss, WindowBatch, WindowData, read_corpus
from ..tasks.translation import TranslationData, make_evaluator


@dataclass
class CharCorpus:
    """The character tokenizer, training windows (the first 90% of the text) and held-out windows (the rest)."""

    tokenizer: object
    train: WindowData
    val: WindowData

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def val_batches(self) -> list[WindowBatch]:
        return [self.val.batch(0, i) for i in range(self.val.batches_per_epoch)]


def shakespeare(context: int, batch_size: int, seed: int, val_batches: int, chars: int | None = None) -> CharCorpus:
    """Tiny Shakespeare (its first `chars` characters, when given: a small corpus a model can memorise)."""
    corpus = read_corpus(DataTable())
    text = corpus[:chars] if chars else corpus
    split = int(0.9 * len(text))
    tokenizer = train_chars(corpus)  # every character of the corpus, whatever the slice
    ids = torch.tensor(tokenizer.encode(text, add_special_tokens=False).ids, dtype=torch.long)  # one id a character
    train = WindowData(ids[:split], batch_size, context, seed, max(1, split // (batch_size * context)), "training")
    val = WindowData(ids[split:], batch_size, context, 0, val_batches, "held-out")
    return CharCorpus(tokenizer, train, val)


@torch.no_grad()
def mean_loss(model: nn.Module, batches: list[WindowBatch]) -> float:
    """Cross-entropy per character over fixed windows, in eval mode (no dropout)."""
    model.eval()
    loss, total, count = LanguageModelLoss(), 0.0, 0
    for batch in batches:
        value, n = loss(model, batch)
        total, count = total + float(value), count + n
    return total / count


@dataclass
class Translation:
    """Multi30k German -> English: one BPE vocabulary for both sides, length-bucketed training batches, the
    translation task's validation (loss and greedy BLEU) and the test sentences."""

    tokenizer: object
    data: TranslationData
    evaluate: object  # model -> {"val_loss", "val_ppl", "val_bleu"}
    test: Parallel

    def attach(self, model: nn.Module) -> nn.Module:
        """Give a freshly built model the vocabulary it was sized for, so it can translate text."""
        model.source_tokenizer = model.target_tokenizer = self.tokenizer
        return model


def multi30k_de_en(pairs: int | None, vocab_size: int, batch_tokens: int, seed: int, val_sentences: int,
                   test_sentences: int | None = None) -> Translation:
    """The first `pairs` training pairs (all when None), a BPE vocabulary trained on them, and the task's parts."""
    train, val = multi30k("train", "de", "en"), multi30k("val", "de", "en")
    sources, targets = train.sources[:pairs], train.targets[:pairs]
    tokenizer = train_bpe(sources + targets, vocab_size)
    ids = special_ids(tokenizer)
    data = TranslationData(encode(tokenizer, sources), encode(tokenizer, targets), batch_tokens, seed,
                           ids["pad_id"], ids["bos_id"], ids["eos_id"])
    evaluate = make_evaluator(val.sources[:val_sentences], val.targets[:val_sentences], batch_tokens, "cpu")
    test = multi30k("test_2016_flickr", "de", "en")
    return Translation(tokenizer, data, evaluate, Parallel(test.sources[:test_sentences],
                                                           test.targets[:test_sentences]))
