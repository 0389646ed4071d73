"""Lab heads, quick: one, four and eight heads at equal parameters, and the heads of a trained translator."""

import json

from transformerkit.lab import run_lab
from transformerkit.lab.heads import HEADS
from transformerkit.lab.report import Options


def test_heads_lab_measures_heads(tmp_path):
    _, json_path, png_path = run_lab("heads", tmp_path, Options(quick=True))
    assert json_path.exists() and png_path.exists()
    numbers = json.loads(json_path.read_text())["numbers"]
    assert len(set(numbers["parameters"].values())) == 1  # equal parameters, whatever the number of heads
    assert sorted(numbers["val_loss"]) == sorted(str(h) for h in HEADS)
    encoder = numbers["heads"]["encoder"]
    assert len(encoder[0]["entropy"]) == len(encoder[0]["distance"]) == 4  # the 4-head translator, per head
    for layers in (numbers["heads"], numbers["heads_untrained"]):
        assert set(layers) == {"encoder", "decoder", "cross"}
        assert all(0.0 <= row["js"] <= 1.0 for rows in layers.values() for row in rows)


def test_identical_heads_do_not_differ():
    import torch

    from transformerkit.lab.heads import js_divergence

    p = torch.softmax(torch.randn(5, 7), -1)
    assert torch.allclose(js_divergence(p, p), torch.zeros(5), atol=1e-6)
    one_hot = torch.eye(2)
    assert torch.allclose(js_divergence(one_hot[:1], one_hot[1:]), torch.ones(1))  # disjoint: 1 bit
