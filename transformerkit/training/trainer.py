"""One training loop for every family and objective.

Adam with warmup, optional bfloat16 autocast, gradient accumulation and clipping; evaluation every N
steps with the best checkpoint kept; weight snapshots averaged at the end (the paper averaged its last
checkpoints); a progress bar and metrics.jsonl. A run folder can always be resumed: `last/` holds the
model, the optimizer, the RNG states and the position in the data, so the resumed run continues with
exactly the losses the uninterrupted run would have had (bit for bit on the CPU).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError, TransformerkitError
from ..runtime import keep_freed_memory
from . import distributed
from .checkpoint import atomic_folder, write_model
from .schedules import make_schedule

STATE_FILE = "trainer_state.pt"


class TrainingError(TransformerkitError):
    """Training cannot go on (a NaN loss); the message says where the last good checkpoint is."""


class Interrupted(TransformerkitError):
    """Ctrl-C: a checkpoint was saved; the message says how to resume."""


class Batch(Protocol):
    n_tokens: int

    def to(self, device: torch.device) -> Batch: ...


class TrainingData(Protocol):
    """The batches of one epoch, a function of the epoch number alone (so a resumed run sees the same)."""

    def batches(self, epoch: int) -> Sequence[Batch]: ...


Objective = Callable[[nn.Module, Any], tuple[Tensor, int]]


@dataclass
class TrainConfig:
    """How to train; every field can be set in a recipe's [training] table."""

    lr: float = 5e-4  # peak learning rate, reached at the end of warmup
    schedule: str = "inverse_sqrt"  # inverse_sqrt (2017 paper), cosine, constant
    warmup_steps: int = 4000
    min_lr: float = 0.0  # cosine: the floor reached at max_steps
    betas: tuple[float, float] = (0.9, 0.98)  # the paper's Adam betas: a short memory for the second moment
    eps: float = 1e-9
    weight_decay: float = 0.0  # decoupled (AdamW) when above 0
    clip_norm: float = 1.0  # clip the global gradient norm; 0 disables
    accumulate: int = 1  # batches per optimizer step
    max_steps: int | None = None
    max_epochs: int | None = None
    max_minutes: float | None = None  # wall-clock budget of the whole run, evaluations included
    bf16: bool = False  # bfloat16 autocast (AMX on recent Intel CPUs, tensor cores on GPUs)
    compile: bool = False  # torch.compile the forward and loss
    seed: int = 1
    log_every: int = 50
    eval_every: int = 1000
    snapshot_every: int = 0  # keep the weights every N steps for averaging; 0 disables
    average_last: int = 0  # average the last K snapshots into averaged/ at the end; 0 disables
    patience: int = 0  # stop after this many evaluations without improvement; 0 never stops early
    fsdp: bool = False  # under torchrun: shard parameters, gradients and optimizer state (FSDP2) instead of DDP
    collective_timeout: int = 600  # seconds before a collective with a dead or stuck rank fails the run

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # TOML gives lists
        if not (self.max_steps or self.max_epochs or self.max_minutes):
            raise ConfigError("training: set at least one of max_steps, max_epochs, max_minutes")
        if self.accumulate < 1:
            raise ConfigError(f"accumulate: {self.accumulate} is not allowed; it must be at least 1")
        if self.average_last and not self.snapshot_every:
            raise ConfigError("average_last: needs snapshot_every, the interval between averaged snapshots")


@dataclass
class Progress:
    """Where a run is: saved with every checkpoint and restored on resume."""

    step: int = 0
    epoch: int = 0
    batch_index: int = 0  # next batch of the epoch
    tokens: int = 0
    elapsed: float = 0.0  # seconds of wall clock across all sessions
    best: float | None = None
    evals_without_improvement: int = 0
    snapshots: list[int] = field(default_factory=list)


