import json

import pytest
import torch

import transformerkit as tk
from transformerkit import CheckpointError
from transformerkit.training.checkpoint import atomic_folder


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(["a small corpus of words", "words of a corpus"],
                                  trainers.BpeTrainer(vocab_size=60, special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    return tokenizer


@pytest.mark.parametrize("name", ["transformer-tiny", "gpt-tiny", "llama-tiny", "bert-tiny"])
def test_save_and_load_round_trip(name, tmp_path):
    model = tk.build_model(tk.preset(name)).eval()
    tk.save(model, tmp_path / "ckpt")
    header = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert header["format"] == "transformerkit" and header["model"]["d_model"] == model.config.d_model
    again = tk.load(tmp_path / "ckpt", device="cpu")
    assert again.config == model.config
    for (name_a, a), (name_b, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert name_a == name_b and torch.equal(a, b)


def test_tokenizers_and_chat_template_travel_with_the_model(tmp_path):
    decoder = tk.build_model(tk.preset("gpt-tiny"))
    decoder.tokenizer, decoder.chat_template = tiny_tokenizer(), "{{ messages }}"
    tk.save(decoder, tmp_path / "decoder")
    again = tk.load(tmp_path / "decoder", device="cpu")
    assert again.tokenizer.encode("a corpus").ids == decoder.tokenizer.encode("a corpus").ids
    assert again.chat_template == "{{ messages }}"

    seq2seq = tk.build_model(tk.preset("transformer-tiny", share_embeddings=False))
    seq2seq.source_tokenizer, seq2seq.target_tokenizer = tiny_tokenizer(), tiny_tokenizer()
    tk.save(seq2seq, tmp_path / "seq2seq")
    assert (tmp_path / "seq2seq" / "source_tokenizer.json").exists()
    again = tk.load(tmp_path / "seq2seq", device="cpu")
    assert again.source_tokenizer is not None and again.target_tokenizer is not None

    seq2seq.target_tokenizer = seq2seq.source_tokenizer  # one joint vocabulary: one file
    tk.save(seq2seq, tmp_path / "joint")
    assert (tmp_path / "joint" / "tokenizer.json").exists()
    again = tk.load(tmp_path / "joint", device="cpu")
    assert again.source_tokenizer is again.target_tokenizer


def test_a_failed_write_leaves_the_old_checkpoint(tmp_path):
    model = tk.build_model(tk.preset("gpt-tiny"))
    tk.save(model, tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "ckpt") as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("crash while writing")
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_load_rejects_what_it_cannot_read(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        tk.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a transformerkit checkpoint"):
        tk.load(tmp_path / "empty")


def test_dtype_and_device(tmp_path):
    tk.save(tk.build_model(tk.preset("gpt-tiny")), tmp_path / "ckpt")
    model = tk.load(tmp_path / "ckpt", device="cpu", dtype=torch.bfloat16)
    assert model.lm_head.weight.dtype == torch.bfloat16 and not model.training
