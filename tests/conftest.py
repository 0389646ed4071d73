"""Shared test set-up: one thread (two cores are shared; oversubscribed threads run 8x slower), fixed seeds,
and a small slice of Multi30k in a temporary data directory."""

import gzip
import os
import warnings
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*TypedStorage.*")

SHARED_DATA = Path(os.environ.get("TRANSFORMERKIT_DATA") or Path(__file__).parents[2] / "shared" / "data")
SLICE = {"train": 400, "val": 40, "test_2016_flickr": 40}


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