class Trainer:
    """Train `model` on `data` with `objective`, writing a run folder; see the module docstring."""

    def __init__(self, model: nn.Module, data: TrainingData, objective: Objective, config: TrainConfig,
                 run_dir: str | Path, evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
                 select: str = "val_loss", device: torch.device | str = "cpu", progress_bar: bool = True):
        keep_freed_memory()
        self.place = distributed.setup(torch.device(device), config.collective_timeout)
        self.device = distributed.device_for(device, self.place)
        self.model, self.data, self.objective, self.config = model.to(self.device), data, objective, config
        self.run_dir, self.evaluate, self.select = Path(run_dir), evaluate, select
        self.progress_bar = progress_bar and self.place.is_main
        self.lr_at = make_schedule(config.schedule, config.lr, config.warmup_steps, config.max_steps, config.min_lr)
        # FSDP shards the model's parameters in place; rank 0 evaluates and saves a whole copy, refreshed from
        # the shards when needed. Without FSDP the whole model is the model.
        self.whole = copy.deepcopy(self.model) if config.fsdp and self.place.is_main else self.model
        self._whole_step = -1
        self.loss_module = distributed.wrap(distributed.LossModule(model, objective), self.device, self.place,
                                            config.fsdp)
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]  # biases and norms are not decayed
        groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps,
                                           fused=self.device.type == "cuda")
        if config.compile:
            self.loss_module = torch.compile(self.loss_module, dynamic=True)
        self.progress = Progress()
        self._stop_requested = False

    # ------------------------------------------------------------------------------------------ loop

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train until a limit is reached; returns the final summary (also the last line of metrics.jsonl)."""
        c, p = self.config, self.progress
        if resume:
            self._restore()
            p = self.progress
        else:
            seed_everything(c.seed + self.place.rank)  # each rank draws its own dropout masks
        if self.place.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.model.to(self.device).train()
        self._clock = (time.perf_counter(), p.elapsed)  # (session start, seconds before this session)
        self._window = _Window()
        bar = self._bar()
        reason = self._limit_reached()  # a resumed run may have nothing left to do
        with self._sigint():
            while reason is None:
                batches = self.data.batches(p.epoch)
                per_step = c.accumulate * self.place.size  # every rank takes `accumulate` batches a step
                while reason is None and p.batch_index < len(batches):
                    end = min(len(batches), p.batch_index + per_step)
                    if end - p.batch_index < self.place.size:  # too few left for every rank: next epoch
                        p.batch_index = len(batches)
                        break
                    mine = [batches[i] for i in range(p.batch_index + self.place.rank, end, self.place.size)]
                    loss, tokens = self._step(mine)
                    p.batch_index, p.step = end, p.step + 1
                    reason = self._after_step(loss, tokens, bar)
                if p.batch_index >= len(batches):
                    p.epoch, p.batch_index = p.epoch + 1, 0
                    if reason is None and c.max_epochs and p.epoch >= c.max_epochs:
                        reason = "max_epochs"
                        self._evaluate_and_save()
        bar.close()
        summary = self._finish(reason)
        distributed.barrier()
        return summary

    def _after_step(self, loss: float, tokens: int, bar) -> str | None:
        """Bookkeeping after an optimizer step: log, snapshot, evaluate, save; returns why to stop, if so."""
        c, p = self.config, self.progress
        start, before = self._clock
        p.tokens += tokens
        p.elapsed = before + time.perf_counter() - start
        self._window.add(loss, tokens)
        if c.max_steps or c.max_epochs:
            bar.update(1)
        if p.step % c.log_every == 0:
            record = {"step": p.step, "epoch": p.epoch, "loss": self._window.mean_loss(), "lr": self.lr_at(p.step),
                      "tokens_per_second": self._window.tokens_per_second(), "elapsed": p.elapsed}
            self._log(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                            tok_s=f"{record['tokens_per_second']:.0f}", epoch=p.epoch)
            if not (c.max_steps or c.max_epochs):
                bar.update(min(bar.total, int(p.elapsed)) - bar.n)
            self._window = _Window()
        if c.snapshot_every and p.step % c.snapshot_every == 0:
            self._snapshot()
        reason = self._limit_reached()
        if self.place.size > 1:  # every rank must stop at the same step, or the others wait forever
            out_of_time, interrupted = distributed.all_reduce_sums(
                float(reason == "max_minutes"), float(self._stop_requested), device=self.device)
            reason = reason or ("max_minutes" if out_of_time else None)
            self._stop_requested = bool(interrupted)
        if self._stop_requested:
            self._save_last()
            raise Interrupted(f"interrupted at step {p.step}; saved {self.run_dir / 'last'}; continue with: "
                              f"transformerkit train --resume {self.run_dir}")
        if (c.eval_every and p.step % c.eval_every == 0) or reason:
            reason = self._evaluate_and_save() or reason
        return reason

    def _step(self, group: list[Batch]) -> tuple[float, int]:
        """One optimizer step over this rank's batches (accumulated); returns the mean loss per token and the
        tokens read, both over all ranks.

        Backward runs on summed losses; the gradients are then divided by the step's token count over all ranks
        (times the world size, since DDP averages), so every token weighs the same however the step was split
        across batches and processes."""
        c = self.config
        lr = self.lr_at(self.progress.step + 1)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        loss_sum, counted, tokens = 0.0, 0, 0
        for i, batch in enumerate(group):
            sync = i == len(group) - 1 or not hasattr(self.loss_module, "no_sync")
            with contextlib.nullcontext() if sync else self.loss_module.no_sync():
                with self._autocast():
                    loss, n = self.loss_module(batch.to(self.device))
                loss.backward()
            loss_sum, counted, tokens = loss_sum + float(loss.detach()), counted + n, tokens + batch.n_tokens
        loss_sum, counted, tokens = distributed.all_reduce_sums(loss_sum, counted, tokens, device=self.device)
        loss_value = loss_sum / max(1, counted)
        if not math.isfinite(loss_value):
            raise TrainingError(f"the loss became {loss_value} at step {self.progress.step + 1}; stopped. The last "
                                f"good checkpoint is {self.run_dir / 'last'} (lower the learning rate or enable "
                                "gradient clipping, then resume or restart)")
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        torch._foreach_mul_(grads, self.place.size / max(1, counted))
        if c.clip_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, int(tokens)

    def _autocast(self):
        if not self.config.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _limit_reached(self) -> str | None:
        c, p = self.config, self.progress
        if c.max_steps and p.step >= c.max_steps:
            return "max_steps"
        if c.max_minutes and p.elapsed >= 60 * c.max_minutes:
            return "max_minutes"
        return None

    # ------------------------------------------------------------------------------------------ evaluation

    def _evaluate_and_save(self) -> str | None:
        """Evaluate, keep the best checkpoint, save last/; returns 'patience' when it is time to stop."""
        p, c = self.progress, self.config
        stop = None
        self._refresh_whole()
        if self.evaluate is not None and self.place.is_main:
            start = time.perf_counter()
            self.whole.eval()
            with torch.no_grad(), self._autocast():
                metrics = self.evaluate(self.whole)
            self.whole.train()
            self._log({"step": p.step, "epoch": p.epoch, **metrics, "eval_seconds": time.perf_counter() - start,
                       "elapsed": p.elapsed})
            value = metrics[self.select]
            better = p.best is None or (value < p.best if "loss" in self.select else value > p.best)
            if better:
                p.best, p.evals_without_improvement = value, 0
                self._save_model(self.run_dir / "best")
            else:
                p.evals_without_improvement += 1
                if c.patience and p.evals_without_improvement >= c.patience:
                    stop = "patience"
            self._print(" ".join(f"{k}={v:.4g}" for k, v in metrics.items()) + (" (best)" if better else ""))
        self._save_last()
        if self.place.size > 1:  # rank 0 decides early stopping for everyone
            stop = "patience" if distributed.all_reduce_sums(float(stop == "patience"), device=self.device)[0] else None
        return stop

    # ------------------------------------------------------------------------------------------ checkpoints

    def _save_model(self, folder: Path, extra: Callable[[Path], None] | None = None) -> None:
        if not self.place.is_main:
            return
        with atomic_folder(folder) as tmp:
            write_model(self.whole, tmp)
            if extra:
                extra(tmp)

    def _save_last(self) -> None:
        self._refresh_whole()
        optimizer = (distributed.gather_optimizer_state(self.model, self.optimizer) if self.config.fsdp
                     else self.optimizer.state_dict())

        def state(tmp: Path) -> None:
            torch.save({"progress": asdict(self.progress), "optimizer": optimizer, "fsdp": self.config.fsdp,
                        "rng": _rng_state(), "config": asdict(self.config)}, tmp / STATE_FILE)

        self._save_model(self.run_dir / "last", state)

    def _restore(self) -> None:
        from safetensors.torch import load_file

        from .checkpoint import load_weights

        last = self.run_dir / "last"
        if not (last / STATE_FILE).exists():
            raise CheckpointError(f"{self.run_dir}: nothing to resume (no last/{STATE_FILE})")
        state = torch.load(last / STATE_FILE, map_location="cpu", weights_only=False)
        if state.get("fsdp", False) != self.config.fsdp:
            raise CheckpointError(f"{self.run_dir}: the run was saved {'with' if state.get('fsdp') else 'without'} "
                                  "--fsdp; resume it the same way (the optimizer state is stored differently)")
        weights = load_file(last / "model.safetensors")
        if self.config.fsdp:
            distributed.load_sharded(self.model, self.optimizer, weights, state["optimizer"])
        else:
            load_weights(self.model, weights, str(last))
            self.model.to(self.device)
            self.optimizer.load_state_dict(state["optimizer"])
        self.progress = Progress(**state["progress"])
        _set_rng_state(state["rng"])
        self._print(f"resumed {self.run_dir} at step {self.progress.step} (epoch {self.progress.epoch})")

    def _snapshot(self) -> None:
        from safetensors.torch import save_model

        self.progress.snapshots.append(self.progress.step)
        keep = max(1, self.config.average_last)
        dropped, self.progress.snapshots = self.progress.snapshots[:-keep], self.progress.snapshots[-keep:]
        self._refresh_whole()
        if not self.place.is_main:
            return
        folder = self.run_dir / "snapshots"
        folder.mkdir(exist_ok=True)
        path = folder / f"step-{self.progress.step:08d}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_model(self.whole, str(tmp))
        tmp.replace(path)
        for old in dropped:
            (folder / f"step-{old:08d}.safetensors").unlink(missing_ok=True)

    def _finish(self, reason: str | None) -> dict[str, Any]:
        c, p = self.config, self.progress
        self._refresh_whole()
        if c.average_last and p.snapshots and self.place.is_main:
            self._average()
        summary = {"finished": reason, "step": p.step, "epoch": p.epoch, "tokens": p.tokens,
                   "train_seconds": p.elapsed, "tokens_per_second": p.tokens / max(p.elapsed, 1e-9),
                   "best": p.best, "select": self.select}
        self._log({"summary": summary})
        self._print(f"finished ({reason}) at step {p.step} after {p.elapsed / 60:.1f} min; best {self.select} "
                    f"= {p.best}")
        return summary

    def _average(self) -> None:
        """averaged/: the mean of the last snapshots' weights, a cheap ensemble (Vaswani et al., 2017, 6.1)."""
        from safetensors.torch import load_file

        files = [self.run_dir / "snapshots" / f"step-{s:08d}.safetensors" for s in self.progress.snapshots]
        current = {k: v.detach().clone() for k, v in self.whole.state_dict().items()}
        total = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in current.items()}
        for file in files:
            weights = load_file(file)
            for k in total:
                total[k] += weights.get(k, current[k]).float()
        self.whole.load_state_dict({k: (v / len(files)).to(current[k].dtype) for k, v in total.items()})
        metrics = {}
        if self.evaluate is not None:
            self.whole.eval()
            with torch.no_grad(), self._autocast():
                metrics = self.evaluate(self.whole)
            self._log({"step": self.progress.step, "averaged": len(files), **metrics})
            self._print(f"averaged the last {len(files)} snapshots: "
                        + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        self._save_model(self.run_dir / "averaged")
        self.whole.load_state_dict(current)

    def _refresh_whole(self) -> None:
        """FSDP: gather the shards into rank 0's whole copy. A collective: every rank calls it at the same
        points, and it runs once per step however many of them ask."""
        if not self.config.fsdp or self._whole_step == self.progress.step:
            return
        weights = distributed.gather_weights(self.model)
        if self.place.is_main:
            self.whole.load_state_dict(weights)
        self._whole_step = self.progress.step

    # ------------------------------------------------------------------------------------------ plumbing

    def _log(self, record: dict[str, Any]) -> None:
        if not self.place.is_main:
            return
        with (self.run_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    def _print(self, message: str) -> None:
        from tqdm import tqdm

        if not self.place.is_main:
            return
        tqdm.write(message, file=sys.stderr)

    def _bar(self):
        from tqdm import tqdm

        c, p = self.config, self.progress
        if c.max_steps:
            total, initial = c.max_steps, p.step
        elif c.max_epochs:
            total, initial = c.max_epochs * len(self.data.batches(0)) // c.accumulate, p.step
        else:
            total, initial = int(60 * c.max_minutes), int(p.elapsed)
        return tqdm(total=total, initial=initial, desc="train", unit="step" if c.max_steps or c.max_epochs else "s",
                    disable=not self.progress_bar, dynamic_ncols=True, file=sys.stderr)

    @contextlib.contextmanager
    def _sigint(self):
        """First Ctrl-C: finish the step, save, stop. Second: stop at once."""
        def handler(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            self._print("interrupt: saving a checkpoint after this step (Ctrl-C again to abandon it)")

        try:
            previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: leave signals alone
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


class _Window:
    """Loss and throughput since the last log line."""

    def __init__(self) -> None:
        self.start, self.loss, self.steps, self.tokens = time.perf_counter(), 0.0, 0, 0

    def add(self, loss: float, tokens: int) -> None:
        self.loss, self.steps, self.tokens = self.loss + loss, self.steps + 1, self.tokens + tokens

    def mean_loss(self) -> float:
        return self.loss / max(self.steps, 1)

    def tokens_per_second(self) -> float:
        return self.tokens / max(time.perf_counter() - self.start, 1e-9)


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
