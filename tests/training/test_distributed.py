"""torchrun: two CPU processes with gloo train like one process with the same global batch."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from ..conftest import run_main
from .test_trainer import TINY

LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TRAIN = ["-m", "transformerkit", "train", "multi30k-de-en", "--device", "cpu", "--no-progress"]


def settings(*extra):
    return [item for pair in (("--set", s) for s in [*TINY, "model.dropout=0.0", *extra]) for item in pair]


def losses(run):
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def env(data_env):
    return {**os.environ, "TRANSFORMERKIT_DATA": str(data_env), "OMP_NUM_THREADS": "1"}


def torchrun(data, *argv):
    return subprocess.run([*LAUNCH, *argv], env=env(data), capture_output=True, text=True, timeout=300)


STEPS = ("training.max_steps=4", "training.eval_every=2")


@pytest.fixture(scope="module")
def ddp_run(multi30k_dir, tmp_path_factory):
    """Two ranks with DDP, 4 steps: the run the other tests compare with (each launch costs seconds)."""
    run = tmp_path_factory.mktemp("ddp") / "run"
    done = torchrun(multi30k_dir, *TRAIN, "--out", str(run), *settings(*STEPS))
    assert done.returncode == 0, done.stderr
    return run


def test_two_processes_equal_one_with_the_same_global_batch(ddp_run, multi30k_dir, tmp_path):
    one = run_main(*TRAIN[2:], "--out", tmp_path / "one", *settings("training.accumulate=2", *STEPS),
                   env=env(multi30k_dir))  # one process: in-process
    assert one.returncode == 0, one.stderr
    assert losses(ddp_run) == pytest.approx(losses(tmp_path / "one"), rel=1e-4)
    assert len(losses(ddp_run)) == 4


def more_steps(run, steps: int) -> None:
    recipe = json.loads((run / "recipe.json").read_text())
    recipe["training"]["max_steps"] = steps
    (run / "recipe.json").write_text(json.dumps(recipe))


def test_resume_with_another_world_size(ddp_run, multi30k_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ddp_run, run)
    more_steps(run, 6)
    second = run_main("train", "--resume", run, "--device", "cpu", "--no-progress", env=env(multi30k_dir))
    assert second.returncode == 0, second.stderr
    assert "resumed" in second.stderr and len(losses(run)) == 6


def test_fsdp_trains_like_ddp_saves_whole_checkpoints_and_resumes(ddp_run, multi30k_dir, tmp_path):
    run = tmp_path / "fsdp"
    done = torchrun(multi30k_dir, *TRAIN, "--out", str(run), "--fsdp", *settings(*STEPS))
    assert done.returncode == 0, done.stderr
    assert losses(run) == pytest.approx(losses(ddp_run), rel=1e-4)
    ddp, fsdp = (load_file(folder / "last" / "model.safetensors") for folder in (ddp_run, run))
    assert ddp.keys() == fsdp.keys()
    assert all(torch.allclose(ddp[k], fsdp[k], atol=1e-5) for k in ddp)
    more_steps(run, 6)
    resumed = torchrun(multi30k_dir, "-m", "transformerkit", "train", "--resume", str(run), "--device", "cpu",
                       "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stderr and len(losses(run)) == 6


def test_a_time_budget_makes_one_plan_for_every_rank(multi30k_dir, tmp_path):
    """Each rank has its own clock and only the main one evaluates: plans made from each clock would end the ranks
    at different steps, and the one left training waits on its peer forever."""
    run = tmp_path / "run"
    done = torchrun(multi30k_dir, *TRAIN, "--out", str(run), *settings(
        "training.budget_minutes=0.1", 'training.schedule="cosine"', "training.evaluations=2",
        "training.max_minutes=0.5", "training.collective_timeout=20"))
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = records[-1]["summary"]
    assert summary["finished"] == "budget" and summary["step"] == summary["planned_steps"]
    assert any("planned_steps" in r and "summary" not in r for r in records)  # a plan was made, and kept to


def test_a_killed_rank_fails_the_run_instead_of_hanging(data_env, tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen([*LAUNCH, *TRAIN, "--out", str(run), *settings("training.max_steps=100000",
                                                                              "training.eval_every=0")],
                               env=env(data_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and len(losses(run)) >= 2):
        time.sleep(0.5)
    assert len(losses(run)) >= 2, "training never started"
    victims = [pid for pid in _children(process.pid) if _environ(pid).get("RANK") == "1"]
    assert victims, "no rank-1 worker found"
    os.kill(victims[0], signal.SIGKILL)
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the surviving rank hung after its peer died")
    assert process.returncode != 0
    assert "error" in stderr.lower() or "failed" in stderr.lower()


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent == pid:
                found += [int(entry), *_children(int(entry))]
    return found


def _environ(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            pairs = [item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item]
        return {k.decode(): v.decode(errors="replace") for k, v in pairs}
    except OSError:
        return {}
