"""`transformerkit.load`: one entry point for every kind of model a command takes.

MODEL is a path: our checkpoint folder, a training run folder, or a Hugging Face model folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError
from .interop import huggingface
from .training.checkpoint import attach_tokenizers, is_checkpoint, load_weights, read_checkpoint


def best_device() -> torch.device:
    """CUDA if present, then Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve(path: str | os.PathLike) -> Path:
    """A run folder means its averaged/ checkpoint if present, else best/, else last/."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if folder.is_dir() and not (folder / "config.json").exists():
        for name in ("averaged", "best", "last"):
            if (folder / name / "config.json").exists():
                return folder / name
    return folder


def load(path: str | os.PathLike, device: str | torch.device | None = None,
         dtype: torch.dtype | None = None) -> nn.Module:
    """Read a model for inference (eval mode) onto `device` (default: the best available) in `dtype`."""
    folder = resolve(path)
    if folder.is_dir() and is_checkpoint(folder):
        model = read_checkpoint(folder)
    elif folder.is_dir() and (folder / "config.json").exists():
        model = load_hf_folder(folder)
    else:
        raise CheckpointError(f"{path}: not a transformerkit checkpoint, a run folder or a Hugging Face model folder")
    return model.to(device=device or best_device(), dtype=dtype).eval()


def load_hf_folder(folder: Path) -> nn.Module:
    """A Hugging Face model folder (config.json with model_type gpt2, llama, bert, bart or marian) -> our model."""
    from .models import build_model

    config, weights = huggingface.load_hf(folder)
    model = build_model(config)
    load_weights(model, {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, str(folder))
    attach_tokenizers(model, folder)
    return model
