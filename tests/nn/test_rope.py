import torch

from transformerkit.nn import RotaryEmbedding, apply_rotary


def rotate(x, positions, theta=10000.0):
    cos, sin = RotaryEmbedding(x.shape[-1], theta)(positions, x.dtype)
    return apply_rotary(x, cos, sin)


def test_rotation_keeps_length_and_position_zero_is_identity():
    x = torch.randn(1, 2, 5, 16)
    positions = torch.arange(5)[None]
    torch.testing.assert_close(rotate(x, positions).norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(rotate(x[:, :, :1], torch.zeros(1, 1, dtype=torch.long)), x[:, :, :1])


def test_scores_depend_only_on_relative_position():
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        return (rotate(q, torch.tensor([[m]])) * rotate(k, torch.tensor([[n]]))).sum().item()

    assert abs(score(7, 3) - score(104, 100)) < 1e-4
    assert abs(score(7, 3) - score(3, 7)) > 1e-3


def test_theta_is_configurable():
    x = torch.randn(1, 1, 3, 16)
    positions = torch.arange(3)[None]
    assert not torch.allclose(rotate(x, positions, 10000.0), rotate(x, positions, 500000.0))


def test_half_split_layout_matches_hugging_face():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=5000.0)
    positions = torch.arange(7)[None]
    q, k = torch.randn(1, 4, 7, 16), torch.randn(1, 4, 7, 16)
    cos, sin = LlamaRotaryEmbedding(config)(q, positions)
    expected_q, expected_k = apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(rotate(q, positions, 5000.0), expected_q)
    torch.testing.assert_close(rotate(k, positions, 5000.0), expected_k)
