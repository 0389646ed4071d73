"""One training loop for every family and objective.

AdamW with warmup, bfloat16 autocast where the machine runs it natively, gradient accumulation and
clipping; evaluation every N steps with the best checkpoint kept; weight snapshots averaged at the end
(the paper averaged its last checkpoints); a progress bar and metrics.jsonl. With a time budget, the
first steps are timed and the whole schedule is sized to end inside it on this machine. A run folder can
always be resumed: last/ holds the model, the optimizer, the RNG states and the position in the data, so
the resumed run continues with exactly the losses the uninterrupted run would have had (bit for bit on
the CPU).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar, Protocol, Sequence

import torch
from torch import Tensor, nn

from .. import runtime
from ..config import Config, require
from ..errors import CheckpointError, ConfigError, DataError, Interrupted, TrainingError
from . import distributed
from .run_folder import RunFolder, seed_everything
from .schedules import SCHEDULES, make_schedule, next_evaluation, plan_budget, replanned

PLAN_AFTER_STEPS = 30  # a budgeted run times this many steps (or 5% of its budget) before it fixes its plan


class Batch(Protocol):
    n_tokens: int

    def to(self, device: torch.device) -> Batch: ...


class TrainingData(Protocol):
    """The batches of one epoch, a function of the epoch number alone (so a resumed run sees the same)."""

    def batches(self, epoch: int) -> Sequence[Batch]: ...


Objective = Callable[[nn.Module, Any], tuple[Tensor, int]]


@dataclass(frozen=True)
class TrainConfig(Config):
    """How to train; every field can be set in a recipe's [training] table. Types and ranges are checked on
    construction (config.py), so a bad value fails before anything is trained."""

    KIND: ClassVar[str] = "key"

    lr: float = 5e-4  # peak learning rate, reached at the end of warmup
    schedule: str = "inverse_sqrt"  # inverse_sqrt (2017 paper), cosine, constant
    warmup_steps: int = 4000
    min_lr: float = 0.0  # cosine: the floor reached at the last step
    betas: tuple[float, float] = (0.9, 0.98)  # the paper's Adam betas: a short memory for the second moment
    eps: float = 1e-9
    weight_decay: float = 0.0  # decoupled (AdamW) when above 0
    clip_norm: float = 1.0  # clip the global gradient norm; 0 disables
    accumulate: int = 1  # batches per optimizer step
    max_steps: int | None = None  # with a budget: the most steps the plan may take
    max_epochs: int | None = None
    max_minutes: float | None = None  # a hard stop on the whole run's wall clock, evaluations included
    budget_minutes: float | None = None  # size the schedule (steps, warmup, decay, averaging) to end in this (0: no)
    evaluations: int = 0  # with a budget: this many evaluations spread over the plan (0: every eval_every steps)
    precision: str = "auto"  # auto: bfloat16 autocast only where this machine multiplies it natively and faster
    bf16: bool | None = None  # the older switch: true is precision "bf16", false "fp32"
    compile: bool = False  # torch.compile the forward and loss
    seed: int = 1
    log_every: int = 50
    eval_every: int = 1000
    snapshot_every: int = 0  # keep the weights every N steps for averaging; 0 disables
    average_last: int = 0  # average the last K snapshots into averaged/ at the end; 0 disables
    checkpoint_minutes: float = 10.0  # save last/ at least this often (besides evaluations and Ctrl-C); 0: never
    patience: int = 0  # stop after this many evaluations without improvement; 0 never stops early
    fsdp: bool = False  # under torchrun: shard parameters, gradients and optimizer state (FSDP2) instead of DDP
    collective_timeout: int = 600  # seconds before a collective with a dead or stuck rank fails the run

    def validate(self) -> None:
        if not (self.max_steps or self.max_epochs or self.max_minutes or self.budget_minutes):
            raise ConfigError("set at least one of max_steps, max_epochs, max_minutes, budget_minutes")
        for name in ("lr", "eps"):
            require(self, name, getattr(self, name) > 0, "positive")
        for name in ("accumulate", "log_every"):
            require(self, name, getattr(self, name) >= 1, "at least 1")
        for name in ("max_steps", "max_epochs"):
            require(self, name, getattr(self, name) is None or getattr(self, name) >= 1, "at least 1 (or unset)")
        require(self, "max_minutes", self.max_minutes is None or self.max_minutes > 0, "positive (or unset)")
        require(self, "budget_minutes", self.budget_minutes is None or self.budget_minutes >= 0,
                "0 or more (0: no budget)")
        if self.budget_minutes and self.max_minutes:
            require(self, "max_minutes", self.max_minutes >= self.budget_minutes,
                    f"at least budget_minutes ({self.budget_minutes:g}): the hard stop would cut the plan short")
        for name in ("warmup_steps", "evaluations", "eval_every", "snapshot_every", "average_last", "patience",
                     "min_lr", "weight_decay", "clip_norm", "checkpoint_minutes"):
            require(self, name, getattr(self, name) >= 0, "0 or more")
        require(self, "betas", all(0 <= b < 1 for b in self.betas), "two numbers in [0, 1)")
        require(self, "schedule", self.schedule in SCHEDULES, f"one of {', '.join(map(repr, SCHEDULES))}")
        require(self, "precision", self.precision in runtime.PRECISIONS,
                f"one of {', '.join(map(repr, runtime.PRECISIONS))}")
        require(self, "collective_timeout", self.collective_timeout >= 1, "at least 1 second")
        if self.average_last and not self.snapshot_every:
            raise ConfigError("average_last: needs snapshot_every, the interval between averaged snapshots")
        if self.bf16 is not None:  # the older switch, kept working: it becomes a precision
            legacy = "bf16" if self.bf16 else "fp32"
            require(self, "bf16", self.precision in ("auto", legacy), f"unset when precision is {self.precision!r}")
            object.__setattr__(self, "precision", legacy)
            object.__setattr__(self, "bf16", None)


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
    plan: dict[str, Any] | None = None  # a budgeted run's plan: planned_steps, warmup_steps, eval_every


class Trainer:
    """Train `model` on `data` with `objective`, writing a run folder; see the module docstring.

    `floor` is the validation score (of `select`) a model must pass to count as having learned anything.
    """

    def __init__(self, model: nn.Module, data: TrainingData, objective: Objective, config: TrainConfig,
                 run_dir, evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
                 select: str = "val_loss", device: torch.device | str = "cpu", progress_bar: bool = True,
                 floor: float | None = None):
        runtime.keep_freed_memory()
        self.place = distributed.setup(torch.device(device), config.collective_timeout)
        self.device = distributed.device_for(device, self.place)
        self.model, self.data, self.objective, self.config = model.to(self.device), data, objective, config
        self.folder = RunFolder(run_dir, writer=self.place.is_main)
        self.run_dir, self.evaluate, self.select, self.floor = self.folder.path, evaluate, select, floor
        self.progress_bar = progress_bar and self.place.is_main
        width = getattr(model.config, "d_model", None) or getattr(model.config, "hidden_size", 256)
        self.precision = runtime.choose_precision(config.precision, self.device, width)
        self.whole = distributed.WholeModel(self.model, config.fsdp, self.place.is_main)
        self.loss_module = distributed.wrap(distributed.LossModule(model, objective), self.device, self.place,
                                            config.fsdp)
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]  # biases and norms are not decayed
        groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps,
                                           fused=self.device.type == "cuda")
        if config.compile:
            runtime.require_compile(self.device.type)
            self.loss_module = torch.compile(self.loss_module, dynamic=True)
        self.progress = Progress()
        self._saved_step, self._saved_at = 0, 0.0  # where last/ is, in steps and seconds of training
        self._stop_requested, self._stop_signal = False, signal.SIGINT
        self._set_schedule()

    # ------------------------------------------------------------------------------------------ loop

    def fit(self, resume: bool = False, changes: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train until a limit is reached; returns the final summary (also the last line of metrics.jsonl).

        `changes`: what a resumed run's recipe changed (recorded in metrics.jsonl)."""
        c = self.config
        self.folder.create()
        if resume:
            self._restore()
            self.folder.truncate_metrics(self.progress.step)
        else:
            seed_everything(c.seed + self.place.rank)  # each rank draws its own dropout masks
        self._announce(resume, changes)
        if not resume:  # a run that stops before its first evaluation can still be resumed
            self._save_last()
        p = self.progress
        self.model.to(self.device).train()
        self._clock = (time.perf_counter(), p.elapsed)  # (session start, seconds before this session)
        self._timing_from: tuple[int, float] | None = None  # (step, elapsed) where a budget starts timing steps
        self._eval_time, self._evals = 0.0, 0  # seconds spent evaluating since then, and how many times
        self._window = _Window()
        self._set_schedule()
        self.bar = self._bar()
        reason = self._limit_reached()  # a resumed run may have nothing left to do
        with self._signals():
            while reason is None:
                batches = self.data.batches(p.epoch)
                if len(batches) < self.place.size:  # an epoch without a step would loop forever
                    raise DataError(f"epoch {p.epoch} has {len(batches)} training batches, too few for "
                                    f"{self.place.size} process(es): is the training data empty?")
                per_step = c.accumulate * self.place.size  # every rank takes `accumulate` batches a step
                while reason is None and p.batch_index < len(batches):
                    end = min(len(batches), p.batch_index + per_step)
                    if end - p.batch_index < self.place.size:  # too few left for every rank: next epoch
                        p.batch_index = len(batches)
                        break
                    mine = [batches[i] for i in range(p.batch_index + self.place.rank, end, self.place.size)]
                    loss, tokens = self.step(mine)
                    p.batch_index, p.step = end, p.step + 1
                    reason = self._after_step(loss, tokens)
                if p.batch_index >= len(batches):
                    p.epoch, p.batch_index = p.epoch + 1, 0
                    if reason is None and c.max_epochs and p.epoch >= c.max_epochs:
                        reason = "max_epochs"
                        self._evaluate_and_save()
        self.bar.close()
        summary = self._finish(reason)
        distributed.barrier()
        return summary

    def _after_step(self, loss: float, tokens: int) -> str | None:
        """Bookkeeping after an optimizer step: log, plan, snapshot, evaluate, save; returns why to stop, if so."""
        c, p = self.config, self.progress
        self._tick()
        p.tokens += tokens
        self._window.add(loss, tokens)
        if self._counts_steps():
            self.bar.update(1)
        if p.step % c.log_every == 0:
            record = {"step": p.step, "epoch": p.epoch, "loss": self._window.mean_loss(), "lr": self.lr_at(p.step),
                      "tokens_per_second": self._window.tokens_per_second(), "elapsed": p.elapsed}
            self._log(record)
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                                 tok_s=f"{record['tokens_per_second']:.0f}", epoch=p.epoch)
            if not self._counts_steps():
                self.bar.update(min(self.bar.total, int(p.elapsed)) - self.bar.n)
            self._window = _Window()
        if c.snapshot_every and p.step % c.snapshot_every == 0 and self._snapshot_is_kept():
            self._snapshot()
        planned_now = self._plan_if_due()
        if not planned_now:
            self._keep_pace()
        reason = self._limit_reached()
        save_due = bool(c.checkpoint_minutes) and p.elapsed - self._saved_at >= 60 * c.checkpoint_minutes
        if self.place.size > 1:  # every rank must stop (and save) at the same step, or the others wait forever
            out_of_time, interrupted, save_due = distributed.all_reduce_sums(
                float(reason == "max_minutes"), float(self._stop_requested), float(save_due), device=self.device)
            reason = reason or ("max_minutes" if out_of_time else None)
            self._stop_requested = bool(interrupted)
        if self._stop_requested:
            self._save_last()
            raise Interrupted(f"interrupted at step {p.step}; saved {self.run_dir / 'last'}; resume with: "
                              f"transformerkit train --resume {self.run_dir}", self._stop_signal)
        if not planned_now and (self._evaluation_due() or reason):
            if p.plan is not None:  # counted before last/ is saved, so that a resumed run does not make it again
                p.plan["evaluations"] = [self._evaluations_so_far()[0] + 1, p.step]
            reason = self._evaluate_and_save() or reason
            if reason is None and p.plan is not None:
                self._replan()
                reason = "budget" if p.step >= p.plan["planned_steps"] else None  # not the clock: ranks differ
        elif save_due:  # a resumable checkpoint at least every checkpoint_minutes, not only at evaluations
            self._save_last()
        return reason

    def _tick(self) -> None:
        start, before = self._clock
        self.progress.elapsed = before + time.perf_counter() - start

    def step(self, group: list[Batch]) -> tuple[float, int]:
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
            self._diverged(f"the training loss became {loss_value} at step {self.progress.step + 1}")
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        torch._foreach_mul_(grads, self.place.size / max(1, counted))
        if c.clip_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, int(tokens)

    def _autocast(self):
        if not self.precision.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _limit_reached(self) -> str | None:
        c, p = self.config, self.progress
        if p.plan and p.step >= p.plan["planned_steps"] and not self._budget_changed():
            return "budget"
        if c.max_steps and p.step >= c.max_steps:
            return "max_steps"
        if c.max_minutes and p.elapsed >= 60 * c.max_minutes:
            return "max_minutes"
        return None

    # ------------------------------------------------------------------------------------------ time budget

    def _plan_if_due(self) -> bool:
        """A budgeted run times its first steps, evaluates once (timed too), then fixes how many steps the whole
        schedule may take so that it ends inside the budget. Returns True on the step the plan was made.

        A run resumed with another budget does the same to re-size its plan: a cosine under way is stretched
        from where it is (one that had ended stays at its floor), and a plan whose evaluations were all made
        gives the steps added their share of them (at least one, at the new end)."""
        c, p = self.config, self.progress
        if not c.budget_minutes:
            return False
        if self._timing_from is None:  # the first step of a session pays for warm-up: time from the next one
            self._timing_from, self._eval_time, self._evals = (p.step, p.elapsed), 0.0, 0
            return False
        if p.plan is not None and not self._budget_changed():
            return False
        timed = p.step - self._timing_from[0]
        if not self._agreed(timed >= PLAN_AFTER_STEPS or (timed >= 3 and p.elapsed - self._timing_from[1]
                                                                 >= 0.05 * 60 * c.budget_minutes)):
            return False
        self._evaluate_and_save()
        total = self._budget_total()
        if p.plan is not None:  # a budget changed on resuming
            done = self._evaluations_so_far()[0]
            p.plan = {**replanned(p.plan, p.step, total), "budget_minutes": c.budget_minutes}
            if c.evaluations and done >= c.evaluations:  # the steps added get their share of them, at least one
                share = max(1, round(c.evaluations * (p.plan["planned_steps"] - p.step) / p.plan["planned_steps"]))
                p.plan["evaluations"] = [c.evaluations - share, p.step]
            self._plan_changed(f"budget now {c.budget_minutes:g} min: {p.plan['planned_steps']} steps fit")
            return True
        p.plan = {"planned_steps": total, "warmup_steps": min(c.warmup_steps, max(1, total // 4)), "anchor": None,
                  "evaluations": [0, 0],  # made, and the step of the last (the planning one is not counted)
                  "budget_minutes": c.budget_minutes}  # what it was made for
        self._plan_changed(f"budget {c.budget_minutes:g} min: {total} steps fit (warmup {p.plan['warmup_steps']})")
        return True

    def _replan(self, total: int | None = None) -> None:
        """After each evaluation of a budgeted run, size what is left of the schedule to the time that is left,
        at the speed measured so far: machines are noisy, and the first steps are not every step. A cosine
        decay under way continues from where it is (schedules.cosine's anchor), so the rate never jumps."""
        p = self.progress
        if self._timing_from is None or p.step - self._timing_from[0] < 3:  # resumed right before an evaluation
            return
        plan = replanned(p.plan, p.step, total or self._budget_total())
        if plan["planned_steps"] == p.plan["planned_steps"]:
            return
        p.plan = plan
        self._plan_changed(f"re-planned: {plan['planned_steps']} steps fit in what is left of the budget")

    def _keep_pace(self) -> None:
        """Between evaluations, at every twentieth of the plan, shorten a plan that this session's pace so far (its
        mean step) would carry past the budget: a machine that slows down (another job on its cores) would otherwise
        overrun by up to the time to the next evaluation. Lengthening waits for the next evaluation."""
        p = self.progress
        if p.plan is None or self._timing_from is None or self._budget_changed() \
                or p.step - self._timing_from[0] < PLAN_AFTER_STEPS:
            return
        if p.step % max(1, p.plan["planned_steps"] // 20) == 0:
            total = self._budget_total()
            if total < p.plan["planned_steps"]:
                self._replan(total)

    def _agreed(self, due: bool) -> bool:
        """A decision made from this rank's clock, made true on every rank if on any: ranks that planned at
        different steps would wait on each other's collectives forever."""
        if self.place.size > 1:
            return distributed.all_reduce_sums(float(due), device=self.device)[0] > 0
        return due

    def _budget_changed(self) -> bool:
        """Whether the plan was made for another budget than the run's (changed on resuming): it is re-sized, once
        this session has timed its steps, even if a first resumed session stopped before it could be."""
        plan, budget = self.progress.plan, self.config.budget_minutes
        return bool(budget and plan and plan.get("budget_minutes", budget) != budget)

    def _budget_total(self) -> int:
        """The plan's length from the speed measured in this session: steps, and evaluations apart."""
        c, p = self.config, self.progress
        first_step, first_elapsed = self._timing_from
        self._tick()
        self._step_seconds = max(1e-6, (p.elapsed - first_elapsed - self._eval_time) / max(1, p.step - first_step))
        self._eval_seconds = self._eval_time / max(1, self._evals) if self.evaluate is not None else 0.0
        if not self._evals and p.plan:  # a resumed session that has not evaluated yet: as the plan measured
            self._eval_seconds = p.plan.get("eval_seconds", 0.0)
        elapsed = p.elapsed
        if self.place.size > 1:  # one plan for all ranks, from the main rank's clock (it alone evaluates)
            mine = (elapsed, self._step_seconds, self._eval_seconds) if self.place.is_main else (0.0, 0.0, 0.0)
            elapsed, self._step_seconds, self._eval_seconds = distributed.all_reduce_sums(*mine, device=self.device)
        return plan_budget(60 * c.budget_minutes, elapsed, p.step, self._step_seconds, self._eval_seconds,
                           c.evaluations, c.eval_every, c.snapshot_every, bool(c.average_last), c.max_steps)

    def _plan_changed(self, message: str) -> None:
        p = self.progress
        p.plan["eval_seconds"] = self._eval_seconds
        self._set_schedule()
        self.bar.total = p.plan["planned_steps"]
        self.bar.refresh()
        self._log({"step": p.step, **p.plan, "budget_minutes": self.config.budget_minutes,
                   "step_seconds": self._step_seconds, "elapsed": p.elapsed})
        self._print(f"{message} ({self._step_seconds:.2f} s a step, {self._eval_seconds:.1f} s an evaluation)")

    def _set_schedule(self) -> None:
        c, plan = self.config, self.progress.plan
        if plan is not None:
            self.lr_at = make_schedule(c.schedule, c.lr, plan["warmup_steps"], plan["planned_steps"], c.min_lr,
                                       plan["anchor"])
        elif c.budget_minutes and c.schedule == "cosine":  # before the plan: warm up; the decay comes with it
            self.lr_at = make_schedule("constant", c.lr, c.warmup_steps, None, c.min_lr)
        else:
            self.lr_at = make_schedule(c.schedule, c.lr, c.warmup_steps, c.max_steps, c.min_lr)

    def _evaluation_due(self) -> bool:
        """Every eval_every steps; with a budget, at `evaluations` points spread over the plan (the last at its
        end), once the plan exists (planning evaluates first)."""
        c, p = self.config, self.progress
        if c.budget_minutes and (p.plan is None or self._budget_changed()):  # (re-)planning evaluates first
            return False
        if c.budget_minutes and c.evaluations:
            done, last = self._evaluations_so_far()
            return done < c.evaluations and p.step >= next_evaluation(p.plan["planned_steps"], c.evaluations, done,
                                                                      last)
        return bool(c.eval_every) and p.step % c.eval_every == 0

    def _evaluations_so_far(self) -> tuple[int, int]:
        """How many of the plan's evaluations were made, and the step of the last one (for a plan saved before
        they were counted: its evenly spread points passed)."""
        p, n = self.progress, max(1, self.config.evaluations)
        if "evaluations" not in p.plan:
            done = sum(1 for k in range(1, n + 1) if round(p.plan["planned_steps"] * k / n) < p.step)
            return done, round(p.plan["planned_steps"] * done / n)
        return tuple(p.plan["evaluations"])

    def _counts_steps(self) -> bool:
        c = self.config
        return bool(c.max_steps or c.max_epochs or c.budget_minutes)

    # ------------------------------------------------------------------------------------------ evaluation

    def _evaluate_and_save(self) -> str | None:
        """Evaluate, keep the best checkpoint, save last/; returns 'patience' when it is time to stop."""
        p, c = self.progress, self.config
        stop = None
        whole = self.whole.at(p.step)
        if self.evaluate is not None and self.place.is_main:
            metrics = self._evaluate(whole, {"step": p.step, "epoch": p.epoch})
            value = metrics[self.select]
            better = p.best is None or (value < p.best if self._lower_is_better() else value > p.best)
            if better:
                p.best, p.evals_without_improvement = value, 0
                self._check_finite(whole)
                self.folder.save_model("best", whole)
            else:
                p.evals_without_improvement += 1
                if c.patience and p.evals_without_improvement >= c.patience:
                    stop = "patience"
            self._print(" ".join(f"{k}={v:.4g}" for k, v in metrics.items()) + (" (best)" if better else ""))
        self._save_last()
        if self.place.size > 1:  # rank 0 decides early stopping for everyone
            stop = "patience" if distributed.all_reduce_sums(float(stop == "patience"), device=self.device)[0] else None
        return stop

    def _evaluate(self, model: nn.Module, record: dict[str, Any]) -> dict[str, float]:
        """Run the task's evaluation on `model` (in eval mode, in the run's precision) and log it; a validation
        score that is not a number stops the run before anything is saved."""
        start = time.perf_counter()
        model.eval()
        with torch.no_grad(), self._autocast():
            metrics = self.evaluate(model)
        model.train()
        seconds = time.perf_counter() - start
        self._eval_time, self._evals = self._eval_time + seconds, self._evals + 1
        self._log({**record, **metrics, "eval_seconds": seconds, "elapsed": self.progress.elapsed})
        broken = [k for k, v in metrics.items() if not math.isfinite(v)]
        if broken:
            self._diverged(f"the validation {broken[0]} became {metrics[broken[0]]} at step {self.progress.step}")
        return metrics

    def _diverged(self, what: str) -> None:
        """Stop a run whose numbers are no longer numbers, pointing at the newest checkpoint (always finite:
        nothing is saved from weights that are not) and at the way back."""
        lr = self.config.lr / 10
        raise TrainingError(f"{what}; stopped. The newest checkpoint, {self.run_dir / 'last'} (step "
                            f"{self._saved_step}), is finite; resume it with a lower learning rate: transformerkit "
                            f"train --resume {self.run_dir} --set training.lr={lr:.3g}")

    def _check_finite(self, model: nn.Module) -> None:
        bad = next((name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())), None)
        if bad is not None:
            self._diverged(f"the weights became non-finite ({bad}) by step {self.progress.step}")

    def _lower_is_better(self) -> bool:
        return "loss" in self.select

    # ------------------------------------------------------------------------------------------ checkpoints

    def _save_last(self) -> None:
        """last/, the resumable checkpoint: only ever from finite weights."""
        whole = self.whole.at(self.progress.step)
        if self.place.is_main:
            self._check_finite(whole)
        optimizer = self.whole.optimizer_state(self.optimizer)
        self.folder.save_last(whole, {"progress": asdict(self.progress), "optimizer": optimizer,
                                      "fsdp": self.config.fsdp, "config": self.config.to_dict()})
        self._saved_step, self._saved_at = self.progress.step, self.progress.elapsed

    def _restore(self) -> None:
        weights, state = self.folder.read_last()
        if state.get("fsdp", False) != self.config.fsdp:
            raise CheckpointError(f"{self.run_dir}: the run was saved {'with' if state.get('fsdp') else 'without'} "
                                  "--fsdp; resume it the same way (the optimizer state is stored differently)")
        self.whole.load(weights, self.optimizer, state["optimizer"], self.device)
        self.progress = Progress(**state["progress"])
        if self.progress.plan is not None:  # saved before plans named their budget: the run's config did
            self.progress.plan.setdefault("budget_minutes", state.get("config", {}).get("budget_minutes"))
        self._saved_step, self._saved_at = self.progress.step, self.progress.elapsed
        self._print(f"resumed {self.run_dir} at step {self.progress.step} (epoch {self.progress.epoch})")

    def _snapshot_is_kept(self) -> bool:
        """Where the last step is known (a plan, max_steps), snapshots too early to be averaged are not written."""
        c, p = self.config, self.progress
        end = p.plan["planned_steps"] if p.plan else (None if c.budget_minutes else c.max_steps)
        return end is None or p.step > end - max(1, c.average_last) * c.snapshot_every

    def _snapshot(self) -> None:
        p = self.progress
        whole = self.whole.at(p.step)
        if self.place.is_main:
            self._check_finite(whole)
        p.snapshots = [*p.snapshots, p.step][-max(1, self.config.average_last):]
        self.folder.snapshot(whole, p.step, keep=p.snapshots)

    def _finish(self, reason: str | None) -> dict[str, Any]:
        c, p = self.config, self.progress
        whole = self.whole.at(p.step)
        if c.average_last and p.snapshots and self.place.is_main:
            self._average(whole)
        self._tick()  # train_seconds counts the last evaluation, save and averaging: all inside a budget's plan
        planned = p.plan["planned_steps"] if p.plan else c.max_steps
        summary = {"finished": reason, "step": p.step, "epoch": p.epoch, "tokens": p.tokens,
                   "train_seconds": p.elapsed, "tokens_per_second": p.tokens / max(p.elapsed, 1e-9),
                   "best": p.best, "select": self.select, "precision": self.precision.name,
                   "planned_steps": planned, "budget_minutes": c.budget_minutes,
                   "final_lr": self.lr_at(p.step),  # the last step's rate: annealed, or cut short
                   "machine": runtime.describe_machine()}  # where it finished: run folders travel
        warnings = self._failure_warnings(reason, planned, summary["tokens_per_second"])
        summary["learned"] = not warnings
        self._log({"summary": summary})
        self._print(f"finished ({reason}) at step {p.step} after {p.elapsed / 60:.1f} min; best {self.select} "
                    f"= {p.best}")
        for warning in warnings:
            self._print(f"warning: {warning}")
        return summary

    def _failure_warnings(self, reason: str | None, planned: int | None, tokens_per_second: float) -> list[str]:
        """Why this run probably did not learn, in words (empty when it did): a stop long before its plan, or a
        validation score that never passed the task's floor."""
        p = self.progress
        speed = f"this machine trained at {tokens_per_second:,.0f} tokens/s in {self.precision.name}"
        warnings = []
        if reason == "max_minutes" and planned and p.step < planned / 5:
            warnings.append(f"max_minutes stopped the run at step {p.step} of {planned} planned "
                            f"({100 * p.step / planned:.0f}%), too early to learn: {speed}")
        if self.floor is not None and self.evaluate is not None:
            learned = p.best is not None and (p.best < self.floor if self._lower_is_better() else p.best > self.floor)
            if not learned:
                warnings.append(f"the validation {self.select} ({p.best if p.best is None else f'{p.best:.4g}'}) "
                                f"never passed {self.floor:g}: the model did not learn; {speed}")
        return warnings

    def _average(self, whole: nn.Module) -> None:
        """averaged/: the mean of the last snapshots' weights, a cheap ensemble (Vaswani et al., 2017, 6.1)."""
        steps = self.progress.snapshots
        current = {k: v.detach().clone() for k, v in whole.state_dict().items()}
        whole.load_state_dict(self.folder.average_snapshots(whole, steps))
        if self.evaluate is not None:
            metrics = self._evaluate(whole, {"step": self.progress.step, "averaged": len(steps)})
            self._print(f"averaged the last {len(steps)} snapshots: "
                        + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        self.folder.save_model("averaged", whole)
        whole.load_state_dict(current)

    # ------------------------------------------------------------------------------------------ plumbing

    def _announce(self, resume: bool, changes: dict[str, Any] | None) -> None:
        """Say, and record as metrics.jsonl's first record of this session, what the machine decided."""
        threads, library = runtime.threads_line(), None
        if self.device.type == "cpu" and self.precision.name == "fp32":  # libraries round differently: record it
            library = runtime.float32_libraries()
        self._log({"step": self.progress.step, "resumed": resume, "precision": self.precision.name,
                   "precision_reason": self.precision.reason, "threads": torch.get_num_threads(),
                   "device": str(self.device), "machine": runtime.describe_machine(),
                   **({"fp32_matmul": library} if library else {}), **({"changed": changes} if changes else {})})
        for key, (old, new) in (changes or {}).items():
            self._print(f"resumed with {key} = {new} (was {old})")
        products = {"onednn": "; float32 products through oneDNN",
                    "split": "; float32 products through oneDNN, weight gradients through the default library"
                    }.get(library, "")
        self._print(f"precision {self.precision.name} ({self.precision.reason}){products}; {threads}; "
                    f"device {self.device}")

    def _log(self, record: dict[str, Any]) -> None:
        self.folder.log(record)

    def _print(self, message: str) -> None:
        from tqdm import tqdm

        if not self.place.is_main:
            return
        tqdm.write(message, file=sys.stderr)

    def _bar(self):
        from tqdm import tqdm

        c, p = self.config, self.progress
        if p.plan:
            total, initial = p.plan["planned_steps"], p.step
        elif c.max_steps:
            total, initial = c.max_steps, p.step
        elif c.max_epochs:
            total, initial = c.max_epochs * len(self.data.batches(0)) // c.accumulate, p.step
        elif c.budget_minutes:
            total, initial = None, p.step
        else:
            total, initial = int(60 * c.max_minutes), int(p.elapsed)
        return tqdm(total=total, initial=initial, desc="train", unit="step" if self._counts_steps() else "s",
                    disable=not self.progress_bar, dynamic_ncols=True, file=sys.stderr)

    @contextlib.contextmanager
    def _signals(self):
        """Ctrl-C (SIGINT) or SIGTERM (what kill, systemd, Kubernetes and SLURM send): finish the step, save,
        stop. A second Ctrl-C stops at once."""
        def handler(signum, frame):
            if self._stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_requested, self._stop_signal = True, signum
            self._print(f"{signal.Signals(signum).name}: saving a checkpoint after this step"
                        + (" (Ctrl-C again to abandon it)" if signum == signal.SIGINT else ""))

        try:
            previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: leave signals alone
            yield
            return
        try:
            yield
        finally:
            for s, old in previous.items():
                signal.signal(s, old)


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
