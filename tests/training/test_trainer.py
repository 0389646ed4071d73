"""The trainer on a tiny slice of Multi30k: resume exactness, crash safety, averaging."""

import json
import math
import os
import signal
import time

import pytest
import torch

import transformerkit as tk
from transformerkit.recipes import load_recipe
from transformerkit.tasks.run import train_recipe
from transformerkit.training.trainer import Interrupted, TrainingError

TINY = ["model.preset=transformer-tiny", "model.d_model=32", "model.d_ff=64", "model.n_layers=1",
        "model.n_heads=2", "tokenizer.vocab_size=300", "data.batch_tokens=600", "training.warmup_steps=5",
        "training.lr=3e-3", "training.log_every=1", "training.max_minutes=10",
        "training.snapshot_every=0", "training.average_last=0", "training.budget_minutes=0",
        "training.schedule=inverse_sqrt"]


def tiny_recipe(*changes):
    return load_recipe("multi30k-de-en", [*TINY, *changes])


def losses(run):
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize("changes", [[], ["tokenizer.dropout=0.1"]], ids=["plain", "bpe-dropout"])
def test_resume_continues_bit_for_bit(changes, data_env, tmp_path):
    recipe = tiny_recipe("training.max_steps=8", "training.eval_every=4", *changes)
    train_recipe(recipe, tmp_path / "straight", progress_bar=False)
    stopped = tiny_recipe("training.max_steps=4", "training.eval_every=4", *changes)
    train_recipe(stopped, tmp_path / "resumed", progress_bar=False)
    saved = json.loads((tmp_path / "resumed" / "recipe.json").read_text())
    saved["training"]["max_steps"] = 8  # the user asks the stopped run for more steps
    (tmp_path / "resumed" / "recipe.json").write_text(json.dumps(saved))
    train_recipe(None, tmp_path / "resumed", resume=True, progress_bar=False)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    assert len(losses(tmp_path / "straight")) == 8


def test_run_folder_layout_and_averaging(data_env, tmp_path):
    recipe = tiny_recipe("training.max_steps=6", "training.eval_every=3", "training.snapshot_every=2",
                         "training.average_last=2")
    summary = train_recipe(recipe, tmp_path / "run", progress_bar=False)
    run = tmp_path / "run"
    assert {"metrics.jsonl", "recipe.json", "last", "best", "averaged"} <= {p.name for p in run.iterdir()}
    assert len(list((run / "snapshots").iterdir())) == 2
    assert summary["finished"] == "max_steps" and summary["select"] == "val_bleu"
    model = tk.load(run, device="cpu")  # a run folder means averaged/
    assert model.task["source_lang"] == "de" and model.task["decoding"]["beam"] == 5
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("averaged" in r for r in records) and any("val_bleu" in r for r in records)


def test_a_new_run_never_overwrites_an_old_one(data_env, tmp_path):
    train_recipe(tiny_recipe("training.max_steps=1", "training.eval_every=0"), tmp_path / "run", progress_bar=False)
    with pytest.raises(tk.ConfigError, match="already holds a run"):
        train_recipe(tiny_recipe("training.max_steps=1"), tmp_path / "run", progress_bar=False)


def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_env, tmp_path, monkeypatch):
    from transformerkit.tasks import translation as objectives

    recipe = tiny_recipe("training.max_steps=4", "training.eval_every=2")
    calls = {"n": 0}
    original = objectives.TranslationLoss.__call__

    def poisoned(self, model, batch):
        loss, n = original(self, model, batch)
        if model.training:  # evaluation uses the same loss: count training steps only
            calls["n"] += 1
        return (loss * math.nan, n) if calls["n"] == 3 and model.training else (loss, n)

    monkeypatch.setattr(objectives.TranslationLoss, "__call__", poisoned)
    with pytest.raises(TrainingError, match="loss became nan at step 3"):
        train_recipe(recipe, tmp_path / "run", progress_bar=False)
    state = torch.load(tmp_path / "run" / "last" / "trainer_state.pt", weights_only=False)
    assert state["progress"]["step"] == 2


