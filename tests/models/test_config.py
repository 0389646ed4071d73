import dataclasses

import pytest
import torch

from transformerkit import PRESETS, ConfigError, ModelConfig, build_model, preset
from transformerkit.summary import count_parameters


@pytest.mark.parametrize("changes, field, allowed", [
    (dict(norm_position="middle"), "norm_position", "'post', 'pre'"),
    (dict(activation="tanh"), "activation", "'swiglu'"),
    (dict(d_model=30, n_heads=4), "n_heads", "a divisor of d_model"),
    (dict(n_kv_heads=3, n_heads=4), "n_kv_heads", "a divisor of n_heads"),
    (dict(dropout=1.5), "dropout", "[0, 1)"),
    (dict(family="decoder", pooler=True), "pooler", "family='encoder'"),
    (dict(target_vocab_size=10, share_embeddings=True), "share_embeddings", "target vocabulary"),
    (dict(eos_id=99999), "eos_id", "below the vocabulary size"),
])
def test_a_wrong_value_names_the_field_and_what_is_allowed(changes, field, allowed):
    with pytest.raises(ConfigError) as error:
        ModelConfig(**changes)
    assert str(error.value).startswith(field) and allowed in str(error.value)


def test_config_is_frozen_and_round_trips():
    config = preset("transformer-small")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.d_model = 1  # type: ignore[misc]
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown model field 'd_modle'"):
        ModelConfig.from_dict({"d_modle": 3})


@pytest.mark.parametrize("name, N, d_model, d_ff, h, dropout", [
    ("transformer-base", 6, 512, 2048, 8, 0.1), ("transformer-big", 6, 1024, 4096, 16, 0.3)])
def test_the_paper_table_3_presets(name, N, d_model, d_ff, h, dropout):
    c = preset(name)
    assert (c.n_layers, c.decoder_layers, c.d_model, c.d_ff, c.n_heads, c.d_head, c.dropout) == \
        (N, N, d_model, d_ff, h, 64, dropout)
    assert (c.norm_position, c.activation, c.positions, c.scale_embeddings) == ("post", "relu", "sinusoidal", True)


@pytest.mark.parametrize("name, millions", [("gpt2-small", 124.4), ("bert-base", 110.1), ("smollm2-135m", 134.5),
                                            ("transformer-base", 63.1), ("transformer-big", 214.2)])
def test_preset_parameter_counts(name, millions):
    with torch.device("meta"):
        assert round(count_parameters(build_model(preset(name))) / 1e6, 1) == millions


def test_llama_style_is_a_config_not_a_class():
    c = preset("llama-tiny")
    model = build_model(c)
    assert type(model).__name__ == "DecoderOnly"
    assert model.decoder.layers[0].self_attn.k_proj.weight.shape[0] == c.kv_heads * c.d_head < c.d_model
    assert model.decoder.layers[0].self_attn.q_proj.bias is None


def test_every_preset_builds():
    for name in PRESETS:
        with torch.device("meta"):
            build_model(preset(name))
