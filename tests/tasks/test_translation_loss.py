"""The translation loss with R-Drop: two passes of one batch, with different dropout masks."""

import pytest
import torch

from transformerkit import ModelConfig, build_model
from transformerkit.data.batching import seq2seq_batch
from transformerkit.tasks.translation import TranslationLoss

from ..training.test_trainer import TINY


def model_and_batch(dropout: float):
    torch.manual_seed(0)
    config = ModelConfig(family="encoder-decoder", vocab_size=40, d_model=16, n_heads=2, n_layers=1, d_ff=32,
                         max_len=16, dropout=dropout, pad_id=0, bos_id=1, eos_id=2)
    sources, targets = [[5, 6, 7], [8, 9], [10, 11, 12, 13]], [[14, 15], [16, 17, 18], [19]]
    return build_model(config).train(), seq2seq_batch(sources, targets, [0, 1, 2], 0, 1, 2)


def test_without_dropout_the_two_passes_agree_and_each_token_counts_twice():
    model, batch = model_and_batch(dropout=0.0)
    plain, n = TranslationLoss(0.1)(model, batch)
    doubled, counted = TranslationLoss(0.1, rdrop=5.0)(model, batch)
    assert counted == 2 * n == 2 * batch.n_target_tokens
    torch.testing.assert_close(doubled, 2 * plain)


def test_with_dropout_the_passes_differ_and_the_divergence_is_added():
    model, batch = model_and_batch(dropout=0.3)
    torch.manual_seed(1)
    without, _ = TranslationLoss(0.1, rdrop=1e-9)(model, batch)  # the same two passes (same seed), alpha ~ 0
    torch.manual_seed(1)
    with_divergence, _ = TranslationLoss(0.1, rdrop=4.0)(model, batch)
    assert float((with_divergence - without).detach()) > 0.01  # different masks, different predictions
    with_divergence.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_a_recipe_s_rdrop_reaches_the_loss(data_env, tmp_path):
    from transformerkit.recipes import load_recipe
    from transformerkit.tasks.translation import prepare

    recipe = load_recipe("multi30k-de-en", [*TINY, "training.rdrop=2.0"])
    assert prepare(recipe, tmp_path / "run").objective.rdrop == 2.0


@pytest.mark.parametrize("value", [-1, "x", float("nan"), float("inf"), True])
def test_a_bad_rdrop_is_a_config_error(value, data_env, tmp_path):
    import transformerkit as tk
    from transformerkit.recipes import load_recipe
    from transformerkit.tasks.run import train_recipe

    recipe = load_recipe("multi30k-de-en", ["training.max_steps=1"])
    recipe["training"]["rdrop"] = value
    with pytest.raises(tk.ConfigError, match="rdrop: .*R-Drop's alpha"):
        train_recipe(recipe, tmp_path / "run", progress_bar=False)
