"""Bad input, interrupted runs and broken files: one clear line and exit 2 (or 130/143 for a signal), never a
traceback, never a hang, never a checkpoint that lies. Commands run in-process (fast) unless a signal or a
second process is the point."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import transformerkit as tk
from transformerkit.cli import main

from .conftest import TINY, run_main


def sets(*items):
    return [arg for item in [*TINY, *items] for arg in ("--set", item)]


def cli(*argv, stdin=None):
    """Run a command in-process: (exit code, stdout, stderr)."""
    result = run_main(*argv, stdin=stdin)
    return result.returncode, result.stdout, result.stderr


def refused(code, err, *words):
    """Exit 2 and exactly one line on stderr, saying all of `words`."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(word in lines[0] for word in words), lines[0]


@pytest.fixture
def run(tiny_run):
    return tiny_run


# --------------------------------------------------------------------------------------------- bad recipes

@pytest.mark.parametrize("item, words", [
    ("training.lr=abc", ["lr", "a number"]),
    ("training.max_steps=abc", ["max_steps", "an integer"]),
    ("training.betas=5", ["betas", "a list"]),
    ("training.log_every=0", ["log_every", "at least 1"]),
    ("training.seed=abc", ["seed", "an integer"]),
    ("data.batch_tokens=abc", ["batch_tokens", "an integer"]),
    ("tokenizer.vocab_size=abc", ["vocab_size", "an integer"]),
    ("decoding.beam=abc", ["beam", "an integer"]),
    ("model.n_layers=1.5", ["n_layers", "an integer"]),
    ("model.d_model=abc", ["[model]", "d_model", "an integer"]),
    ("training.bf16=no", ["bf16", "true or false"]),
    ("trainig.max_steps=4", ["unknown table [trainig]", "did you mean 'training'"]),
    ("foo.bar=1", ["unknown table [foo]"]),
    ("training.max_step=4", ["max_step", "unknown key", "did you mean 'max_steps'"]),
])
def test_a_bad_recipe_value_is_one_line_naming_the_field(item, words, data_env, tmp_path):
    code, _, err = cli("train", "multi30k-de-en", "--out", tmp_path / "run", *sets("training.max_steps=2",
                                                                                            item))
    refused(code, err, *words)
    assert not (tmp_path / "run" / "last").exists()  # refused before anything was trained or written


def test_a_bad_rnn_recipe_value_and_an_unknown_table_in_a_file(data_env, tmp_path):
    code, _, err = cli("train", "multi30k-de-en-gru", "--out", tmp_path / "rnn",
                       "--set", "model.hidden_size=big", "--set", "data.val_sentences=8")
    refused(code, err, "hidden_size", "an integer")
    recipe = tmp_path / "mine.toml"
    recipe.write_text('task = "translation"\n[data]\nsource = "de"\ntarget = "en"\n[optimizer]\nname = "sgd"\n'
                      '[training]\nmax_steps = 1\n')
    code, _, err = cli("train", recipe, "--out", tmp_path / "file-run")
    refused(code, err, "unknown table [optimizer]")


@pytest.mark.parametrize("item, words", [("data.max_sentence_tokens=1", ["nothing is left to train on"])])
def test_training_data_filtered_to_nothing_stops_at_once(item, words, data_env, tmp_path):
    start = time.perf_counter()
    code, _, err = cli("train", "multi30k-de-en", "--out", tmp_path / "run", *sets("training.max_steps=5",
                                                                                            item))
    refused(code, err, *words)
    assert time.perf_counter() - start < 60


def test_empty_corpus_files_stop_at_once(data_env, tmp_path):
    paths = {f"{split}_{side}": tmp_path / f"{split}.{lang}"
             for split in ("train", "val") for side, lang in (("source", "de"), ("target", "en"))}
    for path in paths.values():
        path.write_text("")
    files = [f'data.{key}="{path}"' for key, path in paths.items()]
    code, _, err = cli("train", "multi30k-de-en", "--out", tmp_path / "run",
                       *sets("training.max_steps=5", 'data.corpus="files"', *files))
    refused(code, err, "no sentence pairs to train on")


# --------------------------------------------------------------------------------------------- NaN

