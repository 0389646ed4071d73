import pytest

from transformerkit.data.datasets import multi30k_path, multi30k_tokenized_path, read_lines
from transformerkit.evaluation.metrics import chrf_score, moses_tokenize, sacrebleu_score, tokenized_bleu


def test_tokenized_bleu_pipeline_reproduces_the_official_references(data_env):
    for lang in ("de", "en"):
        raw = read_lines(multi30k_path("test_2016_flickr", lang))
        official = read_lines(multi30k_tokenized_path("test_2016_flickr", lang))
        assert moses_tokenize(raw, lang) == official
        assert tokenized_bleu(raw, official, lang) == pytest.approx(100.0)


def test_tokenized_bleu_lowercases_and_splits_punctuation():
    assert moses_tokenize(["A man's dog, running."], "en") == ["a man &apos;s dog , running ."]
    assert tokenized_bleu(["A Dog, running."], ["a dog , running ."], "en") == pytest.approx(100.0)


def test_sacrebleu_and_chrf_carry_their_signatures():
    hyps, refs = ["a cat sat on the mat"], ["a cat sat on the mat"]
    bleu, chrf = sacrebleu_score(hyps, refs), chrf_score(hyps, refs)
    assert bleu["sacrebleu"] == pytest.approx(100.0) and "tok:13a" in bleu["sacrebleu_signature"]
    assert chrf["chrf"] == pytest.approx(100.0) and "nc:6" in chrf["chrf_signature"]


def test_retrieval_scores_rank_by_cosine_similarity():
    import torch

    from transformerkit.evaluation.metrics import perplexity, retrieval_scores

    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -2.0]])
    candidates = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, -1.0]])  # query i's answer: candidate i
    scores = retrieval_scores(queries, candidates)
    # cosines worked out by hand: query 1 is nearer candidate 2 (1.0) than its own (0.71), query 2 nearer
    # candidate 1 (1.0) than its own (0.71, tied with candidate 0, and ties do not count against it)
    ranks = [1, 2, 2, 1]
    assert scores["recall_at_1"] == pytest.approx(2 / 4)
    assert scores["recall_at_5"] == pytest.approx(1.0)
    assert scores["mrr"] == pytest.approx(sum(1 / r for r in ranks) / 4)
    assert perplexity(0.0) == 1.0 and perplexity(1.0) == pytest.approx(2.718281828) and perplexity(1e9) < float("inf")
