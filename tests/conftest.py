"""Shared test set-up: one thread (two cores are shared; oversubscribed threads run 8x slower), fixed seeds."""

import os
import warnings

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*TypedStorage.*")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
