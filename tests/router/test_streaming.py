"""Streamed answers through `onnxship route`: server-sent events pass as they are sent, a
client that leaves closes the backend's request, a broken stream is the revision's error, and
the router's time-to-first-token, inter-token-latency and token metrics match the backend's."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from onnxship.router.metrics_source import (
    counters_from_text,
    generation_between,
    measurements_between,
    revision_stats,
)

from .conftest import RunningRouter
from .sse_backend import SseBackend

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def one(backend: SseBackend, revision: str = "r1") -> dict[str, Any]:
    return {"backends": [{"revision": revision, "url": backend.url, "weight": 100}]}


async def read_events(
    session: aiohttp.ClientSession, url: str, **headers: str
) -> tuple[list[tuple[float, dict[str, Any]]], float, dict[str, str]]:
    """POST a streamed chat request; each data event with the time it arrived, the time the
    request was sent, and the answer's headers."""
    events: list[tuple[float, dict[str, Any]]] = []
    t0 = time.perf_counter()
    async with session.post(f"{url}/v1/chat/completions", json=CHAT, headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        buf = b""
        async for data in resp.content.iter_any():
            now = time.perf_counter()
            buf += data
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                payload = block.removeprefix(b"data: ")
                if payload != b"[DONE]":
                    events.append((now, json.loads(payload)))
        return events, t0, dict(resp.headers)


def token_times(events: list[tuple[float, dict[str, Any]]]) -> list[float]:
    return [t for t, e in events if e["choices"] and e["choices"][0]["delta"].get("content")]


def samples(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def test_each_event_arrives_before_the_next_is_sent(sse_backends, router) -> None:
    backend = await sse_backends("llm", gap=0.08)
    r = await router()
    await r.put_routes(one(backend))
    events, _, headers = await read_events(r.session, r.url)
    arrived = token_times(events)
    assert len(arrived) == len(backend.sent) == 5
    # a buffering proxy would deliver them all after the last was sent
    for i in range(len(arrived) - 1):
        assert arrived[i] < backend.sent[i + 1], (i, arrived, backend.sent)
        assert arrived[i] - backend.sent[i] < 0.05
    assert headers["onnxship-revision"] == "r1" and headers["x-backend"] == "llm"
    text = "".join(e["choices"][0]["delta"].get("content", "") for _, e in events if e["choices"])
    assert text == "Hello, streaming world!"


async def test_first_event_latency_through_the_router_is_within_a_few_ms(
    sse_backends, router
) -> None:
    backend = await sse_backends("llm", gap=0.0, tokens=["a"])
    r = await router()
    await r.put_routes(one(backend))
    direct, routed = [], []
    for _ in range(3):  # warm both paths' connections
        await read_events(r.session, backend.url)
        await read_events(r.session, r.url)
    for _ in range(15):
        for url, out in ((backend.url, direct), (r.url, routed)):
            events, t0, _ = await read_events(r.session, url)
            out.append(token_times(events)[0] - t0)
    added = statistics.median(routed) - statistics.median(direct)
    assert added < 0.005, (statistics.median(routed), statistics.median(direct))


async def test_a_client_that_leaves_closes_the_backends_request(sse_backends, router) -> None:
    backend = await sse_backends("llm", gap=0.1, tokens=[f" t{i}" for i in range(50)])
    r = await router()
    await r.put_routes(one(backend))
    async with r.session.post(f"{r.url}/v1/chat/completions", json=CHAT) as resp:
        got = b""
        while got.count(b"\n\n") < 3:  # the role chunk and two tokens
            got += await resp.content.readany()
        left = time.perf_counter()
        resp.close()  # the user closes the tab
    await asyncio.wait_for(backend.cancelled.wait(), 2.0)
    assert time.perf_counter() - left < 0.5
    assert len(backend.sent) < 10  # the backend stopped, it did not stream on for nobody
    text = await r.metrics()
    assert samples(text, "onnxship_router_streams_total", revision="r1", outcome="abandoned") == 1
    # the revision did nothing wrong: counted as answered, not as an error
    assert counters_from_text(text, "r1").errors == 0
    assert samples(text, "onnxship_router_backend_ejections_total") == 0


async def test_a_backend_dying_mid_stream_ends_the_clients_stream_and_is_an_error(
    sse_backends, router
) -> None:
    backend = await sse_backends("llm", gap=0.02, die_after=2)
    r = await router()
    await r.put_routes(one(backend))
    before = counters_from_text(await r.metrics(), "r1")
    got = b""
    with pytest.raises(aiohttp.ClientPayloadError):  # an incomplete answer, told as such
        async with asyncio.timeout(5):  # not a hang
            async with r.session.post(f"{r.url}/v1/chat/completions", json=CHAT) as resp:
                assert resp.status == 200
                async for data in resp.content.iter_any():
                    got += data
    assert got.count(b'"content"') == 3 and b"[DONE]" not in got  # role chunk + 2 tokens
    text = await r.metrics()
    after = counters_from_text(text, "r1")
    m = measurements_between("r1", before, after, 1.0)
    assert (m.requests, m.errors) == (1, 1)
    assert samples(text, "onnxship_router_requests_total", revision="r1", code="502") == 1
    assert samples(text, "onnxship_router_streams_total", revision="r1", outcome="broken") == 1
    # and the router still streams the next answer
    backend.die_after = None
    events, _, _ = await read_events(r.session, r.url)
    assert len(token_times(events)) == 5


async def test_ttft_itl_and_tokens_match_what_the_backend_sent(sse_backends, router) -> None:
    backend = await sse_backends("llm", first_delay=0.25, gap=0.06, tokens=list("abcdefgh"))
    r = await router()
    await r.put_routes(
        {"backends": [{"revision": "r1", "url": backend.url, "weight": 100, "environment": "cpu"}]}
    )
    before = counters_from_text(await r.metrics(), "r1")
    await read_events(r.session, r.url)
    text = await r.metrics()
    labels = {"revision": "r1", "environment": "cpu"}
    ttft = samples(text, "onnxship_router_time_to_first_token_seconds_sum", **labels)
    sent_ttft = backend.sent[0] - backend.received[0]
    assert sent_ttft - 0.002 <= ttft <= sent_ttft + 0.03, (ttft, sent_ttft)
    itl_count = samples(text, "onnxship_router_inter_token_latency_seconds_count", **labels)
    itl_sum = samples(text, "onnxship_router_inter_token_latency_seconds_sum", **labels)
    assert itl_count == 7
    sent_span = backend.sent[-1] - backend.sent[0]
    assert abs(itl_sum - sent_span) < 0.03, (itl_sum, sent_span)
    assert samples(text, "onnxship_router_output_tokens_total", **labels) == 8
    # what analysis and `onnxship status` read back
    g = generation_between("r1", before, counters_from_text(text, "r1"))
    assert (g.streams, g.broken, g.tokens) == (1, 0, 8)
    assert g.ttft_p99_ms is not None and 200 <= g.ttft_p99_ms <= 300  # the 0.2-0.3 s bucket
    assert g.itl_p50_ms is not None and 50 <= g.itl_p50_ms <= 75
    stats = revision_stats(text)["r1"]
    assert stats["tokens"] == 8 and stats["streams"] == 1 and stats["ttft_p99_ms"] >= 200


async def test_tokens_are_counted_from_events_without_usage_and_from_whole_answers(
    sse_backends, router
) -> None:
    backend = await sse_backends("llm", usage=False, gap=0.0)
    r = await router()
    await r.put_routes(one(backend))
    await read_events(r.session, r.url)
    text = await r.metrics()
    assert samples(text, "onnxship_router_output_tokens_total", revision="r1") == 5
    async with r.session.post(
        f"{r.url}/v1/chat/completions", json={**CHAT, "stream": False}
    ) as resp:
        assert resp.status == 200 and resp.headers["onnxship-revision"] == "r1"
        assert (await resp.json())["usage"]["completion_tokens"] == 5
    text = await r.metrics()
    assert samples(text, "onnxship_router_output_tokens_total", revision="r1") == 10
    assert samples(text, "onnxship_router_streams_total", revision="r1") == 1


async def test_the_openai_client_streams_through_the_router(sse_backends, router) -> None:
    stable, canary = await sse_backends("stable"), await sse_backends("canary")
    r: RunningRouter = await router()
    await r.put_routes(
        {
            "backends": [
                {"revision": "r1", "url": stable.url, "weight": 50},
                {"revision": "r2", "url": canary.url, "weight": 50},
            ]
        }
    )
    client = AsyncOpenAI(base_url=f"{r.url}/v1", api_key="none", max_retries=0)
    try:
        seen: dict[str, int] = {}
        for _ in range(8):
            raw = await client.chat.completions.with_raw_response.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            revision = raw.headers["onnxship-revision"]
            seen[revision] = seen.get(revision, 0) + 1
            text = ""
            async for chunk in raw.parse():
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
            assert text == "Hello, streaming world!"
        assert seen == {"r1": 4, "r2": 4}  # the weighted split holds for streams
        # pinned to a revision, and not streamed
        answer = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"onnxship-revision": "r2"},
        )
        assert answer.choices[0].message.content == "Hello, streaming world!"
        assert len(canary.requests) == 5
    finally:
        await client.close()


