"""The recurrent baselines against the Transformer on Multi30k, equal wall-clock budgets, one command.

    python benchmarks/experiment.py --direction de-en --budget-minutes 20

Runs `transformerkit experiment multi30k` (five models, about 20 minutes each on 2 CPU cores) and copies
its results into benchmarks/results/: experiment-<direction>.md, .json (one object per model) and the PNGs.
Anchors (PyTorch seq2seq tutorials, test_2016, greedy, tokenized BLEU, 10 epochs on a GPU): LSTM 13.8,
GRU 20.6, bidirectional GRU with attention 28.3, Transformer 36.5.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from common import RESULTS, machine, print_table

from transformerkit.errors import Interrupted, TransformerkitError
from transformerkit.experiment import run_experiment
from transformerkit.runtime import keep_freed_memory

ANCHORS = {"lstm": 13.8, "gru": 20.6, "gru_attention": 28.3, "lstm_attention": None, "transformer": 36.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--direction", default="de-en")
    parser.add_argument("--budget-minutes", type=float, default=20.0)
    parser.add_argument("--out", help="the experiment folder (default runs/experiment-<direction>)")
    args = parser.parse_args()
    keep_freed_memory()
    out = Path(args.out or f"runs/experiment-{args.direction}")
    try:
        results = run_experiment(out, args.direction, args.budget_minutes)
    except Interrupted as interrupted:  # the model in training saved its run: the same command resumes it
        sys.exit(f"experiment: {interrupted}")
    except TransformerkitError as error:
        sys.exit(f"experiment: error: {error}")
    for row in results:
        row["anchor_bleu_tokenized_greedy"] = ANCHORS.get(row["model"])
        row["machine"] = row["machine"] or machine()  # the machine each model trained on, when its run says
        row["budget_minutes"] = args.budget_minutes
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"experiment-{args.direction}.json").write_text(json.dumps(results, indent=2) + "\n")
    shutil.copy(out / "results.md", RESULTS / f"experiment-{args.direction}.md")
    for picture in ("bleu_vs_time.png", "attention.png"):
        shutil.copy(out / picture, RESULTS / f"experiment-{args.direction}-{picture}")
    print_table([(r["model"], f"{r['bleu_tokenized_greedy']:.1f}", f"{r['bleu_tokenized_beam']:.1f}",
                  "" if r["anchor_bleu_tokenized_greedy"] is None else r["anchor_bleu_tokenized_greedy"],
                  f"{r['train_seconds'] / 60:.1f}") for r in results],
                ("model", "tok. BLEU greedy", "tok. BLEU beam5", "anchor (greedy)", "train min"))


if __name__ == "__main__":
    main()
