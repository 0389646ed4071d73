"""Every command exits 0 on good input and 2 with one line on bad input."""

import subprocess
import sys

import pytest

import transformerkit as tk
from transformerkit.cli import main

from .conftest import run_main


def test_presets(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "transformer-base" in out and "63.1M" in out and "gpt2-small" in out


def test_info_and_export(tmp_path, capsys):
    tk.save(tk.build_model(tk.preset("gpt-tiny")), tmp_path / "ckpt")
    assert main(["info", str(tmp_path / "ckpt"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "norm_position" in out and "total" in out
    assert main(["export", str(tmp_path / "ckpt"), "--to", "hf", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").exists()


@pytest.mark.parametrize("argv", [["info", "/no/such/model"], ["export", "/no/such/model", "--to", "hf", "out"],
                                  ["no-such-command"], ["info"]])
def test_bad_input_is_one_line_and_exit_2(argv):
    result = run_main(*argv)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "error" in result.stderr


def test_the_installed_command_exits_2_with_one_line_and_no_traceback():
    """What the in-process runner cannot see: the interpreter itself, as a user runs it."""
    result = subprocess.run([sys.executable, "-m", "transformerkit", "info", "/no/such/model"], capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


TINY_SET = ["--set", "model.preset=transformer-tiny", "--set", "model.d_model=32", "--set", "model.d_ff=64",
            "--set", "model.n_layers=1", "--set", "model.n_heads=2", "--set", "tokenizer.vocab_size=300",
            "--set", "data.batch_tokens=600", "--set", "training.max_steps=150", "--set", "training.eval_every=75",
            "--set", "training.snapshot_every=25", "--set", "training.average_last=2", "--set", "training.lr=5e-3",
            "--set", "training.warmup_steps=10", "--set", "training.budget_minutes=0",
            "--set", "training.schedule=inverse_sqrt"]  # by steps, not by the recipe's time budget


run_cli = run_main  # in-process; test_the_installed_command_... runs the real `python -m transformerkit`


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, multi30k_dir):
    import os

    run = tmp_path_factory.mktemp("cli") / "run"
    env = {**os.environ, "TRANSFORMERKIT_DATA": str(multi30k_dir), "OMP_NUM_THREADS": "1"}
    result = run_cli("train", "multi30k-de-en", "--out", str(run), "--device", "cpu", "--no-progress", *TINY_SET,
                     env=env)
    assert result.returncode == 0, result.stderr
    assert "run folder" in result.stdout
    return run, env


def test_translate_streams_in_input_order(trained_run):
    run, env = trained_run
    lines = ["Ein Hund.", "", "Zwei Männer laufen über eine große grüne Wiese neben einem Fluss.", "  \t ",
             "Eine Frau sitzt auf einer Bank im Park."]
    result = run_cli("translate", str(run), "--device", "cpu", "--greedy", stdin="\n".join(lines) + "\n", env=env)
    assert result.returncode == 0, result.stderr
    outputs = result.stdout.split("\n")
    assert len(outputs) == 6 and outputs[1] == outputs[3] == ""  # blank in, blank out, whitespace or not
    import transformerkit as tk

    model = tk.load(run, device="cpu")
    alone = [tk.translate(model, [line], beam=1)[0] if line.strip() else "" for line in lines]
    assert outputs[:5] == alone  # line i of the output translates line i of the input (batches sort by length)
    assert len(set(alone) - {""}) >= 2  # the check means something: the translations differ


def test_evaluate_writes_json(trained_run, tmp_path):
    import json

    run, env = trained_run
    out = tmp_path / "scores.json"
    result = run_cli("evaluate", str(run), "--split", "val", "--beam", "2", "--length-penalty", "1.3", "--out",
                     str(out), "--device", "cpu", env=env)
    assert result.returncode == 0, result.stderr
    scores = json.loads(out.read_text())
    assert {"sacrebleu", "sacrebleu_signature", "chrf", "bleu_tokenized", "beam"} <= set(scores)
    assert scores["beam"] == 2 and scores["sentences"] == 40 and scores["length_penalty"] == 1.3


def test_plot_and_attention_write_pngs(trained_run, tmp_path):
    run, env = trained_run
    assert run_cli("plot", str(run), "--out", str(tmp_path / "curves.png"), env=env).returncode == 0
    assert (tmp_path / "curves.png").stat().st_size > 1000
    result = run_cli("attention", str(run), "--sentence", "Ein Hund läuft.", "--out", str(tmp_path / "att"),
                     "--device", "cpu", env=env)
    assert result.returncode == 0, result.stderr
    names = {p.name for p in (tmp_path / "att").iterdir()}
    assert {"encoder-layer0.png", "decoder-layer0.png", "cross-layer0.png"} <= names


def test_resume_a_finished_run_with_more_steps(trained_run, tmp_path):
    import json
    import shutil

    run, env = trained_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    result = run_cli("train", "--resume", str(copy), "--device", "cpu", "--no-progress", env=env)
    assert result.returncode == 0, result.stderr  # already at max_steps: nothing more to do, and no error
    result = run_cli("train", "--resume", str(copy), "--device", "cpu", "--no-progress",
                     "--set", "training.max_steps=152", env=env)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    summaries = [r["summary"] for r in records if "summary" in r]
    assert len(summaries) == 1 and summaries[0]["step"] == 152  # two more steps, one summary
    assert any(r.get("changed") == {"training.max_steps": [150, 152]} for r in records)


@pytest.mark.parametrize("argv, message", [
    (["train", "no-such-recipe"], "unknown recipe 'no-such-recipe'"),
    (["train", "multi30k-de-en", "--set", "training.lr"], "expected key=value"),
    (["train", "multi30k-de-en", "--set", "model.d_modle=3"], "d_modle: unknown key"),
    (["train", "--resume", "/no/such/run"], "not a run folder"),
    (["train"], "give a RECIPE"),
    (["translate", "/no/such/model"], "no such file"),
    (["evaluate", "/no/such/model"], "no such file"),
    (["plot", "/no/such/run"], "metrics.jsonl: no such file"),
    (["download", "nothing"], "invalid choice"),
    (["lab", "nosuch"], "unknown lab 'nosuch'"),
    (["lab", "residual", "--model", "runs/x"], "--model: lab residual trains its own models"),
])
def test_bad_input_is_one_clear_line(argv, message, tmp_path):
    import os

    env = {**os.environ, "TRANSFORMERKIT_DATA": str(tmp_path)}
    result = run_cli(*argv, env=env)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr


def test_a_bad_matmul_library_is_one_clear_line_before_any_work():
    """Checked as a command starts: `presets` multiplies nothing, yet a typo in the variable is still reported."""
    import os

    result = run_cli("presets", env={**os.environ, "TRANSFORMERKIT_MATMUL": "mkl"})
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "TRANSFORMERKIT_MATMUL: 'mkl'" in result.stderr


def test_missing_data_is_one_clear_line(tmp_path):
    import os

    result = run_cli("train", "multi30k-de-en", "--out", str(tmp_path / "run"),
                     env={**os.environ, "TRANSFORMERKIT_DATA": str(tmp_path)})
    assert result.returncode == 2
    assert "train.de.gz: no such file; run `transformerkit download`" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
