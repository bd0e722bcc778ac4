"""`onnxship route` in front of `onnxship serve` generating with the tiny decoder: the official
`openai` client streams through it unchanged, the router's token metrics agree with the
server's usage, a client that leaves stops the server's sequence, and a mirrored greedy copy
of the same model agrees token for token."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import AsyncOpenAI

from tests.serve.server import Server, start

from .conftest import free_port
from .test_streaming import samples
from .test_streaming_mirror import compared

MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="module")
def llm(tiny_llm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("llm-serve") / "serve.log"
    server = start(["--model", str(tiny_llm), "--name", "tiny"], free_port(), -1, log)
    yield server
    server.terminate()


def server_metric(server: Server, name: str, label: str = "") -> float:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    return sum(
        float(line.split()[-1]) for line in lines if line.startswith(name + "{") and label in line
    )


async def test_the_openai_client_streams_a_generation_through_the_router(llm, router) -> None:
    r = await router()
    await r.put_routes({"backends": [{"revision": "r1", "url": llm.url, "weight": 100}]})
    routed = AsyncOpenAI(base_url=f"{r.url}/v1", api_key="none", max_retries=0, timeout=60)
    direct = AsyncOpenAI(base_url=f"{llm.url}/v1", api_key="none", max_retries=0, timeout=60)
    try:
        expected = await direct.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=24, temperature=0  # type: ignore[arg-type]
        )
        chunks = await routed.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=24, temperature=0,  # type: ignore[arg-type]
            stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        text, usage = "", None
        async for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            if chunk.usage is not None:
                usage = chunk.usage.completion_tokens
    finally:
        await routed.close()
        await direct.close()
    assert text == expected.choices[0].message.content and text
    assert expected.usage is not None and usage == expected.usage.completion_tokens
    metrics = await r.metrics()
    assert samples(metrics, "onnxship_router_output_tokens_total", revision="r1") == usage
    assert samples(metrics, "onnxship_router_time_to_first_token_seconds_count") == 1
    itl = samples(metrics, "onnxship_router_inter_token_latency_seconds_count", revision="r1")
    assert 0 < itl < usage  # one gap per token event after the first


async def test_a_client_leaving_the_router_stops_the_servers_sequence(llm, router) -> None:
    r = await router()
    await r.put_routes({"backends": [{"revision": "r1", "url": llm.url, "weight": 100}]})
    abort = 'finish_reason="abort"'
    aborted = server_metric(llm, "onnxship_llm_requests_total", abort)
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 1800, "temperature": 0,
            "stream": True}  # fmt: skip
    async with r.session.post(f"{r.url}/v1/chat/completions", json=body) as resp:
        got = b""
        while got.count(b"data: ") < 6:
            got += await resp.content.readany()
        resp.close()  # the client goes away after a few tokens
    deadline = time.monotonic() + 10
    while server_metric(llm, "onnxship_llm_requests_total", abort) == aborted:
        assert time.monotonic() < deadline, "the server's sequence was not stopped"
        await asyncio.sleep(0.05)
    metrics = await r.metrics()
    assert samples(metrics, "onnxship_router_streams_total", outcome="abandoned") == 1


async def test_a_mirrored_greedy_copy_of_the_same_model_agrees(llm, router) -> None:
    r = await router()
    await r.put_routes(
        {
            "backends": [
                {"revision": "r1", "url": llm.url, "weight": 100},
                {"revision": "r2", "url": llm.url, "weight": 0},
            ],
            "mirror": {"revision": "r2", "percent": 100},
        }
    )
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 16, "temperature": 0,
            "stream": True}  # fmt: skip
    async with r.session.post(f"{r.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200 and resp.headers["onnxship-revision"] == "r1"
        await resp.read()
    metrics = await compared(r)
    labels = {"revision": "r2", "baseline": "r1"}
    assert samples(metrics, "onnxship_router_mirror_identical_generations_total", **labels) == 1
    assert samples(metrics, "onnxship_router_mirror_token_agreement_mean", **labels) == 1.0
