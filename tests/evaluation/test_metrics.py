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
