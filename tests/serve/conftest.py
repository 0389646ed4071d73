"""Tiny random-init models of every kind the server takes, and a real server (uvicorn on a free local port, in a
thread of the test process) that serves them."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import torch

import transformerkit as tk
from transformerkit.data.tokenizers import special_ids, train_byte_bpe, train_wordpiece

pytest.importorskip("fastapi", reason="the server's extra is not installed: pip install 'transformerkit[serve]'")
pytest.importorskip("openai", reason="the openai client (a test dependency) is not installed")

TEXT = ["to be or not to be, that is the question.", "whether 'tis nobler in the mind to suffer",
        "the slings and arrows of outrageous fortune,", "or to take arms against a sea of troubles",
        "a dog runs on the beach.", "two children play in the park.", "ein hund rennt über die wiese."]
TEMPLATE = ("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")


def _decoder(preset: str, template: str | None):
    tokenizer = train_byte_bpe(TEXT * 4, vocab_size=320)
    torch.manual_seed(0)
    config = tk.preset(preset, vocab_size=tokenizer.get_vocab_size(), dropout=0.0, attention_dropout=0.0,
                       max_len=128, **special_ids(tokenizer))
    model = tk.build_model(config).eval()
    with torch.no_grad():
        model.output_layer().weight.mul_(3)  # a sharper distribution: few near-ties between tokens
    model.tokenizer, model.chat_template = tokenizer, template
    return model


@pytest.fixture(scope="session")
def chat_model():
    """LLaMA-style (rotary positions), with a chat template."""
    return _decoder("llama-tiny", TEMPLATE)


@pytest.fixture(scope="session")
def plain_model():
    """GPT-2-style (a learned position table of 128), no chat template: completions only."""
    return _decoder("gpt-tiny", None)


@pytest.fixture(scope="session")
def encoder_model():
    tokenizer = train_wordpiece(TEXT * 4, vocab_size=200, lowercase=True)
    torch.manual_seed(0)
    config = tk.preset("bert-tiny", vocab_size=tokenizer.get_vocab_size(), dropout=0.0, attention_dropout=0.0,
                       pooling="mean", normalize_embeddings=True, **special_ids(tokenizer))
    model = tk.build_model(config).eval()
    model.tokenizer = tokenizer
    return model


@pytest.fixture(scope="session")
def translator_model():
    return build_translator()


def build_translator():
    tokenizer = train_byte_bpe(TEXT * 4, vocab_size=300)
    torch.manual_seed(0)
    config = tk.preset("transformer-tiny", vocab_size=tokenizer.get_vocab_size(), dropout=0.0, max_len=64,
                       **special_ids(tokenizer))
    model = tk.build_model(config).eval()
    model.source_tokenizer = model.target_tokenizer = tokenizer
    return model


class Server:
    """uvicorn serving `app` on 127.0.0.1 (a port the system picked) in a thread, until stop()."""

    def __init__(self, app):
        import uvicorn

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()


@pytest.fixture(scope="session")
def models(chat_model, plain_model, encoder_model, translator_model):
    return {"tiny-chat": chat_model, "tiny-gpt": plain_model, "tiny-bert": encoder_model,
            "tiny-translator": translator_model}


@pytest.fixture(scope="session")
def server(models):
    from transformerkit.serve.app import create_app

    running = Server(create_app(models, max_batch=8, max_body_bytes=64 * 1024))
    yield running
    running.stop()


@pytest.fixture
def client(server):
    from openai import OpenAI

    with OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60) as openai:
        yield openai


def start_server(models: dict, **options) -> Server:
    from transformerkit.serve.app import create_app

    return Server(create_app(models, **options))


class SlowModel(torch.nn.Module):
    """A model whose every step takes at least `delay` seconds, through the decoding interface: long enough for
    requests to overlap, and for a client to leave mid-stream. Counts its steps and the widest batch it decoded."""

    def __init__(self, model, delay: float):
        super().__init__()
        self.inner, self.delay = model, delay
        self.config, self.tokenizer, self.chat_template = model.config, model.tokenizer, model.chat_template
        self.steps, self.widest = 0, 0

    def start(self, batch_size, max_len, source=None, source_mask=None):
        return self.inner.start(batch_size, max_len, source, source_mask)

    def step(self, ids, state, mask=None):
        time.sleep(self.delay)
        self.steps, self.widest = self.steps + 1, max(self.widest, ids.shape[0])
        return self.inner.step(ids, state, mask)
