"""Lab residual, quick: both files, a gradient norm for every block of both stacks, and at initialisation the
vanishing gradient without residual connections (the first block's gradient orders of magnitude below the
last's) that the residual stack does not have."""

import json

from transformerkit.lab import run_lab
from transformerkit.lab.report import Options
from transformerkit.lab.residual import LAYERS


def test_residual_lab_measures_gradients_by_block(tmp_path):
    finding, json_path, png_path = run_lab("residual", tmp_path, Options(quick=True))
    assert json_path.exists() and png_path.exists()
    numbers = json.loads(json_path.read_text())["numbers"]
    for key in ("grad_init", "grad_trained"):
        assert set(numbers[key]) == {"residual", "plain"}
        assert all(len(norms) == LAYERS for norms in numbers[key].values())
    assert set(numbers["val_loss"]) == set(numbers["curves"]) == {"residual", "plain"}
    ratios = numbers["first_over_last_init"]
    assert ratios["residual"] > 0.1
    assert ratios["plain"] < 1e-3
