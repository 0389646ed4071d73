"""Subword tokenizers, trained and run by the `tokenizers` library and saved as tokenizer.json.

Every tokenizer made here starts its vocabulary with the same special tokens, so ids 0-3 always mean
padding, start, end and unknown.
"""

from __future__ import annotations

import re
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = [PAD, BOS, EOS, UNK]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # BERT's names: [CLS] starts, [SEP] ends


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Byte-pair encoding (Sennrich et al., 2016) over whitespace-marked words, SentencePiece style.

    Spaces become '▁' so decoding restores them exactly; punctuation is split from words before merging,
    so 'bushes.' and 'bushes' share a token. NFKC folds look-alike Unicode forms together.
    """
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(),
                                                       pre_tokenizers.Punctuation(behavior="isolated")])
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIALS,
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def train_chars(text: str) -> Tokenizer:
    """One token per character of `text` (the special tokens first): the classic character-level model."""
    chars = sorted(set(text) - set(SPECIALS))
    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(SPECIALS + chars)}, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return tokenizer


def train_byte_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """GPT-2's byte-level BPE: text as UTF-8 bytes mapped to printable symbols, so no input is ever unknown."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def train_wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool = False,
                    min_frequency: int = 2) -> Tokenizer:
    """BERT's WordPiece: words split on whitespace and punctuation, then into the longest known pieces
    ('##' marks a piece inside a word). Encoding adds [CLS] at the start and [SEP] at the end."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                      strip_accents=False, lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=BERT_SPECIALS, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tokenizer


def special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """pad_id, bos_id, eos_id of a tokenizer made here: <pad> <s> </s>, or BERT's [PAD] [CLS] [SEP]."""
    if tokenizer.token_to_id("[CLS]") is not None:
        return {"pad_id": tokenizer.token_to_id("[PAD]"), "bos_id": tokenizer.token_to_id("[CLS]"),
                "eos_id": tokenizer.token_to_id("[SEP]")}
    return {"pad_id": tokenizer.token_to_id(PAD), "bos_id": tokenizer.token_to_id(BOS),
            "eos_id": tokenizer.token_to_id(EOS)}


_SURROGATES = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """Text any tokenizer takes: a lone surrogate (possible in a Python string, never in UTF-8, and refused by
    the tokenizers library) becomes U+FFFD, as an undecodable byte would."""
    return _SURROGATES.sub("\ufffd", text)


def encode(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens."""
    return [e.ids for e in tokenizer.encode_batch([clean_text(t) for t in texts], add_special_tokens=False)]


def encode_text(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of one text, without special tokens (a prompt, a chat, a sentence to show)."""
    return tokenizer.encode(clean_text(text), add_special_tokens=False).ids


def decode(tokenizer: Tokenizer, ids: list[list[int]]) -> list[str]:
    return tokenizer.decode_batch(ids, skip_special_tokens=True)
