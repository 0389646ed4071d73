"""Lab scaling, quick: on random q and k the attention entropy without 1/sqrt(d_k) falls as d_k grows while
with it it stays high at every width, and the softmax gradient at the largest width is far smaller unscaled;
both trained variants leave a curve and attention entropies."""

import json

from transformerkit.lab import run_lab
from transformerkit.lab.report import Options
from transformerkit.lab.scaling import WIDTHS


def test_scaling_lab_shows_saturation_without_the_factor(tmp_path):
    finding, json_path, png_path = run_lab("scaling", tmp_path, Options(quick=True))
    assert json_path.exists() and png_path.exists()
    numbers = json.loads(json_path.read_text())["numbers"]
    scaled, unscaled = numbers["entropy"]["scaled"], numbers["entropy"]["unscaled"]
    assert len(scaled) == len(unscaled) == len(WIDTHS)
    assert all(a > b for a, b in zip(unscaled, unscaled[1:]))  # falls with every doubling of d_k
    assert min(scaled) > 0.75 and unscaled[-1] < 0.1
    assert all(s > u for s, u in zip(scaled, unscaled))
    jacobian = numbers["jacobian"]
    assert jacobian["unscaled"][-1] < jacobian["scaled"][-1] / 10
    for key in ("model_entropy_init", "model_entropy_trained", "val_loss", "curves"):
        assert set(numbers[key]) == {"scaled", "unscaled"}
