"""LayerNorm written out, and RMSNorm: they keep each position's activations at a steady scale."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig


def layer_norm(x: Tensor, gamma: Tensor, beta: Tensor, eps: float) -> Tensor:
    """Normalise each vector to mean 0 and variance 1 over its channels, then scale by gamma and shift by beta.

    The variance is the biased one (divide by C, not C - 1), and eps sits inside the square root.
    Example: [-1.22, 0, 1.22] scaled by gamma 2 and shifted by beta 1 gives [-1.44, 1, 3.44].
    """
    mean = x.mean(dim=-1, keepdim=True)  # (B, T, 1)
    var = (x - mean).pow(2).mean(dim=-1, keepdim=True)  # (B, T, 1)
    return (x - mean) / torch.sqrt(var + eps) * gamma + beta


def rms_norm(x: Tensor, gamma: Tensor, eps: float) -> Tensor:
    """Scale by the root mean square only (Zhang and Sennrich, 2019): no mean, no beta; computed in float32."""
    x32 = x.float()
    return gamma * (x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)).to(x.dtype)


class LayerNorm(nn.Module):
    """Learnable gamma (`weight`) and beta (`bias`) around `layer_norm`; runs PyTorch's fused kernel by default."""

    fused = True  # False: run the written-out `layer_norm` (the tests hold the two equal)

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))  # gamma
        self.bias = nn.Parameter(torch.zeros(d_model))  # beta
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if self.fused:
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
        return layer_norm(x, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """Learnable gamma (`weight`) around `rms_norm`, as in LLaMA; PyTorch's fused kernel by default."""

    fused = True

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if self.fused:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return rms_norm(x, self.weight, self.eps)


def make_norm(config: ModelConfig) -> nn.Module:
    """The config's norm; `none` is the identity (the layernorm lab trains without any)."""
    if config.norm == "none":
        return nn.Identity()
    return (LayerNorm if config.norm == "layernorm" else RMSNorm)(config.d_model, config.norm_eps)
