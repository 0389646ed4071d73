"""What every benchmark shares: the machine's description, a table, and JSON output."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from transformerkit import runtime  # noqa: E402
from transformerkit.summary import format_table  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """CPU model, core count, threads, native bf16 or not and PyTorch version (and the GPU, when one is used)."""
    return runtime.describe_machine()


def machine_kind() -> str:
    """The instruction-set family that decides what is fast here: amx, avx512bf16, avx512, avx2, or cuda."""
    if torch.cuda.is_available():
        return "cuda"
    flags = runtime.cpu_flags()
    for kind, flag in (("amx", "amx_bf16"), ("avx512bf16", "avx512_bf16"), ("avx512", "avx512f"), ("avx2", "avx2")):
        if flag in flags:
            return kind
    return "cpu"


def machine_facts() -> dict:
    """What every results JSON records about where it was measured."""
    return {"machine": machine(), "processor": runtime.cpu_name(), "machine_kind": machine_kind(),
            "native_bf16": runtime.native_bf16("cpu"), "threads": torch.get_num_threads()}


def copy_bandwidth() -> float:
    """Bytes per second of a large tensor copy (read + write), the memory system's practical rate."""
    src = torch.empty(256 * 2**20 // 4)
    dst = torch.empty_like(src)
    src.fill_(1.0)
    dst.copy_(src)
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best


def write_json(name: str, data) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def kept_rows(path, rows: list[dict]) -> list[dict]:
    """The rows of earlier runs on this machine kind that this run does not replace: those of the sizes and
    dtypes not measured now, and those measured on another processor of the kind or at another thread count.
    Each row is a side-by-side comparison made in one run, so a run of some sizes adds to the file instead of
    replacing it. Rows written before `processor` was recorded are told apart by their machine line (which
    then named no family or model), so no run replaces them: remove them by hand once they are superseded."""
    def key(row):
        return row["size"], row["dtype"], row.get("processor", row["machine"]), row["threads"]

    measured = {key(r) for r in rows}
    earlier = json.loads(path.read_text()) if path.exists() else []
    return [r for r in earlier if key(r) not in measured]


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
