"""Rotary position embeddings (RoPE; Su et al., 2021), as in LLaMA.

Each pair of channels in a query or key is rotated by an angle proportional to the token's position, so
the dot product of a query at m and a key at n depends only on m - n: relative position, no table to learn.
Pairs use the half-split layout (channel i with i + D/2), as Hugging Face checkpoints do; GGUF files
store the interleaved layout (i with i + 1), which interop/gguf.py converts.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RotaryEmbedding(nn.Module):
    """cos and sin of position * frequency, computed once per forward and shared by every layer."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("inv_freq", torch.empty(head_dim // 2), persistent=False)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim
        self.inv_freq = (1.0 / self.theta**exponents).to(self.inv_freq.device)  # (D/2,) from 1 down to ~1/theta

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """positions (B or 1, T) -> cos, sin each (B or 1, 1, T, D), broadcasting over heads."""
        angles = positions[..., None].float() * self.inv_freq  # (B, T, D/2), in float32 whatever the model dtype
        angles = torch.cat((angles, angles), dim=-1)[:, None]  # (B, 1, T, D)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension: a 90-degree turn of every pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate every channel pair of x (B, H, T, D) by its angle: x cos + rotate_half(x) sin."""
    return x * cos + rotate_half(x) * sin
