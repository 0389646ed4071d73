"""Which model class a checkpoint's config.json names, and how to build it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .config import ModelConfig
from .errors import CheckpointError, ConfigError


def build_from_header(header: dict[str, Any], folder: Path) -> nn.Module:
    """Our config.json ({"format", "architecture", "model"}) -> a freshly built model of that architecture."""
    from .models import RNNConfig, RNNSeq2Seq, build_model

    architecture = header.get("architecture", "transformer")
    builders = {"transformer": lambda values: build_model(ModelConfig.from_dict(values)),
                "rnn": lambda values: RNNSeq2Seq(RNNConfig.from_dict(values))}
    if architecture not in builders:
        raise CheckpointError(f"{folder}: unknown architecture {architecture!r}; known: {', '.join(builders)}")
    try:
        return builders[architecture](header["model"])
    except (ConfigError, KeyError) as error:
        raise CheckpointError(f"{folder / 'config.json'}: {error}") from None
