"""The parts every Transformer family shares."""

from .attention import MultiHeadAttention, fused_attention, scaled_dot_product_attention
from .block import TransformerBlock, TransformerStack
from .dropout import Dropout
from .embedding import Embeddings, LearnedPositions, SinusoidalPositions, TokenEmbedding
from .feedforward import FeedForward
from .kv_cache import DecodeState, KVCache
from .linear import Linear
from .norm import LayerNorm, RMSNorm, layer_norm, rms_norm
from .rope import RotaryEmbedding, apply_rotary

__all__ = [
    "DecodeState", "Dropout", "Embeddings", "FeedForward", "KVCache", "LayerNorm", "LearnedPositions", "Linear",
    "MultiHeadAttention",
    "RMSNorm", "RotaryEmbedding", "SinusoidalPositions", "TokenEmbedding", "TransformerBlock", "TransformerStack",
    "apply_rotary", "fused_attention", "layer_norm", "rms_norm", "scaled_dot_product_attention",
]
