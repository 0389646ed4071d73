"""Translation metrics: sacreBLEU and chrF on detokenized text, and the "tokenized BLEU" of Multi30k papers.

sacreBLEU (Post, 2018) scores cased, detokenized output with its own 13a tokenizer and prints a signature,
so numbers are comparable. Published Multi30k results instead lowercase, normalise punctuation and
Moses-tokenize the output, and score it against the official tokenized references with no further
tokenization: `tokenized_bleu` reproduces that pipeline exactly.
"""

from __future__ import annotations

import math
from functools import lru_cache


def sacrebleu_score(hypotheses: list[str], references: list[str]) -> dict[str, float | str]:
    import sacrebleu

    bleu = sacrebleu.metrics.BLEU()
    result = bleu.corpus_score(hypotheses, [references])
    return {"sacrebleu": result.score, "sacrebleu_signature": str(bleu.get_signature())}


def chrf_score(hypotheses: list[str], references: list[str]) -> dict[str, float | str]:
    import sacrebleu

    chrf = sacrebleu.metrics.CHRF()
    result = chrf.corpus_score(hypotheses, [references])
    return {"chrf": result.score, "chrf_signature": str(chrf.get_signature())}


@lru_cache(maxsize=8)
def _moses(language: str):
    from sacremoses import MosesPunctNormalizer, MosesTokenizer

    return MosesPunctNormalizer(language), MosesTokenizer(language)


def moses_tokenize(lines: list[str], language: str) -> list[str]:
    """Lowercase, normalise punctuation and tokenize as the official Multi30k tokenized files were made."""
    normalizer, tokenizer = _moses(language)
    return [tokenizer.tokenize(normalizer.normalize(line.lower()), escape=True, return_str=True) for line in lines]


def tokenized_bleu(hypotheses: list[str], tokenized_references: list[str], language: str) -> float:
    """BLEU of Moses-tokenized, lowercased hypotheses against already tokenized references (no re-tokenizing)."""
    import sacrebleu

    return sacrebleu.corpus_bleu(moses_tokenize(hypotheses, language), [tokenized_references], tokenize="none",
                                 force=True).score


def perplexity(mean_loss: float) -> float:
    return math.exp(min(mean_loss, 50.0))


def retrieval_scores(queries, candidates) -> dict[str, float]:
    """Query i's right answer is candidate i; vectors are compared by cosine similarity.

    recall@k: how often the right candidate is among the k most similar; MRR: the mean of 1 / its rank.
    """
    import torch

    q = torch.nn.functional.normalize(queries.float(), dim=-1)
    c = torch.nn.functional.normalize(candidates.float(), dim=-1)
    similarity = q @ c.t()  # (N, N)
    right = similarity.diagonal()[:, None]
    rank = (similarity > right).sum(dim=1) + 1  # 1 = the right candidate is the most similar
    return {"recall_at_1": float((rank <= 1).float().mean()), "recall_at_5": float((rank <= 5).float().mean()),
            "mrr": float((1.0 / rank).mean())}
