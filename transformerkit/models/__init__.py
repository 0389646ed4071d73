"""The three Transformer families, all built from the parts in transformerkit.nn."""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from .decoder import DecoderOnly
from .encoder import EncoderOnly
from .encoder_decoder import EncoderDecoder
from .rnn import RNNConfig, RNNSeq2Seq

FAMILIES: dict[str, type[nn.Module]] = {
    "encoder": EncoderOnly,
    "decoder": DecoderOnly,
    "encoder-decoder": EncoderDecoder,
}


def build_model(config: ModelConfig) -> nn.Module:
    """The model class of config.family, freshly initialised."""
    return FAMILIES[config.family](config)


__all__ = ["DecoderOnly", "EncoderDecoder", "EncoderOnly", "FAMILIES", "RNNConfig", "RNNSeq2Seq", "build_model"]
