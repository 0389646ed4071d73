"""Which model class a checkpoint's config.json names, and how to build it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .config import ModelConfig
from .errors import CheckpointError, ConfigError


def build_from_header(header: dict[str, Any], folder: Path) -> nn.Module:
    """Our config.json ({"format", "architecture", "model"}) -> a model of that architecture with uninitialised
    weights, ready to load its checkpoint's weights."""
    from .models import FAMILIES, RNNConfig, RNNSeq2Seq
    from .nn.init import build_empty

    architecture = header.get("architecture", "transformer")
    if architecture not in ("transformer", "rnn"):
        raise CheckpointError(f"{folder}: unknown architecture {architecture!r}; known: transformer, rnn")
    try:
        if architecture == "rnn":
            return build_empty(RNNSeq2Seq, RNNConfig.from_dict(header["model"]))
        config = ModelConfig.from_dict(header["model"])
        return build_empty(FAMILIES[config.family], config)
    except (ConfigError, KeyError) as error:
        raise CheckpointError(f"{folder / 'config.json'}: {error}") from None
