"""Train a recipe into a run folder: the one path the CLI, the demo and the benchmarks share."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from . import distributed
from .trainer import Trainer, seed_everything

RECIPE_FILE = "recipe.json"


def default_run_dir(recipe: dict[str, Any]) -> Path:
    return Path("runs") / f"{recipe.get('name', 'run')}-{time.strftime('%Y%m%d-%H%M%S')}"


def train_recipe(recipe: dict[str, Any] | None, run_dir: str | Path, device: torch.device | str = "cpu",
                 resume: bool = False, init: nn.Module | None = None, progress_bar: bool = True) -> dict[str, Any]:
    """Train (or, with resume, continue) `recipe` in `run_dir`; returns the trainer's summary.

    A new run refuses a folder that already holds a run, so nothing is overwritten; resuming reads the
    recipe the run was started with.
    """
    from ..tasks import prepare

    run_dir = Path(run_dir)
    timeout = int(((recipe or {}).get("training") or {}).get("collective_timeout", 600))
    place = distributed.setup(torch.device(device), timeout)  # under torchrun: join the process group first
    if resume:
        if not (run_dir / RECIPE_FILE).exists():
            raise ConfigError(f"{run_dir}: not a run folder (no {RECIPE_FILE}); nothing to resume")
        recipe = json.loads((run_dir / RECIPE_FILE).read_text())
    elif (run_dir / RECIPE_FILE).exists():
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume, or choose another --out")
    distributed.barrier()  # every rank has looked at the folder before rank 0 writes into it
    if not resume:  # the model's initial weights depend on the seed alone, not on what ran before
        seed_everything(int(recipe.get("training", {}).get("seed", 1)))
    setup = prepare(recipe, run_dir=run_dir, resume=resume, init=init, device=device)
    if not resume and place.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RECIPE_FILE).write_text(json.dumps(recipe, indent=2))
    trainer = Trainer(setup.model, setup.data, setup.objective, setup.train_config, run_dir, setup.evaluate,
                      setup.select, device, progress_bar)
    try:
        return trainer.fit(resume=resume)
    finally:
        distributed.teardown()
