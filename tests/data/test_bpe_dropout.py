"""BPE-dropout: exactly the tokenizer's segmentation at p = 0, seeded and varied per epoch above it."""

import random

import pytest

from transformerkit.data.bpe_dropout import BPEDropout, segment
from transformerkit.data.tokenizers import encode, train_bpe
from transformerkit.errors import ConfigError
from transformerkit.tasks.translation import TranslationData

TEXTS = ["Zwei junge Männer sind im Freien in der Nähe vieler Büsche.", "Two young men are outside near bushes.",
         "Ein Hund läuft, schnell!  Sehr schnell...", "A dog runs, fast! ﬁne ½ café", "Mehrere Männer mit Helmen."] * 8
UNSEEN = ["Ein Zebra (unbekannt) läuft — 42 × schneller?", "", "   ", "Qxz Ωmega", "lone \ud800 surrogate"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(TEXTS, vocab_size=150)


def test_without_dropout_the_ids_are_the_tokenizers_own(tokenizer):
    texts = TEXTS[:5] + UNSEEN  # unknown characters, NFKC forms, runs of spaces, empty lines
    assert BPEDropout(tokenizer, texts, p=0.0, seed=0, variants=1).sample(0) == encode(tokenizer, texts)


def test_merges_go_lowest_rank_first_and_leftmost_on_a_tie():
    ranks = {("a", "b"): 0, ("b", "c"): 1, ("ab", "c"): 2, ("c", "c"): 3}
    assert segment("abc", ranks) == ["abc"]  # a b first (rank 0), then ab c
    assert segment("bcbc", ranks) == ["bc", "bc"]  # the leftmost b c first; the second one after it
    assert segment("xy", ranks) == ["x", "y"]


def test_each_candidate_merge_is_skipped_with_probability_p():
    ranks, rng = {("a", "b"): 0}, random.Random(0)
    split = sum(segment("ab", ranks, 0.2, rng) == ["a", "b"] for _ in range(4000)) / 4000
    assert split == pytest.approx(0.2, abs=0.025)


def test_segmentations_vary_by_epoch_are_seeded_and_always_spell_the_same_text(tokenizer):
    sampler = BPEDropout(tokenizer, TEXTS, p=0.1, seed=3)
    plain = encode(tokenizer, TEXTS)
    first, again = sampler.sample(5), BPEDropout(tokenizer, TEXTS, p=0.1, seed=3).sample(5)
    assert first == again  # a resumed run re-creates the same epoch
    assert first != sampler.sample(6) and first != plain
    assert sum(map(len, first)) > sum(map(len, plain))  # skipped merges leave more, shorter pieces
    assert tokenizer.decode_batch(first) == tokenizer.decode_batch(plain)


def test_translation_data_resegments_each_epoch_and_keeps_long_pairs_deterministic(tokenizer):
    plain = encode(tokenizer, TEXTS)
    limit = max(map(len, plain))  # a new segmentation of the longest sentences may not fit
    sides = (BPEDropout(tokenizer, TEXTS, 0.3, seed=0), BPEDropout(tokenizer, TEXTS, 0.3, seed=1))
    data = TranslationData(plain, plain, 200, 0, 0, 1, 2, resegment=sides, limit=limit)
    sources, targets = data.pairs(1)
    assert sources != plain and (sources, targets) != data.pairs(2)
    assert all(max(len(s), len(t)) <= limit for s, t in zip(sources, targets))
    assert any(s == p for s, p in zip(sources, plain) if len(p) == limit)
    assert TranslationData(plain, plain, 200, 0, 0, 1, 2).pairs(1) == (plain, plain)


def test_only_plain_bpe_tokenizers_and_p_below_1_are_accepted(tokenizer):
    with pytest.raises(ConfigError, match="in \\[0, 1\\)"):
        BPEDropout(tokenizer, TEXTS, p=1.0, seed=0)
    from transformerkit.data.tokenizers import train_wordpiece
    with pytest.raises(ConfigError, match="BPE tokenizer"):
        BPEDropout(train_wordpiece(TEXTS, 120), TEXTS, p=0.1, seed=0)
