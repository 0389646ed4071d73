"""`transformerkit lab NAME`: the study notes' claims, each measured by one small controlled experiment.

Every lab is one file here with a CLAIM and a `run(options) -> Finding`; variants differ in one thing and
share the seed, the data and the number of steps; models are the project's own, trained by its Trainer
and decoded through its decoding interface. A full run takes at most about two minutes on two CPU cores;
`quick` runs the same experiment shrunk to seconds (the tests run it). See docs/tour.md for where each
claim's code and tests live.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

from ..config import closest
from ..errors import ConfigError
from .report import Finding, Options, write

# name on the command line -> module, in the order the notes teach the ideas
LABS = {
    "residual": "residual",
    "layernorm": "layernorm",
    "scaling": "scaling",
    "positions": "positions",
    "mask": "mask",
    "heads": "heads",
    "teacher-forcing": "teacher_forcing",
    "dropout": "dropout",
    "length": "length",
}


def claims() -> dict[str, str]:
    """Each lab's claim, by name (what `transformerkit lab --list` prints)."""
    return {name: importlib.import_module(f".{module}", __name__).CLAIM for name, module in LABS.items()}


def run_lab(name: str, out: str | Path = ".", options: Options = Options()) -> tuple[Finding, Path, Path]:
    """Run lab `name`, write lab-NAME.json and lab-NAME.png into `out`; returns the finding and both paths."""
    if name not in LABS:
        raise ConfigError(f"unknown lab {name!r}{closest(name, set(LABS))}; labs: {', '.join(LABS)}")
    module = importlib.import_module(f".{LABS[name]}", __name__)
    if options.model is not None and not getattr(module, "READS_MODEL", False):
        readers = [n for n, m in LABS.items() if getattr(importlib.import_module(f".{m}", __name__), "READS_MODEL", 0)]
        raise ConfigError(f"--model: lab {name} trains its own models; only {' and '.join(readers)} read a run")
    started = time.perf_counter()
    finding = module.run(options)
    json_path, png_path = write(name, finding, options, Path(out), time.perf_counter() - started)
    return finding, json_path, png_path
