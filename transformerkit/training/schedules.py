"""Learning-rate schedules: a function from step (1-based) to learning rate."""

from __future__ import annotations

import math
from typing import Callable

from ..errors import ConfigError


def inverse_sqrt(peak: float, warmup: int) -> Callable[[int], float]:
    """Linear warmup to `peak`, then decay with 1/sqrt(step) (Vaswani et al., 2017, eq. 3).

    The paper writes lr = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5); that is this schedule with
    peak = (d_model * warmup)^-0.5, about 7e-4 for the base model with 4,000 warmup steps.
    """
    return lambda step: peak * min(step / warmup, math.sqrt(warmup / step)) if warmup else peak / math.sqrt(step)


def cosine(peak: float, warmup: int, total: int, floor: float = 0.0,
           anchor: tuple[int, float] | None = None) -> Callable[[int], float]:
    """Linear warmup, then half a cosine from `peak` down to `floor` at step `total`.

    `anchor` (step, progress) re-plans a decay under way: from `step` on, the rest of the half cosine (from
    `progress` to its end) is spread evenly over the steps left to `total`, so the rate never jumps. A run
    with a time budget re-plans this way when the machine turns out faster or slower than first measured.
    """
    start, done = anchor or (warmup, 0.0)

    def lr(step: int) -> float:
        if step < warmup:
            return peak * step / warmup
        progress = min(1.0, done + (1 - done) * max(0, step - start) / max(1, total - start))
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))

    return lr


def cosine_progress(warmup: int, total: int, step: int, anchor: tuple[int, float] | None = None) -> float:
    """How far along its half cosine the schedule above is at `step` (0 at the end of warmup, 1 at `total`)."""
    start, done = anchor or (warmup, 0.0)
    if step < warmup:
        return 0.0
    return min(1.0, done + (1 - done) * max(0, step - start) / max(1, total - start))


def replanned(plan: dict, step: int, total: int) -> dict:
    """A budgeted plan re-sized at `step` to `total` steps, its cosine continued from where it is (the anchor).

    A decay under way always keeps at least one more step, the one at its floor: when the time left turns out
    a little short, ending one step late beats ending with the rate frozen part-way down its cosine."""
    if plan["planned_steps"] > step:
        total = max(total, step + 1)
    progress = cosine_progress(plan["warmup_steps"], plan["planned_steps"], step, plan["anchor"])
    anchor = [step, progress] if step >= plan["warmup_steps"] else plan["anchor"]
    return {**plan, "planned_steps": total, "anchor": anchor}


def constant(peak: float, warmup: int) -> Callable[[int], float]:
    return lambda step: peak * min(1.0, step / warmup) if warmup else peak


SCHEDULES = ("inverse_sqrt", "cosine", "constant")


def make_schedule(name: str, peak: float, warmup: int, total: int | None, floor: float,
                  anchor: tuple[int, float] | None = None) -> Callable[[int], float]:
    if name == "inverse_sqrt":
        return inverse_sqrt(peak, warmup)
    if name == "constant":
        return constant(peak, warmup)
    if name == "cosine":
        if not total:
            raise ConfigError("schedule: 'cosine' needs training.max_steps or budget_minutes, to know where it "
                              "reaches its floor")
        return cosine(peak, warmup, total, floor, anchor)
    raise ConfigError(f"schedule: {name!r} is not allowed; choose one of 'inverse_sqrt', 'cosine', 'constant'")


def next_evaluation(total: int, evaluations: int, done: int, last: int) -> int:
    """The step of a budgeted plan's next evaluation, after `done` of its `evaluations` (the last of them at
    step `last`): the ones left spread evenly over the steps left, the last at the end. Without a re-plan these
    are the plan's evenly spread points; when a re-plan changes `total`, they move with it but never come
    a few steps after the evaluation just made."""
    return last + round((total - last) / max(1, evaluations - done))


def plan_budget(budget_seconds: float, elapsed: float, step: int, step_seconds: float, eval_seconds: float,
                evaluations: int, eval_every: int, snapshot_every: int, averaged: bool, max_steps: int | None) -> int:
    """The most steps (in all) whose training and evaluations fit in what is left of a time budget.

    Measured so far: `elapsed` seconds for `step` steps, `step_seconds` a step and `eval_seconds` an
    evaluation. Evaluations come at `evaluations` evenly spread points of the plan (the last at its end),
    or every `eval_every` steps and at the end; the averaged weights are evaluated once more. The plan
    ends on a snapshot, so the snapshots averaged are the last ones.
    """
    left = 0.98 * budget_seconds - elapsed - step_seconds  # slack: steps vary (a loaded machine's by a step or more)

    def cost(total: int) -> float:
        if evaluations:
            evals = sum(1 for k in range(1, evaluations + 1) if round(total * k / evaluations) > step)
        else:
            evals = (total // eval_every - step // eval_every if eval_every else 0) + 1
        return (total - step) * step_seconds + (evals + int(averaged)) * eval_seconds

    low, high = step, step + max(1, int(left / max(step_seconds, 1e-9))) + 1
    if max_steps:
        high = max(low, min(high, max_steps))
    while low < high:  # the largest total with cost(total) <= left
        mid = (low + high + 1) // 2
        low, high = (mid, high) if cost(mid) <= left else (low, mid - 1)
    if snapshot_every and averaged and low - low % snapshot_every > step:
        low -= low % snapshot_every
    return low
