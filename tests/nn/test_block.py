import pytest
import torch
from torch import nn

from transformerkit import ModelConfig
from transformerkit.nn import TransformerBlock
from transformerkit.nn.block import Context
from transformerkit.nn.masks import attention_mask, causal_mask, to_key_padding


def config(norm_position="post"):
    return ModelConfig(family="encoder-decoder", d_model=32, n_heads=4, d_ff=64, vocab_size=50, dropout=0.0,
                       activation="relu", norm_position=norm_position)


def copy_attention(ours, theirs):
    theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
    theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
    theirs.out_proj.weight.copy_(ours.o_proj.weight)
    theirs.out_proj.bias.copy_(ours.o_proj.bias)


def copy_feedforward_and_norms(ours, theirs, norms):
    theirs.linear1.load_state_dict(ours.ffn.up_proj.state_dict())
    theirs.linear2.load_state_dict(ours.ffn.down_proj.state_dict())
    for our_norm, their_norm in zip(norms, (theirs.norm1, theirs.norm2, getattr(theirs, "norm3", None))):
        their_norm.load_state_dict(our_norm.state_dict())


def randomize(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_encoder_block_matches_torch(norm_position):
    ours = TransformerBlock(config(norm_position)).eval()
    randomize(ours)
    theirs = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True,
                                        norm_first=norm_position == "pre").eval()
    with torch.no_grad():
        copy_attention(ours.self_attn, theirs.self_attn)
        copy_feedforward_and_norms(ours, theirs, (ours.self_attn_norm, ours.ffn_norm))
    x = torch.randn(3, 6, 32)
    key_mask = torch.ones(3, 6, dtype=torch.bool)
    key_mask[1, 4:] = False
    mask, _ = attention_mask(key_mask, 6, 6, causal=False)
    expected = theirs(x, src_key_padding_mask=to_key_padding(key_mask))
    torch.testing.assert_close(ours(x, Context(mask=mask))[key_mask], expected[key_mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_decoder_block_matches_torch(norm_position):
    ours = TransformerBlock(config(norm_position), cross_attention=True).eval()
    randomize(ours)
    theirs = nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0, batch_first=True,
                                        norm_first=norm_position == "pre").eval()
    with torch.no_grad():
        copy_attention(ours.self_attn, theirs.self_attn)
        copy_attention(ours.cross_attn, theirs.multihead_attn)
        copy_feedforward_and_norms(ours, theirs, (ours.self_attn_norm, ours.cross_attn_norm, ours.ffn_norm))
    x, memory = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    memory_mask = torch.ones(2, 7, dtype=torch.bool)
    memory_mask[0, 5:] = False
    expected = theirs(x, memory, tgt_mask=~causal_mask(5, 5), memory_key_padding_mask=to_key_padding(memory_mask))
    out = ours(x, Context(is_causal=True, memory_mask=memory_mask[:, None, None, :]),
               memory_kv=ours.cross_attn.project_memory(memory))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_dropout_acts_only_in_training():
    block = TransformerBlock(config().replace(dropout=0.5))
    x = torch.randn(2, 5, 32)
    block.train()
    assert not torch.allclose(block(x), block(x))
    block.eval()
    torch.testing.assert_close(block(x), block(x))


# ------------------------------------------------------------------ the switches the labs take parts out with


def test_without_the_residual_path_a_block_is_its_sublayers_alone():
    """residual=False: with every sub-layer's output projection zeroed, the pre-norm block outputs zero (the
    sub-layers' output alone), where the residual block passes x through."""
    x = torch.randn(2, 5, 32)
    for residual in (True, False):
        torch.manual_seed(0)
        block = TransformerBlock(ModelConfig(**{**config("pre").to_dict(), "residual": residual})).eval()
        with torch.no_grad():
            for projection in (block.self_attn.o_proj, block.ffn.down_proj):
                projection.weight.zero_()
                projection.bias.zero_()
            out = block(x)
        torch.testing.assert_close(out, x if residual else torch.zeros_like(x))


def test_norm_none_is_the_identity():
    from transformerkit.nn.norm import make_norm

    x = torch.randn(3, 32)
    assert torch.equal(make_norm(ModelConfig(**{**config().to_dict(), "norm": "none"}))(x), x)


@pytest.mark.parametrize("fused", [True, False])
def test_scale_attention_off_multiplies_raw_dot_products(fused, monkeypatch):
    """scale_attention=False equals attention on queries pre-multiplied by sqrt(D), in both kernels."""
    from transformerkit.nn.attention import MultiHeadAttention

    monkeypatch.setattr("transformerkit.nn.attention._written_out_is_faster", lambda *_: not fused)
    torch.manual_seed(0)
    raw = MultiHeadAttention(ModelConfig(**{**config().to_dict(), "scale_attention": False}))
    scaled = MultiHeadAttention(config())
    scaled.load_state_dict(raw.state_dict())
    with torch.no_grad():
        D = scaled.head_dim
        scaled.q_proj.weight.mul_(D ** 0.5)
        scaled.q_proj.bias.mul_(D ** 0.5)
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(raw(x), scaled(x), atol=1e-5, rtol=1e-5)
    plain = MultiHeadAttention(config())
    plain.load_state_dict(raw.state_dict())
    assert not torch.allclose(raw(x), plain(x), atol=1e-3)  # the switch changes the answer


def test_causal_off_lets_a_decoder_see_the_future():
    from transformerkit.models import build_model

    ids = torch.randint(4, 50, (1, 6))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1 - 4) % 46 + 4  # another last token
    for causal in (True, False):
        torch.manual_seed(0)
        model = build_model(ModelConfig(family="decoder", d_model=32, n_heads=4, d_ff=64, vocab_size=50,
                                        dropout=0.0, causal=causal)).eval()
        with torch.no_grad():
            first = model(ids)[0, 0], model(changed)[0, 0]  # the first position's logits
        assert torch.equal(*first) == causal
