"""Lab positions, quick: without positional encoding the encoder is exactly permutation-equivariant (a shuffled
input gives the shuffled output); with learned, sinusoidal or rotary positions it is not."""

import json

from transformerkit.lab import run_lab
from transformerkit.lab.positions import VARIANTS
from transformerkit.lab.report import Options


def test_positions_lab_shows_attention_is_order_blind_without_positions(tmp_path):
    finding, json_path, png_path = run_lab("positions", tmp_path, Options(quick=True))
    assert json_path.exists() and png_path.exists()
    numbers = json.loads(json_path.read_text())["numbers"]
    error = numbers["permutation_error"]
    assert error["none"] < 1e-4
    assert all(error[p] > 1e-2 for p in VARIANTS[1:])
    for key in ("exact", "tokens", "exact_longer", "tokens_longer"):
        assert set(numbers[key]) == set(VARIANTS) and all(0 <= v <= 1 for v in numbers[key].values())
    assert all(len(numbers["curves"][p]["losses"]) == numbers["curves"][p]["steps"][-1] for p in VARIANTS)
