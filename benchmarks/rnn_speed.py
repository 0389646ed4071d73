"""Training throughput of the recurrent baselines: the Trainer's own step on real Multi30k batches.

    python benchmarks/rnn_speed.py [--steps 20] [--label after]

For each recipe of the experiment (LSTM, GRU, GRU+attention, LSTM+attention and the Transformer), times the
Trainer's step (forward, the fused loss, backward, AdamW) on the recipe's own batches, in the precision it
chooses here. Run it in a checkout of an earlier commit with --label before to compare code versions on the
same machine; results are merged into benchmarks/results/rnn_speed.json under their label.
"""

from __future__ import annotations

import argparse
import json
import time

from common import RESULTS, machine_facts, print_table, write_json

from transformerkit import runtime
from transformerkit.recipes import load_recipe
from transformerkit.tasks import prepare
from transformerkit.training.trainer import Trainer

RECIPES = ["multi30k-de-en-lstm", "multi30k-de-en-gru", "multi30k-de-en-gru-attention",
           "multi30k-de-en-lstm-attention", "multi30k-de-en-demo"]


def tokens_per_second(name: str, steps: int) -> float:
    setup = prepare(load_recipe(name), run_dir="/tmp/rnn-speed")
    trainer = Trainer(setup.model, setup.data, setup.objective, setup.train_config, "/tmp/rnn-speed",
                      progress_bar=False)
    batches = setup.data.batches(0)
    for batch in batches[:2]:
        trainer.step([batch])
    start, tokens = time.perf_counter(), 0
    for batch in batches[2:steps + 2]:
        trainer.step([batch])
        tokens += batch.n_tokens
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--label", default="after", help="which code version this is (before / after)")
    args = parser.parse_args()
    runtime.keep_freed_memory()
    runtime.choose_threads()
    rows = {name: tokens_per_second(name, args.steps) for name in RECIPES}
    path = RESULTS / "rnn_speed.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[args.label] = {"train_tokens_per_second": rows, **machine_facts()}
    print_table([(name, round(speed)) for name, speed in rows.items()], ("recipe", f"train tok/s ({args.label})"))
    print(f"wrote {write_json('rnn_speed.json', results)}")


if __name__ == "__main__":
    main()
