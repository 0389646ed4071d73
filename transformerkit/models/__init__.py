"""The three Transformer families and the recurrent models, all built from the parts in transformerkit.nn;
and the registry that turns a config (or a checkpoint's config.json) into the right class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..config import ModelConfig, RNNConfig
from ..errors import CheckpointError, ConfigError
from .decoder import DecoderOnly
from .encoder import EncoderOnly
from .encoder_decoder import EncoderDecoder
from .rnn import RNNSeq2Seq

FAMILIES: dict[str, type[nn.Module]] = {
    "encoder": EncoderOnly,
    "decoder": DecoderOnly,
    "encoder-decoder": EncoderDecoder,
}


def build_model(config: ModelConfig) -> nn.Module:
    """The model class of config.family, freshly initialised."""
    return FAMILIES[config.family](config)


def build_empty_model(config: ModelConfig | RNNConfig) -> nn.Module:
    """The model for `config` with uninitialised weights, ready for a checkpoint's weights (nn/init.py)."""
    from ..nn.init import build_empty

    return build_empty(RNNSeq2Seq if isinstance(config, RNNConfig) else FAMILIES[config.family], config)


def build_from_header(header: dict[str, Any], folder: Path) -> nn.Module:
    """Our config.json ({"format", "architecture", "model"}) -> an empty model of that architecture."""
    architecture = header.get("architecture", "transformer")
    if architecture not in ("transformer", "rnn"):
        raise CheckpointError(f"{folder}: unknown architecture {architecture!r}; known: transformer, rnn")
    try:
        kind = RNNConfig if architecture == "rnn" else ModelConfig
        model = build_empty_model(kind.from_dict(header["model"]))
        quantization = header.get("quantization")
        if quantization:  # a quantized checkpoint: the same layers, to be filled with its codes and scales
            from ..quantize import quantize_model

            quantize_model(model, quantization["kind"], quantization.get("group_size", 32))
        return model
    except (ConfigError, KeyError, TypeError) as error:
        raise CheckpointError(f"{folder / 'config.json'}: {error}") from None


__all__ = ["DecoderOnly", "EncoderDecoder", "EncoderOnly", "FAMILIES", "RNNConfig", "RNNSeq2Seq", "build_empty_model",
           "build_from_header", "build_model"]
