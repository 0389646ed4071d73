import torch
import torch.nn.functional as F

from transformerkit import ModelConfig
from transformerkit.nn import FeedForward


def ffn(activation, bias=True):
    return FeedForward(ModelConfig(family="decoder", d_model=16, n_heads=2, d_ff=40, vocab_size=10,
                                   activation=activation, bias=bias))


def test_relu_is_the_2017_formula():
    f = ffn("relu")
    x = torch.randn(2, 3, 16)
    expected = torch.clamp(x @ f.up_proj.weight.T + f.up_proj.bias, min=0) @ f.down_proj.weight.T + f.down_proj.bias
    torch.testing.assert_close(f(x), expected)


def test_gelu_variants():
    x = torch.randn(2, 3, 16)
    for activation, reference in (("gelu", F.gelu), ("gelu_tanh", lambda h: 0.5 * h * (1 + torch.tanh(
            (2 / torch.pi) ** 0.5 * (h + 0.044715 * h**3))))):
        f = ffn(activation)
        torch.testing.assert_close(f(x), f.down_proj(reference(f.up_proj(x))), atol=1e-6, rtol=1e-5)


def test_swiglu_gates_with_silu():
    f = ffn("swiglu", bias=False)
    assert f.gate_proj is not None and f.up_proj.bias is None
    x = torch.randn(2, 3, 16)
    gate, up = x @ f.gate_proj.weight.T, x @ f.up_proj.weight.T
    torch.testing.assert_close(f(x), (gate * torch.sigmoid(gate) * up) @ f.down_proj.weight.T)


def test_each_position_is_transformed_alone():
    f = ffn("gelu")
    x = torch.randn(1, 6, 16)
    torch.testing.assert_close(f(x)[:, 2], f(x[:, 2:3])[:, 0])
