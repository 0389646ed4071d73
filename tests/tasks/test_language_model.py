import pytest
import torch

from transformerkit.recipes import load_recipe
from transformerkit.tasks import prepare
from transformerkit.tasks.language_model import WindowData
from transformerkit.tasks.run import train_recipe


def test_windows_are_reproducible_per_epoch_and_batch():
    data = WindowData(torch.arange(1000), batch_size=4, context=16, seed=3, batches_per_epoch=10, what="test")
    assert torch.equal(data.batch(2, 5).ids, data.batches(2)[5].ids)
    assert not torch.equal(data.batch(2, 5).ids, data.batch(3, 5).ids)
    batch = data.batch(0, 0).ids
    assert batch.shape == (4, 17) and torch.equal(batch[:, 1:] - batch[:, :-1], torch.ones(4, 16, dtype=torch.long))


@pytest.mark.parametrize("recipe, attention", [("shakespeare-char", "learned"), ("shakespeare-char-llama", "rope")])
def test_the_recipes_build_the_requested_models(recipe, attention, data_env, tmp_path):
    setup = prepare(load_recipe(recipe), run_dir=tmp_path)
    c = setup.model.config
    assert (c.n_layers, c.n_heads, c.d_model, c.max_len, c.dropout) == (6, 6, 384, 256, 0.2)
    assert c.positions == attention and c.norm_position == "pre" and c.tie_embeddings
    if attention == "rope":
        assert (c.norm, c.activation, c.kv_heads, c.bias) == ("rmsnorm", "swiglu", 2, False)
    else:
        assert (c.norm, c.activation) == ("layernorm", "gelu")
        assert 10.6e6 < sum(p.numel() for p in setup.model.parameters()) < 10.8e6  # nanoGPT's 10.7M, with biases


def test_a_tiny_language_model_learns(data_env, tmp_path):
    recipe = load_recipe("shakespeare-char", [
        "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.d_ff=64", "model.max_len=32",
        "data.context=32", "data.batch_size=16", "data.val_batches=2", "training.max_steps=60",
        "training.eval_every=30", "training.warmup_steps=5", "training.lr=1e-2",
        "sample.tokens=20"])
    train_recipe(recipe, tmp_path / "run", progress_bar=False)
    import json

    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] < 4.3  # below uniform over ~70 characters
