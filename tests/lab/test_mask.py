"""Lab mask, quick: a decoder that sees the future fits its training windows better, predicts held-out text
worse when it must read it one character at a time, and its attention shows where the difference comes from."""

import json

from transformerkit.lab import run_lab
from transformerkit.lab.report import Options


def test_mask_lab_shows_the_leak(tmp_path):
    finding, json_path, png_path = run_lab("mask", tmp_path, Options(quick=True))
    assert json_path.exists() and png_path.exists()
    numbers = json.loads(json_path.read_text())["numbers"]
    train, stepwise = numbers["train_window_loss"], numbers["heldout_stepwise_loss"]
    assert train["unmasked"] < train["masked"]
    assert stepwise["unmasked"] > stepwise["masked"]
    future = numbers["future_weight"]
    assert all(share == 0.0 for heads in future["masked"] for share in heads)
    assert max(share for heads in future["unmasked"] for share in heads) > 0.1
    assert set(numbers["sample"]) == {"masked", "unmasked"}
    assert finding.held
