"""Quantizing a model's weights (nn/quantized.py) after it is built or loaded, for any family.

Every linear layer of the blocks becomes an Int8Linear or an Int4Linear; the output layer becomes an
Int8Linear (it is the widest matmul of a decoding step and the most sensitive to rounding), and where the
token embedding is tied to it, the embedding reads the same int8 table (nn/quantized.QuantizedEmbedding).
Norms, biases and position tables stay in floating point: they are a small share of the bytes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .nn.quantized import Int4Linear, Int8Linear, QuantizedEmbedding, join_int4

KINDS = ("int8", "int4")


def quantize_model(model: nn.Module, kind: str, group_size: int = 32) -> nn.Module:
    """Replace the model's linear layers with quantized ones, in place; returns the model."""
    if kind not in KINDS:
        raise ConfigError(f"quantize: {kind!r} is not allowed; choose one of {', '.join(KINDS)}")
    output = model.output_layer() if hasattr(model, "output_layer") else None
    tied = _tied_embeddings(model, output)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            bias = child.bias.detach() if child.bias is not None else None
            if child is output or kind == "int8" or not Int4Linear.fits(child.weight.shape, group_size):
                layer = Int8Linear.from_float(child.weight, bias)
            else:
                layer = Int4Linear.from_float(child.weight, group_size, bias)
            setattr(parent, name, layer)
            if child is output:
                for embeddings in tied:
                    embeddings.tokens = QuantizedEmbedding(layer, embeddings.tokens.scale)
    model.quantization = {"kind": kind, "group_size": group_size}
    return model


def join_projections(model: nn.Module) -> int:
    """Join each block's int4 projections that read the same input (self-attention's q, k and v; SwiGLU's gate
    and up) into one kernel call each (nn/quantized.join_int4); returns how many groups were joined. For
    decoding: a one-token matmul is so small that the calls' fixed cost is a large share of it."""
    from .nn.block import TransformerBlock

    joined = 0
    for block in [m for m in model.modules() if isinstance(m, TransformerBlock)]:
        attention, ffn = block.self_attn, block.ffn
        joined += join_int4([attention.q_proj, attention.k_proj, attention.v_proj])
        if ffn.gate_proj is not None:
            joined += join_int4([ffn.gate_proj, ffn.up_proj])
    return joined


def _tied_embeddings(model: nn.Module, output: nn.Module | None) -> list[nn.Module]:
    """The embedding modules (nn/embedding.Embeddings) whose token table is the output layer's weight, so that
    all of them can share its int8 table (an encoder-decoder with one vocabulary has two)."""
    if output is None:
        return []
    return [m for m in model.modules() if isinstance(getattr(m, "tokens", None), nn.Embedding)
            and m.tokens.weight is output.weight]


def quantization_of(model: nn.Module) -> dict[str, Any] | None:
    return getattr(model, "quantization", None)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every tensor the model holds (parameters and buffers, each shared tensor once)."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


def activation_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype the model computes in: that of its first floating parameter (a norm, an embedding)."""
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32
