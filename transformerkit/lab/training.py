"""Short trainings for the labs, with the project's own Trainer (training/trainer.py), into a temporary folder.

A lab compares variants that differ in one thing; everything else (the seed, the data, the steps, the
optimiser) is the same because every variant goes through this one function. The loss of every step is
kept (metrics.jsonl with log_every = 1), so the curves are the Trainer's own numbers. A run whose loss stops
being a number is a result here, not an error: the Trainer stops it and the curve says where.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ..errors import TrainingError
from ..training.trainer import Objective, TrainConfig, Trainer, TrainingData
from ..viz import read_metrics


@dataclass
class Curve:
    """What one training measured: the loss of each step, the evaluations, and where it diverged (if it did)."""

    steps: list[int]
    losses: list[float]
    evaluations: list[dict[str, float]] = field(default_factory=list)
    diverged_at: int | None = None  # the step whose loss was not a number
    seconds: float = 0.0

    def final(self, last: int = 10) -> float:
        """The mean loss of the last steps (one step is noisy); inf when the run diverged."""
        if self.diverged_at is not None or not self.losses:
            return float("inf")
        tail = self.losses[-last:]
        return sum(tail) / len(tail)

    def first_step_below(self, level: float) -> int | None:
        """The first step whose loss was below `level`: how fast a run got somewhere."""
        return next((s for s, loss in zip(self.steps, self.losses) if loss < level), None)

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "losses": [round(x, 5) for x in self.losses], "evaluations": self.evaluations,
                "diverged_at": self.diverged_at, "seconds": round(self.seconds, 2)}


def train(model: nn.Module, data: TrainingData, objective: Objective, *, steps: int, lr: float, seed: int,
          warmup: int = 0, clip: float = 1.0, evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
          eval_every: int = 0, label: str = "") -> Curve:
    """Train `model` in place for `steps` optimizer steps at a constant `lr` (after `warmup`), in float32 (the
    same arithmetic on every machine), and return its curve. Prints one line when done."""
    config = TrainConfig(lr=lr, schedule="constant", warmup_steps=warmup, max_steps=steps, clip_norm=clip,
                         log_every=1, eval_every=eval_every, checkpoint_minutes=0, precision="fp32", seed=seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="transformerkit-lab-") as run_dir:
        trainer = Trainer(model, data, objective, config, run_dir, evaluate, "val_loss", progress_bar=False)
        diverged = False
        with contextlib.redirect_stderr(io.StringIO()):  # the Trainer's own lines; the lab prints its summary
            try:
                trainer.fit()
            except TrainingError:
                diverged = True
        records = read_metrics(run_dir)
    logged = [r for r in records if "loss" in r]
    curve = Curve([r["step"] for r in logged], [r["loss"] for r in logged],
                  [{k: v for k, v in r.items() if k.startswith("val_") or k == "step"} for r in records
                   if any(k.startswith("val_") for k in r)],
                  (logged[-1]["step"] + 1 if logged else 1) if diverged else None, time.perf_counter() - started)
    model.eval()
    end = f"diverged at step {curve.diverged_at}" if diverged else f"loss {curve.final():.3f}"
    print(f"  {label or 'trained'}: {steps} steps, {end} ({curve.seconds:.1f} s)", file=sys.stderr, flush=True)
    return curve
