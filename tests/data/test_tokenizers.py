from transformerkit.data.tokenizers import SPECIALS, decode, encode, special_ids, train_bpe

TEXTS = ["Zwei junge Männer sind im Freien.", "Two young men are outside.", "Ein Hund läuft, schnell!",
         "A dog runs, fast!"] * 20


def test_special_tokens_come_first():
    tokenizer = train_bpe(TEXTS, vocab_size=120)
    assert [tokenizer.token_to_id(t) for t in SPECIALS] == [0, 1, 2, 3]
    assert special_ids(tokenizer) == {"pad_id": 0, "bos_id": 1, "eos_id": 2}


def test_round_trip_restores_spaces_and_punctuation():
    tokenizer = train_bpe(TEXTS, vocab_size=120)
    sentences = ["Zwei junge Männer laufen, schnell!", "A dog is outside."]
    assert decode(tokenizer, encode(tokenizer, sentences)) == sentences


def test_punctuation_is_split_from_words():
    tokenizer = train_bpe(TEXTS, vocab_size=200)
    assert tokenizer.encode("outside.").tokens[-1] == "."
