"""Scoring a trained translator on a test split: translate it, then sacreBLEU, chrF and tokenized BLEU."""

from __future__ import annotations

import time
from typing import Any

from torch import nn

from ..data.datasets import multi30k_path, multi30k_tokenized_path, read_lines, read_parallel
from ..errors import ConfigError
from ..inference.translate import decode_options, translate
from .metrics import chrf_score, sacrebleu_score, tokenized_bleu


def evaluate_split(model: nn.Module, split: str = "test_2016_flickr", beam: int | None = None,
                   source_file: str | None = None, reference_file: str | None = None,
                   language: str | None = None, length_penalty: float | None = None) -> dict[str, Any]:
    """Translate a split (or a source file) and score it: sacreBLEU and chrF on detokenized text, and, where
    official tokenized references exist (Multi30k), tokenized BLEU. Returns the numbers with the outputs.
    beam and length_penalty default to the model's own (its recipe's [decoding]); tune them on val."""
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
    hypotheses = translate(model, pairs.sources, beam=beam, length_penalty=length_penalty)
    seconds = time.perf_counter() - start
    used = decode_options(model, beam, length_penalty=length_penalty)  # what translate decoded with
    result: dict[str, Any] = {"split": split if not source_file else source_file, "sentences": len(pairs),
                              "beam": used.beam, "length_penalty": used.length_penalty, "translate_seconds": seconds,
                              **sacrebleu_score(hypotheses, pairs.targets), **chrf_score(hypotheses, pairs.targets)}
    if tokenized is not None and len(tokenized) == len(hypotheses):
        result["bleu_tokenized"] = tokenized_bleu(hypotheses, tokenized, language)
    result["hypotheses"] = hypotheses
    return result
