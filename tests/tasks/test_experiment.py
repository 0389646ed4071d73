"""The recurrent-versus-Transformer experiment, end to end on a small slice of Multi30k."""

import json

import pytest

from transformerkit import runtime
from transformerkit.cli import main
from transformerkit.data.datasets import multi30k
from transformerkit.data.tokenizers import train_bpe
from transformerkit.experiment import MODELS, _set_budget
from transformerkit.recipes import load_recipe

SMALL = ["--set", "data.batch_tokens=4000", "--set", "data.val_sentences=8",
         "--set", "decoding.max_len_a=0.5", "--set", "decoding.max_len_b=4",  # untrained models never end alone
         "--set", "model.n_layers=1", "--set", "data.max_sentence_tokens=12"]  # the shortest pairs: seconds a model


def test_a_budgeted_experiment_writes_every_file_anneals_every_model_inside_its_budget_and_resumes(
        data_env, tmp_path):
    out, budget = tmp_path / "experiment", 0.2  # minutes per model: a few dozen small steps, so the plan is fine
    out.mkdir()  # a 1,000-word vocabulary (the experiment keeps a tokenizer it finds): at 8,000 the output layer
    train = multi30k("train", "de", "en")  # made each step ~2 s here, too few steps for the schedule to end cleanly
    train_bpe(train.sources[:2000] + train.targets[:2000], 1000).save(str(out / "tokenizer.json"))
    assert main(["experiment", "multi30k", "--direction", "de-en", "--budget-minutes", str(budget),
                 "--out", str(out), "--device", "cpu", *SMALL, "--set", "data.batch_tokens=1000"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in results] == ["lstm", "gru", "gru_attention", "lstm_attention", "transformer"]
    for r in results:
        assert {"parameters", "train_seconds", "bleu_tokenized_greedy", "bleu_tokenized_beam",
                "sacrebleu_beam", "precision"} <= set(r)
        assert r["machine"] == runtime.describe_machine()  # each row names the machine its model trained on
        records = [json.loads(line) for line in (out / r["model"] / "metrics.jsonl").read_text().splitlines()]
        training = json.loads((out / r["model"] / "recipe.json").read_text())["training"]
        assert records[-1]["summary"]["finished"] == "budget", r["model"]  # the plan's end, not the hard stop
        assert r["train_seconds"] <= 60 * budget * 1.05, r["model"]  # with its last evaluation, timed under load
        floor, peak = training["min_lr"], training["lr"]
        assert (r["final_lr"] - floor) / (peak - floor) < 0.02, r["model"]  # the cosine ran (nearly) to its end
    for name in ("results.md", "bleu_vs_time.png", "attention.png"):
        assert (out / name).stat().st_size > 0
    assert max((out / name).stat().st_size for name in ("bleu_vs_time.png", "attention.png")) < 1_000_000
    before = (out / "lstm" / "metrics.jsonl").read_text()
    assert main(["experiment", "multi30k", "--epochs", "1", "--out", str(out), "--device", "cpu", *SMALL,
                 "--models", "lstm,transformer"]) == 0  # finished models are kept, not retrained
    assert (out / "lstm" / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("name", list(MODELS))
def test_equal_epochs_replace_every_time_limit_and_keep_a_schedule_that_needs_no_length(name):
    recipe = load_recipe(MODELS[name].format(direction="de-en"))
    _set_budget(recipe, 20.0, epochs=3)
    training = recipe["training"]
    assert training["max_epochs"] == 3
    assert not {"max_minutes", "max_steps", "budget_minutes"} & set(training)
    assert training.get("schedule") != "cosine"  # cosine needs its length in steps, which epochs do not give


@pytest.mark.parametrize("name", list(MODELS))
def test_a_time_budget_replaces_every_other_limit_and_spreads_six_evaluations_or_more(name):
    recipe = load_recipe(MODELS[name].format(direction="de-en"))
    _set_budget(recipe, 20.0, epochs=None)
    training = recipe["training"]
    assert training["budget_minutes"] == 20.0 and training["max_minutes"] > 20.0  # a hard stop after the plan
    assert not {"max_epochs", "max_steps"} & set(training)
    assert training["evaluations"] >= 6  # a curve per model in bleu_vs_time.png
    assert training["schedule"] == "cosine" and training["min_lr"] < training["lr"] / 10  # annealed inside it
