"""The run folder: everything a training run writes, and everything a resumed run reads back.

    RUN/metrics.jsonl     one JSON record per line: the start, log lines, evaluations, the summary
    RUN/last/             the model, the optimizer, the RNG states and the position in the data
    RUN/best/             the model with the best validation score so far
    RUN/snapshots/        weights every N steps, for averaging
    RUN/averaged/         the mean of the last snapshots (Vaswani et al., 2017, 6.1)

Every folder is written beside its place and renamed into it (checkpoint.atomic_folder), so a crash
leaves the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .checkpoint import atomic_folder, read_weights, write_model

STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"


class RunFolder:
    """Reads and writes one run folder; only the main process writes (`writer` False on the other ranks)."""

    def __init__(self, path: str | Path, writer: bool = True):
        self.path, self.writer = Path(path), writer

    def create(self) -> None:
        if self.writer:
            self.path.mkdir(parents=True, exist_ok=True)

    def lock(self) -> None:
        """Claim the folder for this process: an advisory lock the OS drops when the process dies, so a second
        `train` into the same folder fails at once instead of interleaving its steps with ours."""
        if not self.writer:
            return
        import fcntl

        self.create()
        self._lock = open(self.path / LOCK_FILE, "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.seek(0)
            owner = self._lock.read().strip() or "another process"
            self._lock.close()
            raise ConfigError(f"{self.path}: {owner} is training in this folder; wait for it or stop it") from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"process {os.getpid()}")
        self._lock.flush()
        self._recover()

    def unlock(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None and not lock.closed:
            lock.close()  # closing the file drops the lock

    def _recover(self) -> None:
        """Tidy what an interrupted save left: a checkpoint moved aside but not yet replaced is put back, and
        half-written temporary folders are removed (atomic_folder names them .NAME.tmp-* and .NAME.old-*)."""
        for leftover in sorted(self.path.glob(".*.old-*")):
            final = self.path / leftover.name[1:].split(".old-")[0]
            if not final.exists() and (leftover / "config.json").exists():
                leftover.rename(final)  # the crash came between the two renames of a save
            else:
                shutil.rmtree(leftover, ignore_errors=True)
        for leftover in self.path.glob(".*.tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in (self.path / "snapshots").glob("*.tmp") if (self.path / "snapshots").exists() else ():
            leftover.unlink(missing_ok=True)

    def truncate_metrics(self, step: int) -> None:
        """Drop the records of steps after `step` (a resumed run replays them) and any old summary."""
        path = self.path / METRICS_FILE
        if not self.writer or not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if "summary" not in record and record.get("step", 0) <= step:
                kept.append(line)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)

    def log(self, record: dict[str, Any]) -> None:
        if self.writer:
            with (self.path / METRICS_FILE).open("a") as f:
                f.write(json.dumps(record) + "\n")

    def save_model(self, name: str, model: nn.Module, extra: Callable[[Path], None] | None = None) -> None:
        if not self.writer:
            return
        with atomic_folder(self.path / name) as tmp:
            write_model(model, tmp)
            if extra:
                extra(tmp)

    def save_last(self, model: nn.Module, state: dict[str, Any]) -> None:
        """last/: the model and the trainer's state (progress, optimizer, RNG), enough to resume exactly."""
        state = {**state, "rng": _rng_state()}
        self.save_model("last", model, lambda tmp: torch.save(state, tmp / STATE_FILE))

    def read_last(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """last/'s weights and trainer state; the RNG states are restored as they were saved."""
        last = self.path / "last"
        if not (last / STATE_FILE).exists():
            raise CheckpointError(f"{self.path}: nothing to resume (no last/{STATE_FILE})")
        try:
            state = torch.load(last / STATE_FILE, map_location="cpu", weights_only=False)
        except Exception as error:  # truncated or foreign: pickle and zip raise many kinds
            raise CheckpointError(f"{last / STATE_FILE}: unreadable ({str(error)[:200]})") from None
        weights = read_weights(last / "model.safetensors")
        _set_rng_state(state.pop("rng"))
        return weights, state

    def snapshot(self, model: nn.Module, step: int, keep: list[int]) -> None:
        """Save the weights of `step` under snapshots/ and delete those no longer in `keep`."""
        from safetensors.torch import save_model

        if not self.writer:
            return
        folder = self.path / "snapshots"
        folder.mkdir(exist_ok=True)
        path = self.snapshot_file(step)
        tmp = path.with_suffix(".tmp")
        save_model(model, str(tmp))
        tmp.replace(path)
        for old in folder.glob("step-*.safetensors"):
            if int(old.stem.removeprefix("step-")) not in keep:
                old.unlink(missing_ok=True)

    def snapshot_file(self, step: int) -> Path:
        return self.path / "snapshots" / f"step-{step:08d}.safetensors"

    def average_snapshots(self, model: nn.Module, steps: list[int]) -> dict[str, torch.Tensor]:
        """The mean of the snapshots' weights, in the model's dtypes (a tensor missing from a snapshot, such as
        a tied copy, counts with the model's current value)."""
        current = {k: v.detach() for k, v in model.state_dict().items()}
        total = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in current.items()}
        for step in steps:
            weights = read_weights(self.snapshot_file(step))
            for k in total:
                total[k] += weights.get(k, current[k]).float()
        return {k: (v / len(steps)).to(current[k].dtype) for k, v in total.items()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
