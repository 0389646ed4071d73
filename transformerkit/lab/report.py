"""What every lab leaves behind: lab-NAME.json (the measured numbers, the settings, the seed, the machine),
lab-NAME.png, and a conclusion printed in words made from the numbers.

A lab states the study notes' claim, measures it, and says whether it held here. The verdict is computed,
never written in advance: a claim can fail on a small model or a short run, and the file says so.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import runtime


@dataclass(frozen=True)
class Options:
    """How a lab runs: `quick` shrinks it to seconds (the tests), `model` names a trained run to read instead
    of training one (the labs that can use one), `seed` seeds every model and batch."""

    quick: bool = False
    seed: int = 0
    model: str | None = None


@dataclass
class Finding:
    """One lab's result: the claim it tested, whether it held, the sentence that says so, the numbers behind
    it, the settings they were measured under, and the figure (a matplotlib Figure)."""

    claim: str
    held: bool
    conclusion: str
    numbers: dict[str, Any]
    settings: dict[str, Any]
    figure: Any
    notes: list[str] = field(default_factory=list)  # what else the reader should know (a model read, a fallback)


def verdict(held: bool) -> str:
    """The conclusion's last sentence (the lab adds the full stop): 'The claim held' or '... did not hold here'."""
    return "The claim held" if held else "The claim did not hold here"


def ratio(a: float, b: float) -> str:
    """'12x' for how many times a is b, readable whichever way round they are ('1/12' when a is smaller)."""
    if a == b:
        return "1x"
    if b == 0 or a == 0:
        return "inf x" if b == 0 else "0x"
    r = a / b
    return f"{r:.3g}x" if r >= 1 else f"1/{1 / r:.3g}"


def write(name: str, finding: Finding, options: Options, out: Path, seconds: float) -> tuple[Path, Path]:
    """lab-NAME.json and lab-NAME.png into `out`; the figure is closed after saving."""
    from ..viz import pyplot

    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / f"lab-{name}.json", out / f"lab-{name}.png"
    record = {
        "lab": name,
        "claim": finding.claim,
        "held": finding.held,
        "conclusion": finding.conclusion,
        "numbers": finding.numbers,
        "settings": finding.settings,
        "notes": finding.notes,
        "seed": options.seed,
        "quick": options.quick,
        "model": options.model,
        "seconds": round(seconds, 2),
        "machine": runtime.describe_machine(),
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    json_path.write_text(json.dumps(record, indent=2, default=_plain) + "\n")
    finding.figure.savefig(png_path, dpi=72)
    pyplot().close(finding.figure)
    return json_path, png_path


def _plain(value: Any) -> Any:
    """Tensors and numpy numbers as plain JSON numbers and lists."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")
