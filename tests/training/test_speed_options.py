"""bfloat16 autocast and torch.compile: the same training, to within precision."""

import json

import pytest
import torch

from transformerkit.recipes import load_recipe
from transformerkit.training.run import train_recipe

from .test_trainer import TINY


def losses(run):
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def run(tmp_path, name, *extra):
    recipe = load_recipe("multi30k-de-en", [*TINY, "model.dropout=0.0", "training.max_steps=8",
                                            "training.eval_every=0", *extra])
    train_recipe(recipe, tmp_path / name, progress_bar=False)
    return losses(tmp_path / name)


def test_bfloat16_losses_are_finite_and_close_to_float32(data_env, tmp_path):
    fp32, bf16 = run(tmp_path, "fp32"), run(tmp_path, "bf16", "training.bf16=true")
    assert all(map(torch.isfinite, torch.tensor(bf16)))
    assert bf16 == pytest.approx(fp32, rel=0.03)


def test_compile_gives_the_same_losses_as_eager(data_env, tmp_path):
    try:
        compiled = run(tmp_path, "compiled", "training.compile=true")
    except Exception as error:  # no C++ compiler or an unsupported platform: inductor cannot run here
        pytest.skip(f"torch.compile is unavailable here: {type(error).__name__}: {str(error)[:200]}")
    assert compiled == pytest.approx(run(tmp_path, "eager"), rel=1e-4)
