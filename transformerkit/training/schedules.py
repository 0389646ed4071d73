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


def cosine(peak: float, warmup: int, total: int, floor: float = 0.0) -> Callable[[int], float]:
    """Linear warmup, then half a cosine from `peak` down to `floor` at step `total`."""

    def lr(step: int) -> float:
        if step < warmup:
            return peak * step / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))

    return lr


def constant(peak: float, warmup: int) -> Callable[[int], float]:
    return lambda step: peak * min(1.0, step / warmup) if warmup else peak


def make_schedule(name: str, peak: float, warmup: int, total: int | None, floor: float) -> Callable[[int], float]:
    if name == "inverse_sqrt":
        return inverse_sqrt(peak, warmup)
    if name == "constant":
        return constant(peak, warmup)
    if name == "cosine":
        if not total:
            raise ConfigError("schedule: 'cosine' needs training.max_steps, the step where it reaches its floor")
        return cosine(peak, warmup, total, floor)
    raise ConfigError(f"schedule: {name!r} is not allowed; choose one of 'inverse_sqrt', 'cosine', 'constant'")