async def test_whole_generations_may_take_long_but_a_stream_may_not_stall(
    sse_backends, router
) -> None:
    backend = await sse_backends("llm", first_delay=0.6, gap=0.6, tokens=["a", "b"])
    r = await router(timeout=0.3, generation_timeout=5.0)
    await r.put_routes(one(backend))
    async with r.session.post(
        f"{r.url}/v1/chat/completions", json={**CHAT, "stream": False}
    ) as resp:  # past `timeout`, within `generation_timeout`
        assert resp.status == 200
    got = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with r.session.post(f"{r.url}/v1/chat/completions", json=CHAT) as resp:
            async for data in resp.content.iter_any():
                got += data
    assert b'"content": ""' in got and b'"a"' not in got  # cut while waiting for a token
    text = await r.metrics()
    assert samples(text, "onnxship_router_requests_total", revision="r1", code="504") == 1
    assert samples(text, "onnxship_router_streams_total", revision="r1", outcome="broken") == 1


async def test_abandoned_and_broken_streams_leak_no_connections(sse_backends, router) -> None:
    backend = await sse_backends("llm", gap=0.05, tokens=["a", "b"])
    r = await router()
    await r.put_routes(one(backend))
    await read_events(r.session, r.url)  # pools warm
    backend.tokens = [f" t{i}" for i in range(200)]  # still streaming when we look

    def fds() -> int:
        import os

        return len(os.listdir("/proc/self/fd"))

    await asyncio.sleep(0.2)
    before = fds()
    for i in range(20):
        backend.die_after = 2 if i % 2 else None
        async with aiohttp.ClientSession() as own:  # its own connection, closed each time
            try:
                async with own.post(f"{r.url}/v1/chat/completions", json=CHAT) as resp:
                    got = b""
                    while got.count(b"\n\n") < 2:
                        got += await resp.content.readany()
                    resp.close()
            except aiohttp.ClientPayloadError:
                pass
    await asyncio.sleep(0.5)
    assert fds() <= before + 2, (before, fds())
    text = await r.metrics()
    outcomes = {o: samples(text, "onnxship_router_streams_total", outcome=o)
                for o in ("abandoned", "broken")}  # fmt: skip
    assert outcomes["abandoned"] + outcomes["broken"] == 20
