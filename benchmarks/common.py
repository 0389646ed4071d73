"""What every benchmark shares: the machine's description, a table, and JSON output."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from transformerkit.summary import format_table  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """CPU model, core count, threads and PyTorch version (and the GPU, when one is used)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [cpu, f"{os.cpu_count()} cores", f"{torch.get_num_threads()} threads", f"torch {torch.__version__}"]
    if torch.cuda.is_available():
        parts.insert(0, torch.cuda.get_device_name())
    return ", ".join(parts)


def write_json(name: str, data) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def print_table(rows, header) -> None:
    print(format_table([tuple(_fmt(v) for v in row) for row in rows], header))


def _fmt(value):
    return f"{value:.2f}" if isinstance(value, float) else value


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
