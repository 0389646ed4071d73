"""sentence-transformers folders: a BERT model plus the pipeline that turns its states into sentence vectors."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..errors import CheckpointError


def apply_sentence_transformers(model: nn.Module, folder: Path) -> None:
    """A sentence-transformers folder: its pooling (mean or first token), its normalisation and its length limit.

    modules.json lists the pipeline (Transformer, Pooling, Normalize); the Pooling module's config.json says
    which pooling; sentence_bert_config.json gives max_seq_length, beyond which inputs are truncated."""
    modules = json.loads((folder / "modules.json").read_text())
    changes = {"normalize_embeddings": any(m.get("type", "").endswith(".Normalize") for m in modules)}
    for module in modules:
        if module.get("type", "").endswith(".Pooling"):
            pooling = json.loads((folder / module["path"] / "config.json").read_text())
            modes = [k.removeprefix("pooling_mode_").removesuffix("_tokens").removesuffix("_token")
                     for k, on in pooling.items() if k.startswith("pooling_mode_") and on]
            if modes not in (["mean"], ["cls"]):
                raise CheckpointError(f"{folder}: pooling {modes} is not supported; transformerkit reads mean or cls")
            changes["pooling"] = modes[0]
    model.config = model.config.replace(**changes)
    settings = folder / "sentence_bert_config.json"
    if settings.exists() and model.tokenizer is not None:
        limit = json.loads(settings.read_text()).get("max_seq_length")
        if limit:
            model.tokenizer.enable_truncation(min(limit, model.config.max_len))
