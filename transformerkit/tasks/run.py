"""Train a recipe into a run folder: the one path the CLI, the demo, the experiment and the benchmarks share."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..recipes import apply_overrides
from ..training import distributed
from ..training.run_folder import STATE_FILE, RunFolder, seed_everything
from ..training.trainer import Trainer
from . import prepare

RECIPE_FILE = "recipe.json"
# what `train --resume RUN --set ...` may change: how long and how fast to go on, how often to look; never what
# was trained (the model, the data, the tokenizer) or the rest of the optimizer's settings
RESUMABLE = {f"training.{name}" for name in ("lr", "min_lr", "max_steps", "max_epochs", "max_minutes",
                                              "budget_minutes", "eval_every", "evaluations", "log_every", "patience")}


def default_run_dir(recipe: dict[str, Any]) -> Path:
    return Path("runs") / f"{recipe.get('name', 'run')}-{time.strftime('%Y%m%d-%H%M%S')}"


def train_recipe(recipe: dict[str, Any] | None, run_dir: str | Path, device: torch.device | str = "cpu",
                 resume: bool = False, init: nn.Module | None = None, progress_bar: bool = True,
                 overrides: list[str] = ()) -> dict[str, Any]:
    """Train (or, with resume, continue) `recipe` in `run_dir`; returns the trainer's summary.

    The whole recipe is checked (and the data read) before anything is written. A new run refuses a folder
    that holds a run that saved a checkpoint; resuming reads the recipe the run was started with, changed
    by `overrides` where that is safe (RESUMABLE).
    """
    run_dir = Path(run_dir)
    timeout = _integer(recipe, "collective_timeout", 600)
    place = distributed.setup(torch.device(device), timeout)  # under torchrun: join the process group first
    folder = RunFolder(run_dir, writer=place.is_main)
    started = (run_dir / "last" / STATE_FILE).exists()
    changes: dict[str, Any] = {}
    if resume:
        if not (run_dir / RECIPE_FILE).exists():
            raise ConfigError(f"{run_dir}: not a run folder (no {RECIPE_FILE}); nothing to resume")
        folder.lock()
        started = (run_dir / "last" / STATE_FILE).exists()  # the lock recovers an interrupted save first
        if not started:
            raise ConfigError(f"{run_dir}: the run stopped before its first checkpoint; start it again with "
                              f"transformerkit train RECIPE --out {run_dir}")
        recipe, changes = resumed_recipe(_read_recipe(run_dir), overrides)
    elif started:
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume, or choose another --out")
    distributed.barrier()  # every rank has looked at the folder before rank 0 writes into it
    if not resume:  # the model's initial weights depend on the seed alone, not on what ran before
        seed_everything(_integer(recipe, "seed", 1))
    setup = prepare(recipe, run_dir=run_dir, resume=resume, init=init, device=device)  # refusals write nothing
    if not resume:
        folder.lock()  # a folder with a recipe but no checkpoint is a start that failed: it is started again
    if place.is_main and (changes or not resume):
        tmp = run_dir / f"{RECIPE_FILE}.tmp"
        tmp.write_text(json.dumps(recipe, indent=2))
        tmp.replace(run_dir / RECIPE_FILE)
    trainer = Trainer(setup.model, setup.data, setup.objective, setup.train_config, run_dir, setup.evaluate,
                      setup.select, device, progress_bar, setup.floor)
    try:
        return trainer.fit(resume=resume, changes=changes)
    finally:
        folder.unlock()
        distributed.teardown()


def resumed_recipe(saved: dict[str, Any], overrides: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The saved recipe with `--set` overrides applied, and what they changed ({"training.lr": [old, new]});
    a change outside RESUMABLE is a ConfigError that says what may change."""
    recipe = apply_overrides(saved, overrides)
    changes = {}
    for key in sorted({item.partition("=")[0].strip() for item in overrides}):
        table, _, name = key.partition(".")
        old, new = (saved.get(table) or {}).get(name), (recipe.get(table) or {}).get(name)
        if old == new:
            continue
        if key not in RESUMABLE:
            raise ConfigError(f"--set {key}: cannot change when resuming (it would change what was trained); "
                              f"with --resume you may set {', '.join(sorted(RESUMABLE))}")
        changes[key] = [old, new]
    return recipe, changes


def _integer(recipe: dict[str, Any] | None, key: str, default: int) -> int:
    """A [training] integer needed before the recipe is checked; a wrong value is left for the check to name."""
    value = ((recipe or {}).get("training") or {}).get(key, default)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _read_recipe(run_dir: Path) -> dict[str, Any]:
    try:
        recipe = json.loads((run_dir / RECIPE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{run_dir / RECIPE_FILE}: unreadable ({error})") from None
    if not isinstance(recipe, dict):
        raise ConfigError(f"{run_dir / RECIPE_FILE}: not a recipe")
    return recipe
