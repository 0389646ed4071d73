"""`transformerkit download` against a local HTTP server serving the public repositories' layout."""

import functools
import gzip
import http.server
import threading

import pytest

from transformerkit import DataError
from transformerkit.data.download import download, files


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path):
    root = tmp_path / "mirror"
    for name in ("multi30k", "tinyshakespeare"):
        for remote, _, compress in files(name):
            path = root / remote
            path.parent.mkdir(parents=True, exist_ok=True)
            text = f"{remote}\nsecond line\n".encode()
            path.write_bytes(text if compress or not remote.endswith(".gz") else gzip.compress(text))
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", root
    server.shutdown()


def test_download_multi30k_into_the_layout(mirror, tmp_path):
    url, _ = mirror
    data = tmp_path / "data"
    written = download("multi30k", data, mirror=url, progress=False)
    assert len(written) == 12 + 12 + 30  # task 1 raw and tokenized (3 splits x 4 languages), task 2 captions
    assert gzip.open(data / "multi30k" / "train.de.gz", "rt").readline() == "data/task1/raw/train.de.gz\n"
    tok = data / "multi30k" / "tok" / "val.lc.norm.tok.en.gz"  # plain text upstream, gzipped here
    assert gzip.open(tok, "rt").readline() == "data/task1/tok/val.lc.norm.tok.en\n"
    assert (data / "multi30k" / "captions" / "test_2016.5.de.gz").exists()
    assert download("multi30k", data, mirror=url, progress=False) == []  # files already there are kept


def test_download_tinyshakespeare(mirror, tmp_path):
    url, _ = mirror
    download("tinyshakespeare", tmp_path, mirror=url, progress=False)
    assert (tmp_path / "tinyshakespeare" / "input.txt").read_text().startswith("data/tinyshakespeare/input.txt")


def test_a_failed_download_leaves_no_partial_file(mirror, tmp_path):
    url, root = mirror
    (root / "data" / "task1" / "raw" / "val.de.gz").unlink()
    with pytest.raises(DataError, match="val.de.gz: download failed"):
        download("multi30k", tmp_path, mirror=url, progress=False)
    assert not list(tmp_path.rglob("*.part"))
    assert not (tmp_path / "multi30k" / "val.de.gz").exists()
