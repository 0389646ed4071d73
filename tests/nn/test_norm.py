import pytest
import torch
from torch import nn

from transformerkit.nn import LayerNorm, RMSNorm, layer_norm, rms_norm


def test_the_study_notes_worked_example():
    # [1, 2, 3] normalises to [-1.22, 0, 1.22]; gamma 2 and beta 1 give [-1.44, 1, 3.44]
    x = torch.tensor([[1.0, 2.0, 3.0]])
    normalized = layer_norm(x, torch.ones(3), torch.zeros(3), eps=1e-12)
    torch.testing.assert_close(normalized, torch.tensor([[-1.2247, 0.0, 1.2247]]), atol=1e-4, rtol=0)
    out = layer_norm(x, torch.full((3,), 2.0), torch.full((3,), 1.0), eps=1e-12)
    torch.testing.assert_close(out, torch.tensor([[-1.44, 1.0, 3.44]]), atol=0.01, rtol=0)


def test_variance_is_biased_and_eps_is_inside_the_square_root():
    x = torch.randn(4, 16)
    eps = 0.5  # large enough that eps outside the root would differ visibly
    expected = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
    torch.testing.assert_close(layer_norm(x, torch.ones(16), torch.zeros(16), eps), expected)


def test_a_constant_vector_gives_beta_not_nan():
    out = layer_norm(torch.full((1, 8), 3.0), torch.full((8,), 2.0), torch.full((8,), 0.5), eps=1e-5)
    torch.testing.assert_close(out, torch.full((1, 8), 0.5))


@pytest.mark.parametrize("fused", [True, False])
def test_layer_norm_matches_torch(fused):
    ours, reference = LayerNorm(24, eps=1e-6), nn.LayerNorm(24, eps=1e-6)
    with torch.no_grad():
        ours.weight.normal_()
        ours.bias.normal_()
        reference.weight.copy_(ours.weight)
        reference.bias.copy_(ours.bias)
    ours.fused = fused
    x = torch.randn(3, 5, 24) * 4 + 2
    torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_rms_norm_matches_its_formula(fused):
    norm = RMSNorm(24, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    norm.fused = fused
    x = torch.randn(3, 5, 24)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(rms_norm(x, norm.weight, 1e-6), expected, atol=1e-6, rtol=1e-5)
