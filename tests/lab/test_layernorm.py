"""Lab layernorm, quick: note 001's worked example through nn/norm.py ([1, 2, 3] -> [-1.22, 0, 1.22], then
gamma 2 and beta 1 -> [-1.44, 1, 3.44]), and a training outcome for every norm at every learning rate."""

import json
import math

import pytest

from transformerkit.lab import run_lab
from transformerkit.lab.layernorm import LRS, VARIANTS
from transformerkit.lab.report import Options


def test_layernorm_lab_reproduces_the_worked_example(tmp_path):
    finding, json_path, png_path = run_lab("layernorm", tmp_path, Options(quick=True))
    assert json_path.exists() and png_path.exists()
    numbers = json.loads(json_path.read_text())["numbers"]
    example = numbers["worked_example"]
    root = math.sqrt(1.5)  # (x - mean) / sqrt(biased variance 2/3) for x = [1, 2, 3]
    assert example["normalized"] == pytest.approx([-root, 0.0, root], abs=1e-4)
    assert example["normalized"] == pytest.approx([-1.22, 0.0, 1.22], abs=0.005)  # the note's two decimals
    assert example["scaled"] == pytest.approx([-2.44, 0.0, 2.44], abs=0.01)
    assert example["final"] == pytest.approx([1 - 2 * root, 1.0, 1 + 2 * root], abs=1e-4)
    assert example["final"] == pytest.approx([-1.44, 1.0, 3.44], abs=0.01)
    assert example["final_module"] == pytest.approx(example["final"], abs=1e-5)
    assert example["matches_note"]
    for key in ("outcome", "final_loss", "steps_to_level", "spikes", "curves"):
        assert set(numbers[key]) == set(VARIANTS)
        assert all(set(runs) == {str(lr) for lr in LRS} for runs in numbers[key].values())
