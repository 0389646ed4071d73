"""The labs read whole corpora (Tiny Shakespeare, Multi30k) from the shared data directory, as a user's run does."""

import pytest

from ..conftest import SHARED_DATA


@pytest.fixture(autouse=True)
def shared_data(monkeypatch):
    needed = (SHARED_DATA / "tinyshakespeare" / "input.txt", SHARED_DATA / "multi30k" / "train.de.gz")
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        pytest.skip(f"the labs need {', '.join(missing)} (set TRANSFORMERKIT_DATA)")
    monkeypatch.setenv("TRANSFORMERKIT_DATA", str(SHARED_DATA))
