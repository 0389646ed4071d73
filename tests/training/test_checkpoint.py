import json

import pytest
import torch

import transformerkit as tk
from transformerkit import CheckpointError
from transformerkit.nn.linear import Linear, can_pack_weights
from transformerkit.runtime import compile_unavailable
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


@pytest.mark.parametrize("layout", ["transposed", "packed"])
def test_load_stores_the_weights_as_the_probe_picks_and_nothing_downstream_notices(tmp_path, monkeypatch, layout):
    """The decoding layout with the probe's answer injected: every linear weight stored transposed, or packed
    beside it, the same logits, and saving, quantizing and loading for training read the weights as nn.Linear
    keeps them."""
    from transformerkit import runtime
    from transformerkit.quantize import quantize_model

    if layout == "packed" and not can_pack_weights():
        pytest.skip("a PyTorch build without oneDNN's packed weights")
    model = tk.build_model(tk.preset("gpt-tiny")).eval()
    tk.save(model, tmp_path / "ckpt")
    monkeypatch.setattr(runtime, "decoding_layout_choice", lambda out_features, in_features, dtype: layout)
    loaded = tk.load(tmp_path / "ckpt", device="cpu")
    layers = [m for m in loaded.modules() if isinstance(m, torch.nn.Linear)]
    if layout == "transposed":
        assert layers and all(m.weight.t().is_contiguous() and not m.weight.is_contiguous() for m in layers)
    else:
        assert layers and all(m.packed is not None and m.weight.is_contiguous() for m in layers)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=1e-5)
    tk.save(loaded, tmp_path / "again")  # safetensors writes contiguous copies
    trainable = tk.load(tmp_path / "again", device="cpu", for_training=True)
    assert trainable.training and all(p.is_contiguous() for p in trainable.parameters())
    assert all(m.packed is None for m in trainable.modules() if isinstance(m, Linear))
    for a, b in zip(model.state_dict().values(), trainable.state_dict().values()):
        assert torch.equal(a, b)
    ours, reference = quantize_model(loaded, "int8"), quantize_model(trainable, "int8")
    for a, b in zip(ours.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b) and a.is_contiguous()


def test_a_bfloat16_model_decodes_through_float32_copies_where_the_probe_picks_them(tmp_path, monkeypatch):
    """The float32 layout injected for every bfloat16 weight: each layer keeps a float32 copy beside its bfloat16
    weight and multiplies in float32, rounding once, so the logits are the bfloat16 model's (up to the order of
    the additions), and saving writes the bfloat16 weights alone."""
    from transformerkit import runtime

    model = tk.build_model(tk.preset("gpt-tiny")).eval()
    tk.save(model, tmp_path / "ckpt")
    monkeypatch.setattr(runtime, "decoding_layout_choice", lambda out_features, in_features, dtype: "float32")
    loaded = tk.load(tmp_path / "ckpt", device="cpu", dtype=torch.bfloat16)
    layers = [m for m in loaded.modules() if isinstance(m, Linear)]
    assert layers and all(m.weight.dtype == torch.bfloat16 and m.packed.dtype == torch.float32 for m in layers)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model.to(torch.bfloat16)(ids), rtol=2e-2, atol=2e-2)
    tk.save(loaded, tmp_path / "again")
    again = tk.load(tmp_path / "again", device="cpu", layout=False)
    assert all(m.packed is None for m in again.modules() if isinstance(m, Linear))
    for a, b in zip(loaded.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b.to(a.dtype))


def test_the_layout_is_chosen_again_after_a_change_of_dtype(tmp_path, monkeypatch):
    """As `--dtype bf16` does: loaded in float32 (transposed, say), then cast and laid out for bfloat16."""
    from transformerkit import runtime
    from transformerkit.loading import decoding_layout

    if not can_pack_weights(torch.bfloat16):
        pytest.skip("oneDNN cannot pack bfloat16 weights here")
    model = tk.build_model(tk.preset("gpt-tiny")).eval()
    tk.save(model, tmp_path / "ckpt")
    choice = {torch.float32: "transposed", torch.bfloat16: "packed"}
    monkeypatch.setattr(runtime, "decoding_layout_choice", lambda out_features, in_features, dtype: choice[dtype])
    loaded = tk.load(tmp_path / "ckpt", device="cpu")
    layers = [m for m in loaded.modules() if isinstance(m, torch.nn.Linear)]
    assert all(not m.weight.is_contiguous() and m.packed is None for m in layers)
    loaded.to(torch.bfloat16)
    decoding_layout(loaded)
    assert all(m.weight.is_contiguous() and m.packed is not None and m.packed.dtype == torch.bfloat16 for m in layers)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model.to(torch.bfloat16)(ids), rtol=1e-2, atol=1e-2)


