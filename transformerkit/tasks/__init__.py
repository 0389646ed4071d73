"""Tasks: what turns a recipe into a model, training data, an objective and an evaluation for the Trainer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from ..errors import ConfigError
from ..training.trainer import Objective, TrainConfig, TrainingData


@dataclass
class Setup:
    """Everything the Trainer needs, built from a recipe by a task's `prepare`."""

    model: nn.Module
    data: TrainingData
    objective: Objective
    train_config: TrainConfig
    evaluate: Callable[[nn.Module], dict[str, float]] | None
    select: str  # the evaluation metric that picks best/ (a name with "loss" in it is minimised)


def starting_model(run_dir: Path, resume: bool, init: nn.Module | None, build: Callable[[], nn.Module]) -> nn.Module:
    """What a task trains: last/ when resuming (with its tokenizers, so data is encoded as before), else the
    pretrained model given with --init, else a new model from `build`."""
    if resume:
        from ..training.checkpoint import read_checkpoint

        return read_checkpoint(Path(run_dir) / "last")
    return init if init is not None else build()


def prepare(recipe: dict[str, Any], **kwargs: Any) -> Setup:
    from . import classification, contrastive, language_model, masked_lm, translation

    tasks = {"translation": translation.prepare, "language_model": language_model.prepare,
             "masked_lm": masked_lm.prepare, "classification": classification.prepare,
             "sentence_embedding": contrastive.prepare}
    name = recipe.get("task")
    if name not in tasks:
        raise ConfigError(f"task: {name!r} is not a known task; choose one of {', '.join(tasks)}")
    return tasks[name](recipe, **kwargs)