def test_ctrl_c_saves_a_checkpoint_after_the_step(data_env, tmp_path, monkeypatch):
    from transformerkit.training import trainer

    original = trainer.Trainer.step

    def step_then_interrupt(self, group):
        loss = original(self, group)
        if self.progress.step == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    monkeypatch.setattr(trainer.Trainer, "step", step_then_interrupt)
    with pytest.raises(Interrupted, match="resume"):
        train_recipe(tiny_recipe("training.max_steps=5", "training.eval_every=0"), tmp_path / "run",
                     progress_bar=False)
    state = torch.load(tmp_path / "run" / "last" / "trainer_state.pt", weights_only=False)
    assert state["progress"]["step"] == 2


def test_accumulated_batches_weigh_every_token_like_one_big_batch(data_env, tmp_path, monkeypatch):
    import copy

    from transformerkit.data.batching import seq2seq_batch
    from transformerkit.tasks import prepare
    from transformerkit.training.trainer import Trainer

    monkeypatch.delenv("TRANSFORMERKIT_PRECISION", raising=False)  # an identity of sums: checked in float32
    setup = prepare(tiny_recipe("training.max_steps=1", "model.dropout=0.0", 'training.precision="fp32"'),
                    run_dir=tmp_path)
    data = setup.data
    first, second = data.batches(0)[:2]
    indices = first.indices + second.indices
    merged = seq2seq_batch([data.sources[i] for i in indices], [data.targets[i] for i in indices], indices,
                           **data.special)

    def gradient(group):
        """The gradient the trainer's step hands the optimizer."""
        trainer = Trainer(copy.deepcopy(setup.model), data, setup.objective, setup.train_config, tmp_path / "t",
                          progress_bar=False)
        seen = []
        trainer.optimizer.step = lambda: seen.append(torch.cat([p.grad.flatten() for p in trainer.model.parameters()
                                                                if p.grad is not None]))
        trainer.step(group)
        return seen[0]

    torch.testing.assert_close(gradient([first, second]), gradient([merged]), atol=1e-6, rtol=1e-4)


def test_init_starts_from_pretrained_weights(data_env, tmp_path):
    train_recipe(tiny_recipe("training.max_steps=30", "training.eval_every=0"), tmp_path / "base", progress_bar=False)
    pretrained = tk.load(tmp_path / "base", device="cpu").train()
    train_recipe(tiny_recipe("training.max_steps=2", "training.eval_every=0"), tmp_path / "fine", init=pretrained,
                 progress_bar=False)
    train_recipe(tiny_recipe("training.max_steps=2", "training.eval_every=0"), tmp_path / "scratch",
                 progress_bar=False)
    assert losses(tmp_path / "fine")[0] < losses(tmp_path / "scratch")[0] - 0.5  # it starts where base ended


