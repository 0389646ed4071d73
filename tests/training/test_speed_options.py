"""bfloat16 autocast and torch.compile: the same training, to within precision."""

import json

import pytest
import torch

from transformerkit.recipes import load_recipe
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


def compile_unavailable() -> str | None:
    """Why torch.compile cannot run here (inductor needs a C++ compiler on the CPU), or None."""
    import shutil

    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "no C++ compiler for inductor"
    return None


def test_compile_gives_the_same_losses_as_eager(data_env, tmp_path):
    reason = compile_unavailable()
    if reason:
        pytest.skip(f"torch.compile is unavailable here: {reason}")
    compiled = run(tmp_path, "compiled", "training.compile=true", "training.max_steps=2")  # one compile, two steps
    assert compiled == pytest.approx(run(tmp_path, "eager", "training.max_steps=2"), rel=1e-4)