def test_load_without_layout_leaves_it_to_the_caller_that_casts_first(tmp_path, monkeypatch):
    """The commands load, cast to the precision they chose, then lay the weights out once."""
    from transformerkit import runtime

    model = tk.build_model(tk.preset("gpt-tiny")).eval()
    tk.save(model, tmp_path / "ckpt")
    monkeypatch.setattr(runtime, "decoding_layout_choice", lambda out_features, in_features, dtype: "transposed")
    loaded = tk.load(tmp_path / "ckpt", device="cpu", layout=False)
    assert all(m.weight.is_contiguous() for m in loaded.modules() if isinstance(m, torch.nn.Linear))


def test_the_layout_probe_tries_transposing_large_weights_only_and_answers_once_per_shape(monkeypatch):
    from transformerkit import runtime

    monkeypatch.setenv(runtime.MATMUL_ENV, "auto")  # timed (the suite fixes the library: conftest)
    runtime.decoding_layout_choice.cache_clear()
    try:
        assert runtime.decoding_layout_choice(64, 64, torch.float32) in ("linear", "packed")  # in the caches
        assert runtime.decoding_layout_choice(1024, 512, torch.float32) in ("linear", "transposed", "packed")  # 2 MB
        runtime.decoding_layout_choice(1024, 512, torch.float32)
        assert runtime.decoding_layout_choice.cache_info().hits == 1  # once per process and shape
    finally:
        runtime.decoding_layout_choice.cache_clear()


def test_a_fixed_matmul_library_fixes_the_float32_decoding_layout_without_timing(monkeypatch):
    """The layouts round differently, so TRANSFORMERKIT_MATMUL decides float32's as it decides the library:
    oneDNN's packed copy or nn.Linear's plain weight, never a timed (load-dependent) choice."""
    from transformerkit import runtime
    from transformerkit.nn import linear
    from transformerkit.nn.linear import can_pack_weights

    monkeypatch.setattr(linear, "pack_weight", lambda weight: pytest.fail("timed: a pool of packed weights made"))
    try:
        packed = "packed" if can_pack_weights() else "linear"
        for library, layout in (("default", "linear"), ("onednn", packed), ("split", packed)):
            monkeypatch.setenv(runtime.MATMUL_ENV, library)
            runtime.decoding_layout_choice.cache_clear()
            assert runtime.decoding_layout_choice(2048, 512, torch.float32) == layout
    finally:
        runtime.decoding_layout_choice.cache_clear()


@pytest.mark.skipif(compile_unavailable("cpu") is not None, reason="inductor cannot build kernels here")
def test_the_row_kernel_probe_times_large_weights_only_and_load_gives_them_the_kernel(tmp_path, monkeypatch):
    """The probe compiles and times a kernel for weights of 256 KB and up, with the library chosen by timing
    (never where the suite fixes it); with its answer injected, load gives every linear layer the kernel and one
    token's logits and a greedy generation are the same."""
    from transformerkit import runtime
    from transformerkit.inference.generate import GenerationOptions, generate_ids
    from transformerkit.nn import linear

    compiled = []
    kernel = linear.row_kernel
    monkeypatch.setattr(linear, "row_kernel", lambda *key: compiled.append(key[:4]) or kernel(*key))
    monkeypatch.setenv(runtime.MATMUL_ENV, "auto")
    for probe in (runtime.decoding_layout_choice, runtime.row_kernel_pays):
        probe.cache_clear()
    try:
        assert runtime.row_kernel_pays(64, 64, torch.float32, True) is False  # 16 KB: nothing compiled
        assert compiled == []
        runtime.row_kernel_pays(512, 384, torch.float32, True)  # 768 KB: either answer is right, on some machine
        layout = runtime.decoding_layout_choice(512, 384, torch.float32)
        assert compiled == ([] if layout == "transposed" else [(512, 384, torch.float32, True)])
        monkeypatch.setenv(runtime.MATMUL_ENV, "onednn")
        assert runtime.row_kernel_pays(512, 512, torch.float32, True) is False
        assert len(compiled) <= 1
    finally:
        for probe in (runtime.decoding_layout_choice, runtime.row_kernel_pays):
            probe.cache_clear()
    model = tk.build_model(tk.preset("gpt-tiny")).eval()
    tk.save(model, tmp_path / "ckpt")
    monkeypatch.setattr(runtime, "row_kernel_pays", lambda out_features, in_features, dtype, bias: True)
    loaded = tk.load(tmp_path / "ckpt", device="cpu")
    layers = [m for m in loaded.modules() if isinstance(m, Linear)]
    assert layers and all(m.row_product is not None for m in layers)
    ids = torch.randint(1, model.config.vocab_size, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids[:, :1]), model(ids[:, :1]), rtol=0, atol=1e-5)
    options = GenerationOptions(max_new_tokens=12, min_new_tokens=12, temperature=0.0)
    assert generate_ids(loaded, ids.tolist(), options) == generate_ids(model, ids.tolist(), options)
