"""Encoder tasks: MLM masking statistics, pretraining, classification and contrastive fine-tuning."""

import json

import pytest
import torch

import transformerkit as tk
from transformerkit.data.masking import IGNORE, mask_tokens
from transformerkit.recipes import load_recipe
from transformerkit.tasks import prepare
from transformerkit.tasks.run import train_recipe

NO_BUDGET = "training.budget_minutes=0"  # the recipes size their schedules to a time budget; tests count steps
TINY_BERT = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.d_ff=64", "tokenizer.vocab_size=500",
             "data.batch_tokens=2048", "training.warmup_steps=5", "training.log_every=5", NO_BUDGET]


def test_masking_statistics_on_a_large_batch():
    ids = torch.randint(10, 1000, (400, 128))
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    maskable = (ids != 2) & (ids != 3)
    corrupted, labels = mask_tokens(ids, maskable, mask_id=4, vocab_size=1000,
                                    generator=torch.Generator().manual_seed(0), first_regular_id=5)
    chosen = labels != IGNORE
    assert abs(chosen.float().sum() / maskable.sum() - 0.15) < 0.005
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # special tokens are never chosen
    masked = (corrupted == 4) & chosen
    kept = (corrupted == ids) & chosen
    randomised = chosen & ~masked & ~kept
    for part, share in ((masked, 0.8), (kept, 0.1), (randomised, 0.1)):
        assert abs(part.sum() / chosen.sum() - share) < 0.015 + (0.005 if part is kept else 0)
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(corrupted[~chosen], ids[~chosen])


def test_masks_are_fresh_every_batch_but_reproducible(data_env, tmp_path):
    setup = prepare(load_recipe("multi30k-bert", TINY_BERT + ["training.max_steps=2"]), run_dir=tmp_path)
    first, again = setup.data.batches(0)[0], setup.data.batches(0)[0]
    assert torch.equal(first.labels, again.labels)
    other_epoch = setup.data.batches(1)
    assert not any(torch.equal(first.labels, b.labels) for b in other_epoch if b.labels.shape == first.labels.shape)


def test_pretrain_then_classify_then_contrastive(data_env, tmp_path):
    bert = tmp_path / "bert"
    train_recipe(load_recipe("multi30k-bert", TINY_BERT + ["training.max_steps=30", "training.eval_every=15",
                                                           "training.lr=3e-3"]), bert, progress_bar=False)
    evals = [r for r in map(json.loads, (bert / "metrics.jsonl").read_text().splitlines()) if "val_accuracy" in r]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] and 0 <= evals[-1]["val_accuracy"] <= 1
    langid = tmp_path / "langid"
    train_recipe(load_recipe("multi30k-langid", [f"model.init={json.dumps(str(bert))}", "training.max_steps=40",
                                                 NO_BUDGET, "training.warmup_steps=5", "training.log_every=5",
                                                 "training.eval_every=20", "training.lr=3e-3",
                                                 "data.batch_tokens=2048"]), langid, progress_bar=False)
    model = tk.load(langid, device="cpu")
    assert model.task["labels"] == ["de", "en", "fr", "cs"]
    ids = torch.tensor([model.tokenizer.encode("Ein Hund läuft.").ids])
    assert model.classify(ids).shape == (1, 4)
    records = list(map(json.loads, (langid / "metrics.jsonl").read_text().splitlines()))
    assert {"val_accuracy_de", "val_accuracy_cs"} <= set(next(r for r in records if "val_accuracy" in r))
    train_losses = [r["loss"] for r in records if "loss" in r]
    assert train_losses[-1] < train_losses[0]
    embed = tmp_path / "embed"
    train_recipe(load_recipe("multi30k-captions-contrastive", [f"model.init={json.dumps(str(bert))}",
                                                               "training.max_steps=10", "training.eval_every=10",
                                                               NO_BUDGET,
                                                               "data.batch_size=16"]),
                 embed, progress_bar=False)
    encoder = tk.load(embed, device="cpu")
    vectors = encoder.embed(["A dog runs.", "Two men are talking outside a shop.", "A dog runs."])
    assert vectors.shape == (3, 32) and vectors.dtype == torch.float32
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(vectors[0], vectors[2])


def test_fine_tuning_needs_a_pretrained_encoder(data_env, tmp_path):
    with pytest.raises(tk.ConfigError, match="init"):
        prepare(load_recipe("multi30k-langid", ["model.init=\"/no/such/run\""]), run_dir=tmp_path)


def test_a_tiny_classifier_overfits(data_env, tmp_path):
    from transformerkit.tasks.classification import ClassificationLoss
    from transformerkit.tasks.encoder_data import sentence_batch

    model = tk.build_model(tk.preset("bert-tiny", n_classes=3, dropout=0.0, attention_dropout=0.0)).train()
    batch = sentence_batch([[2, 10, 11, 3], [2, 12, 3], [2, 13, 14, 15, 3]], torch.tensor([0, 1, 2]), pad_id=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss, n = ClassificationLoss()(model, batch)
        optimizer.zero_grad()
        (loss / n).backward()
        optimizer.step()
    assert model.classify(batch.ids, batch.mask).argmax(-1).tolist() == [0, 1, 2]
