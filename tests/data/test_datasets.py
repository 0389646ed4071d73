import gzip

import pytest

from transformerkit import DataError
from transformerkit.data.datasets import data_dir, multi30k, read_lines, read_parallel


def test_plain_and_gzip_files_read_the_same(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\r\nthree\n")
    (tmp_path / "a.gz").write_bytes(gzip.compress("one\ntwo\r\nthree\n".encode()))
    assert read_lines(tmp_path / "a.txt") == read_lines(tmp_path / "a.gz") == ["one", "two", "three"]


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(DataError, match="nothing.txt: no such file"):
        read_lines(tmp_path / "nothing.txt")


def test_undecodable_bytes_name_file_and_line(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"fine\nalso fine\nbroken \xff here\n")
    with pytest.raises(DataError, match=r"bad.txt:3: undecodable bytes"):
        read_lines(tmp_path / "bad.txt")


def test_line_counts_must_match(tmp_path):
    (tmp_path / "s.txt").write_text("a\nb\nc\n")
    (tmp_path / "t.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="s.txt has 3 lines but .*t.txt has 2"):
        read_parallel(tmp_path / "s.txt", tmp_path / "t.txt")


def test_empty_lines_are_skipped_and_counted(tmp_path, capsys):
    (tmp_path / "s.txt").write_text("a\n\nc\nd\n")
    (tmp_path / "t.txt").write_text("A\nB\n \nD\n")
    pairs = read_parallel(tmp_path / "s.txt", tmp_path / "t.txt")
    assert (pairs.sources, pairs.targets, pairs.skipped) == (["a", "d"], ["A", "D"], 2)
    assert "skipped 2 empty line pair(s)" in capsys.readouterr().err


def test_data_directory_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TRANSFORMERKIT_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    monkeypatch.delenv("TRANSFORMERKIT_DATA")
    assert data_dir().parts[-3:] == (".cache", "transformerkit", "data")


def test_multi30k_from_the_data_directory(data_env, monkeypatch, tmp_path):
    train = multi30k("train", "de", "en")
    assert len(train) == 400 and train.sources[0].startswith("Zwei junge")
    with pytest.raises(DataError, match="split 'test' is not a Multi30k split"):
        multi30k("test", "de", "en")
    with pytest.raises(DataError, match="language 'xx' is not in Multi30k"):
        multi30k("train", "xx", "en")
    monkeypatch.setenv("TRANSFORMERKIT_DATA", str(tmp_path))
    with pytest.raises(DataError, match="train.de.gz: no such file; run `transformerkit download`"):
        multi30k("train", "de", "en")