def test_a_time_budget_sizes_the_schedule_to_end_inside_it(data_env, tmp_path):
    recipe = tiny_recipe("training.budget_minutes=0.1", "training.schedule=\"cosine\"", "training.min_lr=1e-5",
                         "training.warmup_steps=20", "training.evaluations=3", "training.snapshot_every=5",
                         "training.average_last=2")
    recipe["training"].pop("max_minutes")
    summary = train_recipe(recipe, tmp_path / "run", progress_bar=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["precision"] in ("fp32", "bf16") and records[0]["precision_reason"]
    plan = [r for r in records if "planned_steps" in r and "summary" not in r][-1]  # re-planned as it went
    assert summary["finished"] == "budget" and summary["step"] == plan["planned_steps"] > 30
    assert summary["planned_steps"] == plan["planned_steps"] and summary["budget_minutes"] == 0.1
    assert summary["train_seconds"] <= 0.1 * 60 * 1.1
    assert [r for r in records if "lr" in r][-1]["lr"] == pytest.approx(1e-5, rel=0.05)  # annealed to the floor
    assert len([r for r in records if "val_bleu" in r and "averaged" not in r]) >= 3


def test_a_machine_that_slows_down_after_the_plan_still_ends_inside_the_budget(data_env, tmp_path, monkeypatch):
    """Another job takes the cores once the plan is made: every step now costs 20 ms more. With one evaluation
    (at the end) nothing but the pace checks between evaluations can shorten the plan."""
    from transformerkit.training.trainer import Trainer

    step = Trainer.step

    def slowed(self, group):
        if self.progress.plan is not None:
            time.sleep(0.02)
        return step(self, group)

    monkeypatch.setattr(Trainer, "step", slowed)
    recipe = tiny_recipe("training.budget_minutes=0.1", "training.schedule=\"cosine\"", "training.min_lr=1e-5",
                         "training.evaluations=1", "training.max_minutes=0.3")
    summary = train_recipe(recipe, tmp_path / "run", progress_bar=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    plans = [r["planned_steps"] for r in records if "planned_steps" in r and "summary" not in r]
    assert summary["finished"] == "budget" and summary["step"] == plans[-1] < plans[0]
    assert summary["train_seconds"] <= 0.1 * 60 * 1.1


def test_a_float32_run_records_the_library_its_products_ran_on(data_env, tmp_path, monkeypatch):
    """oneDNN and MKL round differently, so a float32 run's first record says which one multiplied."""
    from transformerkit import runtime
    from transformerkit.nn.linear import can_pack_weights

    probes = (runtime.onednn_matmul_pays, runtime.onednn_weight_gradient_pays)
    monkeypatch.setenv(runtime.PRECISION_ENV, "fp32")
    try:
        for library in runtime.FLOAT32_LIBRARIES:
            monkeypatch.setenv(runtime.MATMUL_ENV, library)
            for probe in probes:
                probe.cache_clear()
            train_recipe(tiny_recipe("training.max_steps=1", "training.eval_every=0"), tmp_path / library,
                         progress_bar=False)
            first = json.loads((tmp_path / library / "metrics.jsonl").read_text().splitlines()[0])
            assert first["precision"] == "fp32"
            assert first["fp32_matmul"] == (library if can_pack_weights() else "default")
    finally:
        for probe in probes:
            probe.cache_clear()  # the next test reads the suite's own setting again


def test_a_finished_budgeted_run_resumed_with_a_bigger_budget_trains_on_inside_it(data_env, tmp_path):
    recipe = tiny_recipe("training.budget_minutes=0.05", "training.schedule=\"cosine\"", "training.min_lr=1e-5",
                         "training.warmup_steps=5", "training.evaluations=2", "training.max_minutes=0.2")
    first = train_recipe(recipe, tmp_path / "run", progress_bar=False)
    assert first["finished"] == "budget"
    again = train_recipe(None, tmp_path / "run", resume=True, progress_bar=False,
                         overrides=["training.budget_minutes=0.1"])
    assert again["finished"] == "budget" and again["step"] > first["step"] + 10
    assert again["planned_steps"] == again["step"] and again["train_seconds"] <= 0.1 * 60 * 1.1
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    later = [r for r in records if r.get("step", 0) > first["step"]]
    assert len([r for r in later if "val_bleu" in r and "averaged" not in r]) >= 2  # on resuming, and at the new end
    assert all(r["lr"] == pytest.approx(1e-5, rel=0.05) for r in later if "lr" in r)  # the cosine had ended
    with pytest.raises(tk.ConfigError, match="max_minutes.*at least budget_minutes"):
        train_recipe(None, tmp_path / "run", resume=True, progress_bar=False, overrides=["training.budget_minutes=1"])


def test_a_run_stopped_long_before_its_plan_says_so(data_env, tmp_path, capsys):
    summary = train_recipe(tiny_recipe("training.max_steps=100000", "training.max_minutes=0.02",
                                       "training.eval_every=0"), tmp_path / "run", progress_bar=False)
    assert summary["finished"] == "max_minutes" and not summary["learned"]
    err = capsys.readouterr().err
    assert "too early to learn" in err and "tokens/s" in err


@pytest.mark.parametrize("minutes, between", [(1e-6, [1, 2, 3, 4, 5]), (0, [])])
def test_last_is_saved_on_a_time_interval_between_evaluations(minutes, between, data_env, tmp_path, monkeypatch):
    from transformerkit.training.run_folder import RunFolder

    steps = []
    save_last = RunFolder.save_last
    monkeypatch.setattr(RunFolder, "save_last",
                        lambda self, model, state: (steps.append(state["progress"]["step"]),
                                                    save_last(self, model, state)))
    train_recipe(tiny_recipe("training.max_steps=6", "training.eval_every=0",
                             f"training.checkpoint_minutes={minutes}"), tmp_path / "run", progress_bar=False)
    assert [s for s in steps if 0 < s < 6] == between  # besides the start and the end, only when time says so