def test_a_nan_stops_the_run_keeps_only_finite_checkpoints_and_resume_recovers(data_env, tmp_path):
    folder = tmp_path / "run"
    code, _, err = cli("train", "multi30k-de-en", "--out", folder, "--no-progress",
                       *sets("training.lr=1e6", "training.eval_every=1", "training.max_steps=30"))
    assert code == 2 and "Traceback" not in err
    last_line = err.strip().splitlines()[-1]
    assert "is finite; resume it with a lower learning rate" in last_line and "--set training.lr=" in last_line
    from safetensors.torch import load_file

    for checkpoint in ("last", "best"):
        if (folder / checkpoint).exists():
            assert all(torch.isfinite(t).all() for t in load_file(folder / checkpoint / "model.safetensors").values())
    state = torch.load(folder / "last" / "trainer_state.pt", weights_only=False)
    code, _, err = cli("train", "--resume", folder, "--no-progress", "--set", "training.lr=1e-3",
                       "--set", f"training.max_steps={state['progress']['step'] + 2}")
    assert code == 0, err
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("changed", {}).get("training.lr") == [1e6, 1e-3] for r in records)


def test_resume_refuses_changes_to_what_was_trained(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    code, _, err = cli("train", "--resume", copy, "--set", "model.d_model=64")
    refused(code, err, "--set model.d_model: cannot change when resuming")


# --------------------------------------------------------------------------------------------- broken files

@pytest.mark.parametrize("name", ["last/model.safetensors", "last/trainer_state.pt", "last/tokenizer.json"])
def test_a_truncated_file_is_one_line(name, run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    data = (copy / name).read_bytes()
    (copy / name).write_bytes(data[: len(data) // 2])
    code, _, err = cli("train", "--resume", copy, "--set", "training.max_steps=6")
    refused(code, err, name.split("/")[-1])
    if name != "last/trainer_state.pt":
        shutil.rmtree(copy / "averaged", ignore_errors=True)
        shutil.rmtree(copy / "best", ignore_errors=True)
        code, _, err = cli("translate", copy, stdin="Ein Hund.\n")
        refused(code, err, name.split("/")[-1])


def test_leftovers_of_an_interrupted_save_are_recovered_on_resume(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / ".last.tmp-deadbeef").mkdir()  # a save killed while writing
    (copy / "last").rename(copy / ".last.old-cafebabe")  # a save killed between its two renames
    code, _, err = cli("train", "--resume", copy, "--no-progress", "--set", "training.max_steps=5")
    assert code == 0, err
    assert (copy / "last" / "trainer_state.pt").exists()
    assert not list(copy.glob(".last.*"))


def test_a_resumed_run_replays_no_duplicate_records(data_env, tmp_path, monkeypatch):
    from transformerkit.training.trainer import Trainer

    folder = tmp_path / "run"
    original = Trainer.step

    def crash_at_step_5(self, group):
        if self.progress.step == 4:
            raise RuntimeError("killed")  # as kill -9 would, after step 4 was logged and last/ saved at step 3
        return original(self, group)

    monkeypatch.setattr(Trainer, "step", crash_at_step_5)
    with pytest.raises(RuntimeError):
        main(["train", "multi30k-de-en", "--out", str(folder), "--no-progress",
              *sets("training.max_steps=6", "training.eval_every=3")])
    monkeypatch.setattr(Trainer, "step", original)
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert main(["train", "--resume", str(folder), "--no-progress"]) == 0
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]  # step 4 replayed, not repeated


def test_a_run_folder_is_locked_while_a_process_trains_in_it(run, tmp_path):
    from transformerkit.training.run_folder import RunFolder

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    holder = RunFolder(copy)
    holder.lock()
    try:
        code, _, err = cli("train", "--resume", copy, "--set", "training.max_steps=6")
        refused(code, err, f"process {os.getpid()} is training in this folder")
    finally:
        holder.unlock()


def test_a_start_that_failed_before_its_first_checkpoint_can_be_started_again(data_env, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "recipe.json").write_text("{}")  # what a start killed at once leaves
    code, _, err = cli("train", "--resume", folder)
    refused(code, err, "stopped before its first checkpoint", "--out")
    code, _, err = cli("train", "multi30k-de-en", "--out", folder, "--no-progress",
                       *sets("training.max_steps=2", "training.eval_every=0"))
    assert code == 0, err


# --------------------------------------------------------------------------------------------- signals

def test_sigterm_saves_and_exits_143_then_the_run_resumes(data_env, tmp_path):
    folder = tmp_path / "run"
    env = {**os.environ, "TRANSFORMERKIT_DATA": str(data_env), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "transformerkit", "train", "multi30k-de-en", "--out",
                                str(folder), "--no-progress", *sets("training.max_steps=100000",
                                                                    "training.eval_every=0")],
                               stderr=subprocess.PIPE, text=True, env=env)
    def trained_a_step():
        metrics = folder / "metrics.jsonl"
        return metrics.exists() and '"loss"' in metrics.read_text()

    deadline = time.time() + 120
    while time.time() < deadline and not trained_a_step():
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("transformerkit train: interrupted at step")
    assert "resume with: transformerkit train --resume" in err and "Traceback" not in err
    step = torch.load(folder / "last" / "trainer_state.pt", weights_only=False)["progress"]["step"]
    code, _, err = cli("train", "--resume", folder, "--no-progress", "--set", f"training.max_steps={step + 1}")
    assert code == 0, err


# --------------------------------------------------------------------------------------------- commands

def test_invalid_utf8_on_stdin_is_replaced_with_one_warning(run):
    code, out, err = cli("translate", run, "--greedy", stdin=b"Ein Hund.\n\xff\xfe kaputt \xc3\n\nEnde.\n")
    assert code == 0, err
    assert len(out.splitlines()) == 4 and out.splitlines()[2] == ""
    assert err.count("not valid UTF-8") == 1


@pytest.mark.parametrize("argv, words", [
    (["translate", "RUN", "--device", "cuda"], ["--device cuda", "no CUDA"]),
    (["translate", "RUN", "--device", "mps"], ["--device mps", "no Apple GPU"]),
    (["translate", "RUN", "--device", "tpu"], ["not a device"]),
    (["plot", "RUN", "--out", "/proc/curves.png"], ["/proc/curves.png", "cannot be written"]),
    (["evaluate", "RUN", "--out", "/proc/scores.json"], ["/proc/scores.json", "cannot be written"]),
    (["export", "RUN", "/proc/hf"], ["/proc/hf", "cannot be written"]),
    (["train", "multi30k-de-en", "--out", "FILE"], ["already exists and is a file"]),
    (["embed", "RUN", "--batch-size", "0"], ["--batch-size", "at least 1"]),
    (["similar", "RUN", "--corpus", "FILE", "--query", "x", "-k", "-1"], ["-k", "at least 1"]),
    (["generate", "RUN", "--prompt", "x", "--temperature", "-1"], ["temperature", "0 or more"]),
    (["generate", "RUN", "--prompt", "x", "--top-k", "-3"], ["top_k", "0 or more"]),
    (["generate", "RUN", "--prompt", "Ein Hund."], ["use `transformerkit translate"]),
])
def test_bad_command_line_input_is_one_line(argv, words, run, tmp_path):
    existing = tmp_path / "a-file"
    existing.write_text("x\n")
    argv = [str(run) if a == "RUN" else str(existing) if a == "FILE" else a for a in argv]
    code, _, err = cli(*argv)
    refused(code, err, *words)


def test_evaluate_writes_into_the_run_folder_where_training_does_not_delete_it(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    code, out, err = cli("evaluate", copy, "--split", "val", "--greedy")
    assert code == 0, err
    written = copy / "evaluation-val-beam1.json"
    assert written.exists() and not list((copy / "averaged").glob("evaluation-*"))
    assert cli("train", "--resume", copy, "--no-progress", "--set", "training.max_steps=5")[0] == 0
    assert written.exists()


def test_beam_evaluations_at_two_length_penalties_keep_both_files(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    for penalty in ("0.6", "1.6"):
        code, _, err = cli("evaluate", copy, "--split", "val", "--beam", "2", "--length-penalty", penalty)
        assert code == 0, err
    for penalty in (0.6, 1.6):
        assert json.loads((copy / f"evaluation-val-beam2-lp{penalty}.json").read_text())["length_penalty"] == penalty


def test_a_hugging_face_config_with_special_ids_outside_the_vocabulary_loads(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=1,
                                                              n_head=2))  # bos/eos default to 50256
    hf.save_pretrained(tmp_path / "tiny-gpt2")
    model = tk.load(tmp_path / "tiny-gpt2", device="cpu")
    assert model.config.eos_id < 100
    assert "eos_token_id 50256 is outside the vocabulary (100); treated as absent" in capsys.readouterr().err
