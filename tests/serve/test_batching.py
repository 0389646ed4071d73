"""Continuous batching under concurrent clients: requests join the running batch, each gets exactly the text it
would get alone, and a client that leaves stops its generation."""

import threading
import time

import httpx
import openai
import pytest

import transformerkit as tk
from transformerkit.inference.chat import render
from transformerkit.inference.generate import GenerationOptions, generate_ids
from transformerkit.serve.batching import Batcher, Event, Job

from .conftest import TEMPLATE, SlowModel, start_server

QUESTIONS = ["to be or not", "whether 'tis nobler", "the slings and arrows", "a sea of troubles", "a dog runs",
             "two children play", "ein hund rennt", "outrageous fortune"]


def stream_chat(url: str, question: str, max_tokens: int, results: dict, delay: float = 0.0, **options) -> None:
    time.sleep(delay)
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120) as client:
        stream = client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": question}],
                                                max_tokens=max_tokens, stream=True, **options)
        results[question] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_eight_concurrent_streams_each_get_what_they_would_get_alone(chat_model):
    slow = SlowModel(chat_model, delay=0.01)  # steps slow enough for the streams to overlap
    server = start_server({"tiny-chat": slow}, max_batch=8)
    try:
        results: dict[str, str] = {}
        # different lengths and arrival times: rows join a running batch and leave it at different steps
        clients = [threading.Thread(target=stream_chat, args=(server.url, q, 30 + 8 * i, results, 0.03 * i),
                                    kwargs={"temperature": 0}) for i, q in enumerate(QUESTIONS)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(timeout=120)
        for i, question in enumerate(QUESTIONS):
            prompt = render(TEMPLATE, [{"role": "user", "content": question}])
            assert results[question] == tk.generate(chat_model, prompt, max_new_tokens=30 + 8 * i), question
        assert slow.widest >= 4  # they were decoded together, not one after another
    finally:
        server.stop()


def test_seeded_samples_do_not_depend_on_what_shares_the_batch(chat_model):
    slow = SlowModel(chat_model, delay=0.004)
    server = start_server({"tiny-chat": slow}, max_batch=8)
    try:
        results: dict[str, str] = {}
        clients = [threading.Thread(target=stream_chat, args=(server.url, q, 30, results, 0.02 * i),
                                    kwargs={"temperature": 1.0, "seed": i}) for i, q in enumerate(QUESTIONS[:4])]
        for c in clients:
            c.start()
        for c in clients:
            c.join(timeout=120)
        for i, question in enumerate(QUESTIONS[:4]):
            prompt = render(TEMPLATE, [{"role": "user", "content": question}])
            assert results[question] == tk.generate(chat_model, prompt, max_new_tokens=30, temperature=1.0, seed=i)
        assert slow.widest >= 2
    finally:
        server.stop()


def test_a_client_that_disconnects_stops_its_generation_and_frees_its_row(chat_model):
    slow = SlowModel(chat_model, delay=0.02)  # 100 tokens would take 2 s
    server = start_server({"tiny-chat": slow})
    batcher = server.app.state.registry.models["tiny-chat"].batcher
    try:
        body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "to be"}], "max_tokens": 100,
                "stream": True, "ignore_eos": True}
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()
            for _ in range(3):
                assert next(lines).startswith("data: ")
                next(lines)  # the blank line that ends an event
        # the connection is closed: the row must leave the batch at the next step
        deadline = time.monotonic() + 5
        while batcher.load() != (0, 0):
            assert time.monotonic() < deadline, "the generation went on after the client left"
            time.sleep(0.02)
        steps = slow.steps
        assert steps < 50
        time.sleep(0.2)
        assert slow.steps == steps  # nothing decodes any more
    finally:
        server.stop()


def test_a_client_that_leaves_before_a_whole_reply_is_ready_stops_it_too(chat_model):
    slow = SlowModel(chat_model, delay=0.02)
    server = start_server({"tiny-chat": slow})
    batcher = server.app.state.registry.models["tiny-chat"].batcher
    try:
        body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "to be"}], "max_tokens": 100,
                "ignore_eos": True}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=0.3)
        deadline = time.monotonic() + 5
        while batcher.load() != (0, 0):
            assert time.monotonic() < deadline, "the generation went on after the client left"
            time.sleep(0.02)
        assert slow.steps < 60
    finally:
        server.stop()


def collect(events: list[Event], done: threading.Event):
    def emit(event: Event) -> None:
        events.append(event)
        if event.finish_reason or event.error:
            done.set()

    return emit


def test_with_a_position_table_a_request_waits_until_the_batch_has_room(plain_model):
    """gpt-tiny's table has 128 positions: a 24-token prompt with 100 new tokens and a 2-token one with 110 cannot
    share a right-aligned batch (24 + 110 > 128), so the second starts when the first ends; both still get what
    they would alone."""
    counting = SlowModel(plain_model, delay=0.0)
    batcher = Batcher(counting, max_batch=8)
    try:
        text = " ".join(["to be or not to be, that is the question."] * 4)
        prompts = [plain_model.tokenizer.encode(text).ids[:24], plain_model.tokenizer.encode(text).ids[:2]]
        runs = []
        for prompt, max_new in zip(prompts, (100, 110)):
            events, done = [], threading.Event()
            batcher.submit(Job(prompt, max_new, plain_model.tokenizer, collect(events, done)))
            runs.append((events, done))
        for (events, done), prompt, max_new in zip(runs, prompts, (100, 110)):
            assert done.wait(60)
            alone = generate_ids(plain_model, [prompt], GenerationOptions(max_new_tokens=max_new))[0]
            assert "".join(e.text for e in events) == plain_model.tokenizer.decode(alone)
        assert counting.widest == 1
    finally:
        batcher.close()


def test_a_failing_step_fails_its_requests_and_the_batcher_serves_the_next(chat_model):
    class Fails(SlowModel):
        def step(self, ids, state, mask=None):
            if self.steps == 0:
                self.steps = 1
                raise RuntimeError("out of memory")
            return self.inner.step(ids, state, mask)

    batcher = Batcher(Fails(chat_model, 0.0))
    try:
        prompt = chat_model.tokenizer.encode("to be").ids
        for expect_error in (True, False):
            events, done = [], threading.Event()
            batcher.submit(Job(prompt, 5, chat_model.tokenizer, collect(events, done)))
            assert done.wait(30)
            assert (events[-1].error is not None) == expect_error
    finally:
        batcher.close()
