"""The real SmolLM2-135M-Instruct in exact float32, served: a greedy chat completion is what
`transformerkit.generate` gives for the same conversation, whole and streamed."""

import openai
import pytest

import transformerkit as tk
from transformerkit.inference.chat import render, turn_end_ids

from .conftest import start_server

MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def smollm2_client(smollm2_model):
    server = start_server({"smollm2": smollm2_model})
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300) as client:
        yield client
    server.stop()


def test_a_greedy_chat_completion_equals_generate(smollm2_model, smollm2_client):
    prompt = render(smollm2_model.chat_template, MESSAGES)
    expected = tk.generate(smollm2_model, prompt, max_new_tokens=24, stop_tokens=turn_end_ids(smollm2_model.tokenizer))
    reply = smollm2_client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=24, temperature=0)
    assert reply.choices[0].message.content == expected and "Paris" in expected
    stream = smollm2_client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=24, temperature=0,
                                                    stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected
