"""bfloat16 autocast and torch.compile: the same training, to within precision."""

import json

import pytest
import torch

from transformerkit.recipes import load_recipe
from transformerkit.runtime import compile_unavailable
from transformerkit.tasks.run import train_recipe

from .test_trainer import TINY


def losses(run):
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def run(tmp_path, name, *extra):
    recipe = load_recipe("multi30k-de-en", [*TINY, "model.dropout=0.0", "training.max_steps=8",
                                            "training.eval_every=0", *extra])
    train_recipe(recipe, tmp_path / name, progress_bar=False)
    return losses(tmp_path / name)


def test_bfloat16_losses_are_finite_and_close_to_float32(data_env, tmp_path, monkeypatch):
    monkeypatch.delenv("TRANSFORMERKIT_PRECISION", raising=False)  # this test compares the two itself
    fp32 = run(tmp_path, "fp32", 'training.precision="fp32"')
    bf16 = run(tmp_path, "bf16", "training.bf16=true")  # the older switch still works
    assert all(map(torch.isfinite, torch.tensor(bf16)))
    assert bf16 == pytest.approx(fp32, rel=0.03)


def language_model(tmp_path, name, *extra):
    """A one-block character model: a decoder compiles to half the kernels of an encoder-decoder (inductor
    builds each with a C++ compiler, about a second apiece), and the Trainer's compile path is the same."""
    recipe = load_recipe("shakespeare-char", [
        "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.d_ff=64", "model.max_len=32",
        "model.dropout=0.0", "data.context=32", "data.batch_size=8", "data.val_batches=1", "training.eval_every=0",
        "training.log_every=1", "training.warmup_steps=1", "training.max_steps=2", "sample.tokens=4", *extra])
    train_recipe(recipe, tmp_path / name, progress_bar=False)
    return losses(tmp_path / name)


def test_compile_gives_the_same_losses_as_eager(data_env, tmp_path):
    reason = compile_unavailable()
    if reason:
        pytest.skip(f"torch.compile is unavailable here: {reason}")
    compiled = language_model(tmp_path, "compiled", "training.compile=true")  # one compile, two steps
    assert len(compiled) == 2
    assert compiled == pytest.approx(language_model(tmp_path, "eager"), rel=1e-4)
