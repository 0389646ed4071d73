"""Lab teacher-forcing, quick: three LSTM encoder-decoders differing only in the teacher-forcing ratio train for
the same steps and are measured the same way on held-out sequences."""

import json

from transformerkit.lab import run_lab
from transformerkit.lab.report import Options
from transformerkit.lab.teacher_forcing import RATIOS


def test_teacher_forcing_lab_measures_every_ratio(tmp_path):
    finding, json_path, png_path = run_lab("teacher-forcing", tmp_path, Options(quick=True))
    assert json_path.exists() and png_path.exists()
    record = json.loads(json_path.read_text())
    numbers, steps = record["numbers"], record["settings"]["steps"]
    keys = {str(r) for r in RATIOS}
    for name in ("val_loss", "exact", "steps_to_level", "roughness", "curves"):
        assert set(numbers[name]) == keys
    for key in keys:
        curve = numbers["curves"][key]
        assert curve["steps"] == list(range(1, steps + 1)) and curve["diverged_at"] is None
        assert [e["step"] for e in curve["evaluations"]][-1] == steps
        assert 0 < numbers["val_loss"][key] < 10 and 0 <= numbers["exact"][key] <= 1
    # the ratio reaches the model: feeding back guesses makes the three training curves differ from the first step
    # whose input is a guess, with the same weights, data and seed
    assert len({tuple(numbers["curves"][k]["losses"]) for k in keys}) == 3
