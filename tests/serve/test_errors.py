"""Bad input: each gets the right status and an OpenAI-style error body naming what is wrong, never a traceback,
and the server goes on serving."""

import json
import socket

import httpx
import openai
import pytest

from .conftest import start_server

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "to be"}], "max_tokens": 4}


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text
    return body["error"]


def post(server, path: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", timeout=30, **kwargs)


def test_malformed_json_is_400(server):
    error = error_of(post(server, "/v1/chat/completions", content=b'{"model": "tiny-chat", "messages": [',
                          headers={"content-type": "application/json"}), 400)
    assert error["code"] == "invalid_json" and "JSON" in error["message"]


def test_a_body_that_is_not_an_object_is_422(server):
    error = error_of(post(server, "/v1/completions", json=["tiny-gpt", "to be"]), 422)
    assert "JSON object" in error["message"]


def test_an_unknown_model_is_404(server, client):
    error = error_of(post(server, "/v1/chat/completions", json={**CHAT, "model": "gpt-5"}), 404)
    assert error["param"] == "model" and error["code"] == "model_not_found" and "tiny-chat" in error["message"]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")
    error_of(httpx.get(f"{server.url}/v1/models/nope"), 404)


@pytest.mark.parametrize("field, value, message", [
    ("max_tokens", "many", "valid integer"),
    ("max_tokens", 0, "greater than or equal to 1"),
    ("temperature", 3.5, "less than or equal to 2"),
    ("top_p", 0, "greater than 0"),
    ("stream", "yes", "valid boolean"),
    ("n", 2, "only n=1"),
    ("stop", ["a", "b", "c", "d", "e"], "up to 4"),
    ("messages", [], "at least 1"),
    ("messages", [{"role": "robot", "content": "hi"}], "'system'"),
])
def test_a_wrong_type_or_a_value_out_of_range_is_422_naming_the_field(server, field, value, message):
    error = error_of(post(server, "/v1/chat/completions", json={**CHAT, field: value}), 422)
    assert error["param"].split(".")[0] == field and error["message"].startswith(field) and message in error["message"]


def test_a_missing_field_is_422(server):
    error = error_of(post(server, "/v1/embeddings", json={"model": "tiny-bert"}), 422)
    assert error["param"] == "input" and "required" in error["message"].lower()


@pytest.mark.parametrize("route, model, most", [("/v1/embeddings", "tiny-bert", 2048),
                                                ("/v1/translations/text", "tiny-translator", 256)])
def test_too_many_inputs_in_one_request_is_422(server, route, model, most):
    error = error_of(post(server, route, json={"model": model, "input": ["a"] * (most + 1)}), 422)
    assert error["param"] == "input" and f"at most {most} inputs" in error["message"]


def test_a_prompt_longer_than_the_context_is_400_saying_the_limit(server, client):
    long = "to be or not to be " * 40
    error = error_of(post(server, "/v1/completions", json={"model": "tiny-gpt", "prompt": long}), 400)
    assert error["code"] == "context_length_exceeded" and "128 tokens" in error["message"]
    error = error_of(post(server, "/v1/completions", json={"model": "tiny-gpt", "prompt": "to be", "max_tokens": 500}),
                     400)
    assert "128 tokens" in error["message"] and "500 to generate" in error["message"]
    error = error_of(post(server, "/v1/embeddings", json={"model": "tiny-bert", "input": ["ok", long * 2]}), 400)
    assert error["code"] == "context_length_exceeded" and "input.1" in error["message"]
    error = error_of(post(server, "/v1/translations/text", json={"model": "tiny-translator", "input": long}), 400)
    assert "63 tokens" in error["message"]
    with pytest.raises(openai.BadRequestError, match="context length"):
        client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": long}])


def test_an_empty_prompt_is_400(server):
    error = error_of(post(server, "/v1/completions", json={"model": "tiny-gpt", "prompt": ["to be", ""]}), 400)
    assert "prompt.1" in error["message"]


def test_a_model_asked_for_what_it_cannot_do_is_400(server):
    error = error_of(post(server, "/v1/chat/completions", json={**CHAT, "model": "tiny-gpt"}), 400)
    assert "/v1/completions" in error["message"] and error["param"] == "model"
    error_of(post(server, "/v1/embeddings", json={"model": "tiny-chat", "input": "x"}), 400)
    error_of(post(server, "/v1/translations/text", json={"model": "tiny-bert", "input": "x"}), 400)


def test_a_body_over_the_limit_is_413_whether_its_length_is_declared_or_streamed(server):
    big = json.dumps({"model": "tiny-bert", "input": ["x" * 1000] * 100}).encode()  # 100 kB > the 64 kB limit
    error = error_of(post(server, "/v1/embeddings", content=big, headers={"content-type": "application/json"}), 413)
    assert "65536 bytes" in error["message"]
    chunks = (big[i:i + 8192] for i in range(0, len(big), 8192))  # no Content-Length: chunked
    error_of(post(server, "/v1/embeddings", content=chunks, headers={"content-type": "application/json"}), 413)


def test_unknown_routes_and_methods_get_error_bodies_too(server):
    error_of(httpx.get(f"{server.url}/v1/nothing"), 404)
    error_of(httpx.get(f"{server.url}/v1/chat/completions"), 405)


def test_the_server_keeps_serving_after_bad_requests(server, client):
    post(server, "/v1/chat/completions", content=b"\xff\xfe garbage", headers={"content-type": "application/json"})
    post(server, "/v1/completions", json={"model": "tiny-gpt", "prompt": "x" * 2000})
    assert client.completions.create(model="tiny-gpt", prompt="to be", max_tokens=2).choices[0].text is not None
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def test_an_api_key_is_required_when_set(chat_model):
    server = start_server({"tiny-chat": chat_model}, api_key="s3cret")
    try:
        error = error_of(httpx.get(f"{server.url}/v1/models"), 401)
        assert error["code"] == "invalid_api_key"
        error_of(httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        error_of(httpx.get(f"{server.url}/metrics"), 401)
        assert httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(f"{server.url}/health").status_code == 200 and httpx.get(f"{server.url}/").status_code == 200
        with openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0) as client:
            with pytest.raises(openai.AuthenticationError):
                client.models.list()
    finally:
        server.stop()


def test_the_serve_command_refuses_a_port_in_use_before_loading_anything(capsys):
    from transformerkit.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "no-such-model", "--port", str(port)]) == 2
    assert "cannot listen there" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "smollm2", "--port", "70000"])
    assert exit_.value.code == 2


def test_the_serve_command_names_a_missing_model(capsys):
    from transformerkit.cli import main

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    assert main(["serve", "/no/such/folder", "--port", str(port)]) == 2
    assert "/no/such/folder: no such file or folder" in capsys.readouterr().err
