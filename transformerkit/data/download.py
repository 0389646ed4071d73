"""`transformerkit download`: fetch the public corpora into the data directory's layout.

Multi30k comes from the multi30k/dataset repository on GitHub (task 1 raw and tokenized files, task 2
captions), Tiny Shakespeare from karpathy/char-rnn. Each file is written to a temporary name and renamed,
so an interrupted download never leaves a truncated file; files already present are kept.
"""

from __future__ import annotations

import gzip
import os
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import DataError
from .datasets import MULTI30K_LANGUAGES, MULTI30K_SPLITS, data_dir

SOURCES = {
    "multi30k": "https://raw.githubusercontent.com/multi30k/dataset/master/",
    "tinyshakespeare": "https://raw.githubusercontent.com/karpathy/char-rnn/master/",
}
CAPTION_SPLITS = ("train", "val", "test_2016")


def files(name: str) -> list[tuple[str, str, bool]]:
    """(path in the source repository, path in the data directory, gzip it) for each file of a corpus."""
    if name == "tinyshakespeare":
        return [("data/tinyshakespeare/input.txt", "tinyshakespeare/input.txt", False)]
    if name != "multi30k":
        raise DataError(f"unknown corpus {name!r}; choose one of {', '.join(SOURCES)}")
    out = []
    for split in MULTI30K_SPLITS:
        for lang in MULTI30K_LANGUAGES:
            out.append((f"data/task1/raw/{split}.{lang}.gz", f"multi30k/{split}.{lang}.gz", False))
            out.append((f"data/task1/tok/{split}.lc.norm.tok.{lang}", f"multi30k/tok/{split}.lc.norm.tok.{lang}.gz",
                        True))
    for split in CAPTION_SPLITS:
        for k in range(1, 6):
            for lang in ("en", "de"):
                out.append((f"data/task2/raw/{split}.{k}.{lang}.gz", f"multi30k/captions/{split}.{k}.{lang}.gz", False))
    return out


def download(name: str, root: Path | None = None, mirror: str | None = None, progress: bool = True) -> list[Path]:
    """Fetch corpus `name` into `root` (default: the data directory); returns the files written.

    `mirror` replaces the source's base URL (a local copy, or a test server).
    """
    from tqdm import tqdm

    root = root or data_dir()
    base = (mirror or SOURCES.get(name, "")).rstrip("/") + "/"
    written = []
    for remote, local, compress in tqdm(files(name), desc=f"download {name}", unit="file", disable=not progress):
        target = root / local
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(base + remote, timeout=60) as response:
                payload = response.read()
        except (urllib.error.URLError, OSError) as error:
            raise DataError(f"{base + remote}: download failed: {error}") from None
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
        os.replace(tmp, target)
        written.append(target)
    return written
