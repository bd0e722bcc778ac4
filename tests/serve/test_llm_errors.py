"""Bad generation requests get a 4xx in OpenAI's error shape naming what is wrong, and the
server keeps serving; a full queue answers 429 with Retry-After at once."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from .conftest import StartServer
from .server import Server

CHAT = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def llm(tiny_llm: Path, start_server: StartServer) -> Server:
    return start_server("--model", str(tiny_llm), "--name", "tiny", "--max-context", "256")


def post(
    server: Server, path: str, body: bytes | dict[str, Any]
) -> tuple[int, dict[str, Any], Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"{server.url}{path}", data,
                                 {"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


def still_serves(server: Server) -> None:
    status, doc, _ = post(server, "/v1/chat/completions",
                          {"model": "tiny", "messages": CHAT, "max_tokens": 3})  # fmt: skip
    assert status == 200 and doc["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b'{"model": "tiny", "messages": [', 400, "not valid JSON"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400,
         "not UTF-8"),
        ({"model": "tiny", "messages": []}, 400, "messages"),
        ({"model": "tiny"}, 400, "messages"),
        ({"model": "tiny", "messages": "hi"}, 400, "messages"),
        ({"model": "tiny", "messages": [{"content": "hi"}]}, 400, "messages[0].role"),
        ({"model": "tiny", "messages": CHAT, "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "tiny", "messages": CHAT, "max_tokens": "ten"}, 400, "max_tokens"),
        ({"model": "tiny", "messages": CHAT, "max_tokens": 10**9}, 400, "context of 256"),
        ({"model": "tiny", "messages": CHAT, "temperature": "hot"}, 400, "temperature"),
        ({"model": "tiny", "messages": CHAT, "top_p": 0}, 400, "top_p"),
        ({"model": "tiny", "messages": CHAT, "stream": "yes"}, 400, "stream"),
        ({"model": "tiny", "messages": CHAT, "stop": 5}, 400, "stop"),
        ({"model": "tiny", "messages": CHAT, "n": 2}, 400, "n"),
        ({"model": "tiny", "messages": CHAT, "seed": 1.5}, 400, "seed"),
        ({"model": 7, "messages": CHAT}, 400, "model"),
        ({"model": "gpt-4", "messages": CHAT}, 404, "unknown model 'gpt-4'"),
        ([1, 2, 3], 400, "JSON object"),
    ],
)
def test_bad_chat_requests_are_4xx_in_openai_shape(
    llm: Server, body: Any, status: int, says: str
) -> None:
    got, doc, _ = post(llm, "/v1/chat/completions", body)
    assert got == status, doc
    assert set(doc["error"]) == {"message", "type", "param", "code"}
    assert says in doc["error"]["message"]
    still_serves(llm)


def test_unknown_fields_are_ignored(llm: Server) -> None:
    status, doc, _ = post(llm, "/v1/chat/completions", {
        "model": "tiny", "messages": CHAT, "max_tokens": 2, "logit_bias": {}, "user": "u",
        "frequency_penalty": 0, "some_future_field": [1]})  # fmt: skip
    assert status == 200 and doc["choices"][0]["message"]["role"] == "assistant"


def test_prompt_past_the_context_names_both_numbers(llm: Server) -> None:
    long = [{"role": "user", "content": "word " * 400}]
    status, doc, _ = post(llm, "/v1/chat/completions", {"model": "tiny", "messages": long})
    assert status == 400
    message = doc["error"]["message"]
    assert "context is 256 tokens" in message and "the prompt is 4" in message
    assert doc["error"]["code"] == "context_length_exceeded"
    status, doc, _ = post(llm, "/v2/models/tiny/generate", {"text_input": "word " * 400})
    assert status == 400 and "256" in doc["error"]
    still_serves(llm)


def test_openai_client_sees_its_own_error_types(llm: Server) -> None:
    import openai

    api = OpenAI(base_url=f"{llm.url}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="nope", messages=CHAT)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        api.chat.completions.create(model="tiny", messages=CHAT, max_tokens=0)  # type: ignore[arg-type]


def test_token_ids_outside_the_vocabulary(llm: Server) -> None:
    status, doc, _ = post(llm, "/v1/completions", {"model": "tiny", "prompt": [1, 2, 49152]})
    assert status == 400 and "49152" in doc["error"]["message"]
    status, doc, _ = post(llm, "/v1/completions", {"model": "tiny", "prompt": [1, -2]})
    assert status == 400 and doc["error"]["param"] == "prompt"
    status, doc, _ = post(llm, "/v1/completions",
                          {"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 2})  # fmt: skip
    assert status == 200 and doc["usage"]["prompt_tokens"] == 3
    still_serves(llm)


def test_generate_extension_errors(llm: Server) -> None:
    assert post(llm, "/v2/models/other/generate", {"text_input": "x"})[0] == 404
    assert post(llm, "/v2/models/tiny/generate", {"text_input": 3})[0] == 400
    status, doc, _ = post(llm, "/v2/models/tiny/infer", {"inputs": []})
    assert status == 400 and "generate" in doc["error"]
    still_serves(llm)


def test_64_clients_against_a_queue_of_16(tiny_llm: Path, start_server: StartServer) -> None:
    server = start_server("--model", str(tiny_llm), "--name", "tiny",
                          "--max-sequences", "2", "--max-queue-size", "16")  # fmt: skip
    results: list[tuple[int, Any]] = []
    lock = threading.Lock()
    go = threading.Barrier(64)

    def one() -> None:
        go.wait()
        status, doc, headers = post(server, "/v1/chat/completions", {
            "model": "tiny", "messages": CHAT, "max_tokens": 400, "temperature": 0})  # fmt: skip
        with lock:
            results.append((status, headers.get("Retry-After"), doc))

    threads = [threading.Thread(target=one) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    statuses = sorted(s for s, _, _ in results)
    assert len(results) == 64
    refused = [(r, d) for s, r, d in results if s == 429]
    served = [d for s, _, d in results if s == 200]
    # 2 running + 16 waiting at most: the rest refused at once, none lost or failed.
    assert set(statuses) <= {200, 429}, statuses
    assert len(refused) >= 64 - 18 - 8  # margin: a few may finish while others arrive
    assert served and all(d["usage"]["completion_tokens"] >= 1 for d in served)
    assert all(r == "1" and d["error"]["type"] == "rate_limit_error" for r, d in refused)
    still_serves(server)
