"""Parity with `transformers`: tiny random models saved with save_pretrained, read by our loader."""

import json

import pytest
import torch

import transformerkit as tk
from transformerkit import CheckpointError

transformers = pytest.importorskip("transformers")

TOLERANCE = dict(atol=1e-5, rtol=0)


def batch(vocab=100):
    ids = torch.randint(3, vocab, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids, mask


def saved(model, tmp_path):
    model.eval().save_pretrained(tmp_path)
    return tk.load(tmp_path, device="cpu")


def test_gpt2(tmp_path):
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0))
    ours = saved(hf, tmp_path)
    assert ours.config.positions == "learned" and ours.config.norm_position == "pre"
    ids, mask = batch()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(ours(ids, mask)[mask.bool()], expected[mask.bool()], **TOLERANCE)


def test_llama_with_grouped_query_attention_rope_theta_and_untied_head(tmp_path):
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=5000.0, tie_word_embeddings=False, max_position_embeddings=64))
    ours = saved(hf, tmp_path)
    c = ours.config
    assert (c.kv_heads, c.rope_theta, c.tie_embeddings, c.norm) == (2, 5000.0, False, "rmsnorm")
    assert ours.lm_head.weight.data_ptr() != ours.decoder.embed.tokens.weight.data_ptr()
    ids, mask = batch()
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        torch.testing.assert_close(ours(ids, mask)[mask.bool()], out.logits[mask.bool()], **TOLERANCE)
        hidden = ours.hidden_states(ids, mask.bool())
        torch.testing.assert_close(hidden[mask.bool()], out.hidden_states[-1][mask.bool()], **TOLERANCE)


def test_bert_with_token_types(tmp_path):
    hf = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32))
    ours = saved(hf, tmp_path)
    ids, mask = batch()
    types = torch.randint(0, 2, ids.shape)
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        real = mask.bool()
        torch.testing.assert_close(ours(ids, mask, types)[real], out.logits[real], **TOLERANCE)
        torch.testing.assert_close(ours.hidden_states(ids, mask, types)[real], out.hidden_states[-1][real], **TOLERANCE)


def test_bert_model_without_heads_and_its_pooler(tmp_path):
    hf = transformers.BertModel(transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32))
    ours = saved(hf, tmp_path)
    assert ours.mlm_head is None and ours.pooler is not None
    ids, mask = batch()
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask)
        hidden = ours.hidden_states(ids, mask)
        torch.testing.assert_close(hidden[mask.bool()], out.last_hidden_state[mask.bool()], **TOLERANCE)
        torch.testing.assert_close(torch.tanh(ours.pooler(hidden[:, 0])), out.pooler_output, **TOLERANCE)


@pytest.mark.parametrize("model_type", ["bart", "marian"])
def test_encoder_decoders(model_type, tmp_path):
    Config = {"bart": transformers.BartConfig, "marian": transformers.MarianConfig}[model_type]
    Model = {"bart": transformers.BartForConditionalGeneration, "marian": transformers.MarianMTModel}[model_type]
    hf = Model(Config(vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                      decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                      pad_token_id=1, decoder_start_token_id=1, eos_token_id=2))
    ours = saved(hf, tmp_path)
    ids, mask = batch()
    target = torch.randint(3, 100, (3, 7))
    target_mask = torch.ones(3, 7, dtype=torch.long)
    target_mask[0, 5:] = 0
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=target, decoder_attention_mask=target_mask)
        logits = ours(ids, target, mask, target_mask)
        torch.testing.assert_close(logits[target_mask.bool()], out.logits[target_mask.bool()], **TOLERANCE)
        memory = ours.encode(ids, mask)
        torch.testing.assert_close(memory[mask.bool()], out.encoder_last_hidden_state[mask.bool()], **TOLERANCE)


@pytest.mark.parametrize("name, model_class", [
    ("gpt-tiny", "GPT2LMHeadModel"), ("llama-tiny", "LlamaForCausalLM"), ("bert-tiny", "BertForMaskedLM"),
    ("transformer-tiny", "MarianMTModel")])
def test_export_round_trip(name, model_class, tmp_path):
    ours = tk.build_model(tk.preset(name, vocab_size=100)).eval()
    kind = tk.export_hf(ours, tmp_path)
    hf = getattr(transformers, model_class).from_pretrained(tmp_path).eval()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == kind
    ids, mask = batch()
    with torch.no_grad():
        if kind == "marian":
            target = torch.randint(3, 100, (3, 6))
            torch.testing.assert_close(ours(ids, target, mask),
                                       hf(input_ids=ids, attention_mask=mask, decoder_input_ids=target).logits,
                                       **TOLERANCE)
        else:
            real = mask.bool()
            torch.testing.assert_close(ours(ids, mask)[real], hf(input_ids=ids, attention_mask=mask).logits[real],
                                       **TOLERANCE)
    again = tk.load(tmp_path, device="cpu")  # and back into our own classes
    assert again.config.family == ours.config.family


def test_an_architecture_nobody_else_has_cannot_be_exported(tmp_path):
    model = tk.build_model(tk.preset("gpt-tiny", positions="sinusoidal"))
    with pytest.raises(CheckpointError, match="GPT-2-like"):
        tk.export_hf(model, tmp_path)


def hf_folder(tmp_path):
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=100, n_positions=32, n_embd=32, n_layer=1, n_head=4, bos_token_id=0, eos_token_id=0)
    ).save_pretrained(tmp_path)
    return tmp_path


def test_unsupported_model_type_is_a_clear_error(tmp_path):
    folder = hf_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(CheckpointError, match="model_type 't5' is not supported"):
        tk.load(folder, device="cpu")


def test_missing_tensor_and_shape_mismatch_name_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = hf_folder(tmp_path)
    weights = load_file(folder / "model.safetensors")
    missing = {k: v for k, v in weights.items() if k != "transformer.h.0.ln_1.weight"}
    save_file(missing, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing tensor 'decoder.layers.0.self_attn_norm.weight'"):
        tk.load(folder, device="cpu")
    weights["transformer.h.0.ln_1.weight"] = torch.ones(7)
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"'decoder.layers.0.self_attn_norm.weight' has shape \(7,\)"):
        tk.load(folder, device="cpu")
