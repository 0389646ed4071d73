"""Text corpora from the data directory: Multi30k, any parallel corpus, plain text.

The data directory is $TRANSFORMERKIT_DATA, else ~/.cache/transformerkit/data; `transformerkit download`
fills it for users who are online. Bad data is a DataError naming the file and, where it can, the line.
"""

from __future__ import annotations

import gzip
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

MULTI30K_LANGUAGES = ("de", "en", "fr", "cs")
MULTI30K_SPLITS = ("train", "val", "test_2016_flickr")


def data_dir() -> Path:
    value = os.environ.get("TRANSFORMERKIT_DATA", "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "transformerkit" / "data"


def read_lines(path: str | os.PathLike) -> list[str]:
    """Lines of a UTF-8 text file, plain or gzip (by its magic bytes), without their line endings."""
    path = Path(path)
    if not path.is_file():
        hint = "; run `transformerkit download` or set TRANSFORMERKIT_DATA" if data_dir() in path.parents else ""
        raise DataError(f"{path}: no such file{hint}")
    try:
        with path.open("rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        raw = gzip.open(path, "rb").read() if gzipped else path.read_bytes()
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: cannot read: {error}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: undecodable bytes (the file must be UTF-8)") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


@dataclass
class Parallel:
    """Aligned sentence pairs: sources[i] translates to targets[i]."""

    sources: list[str]
    targets: list[str]
    skipped: int = 0  # pairs dropped because one side was empty

    def __len__(self) -> int:
        return len(self.sources)


def read_parallel(source_path: str | os.PathLike, target_path: str | os.PathLike) -> Parallel:
    """Two aligned files -> their sentence pairs; empty pairs are skipped and counted (and reported)."""
    sources, targets = read_lines(source_path), read_lines(target_path)
    if len(sources) != len(targets):
        raise DataError(f"{source_path} has {len(sources)} lines but {target_path} has {len(targets)}; "
                        "line i of one must translate line i of the other")
    pairs = [(s.strip(), t.strip()) for s, t in zip(sources, targets)]
    kept = [(s, t) for s, t in pairs if s and t]
    skipped = len(pairs) - len(kept)
    if skipped:
        print(f"skipped {skipped} empty line pair(s) in {source_path} / {target_path}", file=sys.stderr)
    return Parallel([s for s, _ in kept], [t for _, t in kept], skipped)


def multi30k_path(split: str, language: str, root: Path | None = None) -> Path:
    _check_multi30k(split, language)
    return (root or data_dir()) / "multi30k" / f"{split}.{language}.gz"


def multi30k_tokenized_path(split: str, language: str, root: Path | None = None) -> Path:
    """The official lowercased, normalised, Moses-tokenized references (for tokenized BLEU)."""
    _check_multi30k(split, language)
    return (root or data_dir()) / "multi30k" / "tok" / f"{split}.lc.norm.tok.{language}.gz"


CAPTION_SPLITS = ("train", "val", "test_2016")


def multi30k_captions(split: str, k: int, language: str, root: Path | None = None) -> list[str]:
    """Multi30k task 2: description k (1-5) of every image; line i of every file describes image i."""
    if split not in CAPTION_SPLITS or k not in range(1, 6) or language not in ("en", "de"):
        raise DataError(f"captions: split must be one of {', '.join(CAPTION_SPLITS)}, k 1-5 and language en or de")
    return read_lines((root or data_dir()) / "multi30k" / "captions" / f"{split}.{k}.{language}.gz")


def multi30k(split: str, source: str, target: str) -> Parallel:
    """Multi30k task 1: `split` in train, val, test_2016_flickr; languages de, en, fr, cs."""
    return read_parallel(multi30k_path(split, source), multi30k_path(split, target))


def _check_multi30k(split: str, language: str) -> None:
    if split not in MULTI30K_SPLITS:
        raise DataError(f"split {split!r} is not a Multi30k split here; choose one of {', '.join(MULTI30K_SPLITS)}")
    if language not in MULTI30K_LANGUAGES:
        raise DataError(f"language {language!r} is not in Multi30k; choose one of {', '.join(MULTI30K_LANGUAGES)}")
