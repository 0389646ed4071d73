"""Initialisation: the scales the papers use, and meta-device building for checkpoints."""

import math

import pytest
import torch

import transformerkit as tk
from transformerkit.nn.init import build_empty


@torch.no_grad()
def test_xavier_init_of_the_2017_model():
    torch.manual_seed(0)
    model = tk.build_model(tk.preset("transformer-tiny", vocab_size=2000, d_model=64, d_ff=256))
    up = model.encoder.layers[0].ffn.up_proj  # fan_in 64, fan_out 256: uniform in +-sqrt(6 / 320)
    bound = math.sqrt(6 / (64 + 256))
    assert float(up.weight.abs().max()) <= bound and float(up.weight.abs().max()) > 0.9 * bound
    assert float(up.weight.std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert float(up.bias.abs().max()) == 0.0
    tokens = model.encoder.embed.tokens.weight  # N(0, d_model^-1/2)
    assert float(tokens.std()) == pytest.approx(64**-0.5, rel=0.05)


@torch.no_grad()
def test_gpt2_normal_init_scales_the_residual_projections_with_depth():
    torch.manual_seed(0)
    config = tk.preset("gpt2-small", vocab_size=1000, d_model=256, n_layers=8, n_heads=4, d_ff=1024, max_len=64,
                       pad_id=0, bos_id=0, eos_id=0)
    model = tk.build_model(config)
    block = model.decoder.layers[0]
    assert float(block.self_attn.q_proj.weight.std()) == pytest.approx(0.02, rel=0.05)
    residual = 0.02 / math.sqrt(2 * 8)  # o_proj and down_proj write into the residual stream
    assert float(block.self_attn.o_proj.weight.std()) == pytest.approx(residual, rel=0.05)
    assert float(block.ffn.down_proj.weight.std()) == pytest.approx(residual, rel=0.05)
    assert float(model.decoder.embed.positions.weight.std()) == pytest.approx(0.02, rel=0.05)


def test_build_empty_makes_a_tied_model_with_its_computed_buffers():
    config = tk.preset("llama-tiny", tie_embeddings=True)
    model = build_empty(tk.DecoderOnly, config)
    assert model.lm_head.weight.data_ptr() == model.decoder.embed.tokens.weight.data_ptr()
    assert not model.lm_head.weight.is_meta
    fresh = tk.build_model(config)
    torch.testing.assert_close(model.decoder.rope.inv_freq, fresh.decoder.rope.inv_freq)
