"""Tasks: what turns a recipe into a model, training data, an objective and an evaluation for the Trainer (one
file per task), and run.py, which trains a recipe into a run folder."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .recipe import Setup


def prepare(recipe: dict[str, Any], **kwargs: Any) -> Setup:
    """The recipe's task, prepared: model, data, objective, evaluation (see recipe.Setup)."""
    from . import classification, contrastive, language_model, masked_lm, translation

    tasks = {"translation": translation.prepare, "language_model": language_model.prepare,
             "masked_lm": masked_lm.prepare, "classification": classification.prepare,
             "sentence_embedding": contrastive.prepare}
    name = recipe.get("task")
    if not isinstance(name, str) or name not in tasks:  # a TOML list or table is no task's name either
        raise ConfigError(f"task: {name!r} is not a known task; choose one of {', '.join(tasks)}")
    return tasks[name](recipe, **kwargs)
