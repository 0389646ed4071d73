"""Lab dropout, quick: training and validation loss, in eval mode, and their gap for each dropout rate."""

import json

import pytest

from transformerkit.lab import run_lab
from transformerkit.lab.dropout import RATES
from transformerkit.lab.report import Options


def test_dropout_lab_measures_the_gap(tmp_path):
    _, json_path, png_path = run_lab("dropout", tmp_path, Options(quick=True))
    assert json_path.exists() and png_path.exists()
    numbers = json.loads(json_path.read_text())["numbers"]
    for rate in map(str, RATES):
        assert numbers["gap"][rate] == pytest.approx(numbers["val_loss"][rate] - numbers["train_loss"][rate])
        assert numbers["curves"][rate]["evaluations"]  # the curves in the figure
    assert numbers["train_loss"]["0.0"] != numbers["train_loss"]["0.3"]  # the rate reached the model
