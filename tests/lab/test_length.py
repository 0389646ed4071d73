"""Lab length, quick: three short-trained translators (RNN, RNN with attention, Transformer) scored by the
project's BLEU on the test sentences grouped by source length."""

import json

from transformerkit.lab import run_lab
from transformerkit.lab.length import MODELS, bucket, bucket_names
from transformerkit.lab.report import Options


def test_buckets_cover_every_length_once():
    assert bucket_names() == ["<=9", "10-12", "13-15", "16-19", ">=20"]
    assert [bucket(n) for n in (1, 9, 10, 12, 13, 19, 20, 60)] == [0, 0, 1, 1, 2, 3, 4, 4]


def test_length_lab_scores_each_model_by_length(tmp_path):
    finding, json_path, png_path = run_lab("length", tmp_path, Options(quick=True))
    assert json_path.exists() and png_path.exists()
    numbers = json.loads(json_path.read_text())["numbers"]
    assert sum(numbers["sentences"]) == 100 and all(n > 0 for n in numbers["sentences"])
    for name in ("bleu", "bleu_by_length", "drop", "slope"):
        assert set(numbers[name]) == set(MODELS)
    for kind in MODELS:
        assert len(numbers["bleu_by_length"][kind]) == len(numbers["buckets"])
        assert all(0 <= b <= 100 for b in numbers["bleu_by_length"][kind])
