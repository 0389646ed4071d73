"""What every task shares: reading a recipe's tables, and the Setup a task hands the Trainer.

A recipe is a TOML file of tables. Each task declares its tables as typed configs, so a whole recipe is
checked (unknown tables and keys, types, ranges) before any data is read or any step is trained.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from torch import nn

from ..config import Config, ModelConfig, RNNConfig, closest
from ..errors import ConfigError
from ..training.trainer import Objective, TrainConfig, TrainingData

TOP_LEVEL = ("task", "name", "description")  # recipe keys that are not tables


@dataclass
class Setup:
    """Everything the Trainer needs, built from a recipe by a task's `prepare`."""

    model: nn.Module
    data: TrainingData
    objective: Objective
    train_config: TrainConfig
    evaluate: Callable[[nn.Module], dict[str, float]] | None
    select: str  # the evaluation metric that picks best/ (a name with "loss" in it is minimised)
    floor: float | None = None  # the `select` score a model must pass to have learned anything at all


def read_tables(recipe: dict[str, Any], **tables: type[Config] | set[str]) -> dict[str, Any]:
    """The recipe's tables, each checked: a typed table (a Config class) becomes an instance; a key set (the
    [model] table, checked field by field when the model is built) a dict. An unknown table or key, or a
    wrong type, is a ConfigError naming the table, the key and what is allowed (with a "did you mean")."""
    for key in recipe:
        if key not in TOP_LEVEL and key not in tables:
            raise ConfigError(f"unknown table [{key}]{closest(key, set(tables))}; this recipe's task "
                              f"({recipe.get('task')!r}) reads {', '.join(f'[{t}]' for t in tables)}")
    out = {}
    for name, kind in tables.items():
        values = recipe.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}] must be a table of keys, not {values!r}")
        if isinstance(kind, set):
            unknown = sorted(set(values) - kind)
            if unknown:
                raise ConfigError(f"[{name}] {unknown[0]}: unknown key{closest(unknown[0], kind)}; allowed: "
                                  f"{', '.join(sorted(kind))}")
            out[name] = dict(values)
        else:
            with table_errors(name):
                out[name] = kind.from_dict(values)
    return out


@contextlib.contextmanager
def table_errors(name: str) -> Iterator[None]:
    """Prefix the ConfigErrors raised inside with the recipe table they come from: "[model] d_model: ..."."""
    try:
        yield
    except ConfigError as error:
        if str(error).startswith("["):
            raise
        raise ConfigError(f"[{name}] {error}") from None


def model_keys(*extra: str, rnn: bool = False) -> set[str]:
    """The keys a [model] table may hold: the model config's fields, and the task's own (e.g. preset)."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    if rnn:
        fields |= {f.name for f in dataclasses.fields(RNNConfig)}
    return fields | set(extra)


def starting_model(run_dir: Path, resume: bool, init: nn.Module | None, build: Callable[[], nn.Module]) -> nn.Module:
    """What a task trains: last/ when resuming (with its tokenizers, so data is encoded as before), else the
    pretrained model given with --init, else a new model from `build`."""
    if resume:
        from ..training.checkpoint import read_checkpoint

        return read_checkpoint(Path(run_dir) / "last")
    if init is not None:
        return init
    with table_errors("model"):
        return build()
