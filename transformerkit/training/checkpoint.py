"""A checkpoint is a folder: config.json, model.safetensors and the model's tokenizer files.

Folders are written next to their final place and renamed into it, so a crash leaves either the old
checkpoint or the new one, never half of one. Training checkpoints add trainer_state.pt.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import CheckpointError

FORMAT = "transformerkit"
TOKENIZER_FILES = {"tokenizer": "tokenizer.json", "source_tokenizer": "source_tokenizer.json",
                   "target_tokenizer": "target_tokenizer.json"}
CHAT_TEMPLATE_FILE = "chat_template.jinja"


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` by renames, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def model_header(model: nn.Module) -> dict[str, Any]:
    """What config.json says of a model: our format marker, its architecture, its config and, for a trained
    model, its task (languages, decoding defaults) so that commands need not be told again."""
    header = {"format": FORMAT, "architecture": getattr(model, "architecture", "transformer"),
              "model": model.config.to_dict()}
    if getattr(model, "quantization", None):
        header["quantization"] = model.quantization
    if getattr(model, "task", None):
        header["task"] = model.task
    return header


def write_model(model: nn.Module, folder: Path) -> None:
    """Write config.json, model.safetensors, tokenizer files and chat template into an existing folder."""
    from safetensors.torch import save_model

    (folder / "config.json").write_text(json.dumps(model_header(model), indent=2))
    restrided = [p for p in model.parameters() if not p.is_contiguous()]  # a loaded model's decoding layout
    kept = [p.data for p in restrided]
    for p in restrided:  # safetensors wants contiguous tensors; tied weights stay one parameter
        p.data = p.data.contiguous()
    try:
        save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
    finally:
        for p, data in zip(restrided, kept):
            p.data = data
    source, target = getattr(model, "source_tokenizer", None), getattr(model, "target_tokenizer", None)
    tokenizers = {"tokenizer": getattr(model, "tokenizer", None) or (source if source is target else None)}
    if source is not target:
        tokenizers.update(source_tokenizer=source, target_tokenizer=target)
    for attribute, tokenizer in tokenizers.items():
        if tokenizer is not None:
            tokenizer.save(str(folder / TOKENIZER_FILES[attribute]))
    if getattr(model, "chat_template", None):
        (folder / CHAT_TEMPLATE_FILE).write_text(model.chat_template)


def save(model: nn.Module, folder: str | os.PathLike) -> Path:
    """Write the model (and its tokenizers and chat template) as a checkpoint folder, atomically."""
    with atomic_folder(folder) as tmp:
        write_model(model, tmp)
    return Path(folder)


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a truncated or foreign file is a CheckpointError that names it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for every way a file can be broken
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(error)[:200]})") from None


def is_checkpoint(folder: Path) -> bool:
    try:
        return json.loads((folder / "config.json").read_text()).get("format") == FORMAT
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def read_checkpoint(folder: Path) -> nn.Module:
    """Our checkpoint folder -> the model, on the CPU in the stored dtype, with its tokenizers attached."""
    from ..models import build_from_header

    try:
        header = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{folder / 'config.json'}: {error}") from None
    model = build_from_header(header, folder)
    weights_file = folder / "model.safetensors"
    if not weights_file.exists():
        raise CheckpointError(f"{folder}: no model.safetensors")
    load_weights(model, read_weights(weights_file), str(weights_file))
    attach_tokenizers(model, folder)
    model.task = header.get("task")
    return model


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], source: str,
                 only: set[str] | None = None) -> None:
    """Copy `weights` into the model; a missing tensor or a shape mismatch is a CheckpointError naming it.

    Tied parameters (one tensor under several names) need only one of their names. `only`: the model's
    tensors the weights must fill (the rest are already set, e.g. quantized layers built from a file).
    """
    expected = {name: tensor for name, tensor in model.state_dict().items() if only is None or name in only}
    groups: dict[int, list[str]] = {}
    for name, tensor in expected.items():
        groups.setdefault(tensor.data_ptr(), []).append(name)
    for names in groups.values():
        present = [n for n in names if n in weights]
        if not present:
            raise CheckpointError(f"{source}: missing tensor {names[0]!r}")
        for name in present:
            if tuple(weights[name].shape) != tuple(expected[name].shape):
                raise CheckpointError(f"{source}: tensor {name!r} has shape {tuple(weights[name].shape)}, "
                                      f"the model expects {tuple(expected[name].shape)}")
        if len(present) < len(names):
            for name in names:
                weights.setdefault(name, weights[present[0]])
    model.load_state_dict({k: v for k, v in weights.items() if k in expected}, strict=only is None)


def attach_tokenizers(model: nn.Module, folder: Path) -> None:
    """Set the model's tokenizers and chat template from a folder's files. An encoder-decoder with one joint
    vocabulary has a single tokenizer.json that serves as both its source and its target tokenizer."""
    from tokenizers import Tokenizer

    found = {}
    for attribute, filename in TOKENIZER_FILES.items():
        if (folder / filename).exists():
            try:
                found[attribute] = Tokenizer.from_file(str(folder / filename))
            except Exception as error:  # the tokenizers library raises a bare Exception for a bad file
                raise CheckpointError(f"{folder / filename}: not a readable tokenizer ({str(error)[:200]})") from None
    for tokenizer in found.values():
        tokenizer.no_padding()  # batches are padded here, with masks (a file may ask for fixed-length padding)
    if hasattr(model, "source_tokenizer"):
        model.source_tokenizer = found.get("source_tokenizer", found.get("tokenizer"))
        model.target_tokenizer = found.get("target_tokenizer", found.get("tokenizer"))
    elif "tokenizer" in found:
        model.tokenizer = found["tokenizer"]
    if (folder / CHAT_TEMPLATE_FILE).exists():
        model.chat_template = (folder / CHAT_TEMPLATE_FILE).read_text()
